"""An ablation's report: the fixed-LR design's paired effects, and the frontier design's verdict per claim
(judged on the learning-forgetting frontier, with the document bootstrap); effects.json beside it."""

from __future__ import annotations

import json
import math
from pathlib import Path

from cpt_harness.analysis import ablation, stats
from cpt_harness.reporting import tables as report
from cpt_harness.reporting.figures import (
    _curves_figure,
    _dose_figure,
    _forest_figure,
    _frontier_figure,
)
from cpt_harness.reporting.page import _header, _scales, forgetting_note


def _ablation_sections(study, cfg, out: Path) -> list[str]:
    design = study.user_attrs["design"]
    if "learning_rates" in design:
        return _frontier_sections(study, cfg, out)
    factors = list(design["factors"])
    rows = ablation.rows(study)
    effects = ablation.effects(rows, factors)
    lines = _header(study, "Ablation")[:2]
    lines += [
        "**Fixed-LR design**: every arm ran at one learning rate, where an arm that learns less usually also "
        "forgets less; these verdicts may be artifacts of that. Rerun with `ablation.learning_rates` for "
        "verdicts on the learning–forgetting frontier.",
        "",
    ]
    lines += ["## Verdicts", ""]
    for e in effects:
        if e.verdict:
            iv = e.interval
            lines.append(
                f"- **{e.verdict.upper()}**: *{e.factor.claim}* — {e.factor.effect_text()} = "
                f"{iv.mean:+.4f} [95% CI {iv.low:+.4f}, {iv.high:+.4f}], n = {iv.n} seeds"
            )
    untested = [f for name, f in ablation.FACTORS.items() if name not in factors and name in claims_of_the_guidance()]
    if untested:
        lines.append("- **NOT TESTED** here: " + "; ".join(f"*{f.claim}* (factor `{f.name}`)" for f in untested))
    note = forgetting_note(study)
    lines += ["", note] if note else []
    lines += [
        "",
        "A claim is *supported* when the whole 95% t-interval of the paired effect lies on its side of "
        "zero, *contradicted* when it lies on the other side, *inconclusive* otherwise.",
        "",
    ]
    lines += _header(study, "Ablation")[2:]
    lines += [
        f"Design: factors {', '.join(f'{f} {{{chr(44).join(v)}}}' for f, v in design['factors'].items())}; "
        f"{len(design['arms'])} arms × {design['seeds']} seeds; fixed rank {design['fixed']['rank']}, "
        f"lr {design['fixed']['learning_rate']:g}"
        + (
            ""
            if "embedding_lr_ratio" in design["factors"]  # then the ratio is a factor, not fixed
            else f", embedding ratio {design['fixed']['embedding_lr_ratio']:g} where embeddings train"
        )
        + ". Seed k gives every arm the same data order and the same LoRA init on shared modules."
        + _scales(study, design),
        "",
    ]
    lines += [
        "## Effects (paired by seed)",
        "",
        "| factor | effect | per-seed differences | mean | 95% t-interval | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for e in effects:
        diffs = ", ".join(f"{v:+.4f}" for _, v in sorted(e.per_seed.items()))
        iv = e.interval
        lines.append(
            f"| {e.factor.name} | {e.metric}({e.factor.levels[1]}) − {e.metric}({e.factor.levels[0]}) | "
            f"{diffs} | {iv.mean:+.4f} | [{iv.low:+.4f}, {iv.high:+.4f}] | {e.verdict or '—'} |"
        )
    lines += _matched_reanalysis(study, cfg, design)
    lines += [
        "",
        "## Arms",
        "",
        "| arm | seeds | domain loss (mean) | forgetting (mean) | tokens/s (mean) |",
        "|---|---|---|---|---|",
    ]
    for arm in design["arms"]:
        rs = [r for r in rows if r["arm"] == arm]
        if rs:
            mean = lambda k: sum(r[k] for r in rs if r[k] is not None) / len(rs)  # noqa: E731
            lines.append(
                f"| {arm} | {len(rs)} | {mean('domain_loss'):.4f} | {mean('forgetting'):+.4f} | "
                f"{mean('tokens_per_s'):,.0f} |"
            )
    _curves_figure(study, out / "curves.png", group_by="arm")
    (out / "effects.json").write_text(
        json.dumps(
            [
                {
                    "factor": e.factor.name,
                    "metric": e.metric,
                    "per_seed": e.per_seed,
                    "mean": e.interval.mean,
                    "low": e.interval.low,
                    "high": e.interval.high,
                    "n": e.interval.n,
                    "verdict": e.verdict,
                }
                for e in effects
            ],
            indent=2,
        )
    )
    lines += [
        "",
        "## Eval curves per arm",
        "",
        "![curves](curves.png)",
        "",
        "## Trials",
        "",
        "```",
        report.table(study, study.user_attrs.get("base")),
        "```",
        "",
    ]
    return lines


def _conditions(study, cfg, design: dict, seeds: int) -> str:
    prov = study.user_attrs.get("model_provenance") or {}
    model = (prov.get("description") or prov.get("source") or cfg.model.name).split(",")[0]
    t = cfg.train
    tokens = t.max_steps * t.batch_size * t.grad_accum * cfg.model.max_seq_length
    ranks = sorted({int(lv) for lv in design["factors"].get("rank", [design["fixed"]["rank"]])})
    lrs = design["learning_rates"]
    return (
        f"{model}; domain {' + '.join(d.path for d in cfg.data.domain_sources())}; rank {'/'.join(map(str, ranks))}; LR grid "
        f"{', '.join(f'{lr:g}' for lr in lrs)}; {t.max_steps} steps of {tokens // t.max_steps:,} tokens; "
        f"{seeds} of {design['seeds']} seeds complete"
    )


def _frontier_sections(study, cfg, out: Path) -> list[str]:
    """An LR-crossed ablation: one verdict per claim on the frontier, then how it was judged, then the figures."""
    from cpt_harness.analysis import claims

    design = study.user_attrs["design"]
    judged = claims.study_verdicts(
        study, cfg.ablation.min_effect, lambda partial: _doc_results(study, cfg, out, partial)
    )
    results, runs, partial = judged.results, judged.runs, judged.partial
    conditions = _conditions(study, cfg, design, len({r.seed for r in runs}))
    lines = _header(study, "Ablation")[:2] + ["## Verdicts", ""]
    lines += [f"- {claims.verdict_line(r, conditions)}" for r in results]
    if partial:
        lines.append(
            f"- **Incomplete design**: seeds {partial} lack some arm × LR trials and are left out of every "
            "comparison; resume the ablation (the same command adds only the missing trials) to use them."
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
        spec
        for name, spec in claims.SPECS.items()
        if name not in design["factors"] and name in claims_of_the_guidance()
    ]
    if untested:
        lines.append("- **NOT TESTED** here: " + "; ".join(f"*{s.claim}* (factor `{s.factor}`)" for s in untested))
    lines += [
        "",
        f"Compared on the learning–forgetting frontier across the LR grid (**matched** domain gain or "
        f"forgetting), never at one LR. Verdicts, in this order: **NEGLIGIBLE** when the 90% interval lies "
        f"within ±δ (δ = ablation.min_effect = {cfg.ablation.min_effect:g} nats, about "
        f"{stats.percent_perplexity(cfg.ablation.min_effect):.1f}% perplexity; TOST); **SUPPORTED** / "
        "**CONTRADICTED** when the one-sided t-test for / against the claim is significant at 0.05 after Holm's "
        "correction over every claim here and the effect is at least δ; **INCONCLUSIVE** otherwise (also with "
        "fewer than 3 seeds). Mid-schedule checkpoints are not annealed: a point on the frontier is where a run "
        "*was*, with its LR still high, not where a shorter schedule would have ended.",
        "",
    ]
    lines += ["## How each claim was judged", ""]
    for r in results:
        v = r.verdict
        lines.append(
            f"- `{r.spec.factor}` — {r.spec.analysis}; per seed: "
            + ", ".join(f"{s}: {x:+.4f}" for s, x in sorted(r.per_seed.items()))
            + f"; mean {v.estimate:+.4f}, 90% CI [{v.ci90[0]:+.4f}, {v.ci90[1]:+.4f}], Holm p for "
            f"{_p(v.p_for)}, against {_p(v.p_against)}; margin ±{r.delta:.4g}"
            + (f"; document bootstrap variance {r.var_boot:.2e}" if r.var_boot else "")
            + "".join(f"; {n}" for n in r.notes)
        )
    note = forgetting_note(study)
    lines += (["", note] if note else []) + [""]
    lines += _header(study, "Ablation")[2:]
    lines += [
        f"Design: {', '.join(f'{f} {{{chr(44).join(v)}}}' for f, v in design['factors'].items())}; "
        f"{len(design['arms'])} arms × {len(design['learning_rates'])} LRs × {design['seeds']} seeds. Seed k "
        "gives every arm the same data order and the same LoRA init on shared modules.",
        "",
    ]
    _frontier_figure(runs, out / "frontier.png", study.study_name)
    _forest_figure(results, out / "forest.png")
    figures = ["## Frontier", "", "![frontier](frontier.png)", "", "## Effects", "", "![effects](forest.png)", ""]
    if "embedding_lr_ratio" in design["factors"]:
        _dose_figure(runs, out / "dose.png")
        figures += ["## Dose–response", "", "![dose-response](dose.png)", ""]
    _curves_figure(study, out / "curves.png", group_by="arm")
    figures += ["## Eval curves per arm", "", "![curves](curves.png)", ""]
    (out / "effects.json").write_text(
        json.dumps(
            [
                {
                    **_result_json(r),
                    "domain": " + ".join(d.path for d in cfg.data.domain_sources()),
                    "conditions": conditions,
                }
                for r in results
            ],
            indent=2,
        )
    )
    return lines + figures + ["## Trials", "", "```", report.table(study, study.user_attrs.get("base")), "```", ""]


def _matched_reanalysis(study, cfg, design: dict) -> list[str]:
    """A fixed-LR study read again at matched learning, along each run's own checkpoints (one LR: no envelope)."""
    from cpt_harness.analysis import claims

    factors = {f: v for f, v in design["factors"].items() if f != "rslora"}  # rsLoRA needs the rank x LR grid
    runs = claims.runs_from_study(study)
    if not factors or not runs:
        return []
    results = claims.judge(claims.analyse(factors, runs, cfg.ablation.min_effect))
    return [
        "",
        "## Re-analysed at matched learning (one LR, along each run's checkpoints)",
        "",
        "The same trials, compared where the arms have learned (or forgotten) equally, by interpolating each "
        "run's own eval checkpoints; with one LR there is no envelope over LRs, so this is weaker than the "
        f"frontier design. δ = ablation.min_effect = {cfg.ablation.min_effect:g} nats.",
        "",
    ] + [f"- {claims.verdict_line(r, 'one LR, ' + str(design['fixed']['learning_rate']))}" for r in results]


def _p(p: float) -> str:
    return "—" if p != p else f"{p:.3g}"


def _result_json(r) -> dict:
    v = r.verdict
    iv = stats.t_interval(list(r.per_seed.values()), r.var_boot)
    return {
        "factor": r.spec.factor,
        "claim": r.spec.claim,
        "analysis": r.spec.analysis,
        "verdict": v.label,
        "estimate": v.estimate,
        "low95": iv.low,
        "high95": iv.high,
        "ci90": list(v.ci90),
        "n": v.n,
        "per_seed": r.per_seed,
        "p_for": v.p_for,
        "p_against": v.p_against,
        "delta": r.delta,
        "var_boot": r.var_boot,
        "level": r.level,
        "other": r.other,
        "notes": r.notes,
        "percent_perplexity": stats.percent_perplexity(v.estimate),
    }


def claims_of_the_guidance() -> tuple[str, ...]:
    """The factors that test the Unsloth CPT guidance: a report names those it did not test (replay is a question
    users ask, not a claim of the guidance; rank is only crossed with rslora)."""
    return ("gate_proj", "embeddings", "rslora", "embedding_lr_ratio")


def _doc_results(study, cfg, out: Path, leave_out=()):
    """(per-document runs, base) for the document bootstrap, or None: collected into ``evals.npz`` beside the
    report from the study's trial folders, so the report folder keeps them; else read from an ``evals.npz``
    already there (a committed report, rebuilt where the trial folders are gone)."""
    from cpt_harness.analysis import claims
    from cpt_harness.evaluate import evals

    collected, fresh = out / "evals.npz", out / "evals.new.npz"  # np.savez wants the .npz suffix
    previous = collected if collected.is_file() and _same_base(study, evals.read_collected(collected)[0]) else None
    try:  # the study's own folder, where it is here: fresher than a copy; trials only in the copy are kept
        evals.collect(study, Path(cfg.study.output_dir) / study.study_name, fresh, previous=previous)
        if _same_base(study, evals.read_collected(fresh)[0]):
            fresh.replace(collected)
    except (FileNotFoundError, ValueError):
        pass
    fresh.unlink(missing_ok=True)
    if not collected.is_file() or not _same_base(study, (found := evals.read_collected(collected))[0]):
        return None
    return claims.doc_runs_from_study(study, found[1], found[0], leave_out)


def _same_base(study, base) -> bool:
    """Whether per-document results belong to this study: its base losses, recomputed from them, match (a folder
    of another run under the same name does not)."""
    stored = study.user_attrs.get("base") or {}
    return (
        base is not None
        and "domain_loss" in stored
        and math.isclose(float(base.domain_loss()[0]), stored["domain_loss"], rel_tol=1e-4)
    )
