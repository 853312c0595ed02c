"""When a trial is evaluated and how its LR moves: the eval steps and the schedule's name, read from ``cfg.train``.

torch-free (numpy only), so that validation and the pruners can ask without importing the training loop.
"""

from __future__ import annotations

import numpy as np

from cpt_harness.config import TrainConfig


def schedule(t: TrainConfig) -> str:
    """The LR schedule a trial trains with: "wsd" or "cosine" (train.schedule auto is cosine here; a shared-arms ``ablate``
    resolves it to wsd in its study's config)."""
    return "wsd" if t.schedule == "wsd" else "cosine"


def eval_steps(t: TrainConfig) -> list[int]:
    """The steps a trial is evaluated at, ascending, max_steps last: train.eval_steps, else train.eval_schedule
    "log" (eval_points steps spaced geometrically from 1 to max_steps, rounded, de-duplicated, topped up with the
    smallest unused steps), else every eval_every steps."""
    n = t.max_steps
    if t.eval_steps is not None:
        return sorted({s for s in t.eval_steps if s <= n} | {n})
    if t.eval_schedule == "log":
        want = min(t.eval_points, n)
        steps = {n} if want == 1 else {int(round(x)) for x in np.geomspace(1, n, want)} | {n}
        spare = (s for s in range(1, n + 1) if s not in steps)
        while len(steps) < want:
            steps.add(next(spare))
        return sorted(steps)
    return sorted(set(range(t.eval_every, n + 1, t.eval_every)) | {n})


def decay_steps(t: TrainConfig, step: int) -> int:
    """wsd: the length of the decay branch at eval step ``step``."""
    return max(1, round(t.decay_fraction * step))
