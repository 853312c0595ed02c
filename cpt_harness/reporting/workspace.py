"""A study's W&B workspace, built with ``wandb-workspaces`` (the ``dashboard`` extra): the panels a user would
otherwise build by hand.

- curves against tokens seen (domain loss, forgetting, domain gain, general KL, train loss), grouped by arm
  for an ablation (mean and min-max over seeds);
- the Pareto scatter of domain loss against forgetting;
- parallel coordinates over rank, LR and embedding-LR ratio to both objectives; importances for both;
- the summary run's table of every trial (``cpt-harness report``).

The runs shown are the study's (W&B group = study name) and its ablation's and confirmation's, where they exist.
``spec`` is the workspace as plain data and ``workspace`` builds the ``wandb_workspaces`` object from it. Online,
``save`` writes it to W&B; offline, ``write_spec`` puts the spec in a JSON file, which ``python -m
cpt_harness.workspace SPEC`` saves later. A workspace needs an entity: ``tracking.wandb.entity``, else
``$WANDB_ENTITY``, else, when pushed, the logged-in user's default entity (where ``wandb sync`` puts runs that
were logged offline without an entity).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PARAMS = ("rank", "learning_rate", "embedding_lr_ratio")  # trial.<name> in every trial run's config
CURVES = ("eval/domain_loss", "eval/forgetting", "eval/domain_gain", "eval/general_kl", "train/loss")
OBJECTIVES = ("domain_loss", "forgetting")


def _modules():
    try:
        import wandb_workspaces.reports.v2 as wr
        import wandb_workspaces.workspaces as ws
    except ImportError:
        raise ImportError("the W&B workspace needs wandb-workspaces: pip install -e '.[dashboard]'") from None
    return ws, wr


def entity(cfg) -> str:
    """Where the workspace's entity comes from: the sweep file, else $WANDB_ENTITY; "" until pushed."""
    return cfg.tracking.wandb.entity or os.environ.get("WANDB_ENTITY", "")


def spec(cfg, groups: list[str], arms: bool = False) -> dict:
    """The workspace as plain data (what a spec file holds): the runs of ``groups`` (study names), curves against
    tokens seen (grouped by ablation arm with ``arms``: mean and min-max over seeds), the Pareto scatter, parallel
    coordinates, importances and the trials table."""
    group_by = {"groupby": "arm", "aggfunc": "mean", "rangefunc": "minmax"} if arms else {}
    curves = [{"type": "line", "title": f"{y} vs tokens seen", "x": "tokens_seen", "y": y, **group_by} for y in CURVES]
    search = [
        {
            "type": "scatter",
            "title": "Pareto: domain loss vs forgetting",
            "x": "summary:forgetting",
            "y": "summary:domain_loss",
        },
        {
            "type": "parallel",
            "title": "rank, LR, embedding-LR ratio -> objectives",
            "columns": [f"config:trial.{p}" for p in PARAMS] + [f"summary:{m}" for m in OBJECTIVES],
        },
    ]
    search += [{"type": "importance", "with_respect_to": m} for m in OBJECTIVES]
    return {
        "name": f"cpt-harness: {groups[0]}",
        "entity": entity(cfg),
        "project": cfg.tracking.wandb.project,
        "x_axis": "tokens_seen",
        "filters": {"group": groups},
        "groupby": ["arm"] if arms else [],
        "order": "summary:domain_loss",
        "sections": [
            {"name": "Curves vs tokens seen", "panels": curves},
            {"name": "Search: Pareto front, parameters, importances", "panels": search},
            {"name": "Trials table (cpt-harness report)", "panels": [{"type": "table", "table": "trials"}]},
        ],
    }


def _metric(wr, ref: str):
    kind, _, name = ref.partition(":")
    return wr.Config(name) if kind == "config" else wr.SummaryMetric(name)


def _panel(wr, p: dict):
    if p["type"] == "line":
        group = (
            dict(groupby=wr.Config(p["groupby"]), groupby_aggfunc=p["aggfunc"], groupby_rangefunc=p["rangefunc"])
            if "groupby" in p
            else {}
        )
        return wr.LinePlot(title=p["title"], x=p["x"], y=[p["y"]], title_x="tokens seen", **group)
    if p["type"] == "scatter":
        return wr.ScatterPlot(title=p["title"], x=_metric(wr, p["x"]), y=_metric(wr, p["y"]))
    if p["type"] == "parallel":
        return wr.ParallelCoordinatesPlot(
            title=p["title"],
            columns=[
                wr.ParallelCoordinatesPlotColumn(
                    metric=_metric(wr, c),
                    display_name=c.split(":")[1].removeprefix("trial."),
                    log=c.endswith("learning_rate"),
                )
                for c in p["columns"]
            ],
        )
    if p["type"] == "importance":
        return wr.ParameterImportancePlot(with_respect_to=p["with_respect_to"])
    return wr.WeavePanelSummaryTable(table_name=p["table"], layout=wr.Layout(w=24, h=12))


def workspace(data: dict):
    """The ``wandb_workspaces`` Workspace of a spec (it validates every panel); ``.save()`` writes it to W&B."""
    ws, wr = _modules()
    sections = [
        ws.Section(
            name=s["name"],
            panels=[_panel(wr, p) for p in s["panels"]],
            is_open=True,
            panel_settings=ws.SectionPanelSettings(x_axis=data["x_axis"]),
        )
        for s in data["sections"]
    ]
    return ws.Workspace(
        name=data["name"],
        entity=data["entity"],
        project=data["project"],
        sections=sections,
        settings=ws.WorkspaceSettings(x_axis=data["x_axis"], max_runs=100),
        runset_settings=ws.RunsetSettings(
            filters=[ws.Metric("group").isin(data["filters"]["group"])],
            groupby=[ws.Config(g) for g in data["groupby"]],
            order=[ws.Ordering(ws.Summary(data["order"].split(":")[1]))],
        ),
    )


def study_groups(cfg) -> tuple[list[str], bool]:
    """The W&B groups to show (the sweep's, its confirmation's and its ablation's studies, those that exist), and
    whether curves are grouped by arm (only the ablation exists)."""
    from cpt_harness.analysis import ablation, confirm
    from cpt_harness.search import study as storage

    names = [s.study_name for s in storage.make_storage(cfg.study.storage).get_all_studies()]
    wanted = [cfg.study.name, confirm.study_name(cfg), ablation.study_name(cfg)]
    groups = [n for n in wanted if n in names]
    return groups, groups == [ablation.study_name(cfg)]


def write_spec(data: dict, path: Path) -> Path:
    workspace(data)  # a spec that would not build is not written
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return path


def save(data: dict, entity_name: str | None = None) -> str:
    """Save the workspace to W&B (needs an API key); its URL. The entity: ``entity_name``, the spec's, else the
    logged-in user's default entity."""
    import wandb

    data = {**data, "entity": entity_name or data["entity"] or wandb.Api().default_entity}
    return workspace(data).save().url


if __name__ == "__main__":  # python -m cpt_harness.reporting.workspace SPEC [ENTITY]
    if len(sys.argv) not in (2, 3) or not Path(sys.argv[1]).is_file():
        sys.exit(
            "usage: python -m cpt_harness.reporting.workspace SPEC.json [ENTITY]  (a spec `cpt-harness dashboard --wandb` "
            "wrote offline; needs WANDB_API_KEY or `wandb login`)"
        )
    print(save(json.loads(Path(sys.argv[1]).read_text()), sys.argv[2] if len(sys.argv) == 3 else None))
