"""The report of a shared-arms ablation (ablation.design: shared): every claim over its grid of match levels
(``levels``), what the annealed points cost, the figures (levels.png: effect against level with the band and
±δ; frontier.png; curves.png) and effects.json (one object per claim, with ``schedule``, ``levels`` and
``best_lr_interior``)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from cpt_harness.analysis import levels, stats
from cpt_harness.analysis.levels import LevelResult
from cpt_harness.reporting import ablation_report, figures, page
from cpt_harness.reporting import tables as report


def sections(study, cfg, out: Path) -> list[str]:
    design = study.user_attrs["design"]
    judged = levels.study_verdicts(
        study,
        cfg.ablation.min_effect,
        cfg.ablation.match_levels,
        lambda partial: ablation_report._doc_results(study, cfg, out, partial),
    )
    results, runs = judged.results, judged.runs
    seeds = sorted({r.seed for r in runs})
    conditions = _conditions(study, cfg, design, judged, len(seeds))
    lines = page._header(study, "Ablation")[:2] + ["## Verdicts", ""]
    lines += [f"- {verdict_line(r, conditions)}" for r in results]
    if judged.partial:
        lines.append(
            f"- **Incomplete design**: seeds {judged.partial} lack some arm × LR trials and are left out of "
            "every comparison; resume the ablation (the same command adds only the missing trials)."
        )
    lines.append(
        "- Intervals: "
        + (
            "seeds and a bootstrap over the eval documents (200 replicates, documents drawn "
            "once for every arm, LR, seed and the base; `evals.npz` holds them)"
            if judged.bootstrapped
            else "seed noise only (no per-document eval results found)"
        )
    )
    untested = [
        s
        for n, s in levels.claims.SPECS.items()
        if n not in design["factors"] and n in ablation_report.claims_of_the_guidance()
    ]
    if untested:
        lines.append("- **NOT TESTED** here: " + "; ".join(f"*{s.claim}* (factor `{s.factor}`)" for s in untested))
    lines += ["", _how_judged(cfg), ""] + _cost(study, cfg) + ["", "## Each claim at each level", ""]
    for r in results:
        lines += _level_table(r)
    note = page.forgetting_note(study)
    lines += (["", note] if note else []) + [""]
    lines += page._header(study, "Ablation")[2:]
    lines += [
        f"Design: shared arms — default {_arm_text(design['default'])}; each factor varied from it alone: "
        f"{len(design['arms'])} arms × their LR grids × {design['seeds']} seeds. Seed k gives every arm the "
        "same data order and the same LoRA init on shared modules.",
        "",
    ]
    levels_figure(results, out / "levels.png")
    figures._frontier_figure(runs, out / "frontier.png", study.study_name)
    figures._curves_figure(study, out / "curves.png", group_by="arm")
    shown = [
        "## Effect against match level",
        "",
        "![levels](levels.png)",
        "",
        "## Frontier",
        "",
        "![frontier](frontier.png)",
        "",
        "## Eval curves per arm",
        "",
        "![curves](curves.png)",
        "",
    ]
    domain = " + ".join(d.path for d in cfg.data.domain_sources())
    schedule = "wsd" if cfg.train.schedule in ("wsd", "auto") else "cosine"
    (out / "effects.json").write_text(
        json.dumps(
            [{**result_json(r), "domain": domain, "conditions": conditions, "schedule": schedule} for r in results],
            indent=2,
        )
    )
    return lines + shown + ["## Trials", "", "```", report.table(study, study.user_attrs.get("base")), "```", ""]


def verdict_line(r: LevelResult, conditions: str) -> str:
    """The claim's verdict, first saying over which range it holds, then the top level's effect."""
    v, top = r.verdict, r.top
    band = f"[band {top.low:+.4f}, {top.high:+.4f}]" if top.low == top.low else "[no interval: n < 2]"
    interior = f"{r.best_lr_interior:.0%}" if r.best_lr_interior == r.best_lr_interior else "—"
    return (
        f"**{r.label}** — {r.holds}. *{r.spec.claim}* — {r.spec.analysis}; at the top level {v.estimate:+.4f} "
        f"{band}, n = {v.n} seeds; best LR inside its arm's grid for {interior} of (arm, seed) pairs; "
        f"{r.other or 'no secondary metric'}. Conditions: {conditions}."
    )


def _how_judged(cfg) -> str:
    fr = ", ".join(f"{f:g}" for f in sorted(cfg.ablation.match_levels))
    d = cfg.ablation.min_effect
    return (
        f"Compared on the learning–forgetting frontier across each arm's LR grid (**matched** domain gain or "
        f"forgetting), at every match level of {fr} of the common reach (the largest level every arm of the "
        f"claim reaches in every seed), declared before the data. Each point is annealed (train.schedule wsd: "
        f"the end of a complete schedule of its own length), so arms are compared like with like. Each level "
        f"gets a verdict (NEGLIGIBLE: the 90% interval within ±δ, δ = {d:g} nats ≈ "
        f"{stats.percent_perplexity(d):.1f}% perplexity, TOST; SUPPORTED / CONTRADICTED: the one-sided test "
        f"significant at 0.05 after Holm's correction over every claim × level here, and the effect at least "
        f"δ); the band is the {levels.BAND}. A claim's verdict is SUPPORTED, CONTRADICTED or NEGLIGIBLE only "
        f"when every level says so; **LEVEL-DEPENDENT** when the band has the claimed sign at some levels and "
        f"the opposite at others; **INCONCLUSIVE** otherwise (also with fewer than 3 seeds)."
    )


def _cost(study, cfg) -> list[str]:
    """What the annealed points cost: the decay branches' steps and training time beside the runs'."""
    done = [t.user_attrs for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    extra = sum(a.get("decay_steps_total", 0) for a in done)
    branch = sum(a.get("branch_time_s", 0.0) for a in done)
    train = sum(a.get("train_time_s", 0.0) for a in done)
    evals = sum((a.get("timings") or {}).get("eval", 0.0) for a in done)
    if not done or not extra:
        return ["- **Annealing cost**: none (cosine schedule: no decay branches)."]
    steps = len(done) * cfg.train.max_steps
    return [
        f"- **Annealing cost**: the decay branches trained {extra:,} steps beside the runs' {steps:,} "
        f"(+{extra / steps:.0%}), {branch:,.0f} s of training beside {train:,.0f} s (+{branch / train:.0%}); "
        f"the evals at {len(_eval_steps(cfg))} points took {evals:,.0f} s "
        f"(summed over {len(done)} complete trials, wall time of each trial's process)."
    ]


def _eval_steps(cfg) -> list[int]:
    from cpt_harness.train.schedule import eval_steps

    return eval_steps(cfg.train)


def _level_table(r: LevelResult) -> list[str]:
    matched = "domain gain" if r.axis == "gain" else "forgetting"
    lines = [
        f"`{r.spec.factor}` — {r.spec.analysis} ({r.spec.unit}); margin ±{r.delta:.4g}; common reach "
        f"{matched} {r.reach:+.4f} nats.",
        "",
        f"| fraction | {matched} (nats) | estimate | band | n | verdict | bootstrap var |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in r.levels:
        v = e.verdict
        lines.append(
            f"| {e.fraction:g} | {e.level:+.4f} | {v.estimate:+.4f} | [{e.low:+.4f}, {e.high:+.4f}] | "
            f"{v.n} | {v.label} | {e.var_boot:.2e} |"
        )
    return lines + [""] + [f"- {n}" for n in r.notes] + [""]


def _arm_text(levels_: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in levels_.items())


def _conditions(study, cfg, design: dict, judged: levels.SharedVerdicts, seeds: int) -> str:
    base = ablation_report._conditions(study, cfg, design, seeds)
    grown = sorted({lr for g in judged.grids.values() for lr in g} - set(design["learning_rates"]))
    schedule = "wsd" if cfg.train.schedule in ("wsd", "auto") else "cosine"
    return (
        base
        + (
            f"; grids extended to {', '.join(f'{lr:g}' for lr in grown)} where an arm's best LR was at an edge"
            if grown
            else ""
        )
        + f"; schedule {schedule}, {len(judged.diverged)} diverged runs"
    )


def result_json(r: LevelResult) -> dict:
    v, top = r.verdict, r.top
    iv = stats.t_interval(list(top.per_seed.values()), top.var_boot)
    return {
        "factor": r.spec.factor,
        "claim": r.spec.claim,
        "analysis": r.spec.analysis,
        "verdict": r.label,
        "holds": r.holds,
        "estimate": v.estimate,
        "low95": iv.low,
        "high95": iv.high,
        "ci90": list(v.ci90),
        "n": v.n,
        "per_seed": top.per_seed,
        "p_for": v.p_for,
        "p_against": v.p_against,
        "delta": r.delta,
        "var_boot": top.var_boot,
        "level": top.level,
        "axis": r.axis,
        "reach": r.reach,
        "levels": [e.as_json() for e in r.levels],
        "best_lr_interior": r.best_lr_interior,
        "other": r.other,
        "notes": r.notes,
        "percent_perplexity": stats.percent_perplexity(v.estimate) if v.estimate == v.estimate else math.nan,
    }


def levels_figure(results: list[LevelResult], path: Path) -> None:
    """One panel per claim: the effect against the match level, the simultaneous band, the ±δ region."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(6.5, 1.9 * len(results) + 0.4), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        xs = np.array([e.level for e in r.levels])
        est = np.array([e.verdict.estimate for e in r.levels])
        lo, hi = np.array([e.low for e in r.levels]), np.array([e.high for e in r.levels])
        ax.axhspan(-r.delta, r.delta, color="0.85", label="±δ (negligible)")
        ax.axhline(0, c="k", lw=0.6)
        if np.isfinite(xs).all() and len(xs):
            ax.fill_between(xs, lo, hi, color="C0", alpha=0.25, label="simultaneous 95% band")
            ax.plot(xs, est, c="C0", marker="o", label="estimate")
        ax.set_xlabel(f"matched {'domain gain' if r.axis == 'gain' else 'forgetting'} (nats)", fontsize=8)
        ax.set_title(f"{r.spec.factor}: {r.label} ({r.spec.unit})", fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=7, loc="best")
    figures._save(fig, path)
