"""A sweep's report: what to use (the recommendation, confirmed where a confirmation ran), how the search went,
the chosen trial's sweep file, the Pareto front and the importances."""

from __future__ import annotations

import math
from pathlib import Path

import yaml

from cpt_harness.analysis import stats
from cpt_harness.config import EMBEDDING_LR_RATIO_RANGE
from cpt_harness.infra import urls
from cpt_harness.reporting import tables as report
from cpt_harness.reporting.figures import IMPORTANCE_EVALUATOR, _curves_figure, _importances, _pareto_figure
from cpt_harness.reporting.page import _complete, _header, forgetting_note
from cpt_harness.search import study as storage


def _sweep_sections(study, cfg, out: Path) -> list[str]:
    header = _header(study, "Sweep")
    lines = header[:4] + what_to_use(study, cfg, out) + header[4:-1] + _split_lines(study)
    note = forgetting_note(study)
    lines += [note, ""] if note else []
    lines += search_lines(study, cfg.study.max_forgetting, choose_trial(study, cfg.study.max_forgetting))
    _pareto_figure(study, out / "pareto.png", cfg.study.max_forgetting)
    _curves_figure(study, out / "curves.png", group_by=None)
    lines += [
        "## Pareto front",
        "",
        "![Pareto front](pareto.png)",
        "",
        "## Eval curves",
        "",
        "![curves](curves.png)",
        "",
    ]
    importances = _importances(study, out / "importances.png")
    n_done = len(study.get_trials(deepcopy=False, states=[_complete()]))
    lines += ["## Hyperparameter importances", ""] + (
        [
            "![importances](importances.png)",
            "",
            importances,
            "",
            f"Estimated with {IMPORTANCE_EVALUATOR} (Optuna's PedAnovaImportanceEvaluator) from {n_done} complete "
            "trials" + (": with so few, treat them as rough." if n_done < 20 else "."),
            "",
        ]
        if importances
        else ["Not enough complete trials with varying parameters to estimate importances.", ""]
    )
    lines += [
        "## Trials",
        "",
        "```",
        report.table(study, study.user_attrs.get("base"), cfg.study.max_forgetting),
        "```",
        "",
    ]
    return lines


def what_to_use(study, cfg, out: Path) -> list[str]:
    """The report's opening: the recommended setting (cpt_harness.confirm's rule) with its numbers on the test
    documents, confirmed over seeds or marked unconfirmed, or that no setting met the budget; then how it compares
    with the base model and any baselines, and the confirmed settings. Writes chosen.yaml (the recommendation)."""
    from cpt_harness.analysis import confirm

    rec = confirm.recommend(study, cfg.study.max_forgetting, confirm.load_study(cfg))
    (out / "chosen.yaml").unlink(missing_ok=True)  # never a stale recommendation beside this report
    lines = ["## What to use", ""]
    if rec.status in ("none", "empty"):
        head = "**No setting met the budget**" if rec.status == "none" else "**No recommendation yet**"
        return lines + [f"{head}: {rec.no_setting or rec.how}.", ""] + _confirmed_table(rec)
    (out / "chosen.yaml").write_text(chosen_sweep_file(study, cfg, rec.trial, why=confirm.summary_line(rec)))
    lines += [_recommendation_text(rec, cfg), ""]
    return lines + _comparison(study, rec) + _confirmed_table(rec)


def _recommendation_text(rec, cfg) -> str:
    from cpt_harness.analysis import confirm

    p, t = rec.prefix, rec.trial
    where = (
        "On the **test documents** (which chose nothing)"
        if rec.split
        else "On the held-out documents — **not split**: the same documents chose it (a study run before "
        "eval.test_fraction)"
    )
    text = f"**{confirm.setting_text(t.params)}** (trial {t.number} of this sweep; {rec.how}). {where}"
    if rec.status == "confirmed":
        c = rec.confirmed
        d, f = c.interval(f"{p}domain_loss"), c.interval(f"{p}forgetting")
        text += (
            f", over {d.n} new seeds (study `{confirm.study_name(cfg)}`): domain loss **{d.mean:.4f}** (95% CI "
            f"[{d.low:.4f}, {d.high:.4f}]), forgetting **{f.mean:+.4f}** (95% CI [{f.low:+.4f}, {f.high:+.4f}])"
        )
        if c.values(f"{p}general_kl"):
            k = c.interval(f"{p}general_kl")
            text += f", general_kl {k.mean:.4f} (95% CI [{k.low:.4f}, {k.high:.4f}])"
        return text + ". Its config, as a sweep file that trains it again: [chosen.yaml](chosen.yaml)."
    a = t.user_attrs
    text += (
        f": domain loss **{a[f'{p}domain_loss']:.4f}**, forgetting **{a[f'{p}forgetting']:+.4f}** — "
        "***unconfirmed***: one run with one seed"
    )
    if rec.confirmed is not None and rec.confirmed.runs:
        text += f" (its confirmation has {len(rec.confirmed.runs)} of {rec.planned_seeds or '?'} seeds so far)"
    else:
        text += (
            f"; `cpt-harness confirm CONFIG` re-runs the best {confirm.DEFAULT_TOP} settings with "
            f"{confirm.DEFAULT_SEEDS} new seeds and gives intervals"
        )
    return text + ". Its config: [chosen.yaml](chosen.yaml)."


def _comparison(study, rec) -> list[str]:
    """The recommendation beside the base model and the study's baseline trials (user attribute ``baseline``)."""
    from cpt_harness.analysis import confirm

    p = rec.prefix
    base = study.user_attrs.get("base") or {}

    def cells(values: dict[str, list[float]]) -> list[str]:
        out = []
        for key, spec in ((f"{p}domain_loss", ".4f"), (f"{p}forgetting", "+.4f")):
            v = values.get(key) or []
            iv = stats.t_interval(v)
            out.append(
                "—"
                if not v
                else format(iv.mean, spec) + (f" [{iv.low:{spec}}, {iv.high:{spec}}]" if len(v) >= 2 else "")
            )
        return out

    runs = rec.confirmed.runs if rec.status == "confirmed" else {0: rec.trial.user_attrs}
    rows = [
        [
            "**recommended**",
            confirm.setting_text(rec.trial.params),
            *cells({k: [a[k] for a in runs.values() if k in a] for k in (f"{p}domain_loss", f"{p}forgetting")}),
            f"{len(runs)} seeds" if rec.status == "confirmed" else "1 run",
        ]
    ]
    if f"{p}domain_loss" in base:
        rows.append(["base model", "—", f"{base[f'{p}domain_loss']:.4f}", "+0.0000 (by definition)", "—"])
    for t in study.get_trials(deepcopy=False):
        if confirm.is_baseline(t) and t.state.name == "COMPLETE":
            name = t.user_attrs["baseline"]
            rows.append(
                [
                    f"baseline {name if isinstance(name, str) else ''} (trial {t.number})".replace("  ", " "),
                    confirm.setting_text(t.params),
                    *cells({k: [t.user_attrs[k]] for k in (f"{p}domain_loss", f"{p}forgetting") if k in t.user_attrs}),
                    "1 run",
                ]
            )
    part = "test documents" if rec.split else "held-out documents"
    return (
        [f"| compared with | setting | domain loss ({part}) | forgetting ({part}) | runs |", "|---|---|---|---|---|"]
        + ["| " + " | ".join(r) + " |" for r in rows]
        + [
            "",
            "Values with a bracket are means over seeds with their 95% t-interval; baselines are trials the "
            "study was given (a `baseline` attribute), one run each."
            if len(rows) > 2
            else "No baseline trials in this study (trials with a `baseline` attribute are shown here).",
            "",
        ]
    )


def _confirmed_table(rec) -> list[str]:
    """Every setting of the confirmation study: seeds, selection-part means (what chose among them) and test-part
    means with 95% t-intervals (what is reported)."""
    from cpt_harness.analysis import confirm

    if not rec.settings:
        return []
    p = rec.prefix
    lines = [
        "### Confirmed settings",
        "",
        "The recommendation is chosen among these on their selection-document means over seeds and reported "
        "on the test documents."
        if rec.split
        else "Not split: chosen and reported on the same held-out documents.",
        "",
        "| setting (sweep trial) | | seeds | domain loss, selection | forgetting, selection | "
        "domain loss, test (95% CI) | forgetting, test (95% CI) |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in rec.settings:

        def ci(key: str, spec: str) -> str:
            iv = c.interval(key)
            return (
                "—"
                if not iv.n
                else format(iv.mean, spec) + (f" [{iv.low:{spec}}, {iv.high:{spec}}]" if iv.n >= 2 else "")
            )

        mark = (
            " **(recommended)**"
            if rec.trial is not None and rec.status == "confirmed" and c.setting == rec.trial.number
            else ""
        )
        lines.append(
            f"| {c.setting}{mark} | {confirm.setting_text(c.params)} | {len(c.runs)} | "
            f"{c.mean('domain_loss'):.4f} | {c.mean('forgetting'):+.4f} | "
            f"{ci(f'{p}domain_loss', '.4f') if rec.split else '—'} | "
            f"{ci(f'{p}forgetting', '+.4f') if rec.split else '—'} |"
        )
    return lines + [""]


def _split_lines(study) -> list[str]:
    """How the held-out documents were split into selection and test parts (or that they were not)."""
    split = study.user_attrs.get("eval_split")
    if not split:
        return [
            "- **Held-out documents: not split** — trials were chosen and are reported on the same documents "
            "(eval.test_fraction 0, or a study run before it).",
            "",
        ]
    general = ", ".join(f"{n} {v['selection']}/{v['test']}" for n, v in split["general"].items())
    return [
        f"- **Held-out documents split by document** (eval.test_fraction {split['test_fraction']:g}, data.seed "
        f"{split['seed']}), selection/test: domain {split['domain']['selection']}/{split['domain']['test']}, "
        f"{general}. The sampler, the pruner, the trial table and the figures use the selection part "
        "(`domain_loss`, `forgetting`); *What to use* reports the test part (`test_domain_loss`, "
        "`test_forgetting`).",
        "",
    ]


def search_lines(study, max_forgetting: float | None, chosen) -> list[str]:
    """How the search went, where it says something: the forgetting budget, pruned trials, and each baseline
    (study.enqueue) beside the chosen trial."""
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == _complete()]
    lines = []
    within = [storage.feasible(t, max_forgetting) for t in done]
    if any(w is not None for w in within):
        budget = f"study.max_forgetting = {max_forgetting:g} nats" if max_forgetting is not None else "as recorded"
        ok = sum(w is True for w in within)
        lines.append(
            f"- **Forgetting budget** ({budget}): {ok} of {len(done)} complete trials within it"
            + (
                "; the others are greyed in the plot and never chosen while one is within it."
                if ok < len(done)
                else "."
            )
        )
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    if pruned:
        steps = ", ".join(str(t.user_attrs.get("pruned_step", "?")) for t in pruned)
        lines.append(
            f"- **Pruned**: {len(pruned)} trial{'s' if len(pruned) > 1 else ''} stopped at an eval checkpoint "
            f"(step {steps}; reasons in the table); they do not count toward study.n_trials."
        )
    lines += [_baseline_line(t, chosen, max_forgetting) for t in trials if "baseline" in t.user_attrs]
    return ["## Search", ""] + lines + [""] if lines else []


def _baseline_line(t, chosen, max_forgetting: float | None) -> str:
    p, a = t.params, t.user_attrs
    point = (
        f"r {p.get('rank')}, lr {p.get('learning_rate', float('nan')):.3g}"
        + (f", embedding ratio {p['embedding_lr_ratio']:.3g}" if "embedding_lr_ratio" in p else "")
        + "".join(f"; {o}" for o in a.get("outside_search_space") or [])
    )
    head = f"- **Baseline** `{a['baseline']}` (trial {t.number}: {point}): "
    if t.state.name in ("FAIL", "RUNNING", "WAITING"):
        return head + t.state.name.lower() + (f" ({a['fail_reason']})" if a.get("fail_reason") else "")

    def vs(k: str) -> str:
        if chosen is None or chosen.number == t.number:
            return ""
        return f" ({a[k] - chosen.user_attrs[k]:+.4f} vs the chosen trial {chosen.number})"

    state = f"pruned ({a.get('prune_reason')}): at its last checkpoint, " if t.state.name == "PRUNED" else ""
    ok = storage.feasible(t, max_forgetting)
    return (
        head + state + f"domain loss {a['domain_loss']:.4f}{vs('domain_loss')}, forgetting "
        f"{a['forgetting']:+.4f}{vs('forgetting')}"
        + ("" if ok is None else "; within the budget" if ok else "; over the budget")
        + ("; the chosen trial" if chosen is not None and chosen.number == t.number else "")
    )


def choose_trial(study, max_forgetting: float | None):
    """Pareto study: the front's lowest domain loss whose forgetting is within ``max_forgetting``; else the knee:
    the front trial closest to the ideal point once both objectives are scaled to [0, 1] over the front. The front
    is that of the trials within the budget, when one is (``storage.pareto_front``). Constrained study: the lowest
    domain loss within the budget, else the trial that forgot least."""
    front = storage.pareto_front(study, max_forgetting)
    if not front:
        return None
    if storage.objective_of(study) == "constrained":
        return front[0]
    ok = [t for t in front if storage.feasible(t, max_forgetting)]
    if ok:
        return min(ok, key=lambda t: t.user_attrs["domain_loss"])
    d = [t.user_attrs["domain_loss"] for t in front]
    f = [t.user_attrs["forgetting"] for t in front]
    scale = lambda v, lo, hi: 0.0 if hi == lo else (v - lo) / (hi - lo)  # noqa: E731
    return min(
        front,
        key=lambda t: math.hypot(
            scale(t.user_attrs["domain_loss"], min(d), max(d)), scale(t.user_attrs["forgetting"], min(f), max(f))
        ),
    )


def chosen_how(study, trial, max_forgetting: float | None) -> str:
    """How ``choose_trial`` picked ``trial``, in words."""
    within = storage.feasible(trial, max_forgetting)
    budget = f"forgetting ≤ {max_forgetting:g}" if max_forgetting is not None else "forgetting within the budget"
    if within:
        return f"lowest domain loss with {budget}"
    if storage.objective_of(study) == "constrained":
        return f"no trial has {budget}: the one that forgot least"
    return "the knee of the Pareto front" if within is None else f"no trial has {budget}: the knee of the Pareto front"


def chosen_sweep_file(
    study, cfg, trial, why: str = "", written_by: str = "cpt-harness report", name: str = "chosen.yaml"
) -> str:
    """A sweep file that reruns ``trial``: the search space collapsed to its values, one trial, a new study.
    ``why``: a line saying why it was chosen (the recommendation), put in its header."""
    d = urls.redact_tree(cfg.to_dict())
    p = trial.params
    # One trial that ran to its end: nothing to queue or prune (its budget stays, to say whether it is within).
    d["study"].update(
        name=f"{study.study_name}-t{trial.number}",
        n_trials=1,
        enqueue=[],
        pruner="none",
        pruner_options={},
        prune_margin=None,
    )
    d["search"]["rank"]["choices"] = [p["rank"]]
    d["search"]["learning_rate"].update(low=p["learning_rate"], high=p["learning_rate"])
    if "embedding_lr_ratio" in p:
        d["search"]["embedding_lr_ratio"].update(low=p["embedding_lr_ratio"], high=p["embedding_lr_ratio"])
        lo, hi = EMBEDDING_LR_RATIO_RANGE
        if not lo <= p["embedding_lr_ratio"] <= hi:  # an enqueued point that broke the rule: its rerun does too
            d["rules"]["embedding_lr_ratio_range"] = False
    head = (
        f"# The chosen trial {trial.number} of study {study.study_name}, as a sweep file that trains it again.\n"
        + (f"# {why}\n" if why else "")
        + f"# Written by `{written_by}`.   cpt-harness sweep {name}\n"
        + (
            "# study.storage: its password is never written; give it with PGPASSWORD, ~/.pgpass or ${NAME}.\n"
            if d["study"]["storage"] != cfg.study.storage
            else ""
        )
    )
    return head + yaml.safe_dump(d, sort_keys=False)
