"""A trial's hyperparameters and the Unsloth CPT rules that derive the rest from them: rsLoRA above rank 64 (the
LoRA scale alpha/r or alpha/sqrt(r)), the embedding LR = ratio x LR, and which rules a point breaks.
torch-free."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from cpt_harness.config import EMBEDDING_LR_RATIO_RANGE, RSLORA_RANK_THRESHOLD, Config


@dataclass(frozen=True)
class TrialParams:
    rank: int
    learning_rate: float
    embedding_lr_ratio: float | None  # None when embeddings are not trained
    use_rslora: bool
    alpha: float
    rule_violations: tuple[str, ...] = field(default=())
    replay_fraction: float | None = None  # share of training tokens from data.replay; None: no replay

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
        if self.replay_fraction is None:  # a trial without replay records what trials before it did
            d.pop("replay_fraction")
        return d


def derive(rank: int, lr: float, ratio: float | None, cfg: Config, replay: float | None = None) -> TrialParams:
    use_rslora = rank > RSLORA_RANK_THRESHOLD if cfg.lora.use_rslora == "auto" else bool(cfg.lora.use_rslora)
    violations = []
    if rank > RSLORA_RANK_THRESHOLD and not use_rslora:
        violations.append(f"rank {rank} > {RSLORA_RANK_THRESHOLD} without rsLoRA")
    lo, hi = EMBEDDING_LR_RATIO_RANGE
    if ratio is not None and not lo <= ratio <= hi:
        violations.append(f"embedding_lr_ratio {ratio:.3g} outside [{lo}, {hi}]")
    return TrialParams(rank, lr, ratio, use_rslora, cfg.lora.alpha, tuple(violations), replay)
