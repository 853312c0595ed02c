"""Ablations: a factorial design over named arms, every arm run with the same seeds, compared pairwise by seed.

Each factor turns one piece of the Unsloth CPT guidance on and off; its first level is the guidance's advice.
Arms are Optuna trials of the ablation's own study (arm and seed as user attributes), so storage, resume,
failure handling, workers and W&B logging are the sweep's. Seed k gives every arm the same data order and
the same LoRA init on the modules they share, so a difference between two arms at seed k is the factor's.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass
from typing import Callable

from harness import stats
from harness.config import Config


@dataclass(frozen=True)
class Factor:
    name: str
    levels: tuple[str, str]  # (the guidance's advice, the alternative)
    claim: str  # what the guidance says, tested by the sign of the effect
    metric: str  # the metric the claim is about
    apply: Callable[[Config, str], None]

    def effect_text(self) -> str:
        return f"{self.metric}({self.levels[1]}) - {self.metric}({self.levels[0]})"


def _gate(cfg: Config, level: str) -> None:
    targets = [t for t in cfg.lora.target_modules if t != "gate_proj"]
    cfg.lora.target_modules = targets + ["gate_proj"] if level == "in" else targets


def _embeddings(cfg: Config, level: str) -> None:
    cfg.lora.train_embeddings = level == "trained"


def _rslora(cfg: Config, level: str) -> None:
    cfg.lora.use_rslora = level == "on"
    cfg.rules.rslora_above_64 = level == "on"  # "off" above rank 64 breaks the rule on purpose


def _ratio(cfg: Config, level: str) -> None:
    cfg.search.embedding_lr_ratio.low = cfg.search.embedding_lr_ratio.high = float(level)
    cfg.rules.embedding_lr_ratio_range = float(level) <= 0.5


FACTORS = {
    "gate_proj": Factor("gate_proj", ("in", "out"), "leaving gate_proj out of the LoRA targets speeds up forgetting",
                        "forgetting", _gate),
    "embeddings": Factor("embeddings", ("trained", "frozen"),
                         "training lm_head and embed_tokens helps learn the domain", "domain_loss", _embeddings),
    "rslora": Factor("rslora", ("on", "off"), "rsLoRA helps at high rank", "domain_loss", _rslora),
    "embedding_lr_ratio": Factor("embedding_lr_ratio", ("0.1", "1.0"),
                                 "a lower embedding LR is more stable (less forgetting)", "forgetting", _ratio),
}


def check(cfg: Config) -> list[str]:
    """The design's factors (its numbers are checked with the other limits, harness.config.LIMITS)."""
    a = cfg.ablation
    problems = [f"ablation.factors: unknown factor {f!r} (known: {', '.join(FACTORS)})"
                for f in a.factors if f not in FACTORS]
    if not a.factors:
        problems.append(f"ablation.factors: name at least one of {', '.join(FACTORS)}")
    if len(set(a.factors)) != len(a.factors):
        problems.append(f"ablation.factors: a factor is listed twice: {a.factors}")
    if "embedding_lr_ratio" in a.factors and "embeddings" in a.factors:
        problems.append("ablation.factors: embedding_lr_ratio varies the LR of trained embeddings; it cannot be "
                        "crossed with embeddings (frozen arms have no embedding LR): run them as two ablations")
    return problems


def study_name(cfg: Config) -> str:
    return cfg.ablation.study_name or f"{cfg.study.name}-ablation"


@dataclass(frozen=True)
class Arm:
    levels: tuple[tuple[str, str], ...]  # ((factor, level), ...)

    @property
    def name(self) -> str:
        return ",".join(f"{f}={lv}" for f, lv in self.levels)


def arms(cfg: Config) -> list[Arm]:
    factors = [FACTORS[f] for f in cfg.ablation.factors]
    return [Arm(tuple(zip((f.name for f in factors), combo)))
            for combo in itertools.product(*(f.levels for f in factors))]


def arm_config(cfg: Config, arm: Arm, seed: int) -> Config:
    """The full config one arm's trial trains with: the fixed hyperparameters, the arm's levels, the seed."""
    out = copy.deepcopy(cfg)
    a = cfg.ablation
    rank = a.high_rank if "rslora" in a.factors else a.rank
    out.search.rank.choices = [rank]
    out.search.learning_rate.low = out.search.learning_rate.high = a.learning_rate
    out.search.embedding_lr_ratio.low = out.search.embedding_lr_ratio.high = a.embedding_lr_ratio
    out.train.seed = seed
    for factor, level in arm.levels:
        FACTORS[factor].apply(out, level)
    return out


def enqueue_params(cfg: Config) -> dict:
    p = {"rank": cfg.search.rank.choices[0], "learning_rate": cfg.search.learning_rate.low}
    if cfg.lora.train_embeddings:
        p["embedding_lr_ratio"] = cfg.search.embedding_lr_ratio.low
    return p


# ------------------------------------------------------------------------------------------ effects


@dataclass(frozen=True)
class Effect:
    factor: Factor
    metric: str
    per_seed: dict[int, float]  # seed -> mean over the other factors' levels of (alternative - advice)
    interval: stats.Interval

    @property
    def verdict(self) -> str:
        """On the factor's claim: supported / contradicted / inconclusive, from the interval alone."""
        if self.metric != self.factor.metric:
            return ""
        return {1: "supported", -1: "contradicted", 0: "inconclusive"}[self.interval.verdict_sign]


def effects(rows: list[dict], factor_names: list[str]) -> list[Effect]:
    """Paired effects of every factor on domain loss and forgetting.

    ``rows``: one per complete arm trial, with ``seed``, the factor levels (``level:<factor>``) and the metrics.
    For seed k and each combination of the other factors, the difference alternative - advice; averaged over
    those combinations per seed; then the mean and 95% t-interval over seeds (only seeds where every pair ran).
    """
    out = []
    for name in factor_names:
        factor = FACTORS[name]
        others = [f for f in factor_names if f != name]
        for metric in ("domain_loss", "forgetting"):
            cell = {(r["seed"], tuple(r[f"level:{o}"] for o in others), r[f"level:{name}"]): r[metric] for r in rows}
            per_seed: dict[int, list[float]] = {}
            combos = list(itertools.product(*(FACTORS[o].levels for o in others)))
            for seed in sorted({r["seed"] for r in rows}):
                diffs = [cell[(seed, c, factor.levels[1])] - cell[(seed, c, factor.levels[0])] for c in combos
                         if (seed, c, factor.levels[1]) in cell and (seed, c, factor.levels[0]) in cell]
                if len(diffs) == len(combos):
                    per_seed[seed] = sum(diffs) / len(diffs)
            interval = stats.t_interval(list(per_seed.values())) if per_seed else stats.Interval(0, float("nan"),
                                                                                                 float("nan"), float("nan"))
            out.append(Effect(factor, metric, per_seed, interval))
    return out


# ------------------------------------------------------------------------------------------ the plan


def study_config(cfg: Config) -> Config:
    """The config of the ablation's own study (a sweep's config with the study renamed)."""
    out = copy.deepcopy(cfg)
    out.study.name = study_name(cfg)
    return out


def design(cfg: Config) -> dict:
    """Stored on the ablation study (and part of its fingerprint): what the arms and seeds are."""
    a = cfg.ablation
    return {"kind": "ablation", "design": {
        "factors": {f: list(FACTORS[f].levels) for f in a.factors}, "seeds": a.seeds,
        "arms": [arm.name for arm in arms(cfg)],
        "fixed": {"rank": a.high_rank if "rslora" in a.factors else a.rank, "learning_rate": a.learning_rate,
                  "embedding_lr_ratio": a.embedding_lr_ratio},
    }}


class AblationPlan:
    """Every arm x seed once, seed-major (seed 0 of every arm first, so a partial run is already paired)."""

    job_type = "ablation"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.arms = arms(cfg)
        self.by_name = {arm.name: arm for arm in self.arms}
        self.seeds = list(range(cfg.ablation.seeds))
        self.target = len(self.arms) * len(self.seeds)

    def claim(self, study):
        from optuna.trial import TrialState

        from harness.sweep import DONE, _ask

        trials = study.get_trials(deepcopy=False)
        key = lambda t: (t.user_attrs.get("arm"), t.user_attrs.get("seed"))  # noqa: E731
        complete = {key(t) for t in trials if t.state == TrialState.COMPLETE}
        if all((arm.name, s) in complete for s in self.seeds for arm in self.arms):
            return DONE
        if any(t.state == TrialState.WAITING for t in trials):
            return _ask(study)  # a dead worker's arm, re-queued
        busy = complete | {key(t) for t in trials if t.state == TrialState.RUNNING}
        for seed in self.seeds:
            for arm in self.arms:
                if (arm.name, seed) not in busy:
                    attrs = {"arm": arm.name, "seed": seed, **{f"level:{f}": lv for f, lv in arm.levels}}
                    study.enqueue_trial(enqueue_params(arm_config(self.cfg, arm, seed)), user_attrs=attrs)
                    return _ask(study)
        return None

    def config_for(self, trial) -> Config:
        attrs = trial.user_attrs
        return arm_config(self.cfg, self.by_name[attrs["arm"]], attrs["seed"])
