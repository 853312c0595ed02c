"""W&B beyond the curves, read back from the real offline run files: adapters as `model` artifacts by reference,
the trial config beside the adapter, forgetting and domain gain as curves, the summaries define_metric keeps, and
a summary run whose id stays the same from one report to the next."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.infra import tracking
from cpt_harness.infra.wandb_files import read_runs
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sweep(overrides, n=3, extra=()):
    assert main(["sweep", DEMO, "--n-trials", str(n)] + [x for o in [*overrides, *extra] for x in ("--set", o)]) == 0


@pytest.fixture
def swept(tiny_overrides, tmp_path):
    """A 3-trial sweep (adapters kept for the Pareto front), then `report` run twice."""
    _sweep(tiny_overrides)
    args = ["report", DEMO, "--out", str(tmp_path / "report")] + [x for o in tiny_overrides for x in ("--set", o)]
    assert main(args) == 0
    assert main(args) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    return study, read_runs(Path(os.environ["WANDB_DIR"]))


def test_every_saved_adapter_is_a_model_artifact_by_reference(swept, tmp_path):
    study, runs = swept
    trial_runs = {r.config["trial"]["number"]: r for r in runs if r.job_type == "trial"}
    base = study.user_attrs["base"]
    for t in study.get_trials(states=[TrialState.COMPLETE]):
        run = trial_runs[t.number]
        [art] = run.artifacts  # every trial saved an adapter; the dominated ones were deleted after it was logged
        assert art["type"] == "model" and art["name"] == f"adapter-tiny-t{t.number:04d}"
        adapter = (tmp_path / "runs" / "tiny" / f"trial-{t.number:04d}" / "adapter").resolve()
        files = {e["path"]: e for e in art["manifest"]}
        assert {"adapter/adapter_model.safetensors", "adapter/adapter_config.json", "adapter/trial_config.yaml"} <= set(
            files
        )
        weights = files["adapter/adapter_model.safetensors"]
        # By reference: a file:// URI with its size and checksum, nothing staged for upload.
        assert weights["ref"] == (adapter / "adapter_model.safetensors").as_uri() and not weights["local_path"]
        assert weights["size"] > 10_000 and weights["digest"]
        meta = art["metadata"]
        assert meta["trial"] == t.number and meta["params"]["rank"] == t.params["rank"]
        assert meta["metrics"]["domain_loss"] == pytest.approx(t.user_attrs["domain_loss"])
        assert meta["metrics"]["forgetting"] == pytest.approx(t.user_attrs["forgetting"])
        assert meta["base_model"]["name"] == str(run.config["model"]["name"])
        assert meta["base_model"]["provenance"] == study.user_attrs["model_provenance"]
        assert meta["config"]["optuna_params"] == t.params
        # Forgetting and domain gain are curves against tokens seen, from the base losses known at the start.
        evals = [h for h in run.history if "eval/forgetting" in h]
        assert [h["tokens_seen"] for h in evals] == [768, 1536]
        for h in evals:
            assert h["eval/forgetting"] == pytest.approx(h["eval/general_loss"] - base["general_loss"])
            assert h["eval/domain_gain"] == pytest.approx(base["domain_loss"] - h["eval/domain_loss"])
        assert run.metrics["eval/forgetting"] == {"step_metric": "tokens_seen", "summary": ["min", "last"]}
        assert run.metrics["eval/domain_gain"]["summary"] == ["max", "last"]
        assert run.summary["eval/domain_loss"]["last"] == pytest.approx(t.user_attrs["domain_loss"])
        assert run.summary["eval/domain_loss"]["min"] == pytest.approx(min(h["eval/domain_loss"] for h in evals))
    # No copy of any adapter's weights under the W&B folder.
    assert not list(Path(os.environ["WANDB_DIR"]).rglob("adapter_model.safetensors"))


def test_the_trial_config_sits_beside_the_adapter(swept, tmp_path):
    study, _ = swept
    front = {t.number for t in study.best_trials}
    for t in study.get_trials(states=[TrialState.COMPLETE]):
        path = tmp_path / "runs" / "tiny" / f"trial-{t.number:04d}" / "adapter" / "trial_config.yaml"
        assert path.is_file() == (t.number in front)  # pruned with its adapter
        if path.is_file():
            config = yaml.safe_load(path.read_text())
            assert config["optuna_params"] == t.params and config["trial"]["number"] == t.number
            assert config["train"]["max_steps"] == 6 and config["base"] == study.user_attrs["base"]


def test_report_updates_one_summary_run_and_aliases_the_kept_adapters(swept):
    study, runs = swept
    summary = [r for r in runs if r.job_type == "summary"]
    # Two reports, one run: the same id in both offline folders, the second marked to resume it on sync.
    assert len(summary) == 2 and {r.run_id for r in summary} == {tracking.summary_run_id("tiny")}
    assert all(r.resume for r in summary)
    assert summary[0].config["objectives"] == {
        "domain_loss": "minimize",
        "forgetting": "minimize",
        "domain_gain": "maximize",
    }
    models = [a for a in summary[-1].artifacts if a["type"] == "model"]
    aliased = {a["name"]: set(a["aliases"]) for a in models}
    front = {t.number for t in study.best_trials}
    assert set(aliased) == {f"adapter-tiny-t{n:04d}" for n in front}
    assert all("pareto" in a for a in aliased.values())
    assert sum("chosen" in a for a in aliased.values()) == 1  # no confirmation study: nothing is confirmed
    assert not any("confirmed" in a for a in aliased.values())
    # The alias goes to the version the trial's run logged: same files, same digest.
    by_trial = {a["name"]: a["digest"] for r in runs if r.job_type == "trial" for a in r.artifacts}
    assert all(a["digest"] == by_trial[a["name"]] for a in models)


def test_log_adapters_false_logs_none(tiny_overrides):
    _sweep(tiny_overrides, n=1, extra=["tracking.wandb.log_adapters=false"])
    [run] = read_runs(Path(os.environ["WANDB_DIR"]))
    assert run.artifacts == [] and run.exit_code == 0
    assert any("eval/forgetting" in h for h in run.history)


def test_summary_run_ids_are_stable_and_valid():
    assert tracking.summary_run_id("tiny") == tracking.summary_run_id("tiny")
    assert tracking.summary_run_id("a/b c") != tracking.summary_run_id("a-b-c")
    assert set(tracking.summary_run_id("legal: r=64/β")) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
    )
    assert tracking.artifact_name("gpu legal", 3) == "adapter-gpu-legal-t0003"
