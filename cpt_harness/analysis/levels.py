"""Every claim of a shared-arms ablation (ablation.design: shared) judged over a grid of match levels.

A verdict read at one match level can flip at another (issue 26: four of nine did at half the level). Here each
claim's primary effect is computed at every level of ``ablation.match_levels`` (fractions, declared before the
data, of the largest level every arm of the claim reaches in every seed), with a simultaneous 95% band
(Bonferroni over the levels: each level's t-interval at 1 − 0.05/L, the document bootstrap's variance added).
The verdict applies to the whole band:

- SUPPORTED / CONTRADICTED / NEGLIGIBLE only when every level says so (each level's verdict is ``stats``'s, with
  Holm's correction over every claim × level of the study);
- LEVEL-DEPENDENT when the band has the claimed sign at some levels and the opposite sign at others (the crossing
  level is named in nats);
- INCONCLUSIVE otherwise, saying where each level's verdict holds.

The claims compare one factor against the shared default arm (``ablation.claim_arms``): gate_proj (forgetting at
matched gain), embeddings (gain at matched forgetting), replay (unreplayed forgetting at matched gain), the
embedding-LR ratio (the trend of forgetting at matched gain against log(ratio)) and rsLoRA (the rank × scaling
interaction of gain at matched forgetting, each cell at its own envelope over its LRs; the final-gain interaction
at the leave-one-seed-out best LRs is a secondary line). Diverged runs (loss non-finite or exploded, or domain loss
above the base's at the end) are left out of matching; their LR still brackets an arm's grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from cpt_harness.analysis import ablation, claims, frontier, stats

if TYPE_CHECKING:
    import optuna

LEVEL_DEPENDENT = "LEVEL-DEPENDENT"
BAND = "simultaneous 95% band: Bonferroni over the levels (each level's t-interval at 1 − 0.05/L)"
AXIS = {
    "gate_proj": "gain",
    "embeddings": "forgetting",
    "replay": "gain",
    "embedding_lr_ratio": "gain",
    "rslora": "forgetting",
}
PAIRS = {"gate_proj": ("in", "out"), "embeddings": ("trained", "frozen"), "replay": ("on", "off")}
RSLORA_SPEC = claims.Spec(
    "rslora",
    "a high rank pays off under rsLoRA (alpha/sqrt(r)), not under alpha/r",
    "interaction on the frontier: gain(high rank) − gain(low rank) under alpha/sqrt(r) minus the same under alpha/r, "
    "domain gain at matched forgetting, each cell at its envelope over its own LRs",
    "domain gain (nats)",
    +1,
    "the final-gain interaction at each cell's leave-one-seed-out best LR",
)


@dataclass
class LevelEffect:
    fraction: float  # of the claim's common reach
    level: float  # in nats of the matched axis
    per_seed: dict[int, float]
    statistic: Callable[[list[frontier.Run]], float]  # the mean effect at this fixed level, for the bootstrap
    var_boot: float = 0.0
    verdict: stats.Verdict | None = None
    low: float = math.nan  # the simultaneous band
    high: float = math.nan

    def as_json(self) -> dict:
        v = self.verdict
        return {
            "fraction": self.fraction,
            "level": self.level,
            "estimate": v.estimate if v else math.nan,
            "low": self.low,
            "high": self.high,
            "n": len(self.per_seed),
            "verdict": v.label if v else None,
        }


@dataclass
class LevelResult:
    spec: claims.Spec
    axis: str  # the matched axis
    reach: float  # the largest level every arm of the claim reaches in every complete seed
    levels: list[LevelEffect]
    delta: float
    label: str = stats.INCONCLUSIVE
    holds: str = ""  # the first line of the verdict: over which range it holds
    best_lr_interior: float = math.nan  # the fraction of (arm, seed) pairs whose best LR is inside the arm's grid
    other: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def top(self) -> LevelEffect:
        return self.levels[-1]

    @property
    def verdict(self) -> stats.Verdict:
        """The top level's numbers under the whole band's label (what a table row shows)."""
        v = self.top.verdict
        return (
            replace(v, label=self.label)
            if v
            else stats.Verdict(self.label, 0, math.nan, math.nan, (math.nan, math.nan), math.nan, math.nan)
        )

    @property
    def per_seed(self) -> dict[int, float]:
        return self.top.per_seed


@dataclass
class SharedVerdicts:
    results: list[LevelResult]
    runs: list[frontier.Run]  # the runs compared: complete seeds, diverged runs left out
    partial: list[int]  # seeds left out because some arm × LR of theirs has not run
    diverged: list[tuple[str, float, int]]  # (arm, lr, seed) of every diverged run
    bootstrapped: bool
    grids: dict[str, list[float]]  # each arm's LRs, diverged ones included


# ------------------------------------------------------------------------------------------ the runs


def _done(study) -> tuple[dict[str, dict[float, set[int]]], list[tuple[str, float, int]]]:
    """arm -> LR -> seeds that ran there to an end (complete or diverged); and the diverged (arm, lr, seed)."""
    done: dict[str, dict[float, set[int]]] = {}
    diverged = []
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if "arm" not in a or "lr" not in a:
            continue
        if t.state.name == "COMPLETE" or ablation._diverged(t):
            done.setdefault(a["arm"], {}).setdefault(a["lr"], set()).add(a["seed"])
        if ablation._diverged(t) or (t.state.name == "COMPLETE" and a.get("domain_gain", 0) < 0):
            diverged.append((a["arm"], a["lr"], a["seed"]))
    return done, diverged


def complete_seeds(design: dict, done: dict[str, dict[float, set[int]]]) -> tuple[list[int], list[int]]:
    """The seeds that ran every arm at every LR of that arm's grid (its LRs in any seed), and the others."""
    seeds = sorted({s for lrs in done.values() for ss in lrs.values() for s in ss})
    ok = [
        s
        for s in seeds
        if all(s in ss for arm in design["arms"] for ss in done.get(arm, {}).values())
        and all(arm in done for arm in design["arms"])
    ]
    return ok, [s for s in seeds if s not in ok]


def _cell(arm: str) -> tuple[tuple[str, str], ...]:
    """An arm's name ("gate_proj=in,embeddings=trained,...") as the order-free key of ``frontier.Run.cell``."""
    return tuple(sorted(tuple(pair.split("=", 1)) for pair in arm.split(",")))  # type: ignore[misc]


def _usable(runs: Sequence[frontier.Run], seeds: Sequence[int], diverged) -> list[frontier.Run]:
    bad = {(_cell(arm), lr, s) for arm, lr, s in diverged}
    return [r for r in runs if r.seed in set(seeds) and (r.cell, r.lr, r.seed) not in bad]


def _claim_runs(runs: Sequence[frontier.Run], design: dict, factor: str) -> list[frontier.Run]:
    cells = [tuple(sorted(c.items())) for c in ablation.claim_arms(design, factor)]
    return [r for r in runs if r.cell in cells]


# ------------------------------------------------------------------------------------------ effects per level


def _effect_at(factor: str, runs: Sequence[frontier.Run], level: float, design: dict) -> dict[int, float]:
    if factor in PAIRS:
        advice, alternative = PAIRS[factor]
        return frontier.matched_effect(runs, AXIS[factor], factor, advice, alternative, level).per_seed
    if factor == "embedding_lr_ratio":
        return frontier.dose_response(runs, level=level).slopes
    ranks = tuple(design["factors"]["rank"])
    return frontier.interaction_at(runs, "forgetting", level, "rank", (ranks[0], ranks[-1]), "rslora", ("off", "on"))


def _statistic(factor: str, level: float, design: dict) -> Callable[[list[frontier.Run]], float]:
    def statistic(rs: list[frontier.Run]) -> float:  # rs: every arm's runs under one bootstrap draw
        values = list(_effect_at(factor, _claim_runs(rs, design, factor), level, design).values())
        return float(np.mean(values)) if values else math.nan

    return statistic


def _spec(factor: str) -> claims.Spec:
    return RSLORA_SPEC if factor == "rslora" else claims.SPECS[factor]


def _delta(factor: str, design: dict, min_effect: float) -> float:
    if factor != "embedding_lr_ratio":
        return min_effect
    ratios = [float(r) for r in design["factors"][factor]]
    span = math.log(max(ratios) / min(ratios))
    return min_effect / span if span > 0 else min_effect


def analyse(
    design: dict,
    runs: Sequence[frontier.Run],
    fractions: Sequence[float],
    min_effect: float,
    unreplayed: Sequence[frontier.Run] = (),
) -> list[LevelResult]:
    """Each claim's effect at every fraction of its common reach (no verdicts yet: ``judge``)."""
    out = []
    for factor in design["factors"]:
        if factor == "rank":
            continue
        rs = _claim_runs(unreplayed if factor == "replay" else runs, design, factor)
        reach = frontier.match_level(rs, AXIS[factor]) if rs else math.nan
        effects = [
            LevelEffect(
                f,
                f * reach,
                _effect_at(factor, rs, f * reach, design) if reach == reach else {},
                _statistic(factor, f * reach, design),
            )
            for f in sorted(fractions)
        ]
        out.append(LevelResult(_spec(factor), AXIS[factor], reach, effects, _delta(factor, design, min_effect)))
    return out


# ------------------------------------------------------------------------------------------ verdicts


def judge(
    results: list[LevelResult], docs: dict[str, frontier.DocResults] | None = None, replicates: int = 200
) -> list[LevelResult]:
    """Every level's verdict (Holm over every claim × level), the simultaneous band, and the claim's verdict over
    the band. ``docs``: factor -> (doc_runs, base) for the document bootstrap (None: seed noise only)."""
    flat = [(r, e) for r in results for e in r.levels]
    if docs is not None:
        for r, e in flat:
            if len(e.per_seed) >= 2:  # no effect, no variance to add
                e.var_boot = frontier.bootstrap_var(*docs[r.spec.factor], e.statistic, replicates)
    verdicts = stats.verdicts(
        [stats.Claim(list(e.per_seed.values()), r.spec.direction, r.delta, e.var_boot) for r, e in flat]
    )
    for (r, e), v in zip(flat, verdicts):
        e.verdict = v
        iv = stats.t_interval(list(e.per_seed.values()), e.var_boot, 1 - stats.ALPHA / len(r.levels))
        e.low, e.high = iv.low, iv.high
    for r in results:
        r.label, r.holds = band_verdict(r)
    return results


def band_verdict(r: LevelResult) -> tuple[str, str]:
    """The claim's verdict over its level grid and the sentence saying over which range it holds."""
    labels = [_verdict(e).label for e in r.levels]
    sign = [_band_sign(e) * r.spec.direction for e in r.levels]
    if not r.reach > 0 or not any(e.per_seed for e in r.levels):
        what = "domain gain" if r.axis == "gain" else "forgetting"
        return stats.INCONCLUSIVE, (
            f"not measurable: {what} never rose in some arm and seed (common reach "
            f"{r.reach:+.4f} nats), so no level matches anything but the base"
        )
    for label in (stats.SUPPORTED, stats.CONTRADICTED, stats.NEGLIGIBLE):
        if all(x == label for x in labels):
            return label, f"holds at every level tried: {_span(r, r.levels)}"
    if 1 in sign and -1 in sign:
        cross = _crossing(r)
        return LEVEL_DEPENDENT, (
            f"the claimed sign at {_span(r, [e for e, s in zip(r.levels, sign) if s == 1])}, "
            f"the opposite at {_span(r, [e for e, s in zip(r.levels, sign) if s == -1])}"
            + (
                f"; the estimate crosses zero near {'domain gain' if r.axis == 'gain' else 'forgetting'}"
                f" {cross:+.4f} nats"
                if cross is not None
                else ""
            )
        )
    return stats.INCONCLUSIVE, f"no verdict over the whole band; by level: {_ranges(r)}"


def _verdict(e: LevelEffect) -> stats.Verdict:
    assert e.verdict is not None, "judge() gives every level its verdict"
    return e.verdict


def _band_sign(e: LevelEffect) -> int:
    return 1 if e.low > 0 else (-1 if e.high < 0 else 0)


def _span(r: LevelResult, effects: Sequence[LevelEffect]) -> str:
    if not effects:
        return "no level"
    fr = f"{effects[0].fraction:g}" if len(effects) == 1 else f"{effects[0].fraction:g}–{effects[-1].fraction:g}"
    nats = f"{effects[0].level:+.4f}" if len(effects) == 1 else f"{effects[0].level:+.4f} to {effects[-1].level:+.4f}"
    return f"{fr} of the common reach, {'domain gain' if r.axis == 'gain' else 'forgetting'} {nats} nats"


def _ranges(r: LevelResult) -> str:
    """Each run of consecutive levels with one verdict, e.g. 'NEGLIGIBLE at 0.25–0.5 (...); SUPPORTED at 1 (...)'."""
    groups: list[list[LevelEffect]] = []
    for e in r.levels:
        if groups and _verdict(groups[-1][-1]).label == _verdict(e).label:
            groups[-1].append(e)
        else:
            groups.append([e])
    return "; ".join(f"{_verdict(g[0]).label} at {_span(r, g)}" for g in groups)


def _crossing(r: LevelResult) -> float | None:
    """Where the estimate changes sign between two adjacent levels (linear between them), in nats of the axis."""
    for a, b in zip(r.levels, r.levels[1:]):
        ea, eb = _verdict(a).estimate, _verdict(b).estimate
        if ea * eb < 0:
            return a.level + (b.level - a.level) * ea / (ea - eb)
    return None


# ------------------------------------------------------------------------------------------ the study


def best_lr_interior(
    runs: Sequence[frontier.Run], design: dict, factor: str, grids: dict[str, list[float]]
) -> tuple[float, list[str]]:
    """The fraction of the claim's (arm, seed) pairs whose leave-one-seed-out best LR (highest final gain) lies
    strictly inside the arm's grid, diverged LRs counting as part of it (a diverged neighbour brackets); and a
    note per arm: its best LRs, the forgetting there, its diverged runs."""
    pairs, inside, notes = 0, 0, []
    for cell in ablation.claim_arms(design, factor):
        name = ",".join(f"{f}={v}" for f, v in cell.items())
        rs = [r for r in runs if r.cell == tuple(sorted(cell.items()))]
        if not rs:
            continue
        grid = sorted(grids.get(name, sorted({r.lr for r in rs})))
        best = frontier.best_lr(rs)
        for s, lr in best.lr.items():
            pairs += 1
            inside += grid[0] < lr < grid[-1]
        at = {(r.seed, r.lr): r for r in rs}
        forgot = [float(at[(s, lr)].forgetting[-1]) for s, lr in best.lr.items() if (s, lr) in at]
        notes.append(
            f"{name}: best LR {', '.join(sorted({f'{lr:.3g}' for lr in best.lr.values()}))} of grid "
            f"{', '.join(f'{x:.3g}' for x in grid)}"
            + (f", final forgetting there {np.mean(forgot):+.3f}" if forgot else "")
        )
    return (inside / pairs if pairs else math.nan), notes


def study_verdicts(
    study: optuna.Study,
    min_effect: float,
    fractions: Sequence[float],
    doc_results: Callable[[list[int]], frontier.DocResults | None] | None = None,
) -> SharedVerdicts:
    """Every claim of a shared-arms study over its level grid: the one path the report and the terminal share.
    ``doc_results(partial)``: (per-document runs, base) for the bootstrap, or None."""
    design = study.user_attrs["design"]
    done, diverged = _done(study)
    seeds, partial = complete_seeds(design, done)
    runs = _usable(claims.runs_from_study(study), seeds, diverged)
    unreplayed = (
        _usable(claims.runs_from_study(study, forgetting="general_loss_unreplayed"), seeds, diverged)
        if "replay" in design["factors"]
        else []
    )
    results = analyse(design, runs, fractions, min_effect, unreplayed)
    grids = {arm: sorted(lrs) for arm, lrs in done.items()}
    docs = doc_results(partial) if doc_results else None
    doc_sets = None
    if docs is not None:
        docs = (_usable_docs(docs[0], diverged), docs[1])
        doc_sets = {r.spec.factor: docs for r in results}
        if "replay" in design["factors"]:
            names = (study.user_attrs.get("data_stats") or {}).get("general_names") or []
            doc_sets["replay"] = claims.unreplayed_docs(
                *docs, [names.index(n) for n in design.get("replayed", []) if n in names]
            )
    judge(results, doc_sets)
    for r in results:
        r.best_lr_interior, notes = best_lr_interior(runs, design, r.spec.factor, grids)
        r.notes += notes
        if r.spec.factor == "rslora":
            secondary = claims._rslora(
                _claim_runs(runs, design, "rslora"), tuple(design["factors"]["rank"]), min_effect
            )
            r.other = (
                f"{RSLORA_SPEC.other}: {secondary.statistic(_claim_runs(runs, design, 'rslora')):+.4f} "
                f"(secondary; {secondary.notes[0]})"
            )
        r.notes.append(
            f"diverged runs among this claim's arms: "
            f"{sum(1 for arm, _, _ in diverged if _arm_in(arm, design, r.spec.factor))}"
        )
    return SharedVerdicts(results, runs, partial, sorted(diverged), docs is not None, grids)


def _arm_in(arm: str, design: dict, factor: str) -> bool:
    return _cell(arm) in {tuple(sorted(c.items())) for c in ablation.claim_arms(design, factor)}


def _usable_docs(doc_runs: list[frontier.DocRun], diverged) -> list[frontier.DocRun]:
    bad = {(_cell(arm), lr, s) for arm, lr, s in diverged}
    return [d for d in doc_runs if (tuple(sorted(d.levels.items())), d.lr, d.seed) not in bad]
