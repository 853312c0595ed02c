"""`cpt-harness report --out DIR`: report.md and report.html with PNG figures, rebuilt from the study database
alone (no training), never hand-edited. Verdicts are derived from the intervals here, not written by anyone.

A sweep study gives, first, *What to use*: the recommended setting (cpt_harness.confirm's rule) with its numbers on
the test documents, over the confirmation's seeds once confirmed; then the Pareto front of domain loss vs
forgetting (front highlighted, base marked), eval curves against tokens seen, hyperparameter importances, the
trial table, and the recommended setting's config as a sweep file (chosen.yaml). An ablation study gives, first: one verdict line per claim of the guidance, then the effect table
(per-seed paired differences, mean, 95% t-interval), tokens/s per arm, and the curves per arm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from cpt_harness.infra import urls
from cpt_harness.reporting.ablation_report import _ablation_sections
from cpt_harness.reporting.page import _html
from cpt_harness.reporting.sweep_report import _sweep_sections
from cpt_harness.search import study as storage


def write(study, cfg, out_dir: Path, sections=None) -> Path:
    """Write the report for ``study`` (a sweep or an ablation) into ``out_dir``; returns report.md's path.
    ``sections(study, cfg, out_dir)``: the report's lines, where a caller knows better (a shared-arms ablation:
    ``levels_report.sections``)."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir.mkdir(parents=True, exist_ok=True)
    is_ablation = study.user_attrs.get("kind") == "ablation"
    lines = (sections or (_ablation_sections if is_ablation else _sweep_sections))(study, cfg, out_dir)
    md = "\n".join(lines) + "\n"
    (out_dir / "report.md").write_text(md)
    (out_dir / "report.html").write_text(_html(md, study.study_name))
    return out_dir / "report.md"


# ------------------------------------------------------------------------------------------ sweeps


# ------------------------------------------------------------------------------------------ ablations


def log_summary_run(study, cfg, out_dir: Path) -> None:
    """One study-level W&B run (job_type "summary"), the same run at every report (``tracking.summary_run_id``): a
    table of every trial or arm, the report's figures, and the sweep's adapters still on disk with the aliases
    ``pareto``, ``chosen`` and ``confirmed`` where they apply."""
    from cpt_harness.infra import tracking

    mode = tracking.resolve_mode(cfg.tracking.wandb.mode)
    if mode == "disabled":
        return
    import os

    import wandb

    rows = storage.trial_rows(study)
    columns = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("number", "state", "arm", "seed"), k))
    table = wandb.Table(columns=columns, data=[[_cell(r.get(c)) for c in columns] for r in rows])
    run = wandb.init(
        project=cfg.tracking.wandb.project,
        entity=cfg.tracking.wandb.entity,
        group=study.study_name,
        job_type="summary",
        name=f"{study.study_name}-summary",
        mode=mode,
        id=tracking.summary_run_id(study.study_name),
        resume="allow",
        dir=os.environ.get("WANDB_DIR") or str(Path(cfg.study.output_dir) / study.study_name),
        config=urls.redact_tree(
            {
                "study": study.study_name,
                "base": study.user_attrs.get("base"),
                "design": study.user_attrs.get("design"),
                "objectives": tracking.GOALS,
            }
        ),
        settings=wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True),
    )
    run.log({"trials": table, **{f"figures/{p.stem}": wandb.Image(str(p)) for p in sorted(out_dir.glob("*.png"))}})
    if cfg.tracking.wandb.log_adapters:
        for trial, aliases in adapter_aliases(study, cfg):
            run.log_artifact(_adapter_artifact(wandb, study, trial), aliases=aliases)
    run.finish()


def adapter_aliases(study, cfg) -> list[tuple[Any, list[str]]]:
    """The sweep's trials whose adapter is still on disk and earns an alias: ``pareto`` (on the front the report
    shows), ``chosen`` (the recommended setting's trial), ``confirmed`` (its setting has at least two complete
    confirmation seeds). Ablations choose nothing: their adapters keep the aliases of their own runs."""
    if study.user_attrs.get("kind") == "ablation":
        return []
    from optuna.trial import TrialState

    from cpt_harness.analysis import confirm

    max_forgetting = cfg.study.max_forgetting
    front = {t.number for t in storage.pareto_front(study, max_forgetting)}
    rec = confirm.recommend(study, max_forgetting, confirm.load_study(cfg))
    confirmed = {c.setting for c in rec.settings if len(c.runs) >= 2}
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        aliases = [
            a
            for a, on in (
                ("pareto", t.number in front),
                ("chosen", rec.trial is not None and rec.trial.number == t.number),
                ("confirmed", t.number in confirmed),
            )
            if on
        ]
        adapter = t.user_attrs.get("adapter_dir")
        if aliases and adapter and (Path(adapter) / "adapter_model.safetensors").is_file():
            out.append((t, aliases))
    return out


def _adapter_artifact(wandb, study, trial):
    """The artifact the trial's own run logged (same files, so the same digest and version), to alias it."""
    from cpt_harness.infra import tracking
    from cpt_harness.search.objective import TRIAL_CONFIG, adapter_metadata

    adapter = Path(trial.user_attrs["adapter_dir"])
    config_file = adapter / TRIAL_CONFIG
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else None
    if not isinstance(config, dict):  # an adapter saved before trial configs were written
        config = {
            "study": {"name": study.study_name},
            "trial": {"number": trial.number, **trial.params},
            "model": {"name": (study.user_attrs.get("model_provenance") or {}).get("source", "?")},
        }
    metadata = adapter_metadata(config, trial.user_attrs, study.user_attrs.get("model_provenance") or {})
    return tracking.adapter_artifact(wandb, adapter, tracking.artifact_name(study.study_name, trial.number), metadata)


def _cell(v):
    return v if v is None or isinstance(v, (int, float, str, bool)) else json.dumps(v)
