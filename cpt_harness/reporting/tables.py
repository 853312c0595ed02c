"""Reading results back from the study database alone: one line per finished trial, and the results table
with the Pareto front (lowest domain loss vs. least forgetting; a constrained study's best trial) marked."""

from __future__ import annotations

from typing import Any

from cpt_harness.search import study as storage


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def trial_line(trial) -> str:
    """One line per finished trial, for the terminal."""
    p, a = trial.params, trial.user_attrs
    head = f"trial {trial.number:>3} {trial.state.name:<8} r={p.get('rank', '-')}"
    head += f" lr={_fmt(p.get('learning_rate'), '.2e')}"
    if "embedding_lr_ratio" in p:
        head += f" emb×{p['embedding_lr_ratio']:.2f}"
    if a.get("replay_fraction") is not None:
        head += f" replay {a['replay_fraction']:.2f}"
    if "arm" in a:
        head += f" [{a['arm']} seed {a.get('seed')}]"
    if "baseline" in a:
        head += f" [baseline {a['baseline']}]"
    if trial.state.name == "PRUNED":
        return f"{head}  ✂ pruned: {a.get('prune_reason', 'no reason recorded')}"
    if trial.state.name != "COMPLETE":
        return f"{head}  ✗ {a.get('fail_reason', 'no reason recorded')}"
    return (
        f"{head}  domain {a['domain_loss']:.4f} (gain {a['domain_gain']:+.4f})  "
        f"forgetting {a['forgetting']:+.4f}"
        + (f" (unreplayed {a['forgetting_unreplayed']:+.4f})" if "forgetting_unreplayed" in a else "")
        + f"  scale {a.get('lora_scale', float('nan')):.3g}"
        f"{' rsLoRA' if a.get('use_rslora') else ''}  {a.get('tokens_per_s', 0):,.0f} tok/s"
    )


COLUMNS = [
    ("#", "number", "d"),
    ("state", "state", "s"),
    ("rank", "rank", "d"),
    ("lr", "learning_rate", ".2e"),
    ("emb ratio", "embedding_lr_ratio", ".3f"),
    ("rsLoRA", "use_rslora", "s"),
    ("scale", "lora_scale", ".3g"),
    ("domain", "domain_loss", ".4f"),
    ("gain", "domain_gain", "+.4f"),
    ("general", "general_loss", ".4f"),
    ("forgetting", "forgetting", "+.4f"),
    ("tok/s", "tokens_per_s", ",.0f"),
    ("time s", "duration_s", ".0f"),
]
REPLAY_COLUMNS = [("replay", "replay_fraction", ".2f"), ("forg. unreplayed", "forgetting_unreplayed", "+.4f")]


def table(study, base: dict | None = None, max_forgetting: float | None = None) -> str:
    """The trials as a text table; '*' marks the Pareto front (a constrained study's best trial). With a forgetting
    budget (``max_forgetting``, else the constraint each trial recorded), the budget column says which trials are
    within it. A pruned trial shows its metrics at the checkpoint where it stopped, and why."""
    rows = storage.trial_rows(study, max_forgetting)
    budget = any(r["feasible"] is not None for r in rows)
    columns = COLUMNS + (REPLAY_COLUMNS if any(r.get("replay_fraction") is not None for r in rows) else [])
    sources = sorted({k for r in rows for k in r if k.startswith("domain_loss/")})  # several data.domain sources
    at = [c[1] for c in columns].index("domain_gain")
    columns = columns[:at] + [(f"domain {k.removeprefix('domain_loss/')}", k, ".4f") for k in sources] + columns[at:]
    header = ["front"] + [c[0] for c in columns] + (["budget"] if budget else []) + ["note"]
    body = []
    for r in rows:
        cells = ["*" if r["pareto"] else ""]
        for _, key, spec in columns:
            v = r.get(key)
            cells.append("-" if v is None else (("yes" if v else "no") if isinstance(v, bool) else format(v, spec)))
        if budget:
            cells.append({True: "ok", False: "over", None: "-"}[r["feasible"]])
        cells.append(str(_note(r))[:90])
        body.append(cells)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    pruned = sum(r["state"] == "PRUNED" for r in rows)
    marked = (
        f"{sum(r['pareto'] for r in rows)} on the Pareto front"
        if storage.objective_of(study) == "pareto"
        else "'*' marks the best: the lowest domain loss within the forgetting budget"
    )
    lines = [
        f"study {study.study_name}: {len(rows)} trials, {sum(r['state'] == 'COMPLETE' for r in rows)} complete, "
        + (f"{pruned} pruned, " if pruned else "")
        + marked
    ]
    if base:
        per = ", ".join(
            f"{k.removeprefix('domain_loss/')} {v:.4f}" for k, v in base.items() if k.startswith("domain_loss/")
        )
        lines.append(
            f"base model: domain loss {base['domain_loss']:.4f}"
            + (f" ({per})" if per else "")
            + f", general loss {base['general_loss']:.4f} (forgetting = general loss - base general loss)"
        )
    lines.append("  ".join(h.rjust(w) for h, w in zip(header, widths)))
    lines += ["  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(lines)


def _note(r: dict) -> str:
    """Why a trial failed or was pruned, the rules it breaks; which arm or baseline it is."""
    note = (
        r.get("fail_reason")
        or r.get("prune_reason")
        or ("; ".join(r.get("rule_violations") or []) if r.get("rule_violations") else "")
    )
    if r.get("arm"):
        note = f"{r['arm']} seed {r.get('seed')}" + (f"; {note}" if note else "")
    if r.get("baseline"):
        note = f"baseline {r['baseline']}" + (f"; {note}" if note else "")
    return note


def timing_table(study) -> str:
    """Where each complete trial's wall time went (seconds), and the share that was not training."""
    lines = ["trial  load  data  train  eval   log  save  not training"]
    for t in study.get_trials(deepcopy=False):
        tm = t.user_attrs.get("timings")
        if t.state.name != "COMPLETE" or not tm:
            continue
        parts = [tm.get(k, 0.0) for k in ("load", "data", "train", "eval", "log", "save")]
        total = sum(parts)
        lines.append(
            f"{t.number:>5}"
            + "".join(f"{v:>6.1f}" for v in parts[:2])
            + f"{parts[2]:>7.1f}"
            + "".join(f"{v:>6.1f}" for v in parts[3:])
            + f"  {100 * (total - parts[2]) / total:>11.0f}%"
        )
    return "\n".join(lines)


def effects_text(study, min_effect: float = 0.01, match_levels: list[float] | None = None) -> str:
    """The ablation's verdicts and paired effects, for the terminal."""
    from cpt_harness.analysis import ablation, claims

    design = study.user_attrs.get("design")
    if not design:
        return ""
    if design.get("design") == "shared":  # every claim over a grid of match levels
        from cpt_harness.analysis import levels

        judged = levels.study_verdicts(study, min_effect, match_levels or [0.25, 0.5, 0.75, 1.0])
        head = (
            "verdicts over the match levels on the learning-forgetting frontier (seed noise only; the report adds "
            "the document bootstrap)"
        )
        if judged.partial:
            head += f"; seeds {judged.partial} are incomplete and left out"
        return head + ":\n" + "\n".join(f"  {r.label:<15} {r.spec.factor:<19} {r.holds}" for r in judged.results)
    if "learning_rates" in design:  # the frontier design: one verdict per claim (the report adds the bootstrap)
        judged = claims.study_verdicts(study, min_effect)
        results = judged.results
        head = "verdicts on the learning-forgetting frontier (seed noise only; the report adds the document bootstrap)"
        if judged.partial:
            head += f"; seeds {judged.partial} are incomplete and left out"
        return (
            head
            + ":\n"
            + "\n".join(
                f"  {r.verdict.label:<12} {r.spec.factor:<19} {r.verdict.estimate:+.4f} (n={r.verdict.n}) "
                f"{r.spec.analysis}"
                for r in results
            )
        )
    lines = ["effect (alternative - advice), mean over seeds with 95% t-interval:"]
    for e in ablation.effects(ablation.rows(study), list(design["factors"])):
        iv = e.interval
        lines.append(
            f"  {e.factor.name:<19} {e.metric:<12} {iv.mean:+.4f} [{iv.low:+.4f}, {iv.high:+.4f}] n={iv.n}"
            + (f"  -> {e.verdict}: {e.factor.claim}" if e.verdict else "")
        )
    return "\n".join(lines)
