"""What Optuna samples, and what follows from it under the Unsloth CPT rules.

``suggest`` takes any Optuna trial (a real one, or ``optuna.trial.FixedTrial`` in tests) and returns the
trial's hyperparameters with the derived values: rsLoRA on or off, the effective LoRA scale, the embedding LR,
and which rules (if any) the trial breaks.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from harness.config import EMBEDDING_LR_RATIO_RANGE, RSLORA_RANK_THRESHOLD, Config


@dataclass(frozen=True)
class TrialParams:
    rank: int
    learning_rate: float
    embedding_lr_ratio: float | None  # None when embeddings are not trained
    use_rslora: bool
    alpha: float
    rule_violations: tuple[str, ...] = field(default=())

    @property
    def lora_scale(self) -> float:
        """The factor LoRA's update is multiplied by: alpha/r, or alpha/sqrt(r) under rsLoRA."""
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

    @property
    def embedding_lr(self) -> float | None:
        return None if self.embedding_lr_ratio is None else self.embedding_lr_ratio * self.learning_rate

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(lora_scale=self.lora_scale, embedding_lr=self.embedding_lr, rule_violations=list(self.rule_violations))
        return d


def suggest(trial: Any, cfg: Config) -> TrialParams:
    s = cfg.search
    rank = trial.suggest_categorical("rank", list(s.rank.choices))
    lr = trial.suggest_float("learning_rate", s.learning_rate.low, s.learning_rate.high, log=s.learning_rate.log)
    ratio = None
    if cfg.lora.train_embeddings:
        r = s.embedding_lr_ratio
        ratio = trial.suggest_float("embedding_lr_ratio", r.low, r.high, log=r.log)
    return derive(rank, lr, ratio, cfg)


def derive(rank: int, lr: float, ratio: float | None, cfg: Config) -> TrialParams:
    use_rslora = rank > RSLORA_RANK_THRESHOLD if cfg.lora.use_rslora == "auto" else bool(cfg.lora.use_rslora)
    violations = []
    if rank > RSLORA_RANK_THRESHOLD and not use_rslora:
        violations.append(f"rank {rank} > {RSLORA_RANK_THRESHOLD} without rsLoRA")
    lo, hi = EMBEDDING_LR_RATIO_RANGE
    if ratio is not None and not lo <= ratio <= hi:
        violations.append(f"embedding_lr_ratio {ratio:.3g} outside [{lo}, {hi}]")
    return TrialParams(rank, lr, ratio, use_rslora, cfg.lora.alpha, tuple(violations))


SPEED_ONLY = ("time_limit_s", "compile")


def space_fingerprint(cfg: Config, extra: dict | None = None) -> str:
    """Identifies what a trial's numbers mean: search space, rules, LoRA layout, training and eval protocol, and
    the weights' dtype where one is set.

    A study resumed with a different fingerprint would mix incomparable trials. The sampler, trial count,
    failure budget, time limit and speed-only switches are left out: they do not change what a trial measures.
    """
    return _digest(space_payload(cfg, extra))


def space_payload(cfg: Config, extra: dict | None = None) -> dict[str, Any]:
    """What ``space_fingerprint`` hashes, kept on the study so that a refused resume can name the key."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in SPEED_ONLY}
    payload = {
        "search": asdict(cfg.search),
        "rules": asdict(cfg.rules),
        "lora": asdict(cfg.lora),
        "train": train,
        # test_fraction only when set: studies run before it (no split) keep their fingerprint at 0
        "eval": {k: v for k, v in asdict(cfg.eval).items() if k != "test_fraction" or v},
        "objective": cfg.study.objective,
    }
    if cfg.model.dtype != "auto":  # only then: the studies run before dtype was part of it keep their fingerprint
        payload["dtype"] = cfg.model.dtype
    if extra:
        payload["extra"] = extra
    return json.loads(json.dumps(payload, default=str))


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
