"""Stopping a trial early, and the forgetting budget the search knows.

At every eval checkpoint the training loop asks a ``Checkpoint`` whether to go on. A trial whose forgetting is
already over study.max_forgetting by more than study.prune_margin is stopped, in either objective; in a
constrained study the domain loss is also reported to Optuna (``trial.report``) and its pruner may stop the trial
(``trial.should_prune``). Optuna cannot prune a multi-objective study, so a pareto study stops trials on the budget
alone. The objective then records what the trial measured so far and raises ``optuna.TrialPruned``; the sweep
tells Optuna the trial was PRUNED.
"""

from __future__ import annotations

from typing import Any

from cpt_harness.config import Config
from cpt_harness.search.study import CONSTRAINT


class Checkpoint:
    """Called with each eval point of a trial ({step, domain_loss, general_loss, ...}); returns why the trial should
    stop now, or None to go on."""

    def __init__(self, trial: Any, cfg: Config, base: dict[str, float]):
        self.trial, self.cfg, self.base = trial, cfg, base

    def __call__(self, point: dict[str, float]) -> str | None:
        s, step = self.cfg.study, int(point["step"])
        if step == 0:  # the start of a continuation (lora.init_adapter): nothing trained yet
            return None
        forgetting = point["general_loss"] - self.base["general_loss"]
        if s.objective == "constrained":
            self.trial.report(point["domain_loss"], step)
        if step >= self.cfg.train.max_steps:  # the last checkpoint: the trial is done, and completes
            return None
        if (
            s.max_forgetting is not None
            and s.prune_margin is not None
            and forgetting > s.max_forgetting + s.prune_margin
        ):
            return (
                f"forgetting {forgetting:+.4f} at step {step} is over study.max_forgetting {s.max_forgetting:g} "
                f"by more than study.prune_margin {s.prune_margin:g}"
            )
        if s.objective == "constrained" and s.pruner != "none" and self.trial.should_prune():
            return f"{s.pruner} pruner: domain loss {point['domain_loss']:.4f} at step {step}"
        return None

    def replay(self, point: dict[str, float]) -> None:
        """An eval point a resumed trial measured before its worker died: reported as it was then, no decision
        (it went on from there)."""
        if self.cfg.study.objective == "constrained" and int(point["step"]) > 0:
            self.trial.report(point["domain_loss"], int(point["step"]))


def record_constraint(trial: Any, forgetting: float, max_forgetting: float | None) -> None:
    """forgetting - max_forgetting as the trial's Optuna constraint (<= 0: feasible), read by tpe, nsga2 and gp."""
    if max_forgetting is not None:
        trial.set_constraint(CONSTRAINT, forgetting - max_forgetting)


def objective_values(cfg: Config, metrics: dict[str, float]) -> float | tuple[float, float]:
    """What the trial returns to Optuna: (domain_loss, forgetting), or domain_loss alone when constrained."""
    if cfg.study.objective == "constrained":
        return metrics["domain_loss"]
    return metrics["domain_loss"], metrics["forgetting"]
