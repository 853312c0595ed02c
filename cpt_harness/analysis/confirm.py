"""From a sweep to a recommendation: which settings to confirm, the confirmation plan, and what to use.

A sweep's best trial is one seed of one run, picked on the held-out documents it was measured on. Two things
make its numbers trustworthy, and both live here:

- The choice sees only the *selection* part of the held-out documents (``eval.test_fraction``; the split is
  ``metrics.EvalSplit``); what a user is told is measured on the *test* part, which chose nothing.
- ``cpt-harness confirm`` re-runs the best ``--top`` settings with ``--seeds`` new seeds (``train.seed`` values
  the sweep did not use) as fixed trials of their own study, ``<study>-confirm`` (user attributes ``setting``, the
  sweep trial's number, and ``seed``), so that storage, resume, failures, ``--workers``/``--gpus`` and W&B are
  the sweep's. The recommendation then carries a mean and 95% t-interval over those seeds.

The rule (``candidates``): with ``study.max_forgetting`` the feasible trials (forgetting at most that, on the
selection documents) by domain loss, lowest first; none feasible means no setting met the budget. Without a
budget, the knee of the Pareto front (the front trial nearest the ideal point, both objectives scaled to [0, 1]
over the front), then the front's trials next to it along the front (nearest first, the less-forgetting side
first), then the other trials by their scaled distance to the ideal point. Trials with a ``baseline`` user
attribute are compared with, never recommended. Once confirmed (``recommend``), the choice among the confirmed
settings is made again on their selection-part means over seeds (with a budget: the lowest mean domain loss
among those whose mean forgetting is within it; without: the first in the order above), never on the test part.
"""

from __future__ import annotations

import copy
import math
import statistics
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cpt_harness.analysis import stats
from cpt_harness.config import Config, ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial, Trial

    from cpt_harness.search.trials import Claim

DEFAULT_TOP, DEFAULT_SEEDS = 3, 3
SUFFIX = "-confirm"


def study_name(cfg: Config) -> str:
    return f"{cfg.study.name}{SUFFIX}"


def is_baseline(trial) -> bool:
    return trial.user_attrs.get("baseline") not in (None, False)


def _done(study: optuna.Study) -> list[FrozenTrial]:
    """The complete, non-baseline trials with both objectives recorded."""
    return [
        t
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
        and not is_baseline(t)
        and "domain_loss" in t.user_attrs
        and "forgetting" in t.user_attrs
    ]


def _objectives(t) -> tuple[float, float]:
    return t.user_attrs["domain_loss"], t.user_attrs["forgetting"]


def candidates(study: optuna.Study, max_forgetting: float | None) -> list[FrozenTrial]:
    """The sweep's settings in the order they are recommended and confirmed (the module's rule); one trial per
    distinct setting. Empty when a budget is set and no trial meets it."""
    unique: dict[tuple, FrozenTrial] = {}
    for t in sorted(_done(study), key=_objectives):  # a setting run twice: its better run stands for it
        unique.setdefault(tuple(sorted(t.params.items())), t)
    done = list(unique.values())
    if max_forgetting is not None:
        return sorted([t for t in done if t.user_attrs["forgetting"] <= max_forgetting], key=_objectives)
    front = sorted(_front(done), key=lambda t: (t.user_attrs["forgetting"], t.number))
    if not front:
        return []
    distance = _ideal_distance(front)
    knee = min(range(len(front)), key=lambda i: (distance(front[i]), i))
    along = sorted(range(len(front)), key=lambda i: (abs(i - knee), i))  # index order: less forgetting first
    on_front, overall = {t.number for t in front}, _ideal_distance(done)
    rest = sorted((t for t in done if t.number not in on_front), key=lambda t: (overall(t), t.number))
    return [front[i] for i in along] + rest


def _front(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials no other trial dominates in (domain_loss, forgetting)."""

    def dominates(a, b) -> bool:
        (da, fa), (db, fb) = _objectives(a), _objectives(b)
        return da <= db and fa <= fb and (da, fa) != (db, fb)

    return [t for t in trials if not any(dominates(o, t) for o in trials)]


def _ideal_distance(trials: list):
    """Distance to the ideal point, each objective scaled to [0, 1] over ``trials``."""
    d = [t.user_attrs["domain_loss"] for t in trials]
    f = [t.user_attrs["forgetting"] for t in trials]

    def scale(v: float, lo: float, hi: float) -> float:
        return 0.0 if hi == lo else (v - lo) / (hi - lo)

    return lambda t: math.hypot(
        scale(t.user_attrs["domain_loss"], min(d), max(d)), scale(t.user_attrs["forgetting"], min(f), max(f))
    )


def new_seeds(study, cfg: Config, n: int) -> list[int]:
    """``n`` train.seed values the sweep did not use: the smallest non-negative integers other than the sweep's
    train.seed and any ``seed`` its trials record. Asking for more later extends the same list."""
    used = {cfg.train.seed} | {
        t.user_attrs["seed"] for t in study.get_trials(deepcopy=False) if isinstance(t.user_attrs.get("seed"), int)
    }
    out: list[int] = []
    seed = 0
    while len(out) < n:
        if seed not in used:
            out.append(seed)
        seed += 1
    return out


# ------------------------------------------------------------------------------------------ the plan


def setting_config(cfg: Config, params: dict, seed: int) -> Config:
    """The config one confirmation trial trains with: the setting's values, a new seed. The rank is fixed by the
    enqueued trial's params, not by narrowing search.rank.choices: Optuna refuses a categorical parameter whose
    choices differ between trials of one study."""
    out = copy.deepcopy(cfg)
    out.search.learning_rate.low = out.search.learning_rate.high = params["learning_rate"]
    if "embedding_lr_ratio" in params:
        out.search.embedding_lr_ratio.low = out.search.embedding_lr_ratio.high = params["embedding_lr_ratio"]
    if "replay_fraction" in params and out.search.replay_fraction is not None:
        out.search.replay_fraction.low = out.search.replay_fraction.high = params["replay_fraction"]
    out.train.seed = seed
    return out


def study_config(cfg: Config) -> Config:
    """The confirmation study's config: the sweep's, renamed (the same training, eval and split), without the
    sweep's search settings: every setting runs to its end on both objectives, and nothing else is queued."""
    out = copy.deepcopy(cfg)
    out.study.name = study_name(cfg)
    out.study.objective, out.study.pruner, out.study.pruner_options, out.study.enqueue = "pareto", "none", {}, []
    out.study.prune_margin = None
    return out


class ConfirmPlan:
    """Every setting x seed once, seed-major (the first seed of every setting first, so a partial run already
    compares the settings)."""

    job_type = "confirm"

    def __init__(self, cfg: Config, settings: list[dict], seeds: list[int]):
        self.cfg, self.settings, self.seeds = cfg, settings, seeds
        self.params = {s["setting"]: s["params"] for s in settings}
        self.target = len(settings) * len(seeds)

    @staticmethod
    def _key(t) -> tuple:
        return t.user_attrs.get("setting"), t.user_attrs.get("seed")

    def claim(self, study: optuna.Study) -> Claim:
        from cpt_harness.search import trials as protocol

        trials = study.get_trials(deepcopy=False)
        complete = {self._key(t) for t in trials if t.state.name == "COMPLETE"}
        wanted = [(s["setting"], seed) for seed in self.seeds for s in self.settings]
        if all(w in complete for w in wanted):
            return protocol.DONE
        if any(t.state.name == "WAITING" for t in trials):
            return protocol.ask(study)  # a dead worker's trial, re-queued
        busy = complete | {self._key(t) for t in trials if t.state.name == "RUNNING"}
        for setting, seed in wanted:
            if (setting, seed) not in busy:
                return protocol.enqueue_and_ask(study, dict(self.params[setting]), {"setting": setting, "seed": seed})
        return None

    def config_for(self, trial: Trial) -> Config:
        a = trial.user_attrs
        return setting_config(self.cfg, self.params[a["setting"]], a["seed"])


@dataclass
class Job:
    """A confirmation as ``sweep.work`` and the workers run it."""

    cfg: Config  # the confirmation study's
    attrs: dict  # its design: stored on it and part of its fingerprint
    plan: ConfirmPlan
    sweep_fingerprints: dict  # the sweep's model and data fingerprints, which the confirmation must share
    flags: list[str] = field(default_factory=list)  # what a worker is told


def prepare(
    cfg: Config, sweep_study: optuna.Study, top: int = DEFAULT_TOP, seeds: int = DEFAULT_SEEDS, log=print
) -> Job:
    """The settings to confirm and the seeds, checked against the sweep. A confirmation study that exists keeps
    the settings it was started with (resume, or more seeds); a new one takes the sweep's top ``top`` now."""
    from cpt_harness.search import study as storage

    _check_protocol(cfg, sweep_study)
    ccfg = study_config(cfg)
    existing = storage.load_if_exists(storage.make_storage(cfg.study.storage), ccfg.study.name)
    design = (existing.user_attrs.get("design") if existing is not None else None) or _design(cfg, sweep_study, top)
    if len(design["settings"]) != top and existing is not None:
        log(
            f"[confirm] study {ccfg.study.name!r} confirms the {len(design['settings'])} settings it was started "
            f"with (trials {', '.join(str(s['setting']) for s in design['settings'])}), not --top {top}"
        )
    seed_list = new_seeds(sweep_study, cfg, seeds)
    plan = ConfirmPlan(ccfg, design["settings"], seed_list)
    fp = sweep_study.user_attrs.get("fingerprints") or {}
    return Job(
        ccfg,
        {"kind": "confirm", "design": design},
        plan,
        {k: fp[k] for k in ("model", "data") if k in fp},
        ["--confirm", "--top", str(top), "--seeds", str(seeds)],
    )


def _design(cfg: Config, sweep_study, top: int) -> dict:
    chosen = candidates(sweep_study, cfg.study.max_forgetting)[:top]
    if not _done(sweep_study):
        raise ConfigError(
            [
                f"study {sweep_study.study_name!r} has no complete trial yet: run `cpt-harness sweep` "
                "first; nothing to confirm"
            ],
            "confirm",
        )
    if not chosen:
        raise ConfigError(
            [
                "no setting met the budget: "
                + no_setting_text(sweep_study, cfg.study.max_forgetting)
                + "; nothing to confirm"
            ],
            "confirm",
        )
    return {
        "source_study": sweep_study.study_name,
        "max_forgetting": cfg.study.max_forgetting,
        "settings": [{"setting": t.number, "params": dict(t.params)} for t in chosen],
    }


def _check_protocol(cfg: Config, sweep_study) -> None:
    """The confirmation trains and evaluates as the sweep did: the same search-space fingerprint (training, eval,
    split), or the comparison would be of protocols."""
    from cpt_harness.search import space as search_space
    from cpt_harness.search import study as storage

    stored = (sweep_study.user_attrs.get("fingerprints") or {}).get("search_space")
    if stored is not None and stored not in search_space.accepted_fingerprints(cfg):
        stored_inputs = (sweep_study.user_attrs.get("fingerprint_inputs") or {}).get("search_space")
        keys = storage.changed_keys(stored_inputs, search_space.space_payload(cfg))
        raise storage.StudyMismatch(
            f"study {sweep_study.study_name!r} was run with other settings than this config "
            f"({'; '.join(keys[:8]) or 'search_space fingerprint differs'}); a confirmation must train and evaluate "
            "as its sweep did: give the sweep's own settings"
        )


def begin(session, job: Job) -> None:
    """After setup, before any trial: the model and data are the sweep's (their fingerprints match), and the
    study records how many seeds were asked for (the most any run asked)."""
    from cpt_harness.search.study import StudyMismatch

    mine = session.study.user_attrs.get("fingerprints") or {}
    changed = [k for k, v in job.sweep_fingerprints.items() if mine.get(k) not in (None, v)]
    if changed:
        raise StudyMismatch(
            f"the confirmation's {', '.join(changed)} differ from its sweep's: confirm with the sweep's model and data"
        )
    if len(job.plan.seeds) > len(session.study.user_attrs.get("seeds") or []):
        session.study.set_user_attr("seeds", job.plan.seeds)


def load_study(cfg: Config) -> optuna.Study | None:
    """The confirmation study of ``cfg``'s sweep, or None where it was never started."""
    from cpt_harness.search import study as storage

    return storage.load_if_exists(storage.make_storage(cfg.study.storage), study_name(cfg))


# ------------------------------------------------------------------------------------------ the recommendation


@dataclass
class Confirmed:
    """One confirmed setting: its complete runs, by seed."""

    setting: int  # the sweep trial's number
    params: dict
    runs: dict[int, dict] = field(default_factory=dict)  # seed -> the trial's user attributes

    def values(self, metric: str) -> list[float]:
        return [a[metric] for _, a in sorted(self.runs.items()) if a.get(metric) is not None]

    def mean(self, metric: str) -> float:
        v = self.values(metric)
        return statistics.fmean(v) if v else math.nan

    def interval(self, metric: str) -> stats.Interval:
        return stats.t_interval(self.values(metric))


def confirmed_settings(confirm_study: optuna.Study | None) -> list[Confirmed]:
    """The confirmation study's settings, in its design's order, with their complete runs."""
    if confirm_study is None:
        return []
    design = confirm_study.user_attrs.get("design") or {}
    out = {s["setting"]: Confirmed(s["setting"], s["params"]) for s in design.get("settings", [])}
    for t in confirm_study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state.name == "COMPLETE" and a.get("setting") in out:
            out[a["setting"]].runs[a["seed"]] = a
    return list(out.values())


@dataclass
class Recommendation:
    status: str  # confirmed | unconfirmed | none (no setting met the budget) | empty (no complete trial)
    how: str  # the rule that chose it, in words
    trial: FrozenTrial | None = None  # the sweep trial of the recommended setting
    confirmed: Confirmed | None = None  # its confirmation runs (status confirmed; or partial, status unconfirmed)
    settings: list[Confirmed] = field(default_factory=list)  # every setting of the confirmation study
    planned_seeds: int = 0
    split: bool = False  # whether the sweep's trials carry test-part metrics (eval.test_fraction)
    max_forgetting: float | None = None
    no_setting: str = ""  # status none: why

    @property
    def prefix(self) -> str:
        """The attribute prefix of the numbers to report: the test part's, or the only ones there are."""
        return "test_" if self.split else ""


def recommend(
    study: optuna.Study, max_forgetting: float | None, confirm_study: optuna.Study | None = None
) -> Recommendation:
    """What a sweep recommends (the module's rule), confirmed over seeds where a confirmation study has at least
    two complete seeds of a setting."""
    done = _done(study)
    split = any("test_domain_loss" in t.user_attrs for t in done)
    settings = confirmed_settings(confirm_study)
    planned = len((confirm_study.user_attrs.get("seeds") or []) if confirm_study is not None else [])
    base: dict[str, Any] = dict(settings=settings, planned_seeds=planned, split=split, max_forgetting=max_forgetting)
    if not done:
        return Recommendation("empty", "no complete trial yet", **base)
    cands = candidates(study, max_forgetting)
    if not cands:
        return Recommendation("none", "", no_setting=no_setting_text(study, max_forgetting), **base)
    by_number = {t.number: t for t in done}
    usable = [c for c in settings if len(c.runs) >= 2 and c.setting in by_number]
    if usable:
        if max_forgetting is not None:
            ok = [c for c in usable if c.mean("forgetting") <= max_forgetting]
            if not ok:
                return Recommendation(
                    "none",
                    "",
                    no_setting=(
                        f"no confirmed setting has mean forgetting ≤ {max_forgetting:g} over its seeds on the selection "
                        "documents ("
                        + ", ".join(f"trial {c.setting}: {c.mean('forgetting'):+.4f}" for c in usable)
                        + ")"
                    ),
                    **base,
                )
            pick = min(ok, key=lambda c: (c.mean("domain_loss"), c.setting))
            how = (
                f"of the confirmed settings, the lowest mean domain loss with mean forgetting ≤ "
                f"{max_forgetting:g}, over seeds, on the selection documents"
            )
        else:
            order = {t.number: i for i, t in enumerate(cands)}
            pick = min(usable, key=lambda c: (order.get(c.setting, len(order)), c.setting))
            how = (
                "the knee of the Pareto front"
                if order.get(pick.setting) == 0
                else "the confirmed setting nearest the knee of the Pareto front along it"
            )
        return Recommendation("confirmed", how, by_number[pick.setting], pick, **base)
    top = cands[0]
    how = (
        f"the lowest domain loss with forgetting ≤ {max_forgetting:g} on the selection documents"
        if max_forgetting is not None
        else "the knee of the Pareto front, study.max_forgetting not set"
    )
    partial = next((c for c in settings if c.setting == top.number), None)
    return Recommendation("unconfirmed", how, top, partial, **base)


def no_setting_text(study: optuna.Study, max_forgetting: float | None) -> str:
    done = _done(study)
    if not done:
        return f"study {study.study_name!r} has no complete trial"
    least = min(done, key=lambda t: (t.user_attrs["forgetting"], t.number))
    return (
        f"no trial of {study.study_name!r} has forgetting ≤ {max_forgetting:g} "
        f"(study.max_forgetting) on the selection documents; the least was "
        f"{least.user_attrs['forgetting']:+.4f} (trial {least.number}, {setting_text(least.params)})"
    )


def setting_text(params: dict) -> str:
    out = f"rank {params.get('rank')}, LR {params.get('learning_rate', math.nan):.3g}"
    if "embedding_lr_ratio" in params:
        out += f", embedding-LR ratio {params['embedding_lr_ratio']:.3g}"
    if "replay_fraction" in params:
        out += f", replay {params['replay_fraction']:.2f}"
    return out


def summary_line(rec: Recommendation) -> str:
    """One line for the terminal."""
    if rec.status == "none":
        return f"recommendation: none, no setting met the budget: {rec.no_setting}"
    if rec.status == "empty":
        return f"recommendation: none yet ({rec.how})"
    where = "test documents" if rec.split else "held-out documents (not split)"
    p = rec.prefix
    assert rec.trial is not None, "a confirmed or unconfirmed recommendation names its trial"
    if rec.status == "confirmed":
        c = rec.confirmed
        assert c is not None, "a confirmed recommendation has its confirmation runs"
        d, f = c.interval(f"{p}domain_loss"), c.interval(f"{p}forgetting")
        return (
            f"recommendation: trial {rec.trial.number} ({setting_text(rec.trial.params)}), confirmed over "
            f"{d.n} seeds on the {where}: domain loss {d.mean:.4f} [{d.low:.4f}, {d.high:.4f}], forgetting "
            f"{f.mean:+.4f} [{f.low:+.4f}, {f.high:+.4f}] (95% CI)"
        )
    a = rec.trial.user_attrs
    return (
        f"recommendation: trial {rec.trial.number} ({setting_text(rec.trial.params)}), UNCONFIRMED (one run) "
        f"on the {where}: domain loss {a[f'{p}domain_loss']:.4f}, forgetting {a[f'{p}forgetting']:+.4f}"
    )
