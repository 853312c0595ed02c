"""End-to-end sweeps on the tiny model: the real Optuna SQLite study, real W&B offline run files."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.evaluate import evaluation as train_evaluation
from cpt_harness.infra.cache import build_once
from cpt_harness.infra.wandb_files import read_runs
from cpt_harness.train import loop as train
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def load(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/study.db")


@pytest.mark.integration
def test_sweep_end_to_end(tiny_overrides, tmp_path, capsys):
    args = ["sweep", DEMO, "--n-trials", "3"] + [x for o in tiny_overrides for x in ("--set", o)]
    assert main(args) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    complete = study.get_trials(states=[TrialState.COMPLETE])
    assert len(complete) == 3
    base = study.user_attrs["base"]
    assert set(study.user_attrs["fingerprints"]) == {"model", "data", "search_space"}
    for t in complete:
        a = t.user_attrs
        assert len(t.values) == 2 and t.values == [a["domain_loss"], a["forgetting"]]
        assert a["forgetting"] == pytest.approx(a["general_loss"] - base["general_loss"])
        assert a["domain_gain"] == pytest.approx(base["domain_loss"] - a["domain_loss"])
        assert a["domain_gain"] > 0, "a random-init tiny model learns the domain at lr >= 1e-3"
        for key in (
            "tokens_seen",
            "tokens_per_s",
            "peak_memory_gb",
            "lora_scale",
            "trainable_lora",
            "trainable_embedding",
            "embedding_lr",
            "curve",
            "audit",
            "timings",
        ):
            assert key in a, key
        assert a["embedding_lr"] == pytest.approx(t.params["embedding_lr_ratio"] * t.params["learning_rate"])
        assert a["audit"]["groups"]["embedding"]["lr"] == pytest.approx(a["embedding_lr"])

    # One line per finished trial, then the table with the Pareto front marked.
    assert out.count("COMPLETE r=") == 3
    front = {t.number for t in study.best_trials}
    assert f"3 complete, {len(front)} on the Pareto front" in out

    # W&B: one offline run per trial, read back from the real run files.
    runs = read_runs(Path(os.environ["WANDB_DIR"]))
    assert len(runs) == 3
    by_number = {r.config["trial"]["number"]: r for r in runs}
    for t in complete:
        run = by_number[t.number]
        assert run.group == "tiny" and run.job_type == "trial" and run.exit_code == 0
        assert run.config["optuna_params"] == t.params
        assert run.config["study"]["name"] == "tiny" and run.config["train"]["max_steps"] == 6
        assert run.summary["domain_loss"] == pytest.approx(t.user_attrs["domain_loss"])
        assert run.summary["forgetting"] == pytest.approx(t.user_attrs["forgetting"])
        assert run.summary["lora_scale"] == pytest.approx(t.user_attrs["lora_scale"])
        evals = [h for h in run.history if "eval/domain_loss" in h]
        assert [h["tokens_seen"] for h in evals] == [768, 1536]
        assert evals[-1]["eval/domain_loss"] == pytest.approx(t.user_attrs["domain_loss"])

    # Adapters: kept for the Pareto front (loadable), pruned for the rest.
    for t in complete:
        adapter = tmp_path / "runs" / "tiny" / f"trial-{t.number:04d}" / "adapter"
        assert (adapter / "adapter_model.safetensors").is_file() == (t.number in front)


@pytest.mark.integration
def test_saved_adapter_loads_and_reproduces_the_domain_loss(tiny_overrides, tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cpt_harness import data
    from cpt_harness.config.validate import load_config

    assert (
        main(
            ["sweep", DEMO, "--n-trials", "1", "--set", "study.keep_adapters=all"]
            + [x for o in tiny_overrides for x in ("--set", o)]
        )
        == 0
    )
    (t,) = load(tmp_path).get_trials(states=[TrialState.COMPLETE])
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), t.user_attrs["adapter_dir"])
    cfg = load_config(DEMO, tiny_overrides)
    corpora = data.prepare(cfg.data, AutoTokenizer.from_pretrained(tiny_model), 64, cfg.eval.max_tokens)
    import contextlib

    loss = train_evaluation.evaluate(model, corpora.domain_eval, 8, "cpu", contextlib.nullcontext)
    assert loss == pytest.approx(t.user_attrs["domain_loss"], rel=1e-4)


@pytest.mark.integration
def test_resume_adds_only_the_missing_trials(tiny_overrides, tmp_path):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["sweep", DEMO, "--n-trials", "2"] + sets) == 0
    first = [(t.number, t.params) for t in load(tmp_path).trials]
    assert main(["sweep", DEMO, "--n-trials", "3"] + sets) == 0
    study = load(tmp_path)
    assert len(study.trials) == 3 and [(t.number, t.params) for t in study.trials[:2]] == first
    assert study.trials[2].params != study.trials[0].params, "a resumed sampler does not repeat itself"
    assert main(["sweep", DEMO, "--n-trials", "3"] + sets) == 0
    assert len(load(tmp_path).trials) == 3, "a complete study runs nothing more"


@pytest.mark.integration
def test_resume_with_a_different_search_space_is_refused(tiny_overrides, tmp_path, capsys):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["sweep", DEMO, "--n-trials", "1"] + sets) == 0
    assert main(["sweep", DEMO, "--n-trials", "2", "--set", "search.rank.choices=[8]"] + sets) == 2
    err = capsys.readouterr().err
    assert "study 'tiny'" in err and "different search_space" in err and "use a new study.name" in err
    assert len(load(tmp_path).trials) == 1


@pytest.mark.integration
def test_failed_trial_is_recorded_and_the_sweep_goes_on(tiny_overrides, tmp_path, monkeypatch, capsys):
    real = train.run_trial
    calls = {"n": 0}

    def first_one_runs_out_of_memory(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "run_trial", first_one_runs_out_of_memory)
    assert main(["sweep", DEMO, "--n-trials", "2"] + [x for o in tiny_overrides for x in ("--set", o)]) == 0
    study = load(tmp_path)
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"] == "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert (tmp_path / "runs" / "tiny" / "trial-0000" / "error.log").read_text().startswith("Traceback")
    assert "FAIL     r=" in capsys.readouterr().out
    failed_run = [r for r in read_runs(Path(os.environ["WANDB_DIR"])) if r.config["trial"]["number"] == 0][0]
    assert failed_run.exit_code == 1 and "CUDA out of memory" in failed_run.summary["fail_reason"]


@pytest.mark.integration
def test_sweep_stops_after_max_failures(tiny_overrides, tmp_path, capsys):
    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["sweep", DEMO, "--set", "train.time_limit_s=1e-6", "--set", "study.max_failures=2"] + sets) == 1
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("time limit" in t.user_attrs["fail_reason"] for t in study.trials)
    assert "2 trials failed in this run (study.max_failures=2)" in capsys.readouterr().err


@pytest.mark.integration
def test_ctrl_c_leaves_the_study_intact(tiny_overrides, tmp_path):
    sets = [x for o in tiny_overrides + ["train.max_steps=100000", "train.eval_every=100000"] for x in ("--set", o)]
    # SIG_DFL in the child: a shell that started the test suite in the background left SIGINT ignored, and an
    # ignored signal stays ignored across exec; a terminal's Ctrl-C is what this test stands for.
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpt_harness", "sweep", DEMO] + sets,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.5)
        try:
            if load(tmp_path).get_trials(states=[TrialState.RUNNING]):
                break
        except Exception:  # noqa: BLE001 - not created yet, or being created
            continue
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: the study is intact" in err and "Traceback" not in err
    (t,) = load(tmp_path).trials
    assert t.state == TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)"


def _build_slowly(args):
    final, log = args

    def build(tmp):
        with open(log, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)
        (tmp / "weights").write_text("ok")

    return str(build_once(Path(final), build))


@pytest.mark.integration
def test_cold_start_builds_once_across_processes(tmp_path):
    final, log = tmp_path / "cache" / "model", tmp_path / "log"
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        results = pool.map(_build_slowly, [(str(final), str(log))] * 4)
    assert set(results) == {str(final)}
    assert log.read_text() == "built\n"
    assert (final / "weights").read_text() == "ok"
    assert not [p for p in final.parent.iterdir() if p.name.startswith(".model.") and p.is_dir()]


@pytest.mark.integration
def test_a_dead_workers_trial_says_why_it_failed_and_which_trial_retries_it(tiny_cfg):
    from cpt_harness.search import study as storage
    from cpt_harness.search import trials

    tiny_cfg.study.heartbeat_interval, tiny_cfg.study.grace_period, tiny_cfg.study.max_retries = 1, 2, 1
    db = storage.storage_for(tiny_cfg)
    study = optuna.create_study(study_name="hb", storage=db, directions=["minimize"] * 2)
    study.enqueue_trial({"x": 1.0})
    dead = study.ask()
    dead.set_user_attr("worker", "gone")
    trials.mark_running(dead, tiny_cfg)  # as sweep.work does before running it
    assert "fail_reason" not in storage.trial_rows(study)[0], "a running trial shows no reason"
    db.record_heartbeat(trials.trial_id(db, study, dead.number))  # then the worker dies: no more heartbeats
    time.sleep(3.1)  # SQLite keeps heartbeats to the second: over 2 s old for sure
    trials.fail_stale(study)
    failed, retry = study.get_trials()
    assert failed.state == TrialState.FAIL and retry.state == TrialState.WAITING and retry.number == 1
    assert storage.trial_rows(study)[0]["fail_reason"] == "worker died (no heartbeat for over 2 s); retried as trial 1"
    assert retry.user_attrs["worker"] == "gone"
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0

    again = study.ask()  # the retry, whose worker dies too: study.max_retries=1 is spent
    assert again.number == 1
    trials.mark_running(again, tiny_cfg)
    db.record_heartbeat(trials.trial_id(db, study, again.number))
    time.sleep(3.1)  # SQLite keeps heartbeats to the second: over 2 s old for sure
    trials.fail_stale(study)
    assert [t.state for t in study.get_trials()] == [TrialState.FAIL] * 2
    assert storage.trial_rows(study)[1]["fail_reason"].startswith(
        "worker died (no heartbeat for over 2 s); not retried (study.max_retries reached"
    )


def test_a_trial_whose_parameters_cannot_be_drawn_says_why(tiny_cfg, tmp_path):
    from cpt_harness.infra.tracking import Tracker
    from cpt_harness.search.objective import Objective, TrialContext

    ctx = TrialContext(
        tiny_cfg, backend=None, model_path="", corpora=None, base={}, tracker=Tracker(), study_dir=tmp_path
    )
    trial = optuna.trial.FixedTrial({"learning_rate": 2e-3})  # no rank: suggesting it fails
    with pytest.raises(ValueError):
        Objective(ctx)(trial)
    assert trial.user_attrs["fail_reason"].startswith("ValueError:") and "rank" in trial.user_attrs["fail_reason"]
    assert (tmp_path / f"trial-{trial.number:04d}" / "error.log").is_file()
