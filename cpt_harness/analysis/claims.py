"""The four claims of the Unsloth CPT guidance, judged on the learning–forgetting frontier of an LR-crossed ablation.

One primary analysis per claim, declared here before any data (and stated in every report):
- gate_proj: forgetting at matched domain gain (leaving gate_proj out should forget *more*);
- embeddings: domain gain at matched forgetting (training lm_head/embed_tokens should learn *more*);
- rslora: the interaction: the gain from the low to the high rank under alpha/sqrt(r) minus the same under
  alpha/r, each cell at its best LR chosen leave-one-seed-out (it should be *positive*);
- embedding_lr_ratio: forgetting at matched gain against the ratio, the trend over seeds (per-seed slope against
  log(ratio), t-test; a lower ratio should forget *less*, so the slope should be *positive*);
- replay (not a claim of the guidance; a question users ask): forgetting on the general corpora that are not
  replayed, at matched domain gain, off − on (replaying general text should forget *less*).
Verdicts (NEGLIGIBLE, SUPPORTED, CONTRADICTED, INCONCLUSIVE) come from ``stats.verdicts`` over all claims of one
report (Holm's family), with ``ablation.min_effect`` as the smallest effect that matters; where per-document eval
results are stored, their bootstrap variance widens every interval.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from cpt_harness.analysis import frontier, stats

if TYPE_CHECKING:
    import optuna


@dataclass(frozen=True)
class Spec:
    factor: str
    claim: str  # the guidance, as a reader would say it
    analysis: str  # the primary analysis, stated before the data
    unit: str  # what the effect measures
    direction: int  # the sign the claim predicts for the effect
    other: str  # the other metric shown beside it


SPECS = {
    "gate_proj": Spec(
        "gate_proj",
        "leaving gate_proj out of the LoRA targets speeds up forgetting",
        "forgetting at matched domain gain, out − in",
        "forgetting (nats)",
        +1,
        "domain gain at matched forgetting, out − in",
    ),
    "embeddings": Spec(
        "embeddings",
        "training lm_head and embed_tokens helps learn the domain",
        "domain gain at matched forgetting, frozen − trained",
        "domain gain (nats)",
        -1,
        "forgetting at matched domain gain, frozen − trained",
    ),
    "rslora": Spec(
        "rslora",
        "a high rank pays off under rsLoRA (alpha/sqrt(r)), not under alpha/r",
        "interaction: gain(high rank) − gain(low rank) under alpha/sqrt(r) minus the same under alpha/r, "
        "each cell at its leave-one-seed-out best LR",
        "domain gain (nats)",
        +1,
        "the same gain difference under alpha/sqrt(r) alone",
    ),
    "replay": Spec(
        "replay",
        "replaying general text while training lowers forgetting",
        "forgetting on the general corpora not replayed, at matched domain gain, off − on",
        "forgetting (nats)",
        +1,
        "domain gain at matched unreplayed forgetting, off − on",
    ),
    "embedding_lr_ratio": Spec(
        "embedding_lr_ratio",
        "a lower embedding LR is more stable (less forgetting)",
        f"forgetting at matched domain gain against the ratio: {frontier.TREND_TEST}",
        "forgetting (nats) per unit of ln(ratio)",
        +1,
        "mean forgetting at matched gain per ratio",
    ),
}


@dataclass
class Result:
    spec: Spec
    per_seed: dict[int, float]
    statistic: Callable[[list[frontier.Run]], float]  # the mean effect from runs (bootstrapped)
    level: float | None = None  # the matched level, where the analysis matches
    other: str = ""  # the other metric's effect, as text
    notes: list[str] = field(default_factory=list)
    var_boot: float = 0.0
    delta: float = 0.0  # the margin in this effect's units
    verdict: stats.Verdict | None = None


def _arm_trials(study):
    for t in study.get_trials(deepcopy=False):
        a = t.user_attrs
        if t.state.name == "COMPLETE" and "arm" in a and a.get("curve"):
            levels = {k.removeprefix("level:"): v for k, v in a.items() if k.startswith("level:")}
            yield t, levels, [p for p in a["curve"] if p["step"] > 0]  # step 0 is the start, prepended below


def runs_from_study(study: optuna.Study, forgetting: str = "general_loss") -> list[frontier.Run]:
    """Every complete arm trial as a frontier run: (0, 0) at the base, then its eval checkpoints. ``forgetting``
    "general_kl": KL(start || model) on general text in place of the rise in general loss (heal-independent);
    "general_loss_unreplayed": the rise in loss on the general corpora not replayed (data.replay). Trials that did
    not measure it are left out."""
    base = study.user_attrs["base"]
    runs = []
    for t, levels, curve in _arm_trials(study):
        if forgetting != "general_loss" and not all(forgetting in p for p in curve):
            continue
        rise = [p["general_kl"] if forgetting == "general_kl" else p[forgetting] - base[forgetting] for p in curve]
        runs.append(
            frontier.Run(
                levels,
                t.user_attrs["seed"],
                t.params["learning_rate"],
                np.r_[0.0, [base["domain_loss"] - p["domain_loss"] for p in curve]],
                np.r_[0.0, rise],
            )
        )
    return runs


def complete_seeds(
    runs: Sequence[frontier.Run], factors: dict[str, list[str]], lrs: Sequence[float]
) -> tuple[list[frontier.Run], list[int]]:
    """The runs of the seeds where every arm ran at every LR, and the seeds left out: an envelope over a seed's
    LRs means the same thing for every arm only when none is missing (a partial or interrupted run)."""
    arms = [tuple(sorted(zip(factors, combo))) for combo in itertools.product(*factors.values())]
    want = {(arm, float(lr)) for arm in arms for lr in lrs}
    have: dict[int, set] = {}
    for r in runs:
        have.setdefault(r.seed, set()).add((r.cell, float(r.lr)))
    partial = sorted(s for s, got in have.items() if not want <= got)
    return [r for r in runs if r.seed not in partial], partial


def doc_runs_from_study(
    study, evals_by_trial: dict, base_evals, leave_out: Sequence[int] = ()
) -> tuple[list[frontier.DocRun], frontier.Base] | None:
    """The per-document results of every complete arm trial, for the document bootstrap; None when any is missing."""
    trials = [(t, lv, c) for t, lv, c in _arm_trials(study) if t.user_attrs["seed"] not in set(leave_out)]
    if base_evals is None or not trials or any(t.number not in evals_by_trial for t, _, _ in trials):
        return None
    doc_runs = []
    for t, levels, _ in trials:
        e = evals_by_trial[t.number]
        rows = e.step > 0
        doc_runs.append(
            frontier.DocRun(
                levels,
                t.user_attrs["seed"],
                t.params["learning_rate"],
                frontier.Docs(e.domain_nll[rows], e.domain_tokens),
                frontier.Docs(e.general_nll[rows], e.general_tokens),
            )
        )
    b = base_evals
    return doc_runs, frontier.Base(
        frontier.Docs(b.domain_nll[0], b.domain_tokens),
        frontier.Docs(b.general_nll[0], b.general_tokens),
        b.general_corpus,
        b.domain_corpus,
    )


def analyse(
    factors: dict[str, list[str]],
    runs: Sequence[frontier.Run],
    delta: float,
    kl_runs: Sequence[frontier.Run] = (),
    unreplayed_runs: Sequence[frontier.Run] = (),
) -> list[Result]:
    """The primary analysis of every claim whose factor is in the design. ``kl_runs``: the same trials with
    general_kl as forgetting; where given, the KL at matched gain is shown beside gate_proj and embeddings.
    ``unreplayed_runs``: the same trials with the forgetting on the general corpora not replayed, what the replay
    claim is judged on (replayed text would flatter the arm that trains on it)."""
    out = []
    for name in factors:
        if name == "replay":
            out.append(_matched(SPECS[name], unreplayed_runs, "gain", "on", "off", delta))
        elif name == "gate_proj":
            out.append(_matched(SPECS[name], runs, "gain", "in", "out", delta, kl_runs))
        elif name == "embeddings":
            out.append(_matched(SPECS[name], runs, "forgetting", "trained", "frozen", delta, kl_runs))
        elif name == "rslora":
            out.append(_rslora(runs, tuple(factors["rank"]), delta))
        elif name == "embedding_lr_ratio":
            out.append(_dose(runs, factors[name], delta))
    return out


def _matched(spec: Spec, runs, axis: str, advice: str, alternative: str, delta: float, kl_runs=()) -> Result:
    def statistic(rs):
        return frontier.matched_effect(rs, axis, spec.factor, advice, alternative).mean

    m = frontier.matched_effect(runs, axis, spec.factor, advice, alternative)
    other_axis = "forgetting" if axis == "gain" else "gain"
    o = frontier.matched_effect(runs, other_axis, spec.factor, advice, alternative)
    matched_on = "domain gain" if axis == "gain" else "forgetting"
    notes = [f"matched at {matched_on} {m.level:+.4f} nats (the largest every arm reaches in every seed)"]
    if m.dropped:
        notes.append(f"seeds dropped (an arm did not reach the level): {list(m.dropped)}")
    if kl_runs:
        k = frontier.matched_effect(kl_runs, "gain", spec.factor, advice, alternative)
        if k.n:
            notes.append(
                f"general_kl (KL from the start model, heal-independent) at matched domain gain "
                f"{k.level:+.4f}, {alternative} − {advice}: {k.mean:+.5f} nats/token (n = {k.n})"
            )
    other = (
        f"{spec.other}: {o.mean:+.4f} (n = {o.n}, at {other_axis} {o.level:+.4f})"
        if o.n
        else f"{spec.other}: not measurable ({other_axis} never rose in some arm and seed)"
    )
    return Result(spec, m.per_seed, statistic, m.level, other, notes, delta=delta)


def _rslora(runs, ranks: tuple[str, ...], delta: float) -> Result:
    pair = (ranks[0], ranks[-1])

    def statistic(rs):
        per_seed = frontier.interaction(rs, "rank", pair, "rslora", ("off", "on")).per_seed
        return float(np.mean(list(per_seed.values()))) if per_seed else math.nan

    it = frontier.interaction(runs, "rank", pair, "rslora", ("off", "on"))
    on = {s: it.cells[(pair[1], "on")].per_seed[s] - it.cells[(pair[0], "on")].per_seed[s] for s in it.per_seed}
    notes = [
        f"rank {pair[0]} vs {pair[1]}; best LR per cell and seed chosen on the other seeds: "
        + "; ".join(f"{c.arm}: {', '.join(sorted({f'{lr:.2g}' for lr in c.lr.values()}))}" for c in it.cells.values())
    ]
    if it.at_edge:
        notes.append(
            f"best LR at the edge of the grid for {len(it.at_edge)} (cell, seed) pairs: the best LR may lie outside it"
        )
    other = f"{SPECS['rslora'].other}: {_mean(on):+.4f}"
    return Result(SPECS["rslora"], it.per_seed, statistic, None, other, notes, delta=delta)


def _dose(runs, ratios: list[str], delta: float) -> Result:
    def statistic(rs):
        return frontier.dose_response(rs).mean_slope

    d = frontier.dose_response(runs)
    span = math.log(max(map(float, ratios)) / min(map(float, ratios)))
    notes = [
        f"matched at domain gain {d.level:+.4f} nats; the margin is min_effect over the ratios' span "
        f"(ln {max(map(float, ratios)):g}/{min(map(float, ratios)):g} = {span:.2f})"
    ]
    if d.dropped:
        notes.append(f"seeds dropped: {list(d.dropped)}")
    other = f"{SPECS['embedding_lr_ratio'].other}: " + ", ".join(f"{r:g}: {v:+.4f}" for r, v in sorted(d.means.items()))
    return Result(
        SPECS["embedding_lr_ratio"],
        d.slopes,
        statistic,
        d.level,
        other,
        notes,
        delta=delta / span if span > 0 else delta,
    )


def _mean(values: dict) -> float:
    return float(np.mean(list(values.values()))) if values else math.nan


@dataclass
class StudyVerdicts:
    results: list[Result]
    runs: list[frontier.Run]  # the runs compared: complete seeds only
    partial: list[int]  # seeds left out because some arm x LR trial is missing
    bootstrapped: bool  # whether the intervals include the document bootstrap


def study_verdicts(
    study: optuna.Study, min_effect: float, doc_results: Callable[[list[int]], frontier.DocResults | None] | None = None
) -> StudyVerdicts:
    """Every claim of an LR-crossed ablation study judged: the one path the report and the terminal share.
    ``doc_results(partial)``: (per-document runs, base) for the bootstrap, or None."""
    design = study.user_attrs["design"]
    factors, lrs = design["factors"], design["learning_rates"]
    runs, partial = complete_seeds(runs_from_study(study), factors, lrs)
    kl_runs, _ = complete_seeds(runs_from_study(study, forgetting="general_kl"), factors, lrs)
    unreplayed: list[frontier.Run] = []
    if "replay" in factors:
        unreplayed, _ = complete_seeds(runs_from_study(study, forgetting="general_loss_unreplayed"), factors, lrs)
    docs = doc_results(partial) if doc_results else None
    doc_sets: dict[str, frontier.DocResults] = {}
    if docs is not None and "replay" in factors:
        names = (study.user_attrs.get("data_stats") or {}).get("general_names") or []
        doc_sets["replay"] = unreplayed_docs(*docs, [names.index(n) for n in design.get("replayed", []) if n in names])
    doc_runs, base = docs if docs is not None else (None, None)
    results = judge(analyse(factors, runs, min_effect, kl_runs, unreplayed), doc_runs, base, doc_sets=doc_sets)
    return StudyVerdicts(results, runs, partial, docs is not None)


def unreplayed_docs(
    doc_runs: list[frontier.DocRun], base: frontier.Base, replayed: Sequence[int]
) -> tuple[list[frontier.DocRun], frontier.Base]:
    """The per-document results with the general documents of the replayed corpora (indices into the general
    names) left out: the replay claim's bootstrap."""
    assert base.general_corpus is not None, "the replay claim's documents need their corpus"
    keep = ~np.isin(base.general_corpus, list(replayed))

    def part(docs: frontier.Docs) -> frontier.Docs:
        tokens = np.asarray(docs.tokens)
        return frontier.Docs(np.asarray(docs.nll)[..., keep], tokens[..., keep])

    return (
        [frontier.DocRun(d.levels, d.seed, d.lr, d.domain, part(d.general)) for d in doc_runs],
        frontier.Base(base.domain, part(base.general), base.general_corpus[keep], base.domain_corpus),
    )


def judge(
    results: list[Result], doc_runs=None, base=None, replicates: int = 200, doc_sets: dict | None = None
) -> list[Result]:
    """Verdicts over the family; with per-document results, each interval includes the document bootstrap
    (``doc_sets``: a claim's own (doc_runs, base), where it is judged on part of the documents)."""
    if doc_runs is not None:
        for r in results:
            runs, b = (doc_sets or {}).get(r.spec.factor, (doc_runs, base))
            r.var_boot = frontier.bootstrap_var(runs, b, r.statistic, replicates)
    claims = [stats.Claim(list(r.per_seed.values()), r.spec.direction, r.delta, r.var_boot) for r in results]
    for r, v in zip(results, stats.verdicts(claims)):
        r.verdict = v
    return results


def verdict_line(r: Result, conditions: str) -> str:
    """One line per claim: verdict, the effect in nats and % perplexity with its 95% interval, the other metric."""
    v = r.verdict
    assert v is not None, "judge() gives every result its verdict"
    iv = stats.t_interval(list(r.per_seed.values()), r.var_boot) if v.n >= 2 else None
    ci = f"[95% CI {iv.low:+.4f}, {iv.high:+.4f}]" if iv else "[no interval: n < 2]"
    ppl = f" ({stats.percent_perplexity(v.estimate):+.2f}% ppl)" if "ln(ratio)" not in r.spec.unit else ""
    return (
        f"**{v.label}**: *{r.spec.claim}* — {r.spec.analysis}: {v.estimate:+.4f}{ppl} {ci}, n = {v.n} seeds; "
        f"{r.other}. Conditions: {conditions}."
    )
