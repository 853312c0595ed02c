"""The figures of the reports: the Pareto front, eval curves, parameter importances, the learning–forgetting
frontier, the effects' forest and the dose–response; saved as small 256-colour PNGs (reports are committed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cpt_harness.analysis import stats
from cpt_harness.reporting.page import _complete, _pruned
from cpt_harness.search import study as storage

IMPORTANCE_EVALUATOR = "PED-ANOVA"  # what the figure and the report say the importances are


def _pareto_figure(study, path: Path, max_forgetting: float | None = None) -> None:
    """Domain loss against forgetting: the front (a constrained study's best trial) highlighted, trials over the
    forgetting budget greyed, pruned trials where they stopped, the base model marked."""
    import matplotlib.pyplot as plt

    done = study.get_trials(deepcopy=False, states=[_complete()])
    pruned = [t for t in study.get_trials(deepcopy=False) if t.state.name == "PRUNED" and "forgetting" in t.user_attrs]
    front = {t.number for t in storage.pareto_front(study, max_forgetting)}
    over = {t.number for t in done if storage.feasible(t, max_forgetting) is False}
    best = "Pareto front" if storage.objective_of(study) == "pareto" else "best within the budget"
    fig, ax = plt.subplots(figsize=(6, 4.5))
    groups = [
        ("trial", dict(c="C0"), [t for t in done if t.number not in front | over]),
        ("over the forgetting budget", dict(c="0.75", marker="X"), [t for t in done if t.number in over - front]),
        ("pruned (where it stopped)", dict(facecolors="none", edgecolors="0.55"), pruned),
        (best, dict(c="C3"), [t for t in done if t.number in front]),
    ]
    for label, style, trials in groups:
        if trials:
            ax.scatter(
                [t.user_attrs["forgetting"] for t in trials],
                [t.user_attrs["domain_loss"] for t in trials],
                s=36,
                zorder=3,
                label=label,
                **style,
            )
    for t in done + pruned:
        ax.annotate(
            str(t.number),
            (t.user_attrs["forgetting"], t.user_attrs["domain_loss"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    base = study.user_attrs.get("base")
    if base:
        ax.scatter([0.0], [base["domain_loss"]], marker="*", s=160, c="k", zorder=4, label="base model")
    title = study.study_name
    if max_forgetting is not None:
        lo, hi = ax.get_xlim()
        if lo <= max_forgetting <= hi:
            ax.axvline(max_forgetting, c="C3", lw=0.8, ls="--", label="forgetting budget")
        else:  # far from every trial: a line there would squeeze them into a corner
            title += f" (forgetting budget {max_forgetting:g}, off the plot)"
    ax.axvline(0.0, c="k", lw=0.5, ls=":")
    ax.set_xlabel("forgetting (general loss − base, nats/token)")
    ax.set_ylabel("held-out domain loss (nats/token)")
    ax.legend(fontsize=8)
    ax.set_title(title)
    _save(fig, path)


def _curves_figure(study, path: Path, group_by: str | None) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    colors: dict[str, str] = {}
    base = study.user_attrs.get("base") or {}
    start = [{"tokens_seen": 0, **base}] if base else []  # a curve starts at the base model ...
    for t in study.get_trials(deepcopy=False, states=[_complete(), _pruned()]):
        curve = t.user_attrs.get("curve") or []
        curve = curve if curve and curve[0]["tokens_seen"] == 0 else start + curve  # ... or its init_adapter's step 0
        label = str(t.user_attrs.get(group_by)) if group_by else f"trial {t.number}"
        first = label not in colors  # one legend entry per group (an arm's seeds share a colour)
        color = colors.setdefault(label, f"C{len(colors) % 10}")
        style = dict(ls=":", lw=1) if t.state == _pruned() else dict(lw=1)  # dotted: stopped early (pruned)
        for ax, key in zip(axes, ("domain_loss", "general_loss")):
            ax.plot(
                [p["tokens_seen"] for p in curve],
                [p[key] for p in curve],
                c=color,
                alpha=0.8,
                label=label if ax is axes[0] and first else None,
                **style,
            )
    for ax, key, title in zip(axes, ("domain_loss", "general_loss"), ("held-out domain", "held-out general")):
        if key in base:
            ax.axhline(base[key], c="k", lw=0.8, ls="--", label="base" if ax is axes[0] else None)
        ax.set_xlabel("tokens seen")
        ax.set_ylabel("loss (nats/token)")
        ax.set_title(title)
    handles, labels = axes[0].get_legend_handles_labels()
    if len(labels) <= 16:
        axes[0].legend(fontsize=7)
    _save(fig, path)


def _importance_evaluator():
    """Named, not Optuna's default whatever it is, so that the report's label stays true across upgrades."""
    import optuna

    return optuna.importance.PedAnovaImportanceEvaluator()


def _importances(study, path: Path) -> str:
    import matplotlib.pyplot as plt
    import optuna

    done = study.get_trials(deepcopy=False, states=[_complete()])
    varying = {k for k in {k for t in done for k in t.params} if len({t.params.get(k) for t in done}) > 1}
    if len(done) < 3 or not varying:
        return ""
    # Both metrics, whichever the objectives: a constrained study optimizes domain loss, and forgetting is its budget.
    names = ["domain_loss", "forgetting"]
    result = {}
    for name in names:
        try:
            result[name] = optuna.importance.get_param_importances(
                study, evaluator=_importance_evaluator(), target=lambda t, k=name: t.user_attrs[k]
            )
        except (RuntimeError, ValueError, KeyError):
            return ""
    params = sorted(varying)
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.38
    for i, name in enumerate(names):
        ax.barh(
            [j + i * width for j in range(len(params))],
            [result[name].get(p, 0.0) for p in params],
            height=width,
            label=name,
        )
    ax.set_yticks([j + width / 2 for j in range(len(params))], params)
    ax.set_xlabel(f"importance ({IMPORTANCE_EVALUATOR})")
    ax.legend(fontsize=8)
    _save(fig, path)
    return (
        "| parameter | "
        + " | ".join(names)
        + " |\n|---|"
        + "---|" * len(names)
        + "\n"
        + "\n".join(f"| {p} | " + " | ".join(f"{result[n].get(p, 0.0):.2f}" for n in names) + " |" for p in params)
    )


def _frontier_figure(runs, path: Path, title: str) -> None:
    """Forgetting on x, domain gain on y: every run's checkpoints (thin), coloured by arm."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    colors: dict[str, str] = {}
    for r in sorted(runs, key=lambda r: (r.arm, r.seed, r.lr)):
        first = r.arm not in colors
        color = colors.setdefault(r.arm, f"C{len(colors) % 10}")
        ax.plot(r.forgetting, r.gain, c=color, lw=0.8, alpha=0.6, marker=".", ms=3, label=r.arm if first else None)
    for arm, color in colors.items():  # the arm's frontier: least forgetting over its LRs, mean over seeds
        xs, ys = _mean_envelope([r for r in runs if r.arm == arm])
        ax.plot(xs, ys, c=color, lw=2.5, zorder=3)
    ax.scatter([0], [0], marker="*", s=140, c="k", zorder=4, label="start (base)")
    ax.set_xlabel("forgetting (general loss − base, nats/token)")
    ax.set_ylabel("domain gain (base − domain loss, nats/token)")
    ax.set_title(f"{title}: every arm × LR × seed, checkpoints along each run")
    ax.legend(fontsize=7)
    _save(fig, path)


def _mean_envelope(runs, points: int = 40) -> tuple[list[float], list[float]]:
    """One arm's frontier (thick line): at each domain gain up to the highest every seed reaches, the least
    forgetting over the arm's LRs, averaged over seeds."""
    from cpt_harness.analysis import frontier

    seeds = sorted({r.seed for r in runs})
    by_seed = {s: [r for r in runs if r.seed == s] for s in seeds}
    reach = min(max(float(np.maximum.accumulate(r.gain)[-1]) for r in rs) for rs in by_seed.values()) if seeds else 0
    xs, ys = [], []
    for g in np.linspace(0.0, reach, points) if reach > 0 else []:
        values = [frontier.envelope(rs, "gain", float(g)) for rs in by_seed.values()]
        if all(v is not None for v in values):
            xs.append(float(np.mean(values)))
            ys.append(float(g))
    return xs, ys


def _forest_figure(results, path: Path) -> None:
    """Each claim's effect with its 95% interval, the ±δ band shaded."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(7, 1.3 * len(results) + 0.6), squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        iv = stats.t_interval(list(r.per_seed.values()), r.var_boot) if len(r.per_seed) >= 2 else None
        ax.axvspan(-r.delta, r.delta, color="0.85", label="±δ (negligible)")
        ax.axvline(0, c="k", lw=0.6)
        if iv is not None:
            ax.errorbar([iv.mean], [0], xerr=[[iv.mean - iv.low], [iv.high - iv.mean]], fmt="o", c="C3", capsize=4)
        ax.scatter(list(r.per_seed.values()), [0.25] * len(r.per_seed), s=10, c="0.4", label="seeds")
        ax.set_yticks([])
        ax.set_title(f"{r.spec.factor}: {r.verdict.label} ({r.spec.unit})", fontsize=9, loc="left")
    axes[0, 0].legend(fontsize=7, loc="upper right")
    _save(fig, path)


def _dose_figure(runs, path: Path) -> None:
    """Forgetting at matched gain against the embedding-LR ratio, per seed and mean."""
    import matplotlib.pyplot as plt

    from cpt_harness.analysis import frontier

    d = frontier.dose_response(runs)
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ratios = sorted(d.means)
    values, _ = frontier.frontier_by_seed(runs, "gain", "embedding_lr_ratio", [f"{r:g}" for r in ratios], d.level)
    for seed, v in values.items():
        ax.plot(ratios, [v[f"{r:g}"] for r in ratios], c="0.6", lw=0.8, marker=".")
    ax.plot(ratios, [d.means[r] for r in ratios], c="C3", lw=2, marker="o", label="mean over seeds")
    ax.set_xscale("log")
    ax.set_xlabel("embedding LR ratio (embedding LR / base LR)")
    ax.set_ylabel(f"forgetting at domain gain {d.level:+.3f} (nats)")
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig, path: Path) -> None:
    """A 256-colour PNG: a line plot needs no more, and it is a third of the size (reports are committed)."""
    import io

    import matplotlib.pyplot as plt
    from PIL import Image  # a dependency of matplotlib's

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    with Image.open(buf) as im:
        im.convert("RGB").quantize(256, dither=Image.Dither.NONE).save(path, format="PNG", optimize=True)
