"""An LR grid that brackets each arm's optimum: where an arm's best LR (highest mean final domain gain over its
complete seeds) sits at an edge, the next LR beyond it is run, until the best is inside, the new LR diverges or
the grid is full. A diverged run is a result (the LR is too high), not a failure."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the protocol module imports optuna: only the plan below needs it
    pass


def _diverged(t) -> bool:
    """A trial whose loss diverged (errors.Diverged): in an LR grid, a result that the LR is too high, run once."""
    return t.state.name == "FAIL" and bool(t.user_attrs.get("diverged"))


def done_runs(trials) -> dict[str, dict[float, dict[int, float]]]:
    """arm -> LR -> seed -> final domain gain of every trial that ran to its end (-inf where it diverged)."""
    out: dict[str, dict[float, dict[int, float]]] = {}
    for t in trials:
        a = t.user_attrs
        if "arm" not in a or "lr" not in a or not (t.state.name == "COMPLETE" or _diverged(t)):
            continue
        gain = -math.inf if _diverged(t) else a.get("domain_gain", -math.inf)
        out.setdefault(a["arm"], {}).setdefault(a["lr"], {})[a["seed"]] = gain
    return out


def _lr(x: float) -> float:
    return float(f"{x:.6g}")  # an extension's LR, written the same way by every worker


def best_grid_lr(grid: list[float], runs: dict[float, dict[int, float]], seeds) -> float | None:
    """The grid's LR with the highest mean final domain gain over the seeds that ran every LR of it (ties: the
    lower LR; a diverged run's gain is -inf); None until one seed has."""
    complete = [s for s in seeds if all(s in runs.get(lr, {}) for lr in grid)]
    if not complete:
        return None
    means = {lr: sum(runs[lr][s] for s in complete) / len(complete) for lr in grid}
    return max(grid, key=lambda lr: (means[lr], -lr))


def extend_grid(
    grid: list[float], runs: dict[float, dict[int, float]], seeds, factor: float, max_lrs: int
) -> list[float]:
    """One arm's grid: ``grid`` and, while its best LR (``best_grid_lr``) sits at an edge, the next LR beyond that
    edge (x factor up, / factor down), until the best is inside, the grid holds ``max_lrs`` LRs, or the seeds have
    not yet run the newest LR. A diverged LR is never best, so it brackets the one below it."""
    grid = sorted(grid)
    while len(grid) < max_lrs:
        best = best_grid_lr(grid, runs, seeds)
        if best is None or grid[0] < best < grid[-1]:
            break
        grid = sorted(grid + [_lr(best * factor if best == grid[-1] else best / factor)])
    return grid
