"""Ablations: a factorial design over named arms, every arm run with the same seeds, compared pairwise by seed.

Each factor turns one piece of the Unsloth CPT guidance on and off; its first level is the guidance's advice.
Arms are Optuna trials of the ablation's own study (arm and seed as user attributes), so storage, resume,
failure handling, workers and W&B logging are the sweep's. Seed k gives every arm the same data order and
the same LoRA init on the modules they share, so a difference between two arms at seed k is the factor's.
"""

from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from cpt_harness.analysis import stats
from cpt_harness.config import EMBEDDING_LR_RATIO_RANGE, Config

if TYPE_CHECKING:  # the protocol module imports optuna: only the plan below needs it
    import optuna
    from optuna.trial import Trial

    from cpt_harness.search.trials import Claim
from cpt_harness.analysis.grid import _diverged, done_runs, extend_grid


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
    lo, hi = EMBEDDING_LR_RATIO_RANGE
    cfg.search.embedding_lr_ratio.low = cfg.search.embedding_lr_ratio.high = float(level)
    cfg.rules.embedding_lr_ratio_range = lo <= float(level) <= hi  # outside: the rule's opt-out, on purpose


def _replay(cfg: Config, level: str) -> None:
    """ "on": data.replay.fraction as configured; "off": the same data (the replay source stays a general corpus that
    is not evaluated as unreplayed), nothing replayed."""
    if level == "off":
        assert cfg.data.replay is not None, "the replay factor needs data.replay (validated)"
        cfg.data.replay.fraction = 0.0


def _rank(cfg: Config, level: str) -> None:
    """The rank itself is enqueued (``enqueue_params``): Optuna refuses one parameter with different choices in
    one study, so every arm keeps the design's ranks as its choices."""


FACTORS = {
    "gate_proj": Factor(
        "gate_proj",
        ("in", "out"),
        "leaving gate_proj out of the LoRA targets speeds up forgetting",
        "forgetting",
        _gate,
    ),
    "embeddings": Factor(
        "embeddings",
        ("trained", "frozen"),
        "training lm_head and embed_tokens helps learn the domain",
        "domain_loss",
        _embeddings,
    ),
    "rslora": Factor("rslora", ("on", "off"), "rsLoRA helps at high rank", "domain_loss", _rslora),
    "embedding_lr_ratio": Factor(
        "embedding_lr_ratio",
        ("0.1", "1.0"),
        "a lower embedding LR is more stable (less forgetting)",
        "forgetting",
        _ratio,
    ),
    "replay": Factor(
        "replay",
        ("on", "off"),
        "replaying general text while training lowers forgetting",
        "forgetting_unreplayed",
        _replay,
    ),
    # Only in the frontier design, crossed with rslora: the guidance's claim is that a *high rank* pays off under
    # alpha/sqrt(r), which a comparison at one rank and one LR cannot tell from "a larger effective LR helps".
    "rank": Factor(
        "rank",
        ("16", "256"),
        "a high rank pays off under rsLoRA (alpha/sqrt(r)), not under alpha/r",
        "domain_gain",
        _rank,
    ),
}


def factor_names(cfg: Config) -> list[str]:
    """The design's factors: the frontier design crosses rslora with rank."""
    names = list(cfg.ablation.factors)
    if cfg.ablation.learning_rates and "rslora" in names and "rank" not in names:
        names.insert(names.index("rslora"), "rank")
    return names


def levels(cfg: Config, name: str) -> tuple[str, ...]:
    """A factor's levels in this design, the guidance's advice first (rank: low, high; ratio: as listed)."""
    a = cfg.ablation
    if a.learning_rates and name == "rank":
        return (str(a.rank), str(a.high_rank))
    if a.learning_rates and name == "embedding_lr_ratio":
        return tuple(f"{r:g}" for r in a.ratios)
    return FACTORS[name].levels


def check(cfg: Config) -> list[str]:
    """The design's factors (its numbers are checked with the other limits, cpt_harness.config.LIMITS)."""
    a = cfg.ablation
    problems = [
        f"ablation.factors: unknown factor {f!r} (known: {', '.join(FACTORS)})" for f in a.factors if f not in FACTORS
    ]
    if not a.factors:
        problems.append(f"ablation.factors: name at least one of {', '.join(FACTORS)}")
    if len(set(a.factors)) != len(a.factors):
        problems.append(f"ablation.factors: a factor is listed twice: {a.factors}")
    if shared(cfg) and not a.learning_rates:
        problems.append(
            "ablation.design: shared is a frontier design: set ablation.learning_rates, e.g. [2.5e-4, 1e-3, 4e-3]"
        )
    if (
        shared(cfg)
        and "embedding_lr_ratio" in a.factors
        and not any(math.isclose(a.embedding_lr_ratio, r) for r in a.ratios)
    ):
        problems.append(
            f"ablation.embedding_lr_ratio: {a.embedding_lr_ratio:g} must be one of ablation.ratios "
            f"{a.ratios} in the shared design (the default arm is a cell of every claim)"
        )
    if "embedding_lr_ratio" in a.factors and "embeddings" in a.factors and not shared(cfg):
        problems.append(
            "ablation.factors: embedding_lr_ratio varies the LR of trained embeddings; it cannot be "
            "crossed with embeddings (frozen arms have no embedding LR): run them as two ablations"
        )
    if "replay" in a.factors:
        replay = cfg.data.replay
        if replay is None or not replay.fraction > 0:
            problems.append(
                'ablation.factors: replay compares data.replay.fraction (the "on" arm) with none; set '
                "data.replay: {source: builtin:brown, fraction: 0.25} (a fraction above 0), with another "
                "general corpus in data.general to measure forgetting on"
            )
        if cfg.search.replay_fraction is not None:
            problems.append(
                "search.replay_fraction: an ablation of replay runs data.replay.fraction against none; "
                "remove search.replay_fraction (it would override both arms)"
            )
    return problems + _check_grid(cfg)


def _check_grid(cfg: Config) -> list[str]:
    a = cfg.ablation
    if a.learning_rates is None:
        return []
    grid = a.learning_rates
    if len(set(grid)) < 2 or any(not lr > 0 for lr in grid):
        return [f"ablation.learning_rates: at least two distinct positive LRs, e.g. [1e-4, 3e-4, 1e-3]; got {grid}"]
    problems = []
    if "rslora" in a.factors:
        if a.rank >= a.high_rank:
            problems.append(
                f"ablation.rank ({a.rank}) must be below ablation.high_rank ({a.high_rank}): rsLoRA is "
                "judged by how much raising the rank helps under each scaling"
            )
        # alpha/sqrt(r) is sqrt(r) times alpha/r: the grid must span that factor, or one scaling's best LR is
        # outside it and the comparison is of LRs, not of scalings.
        need = math.sqrt(max(a.rank, a.high_rank))
        if max(grid) / min(grid) < need * (1 - 1e-9):
            problems.append(
                f"ablation.learning_rates: spans {max(grid) / min(grid):.3g}x, but alpha/sqrt(r) is "
                f"{need:g}x alpha/r at rank {max(a.rank, a.high_rank)}: widen the grid to at least {need:g}x"
            )
    if "embedding_lr_ratio" in a.factors and (len(set(a.ratios)) < 2 or any(not r > 0 for r in a.ratios)):
        problems.append(
            f"ablation.ratios: at least two distinct positive ratios, e.g. [0.03, 0.1, 0.5, 1.0]; got {a.ratios}"
        )
    return problems


def study_name(cfg: Config) -> str:
    return cfg.ablation.study_name or f"{cfg.study.name}-ablation"


@dataclass(frozen=True)
class Arm:
    levels: tuple[tuple[str, str], ...]  # ((factor, level), ...)

    @property
    def name(self) -> str:
        return ",".join(f"{f}={lv}" for f, lv in self.levels)


def shared(cfg: Config) -> bool:
    """The shared-arms design (ablation.design: shared): one default arm, every factor varied from it alone."""
    return cfg.ablation.design == "shared"


def default_levels(cfg: Config) -> dict[str, str]:
    """The shared design's default arm: the guidance's advice on every factor, the ratio ablation.embedding_lr_ratio,
    the LoRA scale that lora.use_rslora gives at ablation.rank (alpha/r at 64 under auto), no replay."""
    a = cfg.ablation
    rslora_on = cfg.lora.use_rslora is True or (cfg.lora.use_rslora == "auto" and a.rank > 64)
    default = {
        "gate_proj": "in",
        "embeddings": "trained",
        "embedding_lr_ratio": f"{a.embedding_lr_ratio:g}",
        "rank": str(a.rank),
        "rslora": "on" if rslora_on else "off",
        "replay": "off",
    }
    return {n: default[n] for n in factor_names(cfg)}


def arms(cfg: Config) -> list[Arm]:
    names = factor_names(cfg)
    if not shared(cfg):
        return [Arm(tuple(zip(names, combo))) for combo in itertools.product(*(levels(cfg, n) for n in names))]
    default = default_levels(cfg)
    cells = [default]
    for name in names:
        if name not in ("rank", "rslora"):
            cells += [{**default, name: lv} for lv in levels(cfg, name) if lv != default[name]]
    if "rslora" in names:  # the four (rank, scaling) cells, one of which is the default
        cells += [
            c
            for r in levels(cfg, "rank")
            for sc in ("off", "on")
            if (c := {**default, "rank": r, "rslora": sc}) != default
        ]
    return [Arm(tuple((n, c[n]) for n in names)) for c in cells]


def claim_arms(cfg_or_design, factor: str) -> list[dict[str, str]]:
    """Shared design: the arms a claim compares (the default and its own factor's other levels; rslora: its four
    cells), as level dicts, from a design dict (``design``)."""
    d = cfg_or_design
    default, varied = d["default"], ("rank", "rslora") if factor == "rslora" else (factor,)
    out = []
    for name in d["arms"]:
        lv = dict(pair.split("=", 1) for pair in name.split(","))
        if all(lv[f] == default[f] for f in default if f not in varied):
            out.append(lv)
    return out


def learning_rates(cfg: Config) -> list[float]:
    """The LRs every arm x seed runs at: the grid, or the one fixed LR."""
    return sorted(cfg.ablation.learning_rates) if cfg.ablation.learning_rates else [cfg.ablation.learning_rate]


def arm_config(cfg: Config, arm: Arm, seed: int, lr: float | None = None) -> Config:
    """The full config one arm's trial trains with: the fixed hyperparameters, the arm's levels, the LR, the seed."""
    out = copy.deepcopy(cfg)
    a = cfg.ablation
    rank = a.high_rank if "rslora" in a.factors else a.rank
    out.search.rank.choices = [rank]
    out.search.learning_rate.low = out.search.learning_rate.high = a.learning_rate if lr is None else lr
    out.search.embedding_lr_ratio.low = out.search.embedding_lr_ratio.high = a.embedding_lr_ratio
    out.train.seed = seed
    if "rank" in dict(arm.levels):
        out.search.rank.choices = sorted(int(r) for r in levels(cfg, "rank"))
    for factor, level in arm.levels:
        FACTORS[factor].apply(out, level)
    return out


def arm_rank(cfg: Config, arm: Arm) -> int:
    """The rank an arm trains at: its level of the rank factor, else the design's one rank."""
    levels_ = dict(arm.levels)
    return (
        int(levels_["rank"])
        if "rank" in levels_
        else (cfg.ablation.high_rank if "rslora" in cfg.ablation.factors else cfg.ablation.rank)
    )


def enqueue_params(cfg: Config, rank: int | None = None) -> dict:
    """The fixed parameters an arm's trial is enqueued with (``cfg``: the arm's config)."""
    p = {"rank": cfg.search.rank.choices[0] if rank is None else rank, "learning_rate": cfg.search.learning_rate.low}
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


def rows(study: optuna.Study) -> list[dict]:
    """One row per complete arm trial of an ablation study: its seed, arm, factor levels and metrics."""
    return [
        {
            "seed": t.user_attrs["seed"],
            "arm": t.user_attrs["arm"],
            **{k: v for k, v in t.user_attrs.items() if k.startswith("level:")},
            "domain_loss": t.user_attrs["domain_loss"],
            "forgetting": t.user_attrs["forgetting"],
            "tokens_per_s": t.user_attrs.get("tokens_per_s"),
        }
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and "arm" in t.user_attrs
    ]


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
            per_seed: dict[int, float] = {}
            combos = list(itertools.product(*(FACTORS[o].levels for o in others)))
            for seed in sorted({r["seed"] for r in rows}):
                diffs = [
                    cell[(seed, c, factor.levels[1])] - cell[(seed, c, factor.levels[0])]
                    for c in combos
                    if (seed, c, factor.levels[1]) in cell and (seed, c, factor.levels[0]) in cell
                ]
                if len(diffs) == len(combos):
                    per_seed[seed] = sum(diffs) / len(diffs)
            interval = (
                stats.t_interval(list(per_seed.values()))
                if per_seed
                else stats.Interval(0, float("nan"), float("nan"), float("nan"))
            )
            out.append(Effect(factor, metric, per_seed, interval))
    return out


# ------------------------------------------------------------------------------------------ the plan


def study_config(cfg: Config) -> Config:
    """The config of the ablation's own study: a sweep's config with the study renamed, and none of the sweep's
    search settings: every arm runs to the end on both objectives, and nothing else is queued. An ablation chooses
    no setting, so it has no selection/test split either: every held-out document measures every arm."""
    out = copy.deepcopy(cfg)
    out.study.name = study_name(cfg)
    out.study.objective, out.study.pruner, out.study.pruner_options, out.study.enqueue = "pareto", "none", {}, []
    out.study.max_forgetting = out.study.prune_margin = None
    out.eval.test_fraction = 0.0
    if out.train.schedule == "auto" and shared(cfg):  # every frontier point annealed: arms compared like with like
        out.train.schedule = "wsd"  # (factorial designs keep cosine: the committed studies resume as they ran)
    return out


def design(cfg: Config) -> dict:
    """Stored on the ablation study (and part of its fingerprint): what the arms, LRs and seeds are."""
    a = cfg.ablation
    out: dict[str, Any] = {
        "factors": {f: list(levels(cfg, f)) for f in factor_names(cfg)},
        "seeds": a.seeds if isinstance(a.seeds, int) else a.seeds.max,  # the most seeds planned
        "arms": [arm.name for arm in arms(cfg)],
        "fixed": {
            "rank": a.high_rank if "rslora" in a.factors and not shared(cfg) else a.rank,
            "learning_rate": a.learning_rate,
            "embedding_lr_ratio": a.embedding_lr_ratio,
        },
    }
    if "replay" in a.factors and cfg.data.replay is not None:  # forgetting is judged on the other general corpora
        from cpt_harness.data import corpus_names, replayed_corpora

        names = corpus_names(cfg.data.general_sources())
        out["replayed"] = [n for n, r in zip(names, replayed_corpora(cfg.data)) if r]
        out["fixed"]["replay_fraction"] = cfg.data.replay.fraction
    if not isinstance(a.seeds, int):  # sequential seeds: only then (the integer designs keep their fingerprint)
        out["sequential"] = {"min": a.seeds.min, "max": a.seeds.max}
    if a.learning_rates:  # the frontier design; without it the stored design stays as fixed-LR studies have it
        out["learning_rates"] = learning_rates(cfg)
        del out["fixed"]["learning_rate"]
    if shared(cfg):  # only then: the factorial studies keep their design (and fingerprint)
        out.update(
            design="shared", default=default_levels(cfg), lr_extend=a.lr_extend, max_learning_rates=a.max_learning_rates
        )
    return {"kind": "ablation", "design": out}


class AblationPlan:
    """Every arm x LR x seed once, seed-major (seed 0 of every arm and LR first, so a partial run is already
    paired)."""

    job_type = "ablation"

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.arms = arms(cfg)
        self.by_name = {arm.name: arm for arm in self.arms}
        seeds = cfg.ablation.seeds
        self.seeds = list(range(seeds if isinstance(seeds, int) else seeds.min))  # sequential: the first look's
        self.lrs = learning_rates(cfg)
        self.grid = bool(cfg.ablation.learning_rates)
        self.target = len(self.arms) * len(self.seeds) * len(self.lrs)

    def _key(self, t) -> tuple:
        a = t.user_attrs
        return a.get("arm"), a.get("seed"), (a.get("lr") if self.grid else self.lrs[0])

    def grids(self, trials) -> dict[str, list[float]]:
        """Each arm's LR grid: ablation.learning_rates, extended (``extend_grid``) where the runs so far put the
        arm's best LR at an edge."""
        if not self.grid or self.cfg.ablation.lr_extend <= 1:
            return {arm.name: self.lrs for arm in self.arms}
        runs = done_runs(trials)
        return {
            arm.name: extend_grid(
                self.lrs,
                runs.get(arm.name, {}),
                self.seeds,
                self.cfg.ablation.lr_extend,
                self.cfg.ablation.max_learning_rates,
            )
            for arm in self.arms
        }

    def claim(self, study: optuna.Study) -> Claim:
        from optuna.trial import TrialState

        from cpt_harness.search import trials as protocol

        trials = study.get_trials(deepcopy=False)
        complete = {self._key(t) for t in trials if t.state == TrialState.COMPLETE or _diverged(t)}
        grids = self.grids(trials)
        wanted = [
            (arm, seed, lr)
            for seed in self.seeds
            for lr in sorted({x for g in grids.values() for x in g})
            for arm in self.arms
            if lr in grids[arm.name]
        ]
        if all((arm.name, s, lr) in complete for arm, s, lr in wanted):
            return protocol.DONE
        if any(t.state == TrialState.WAITING for t in trials):
            return protocol.ask(study)  # a dead worker's arm, re-queued
        busy = complete | {self._key(t) for t in trials if t.state == TrialState.RUNNING}
        for arm, seed, lr in wanted:
            if (arm.name, seed, lr) not in busy:
                attrs = {"arm": arm.name, "seed": seed, **{f"level:{f}": lv for f, lv in arm.levels}}
                if self.grid:
                    attrs["lr"] = lr
                params = enqueue_params(arm_config(self.cfg, arm, seed, lr), arm_rank(self.cfg, arm))
                return protocol.enqueue_and_ask(study, params, attrs)
        return None

    def config_for(self, trial: Trial) -> Config:
        attrs = trial.user_attrs
        return arm_config(self.cfg, self.by_name[attrs["arm"]], attrs["seed"], attrs.get("lr"))


# ------------------------------------------------------------------------------------------ LR grid extension
