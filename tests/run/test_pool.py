"""`cpt-harness pool`: real worker processes that import once and serve study after study, and keep the claim,
heartbeat and retry guarantees when one of them is killed mid-trial."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.run import pool, pool_submit
from cpt_harness.search import study as storage
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _env(pool_dir: Path) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", pool.ENV_POOL: str(pool_dir)}
    env.pop("WANDB_SERVICE", None)
    return env


@pytest.fixture
def running_pool(tmp_path, monkeypatch):
    """A pool of 2 CPU workers (peft), its folder under tmp_path; stopped (and checked gone) afterwards."""
    d = tmp_path / "pool"
    monkeypatch.setenv(pool.ENV_POOL, str(d))
    log = open(tmp_path / "pool.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpt_harness", "pool", "--workers", "2", "--backend", "peft"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=_env(d),
    )
    deadline = time.time() + 120
    while time.time() < deadline and len(_imported(d)) < 2:
        assert proc.poll() is None, (tmp_path / "pool.log").read_text()
        time.sleep(0.5)
    assert len(_imported(d)) == 2, (tmp_path / "pool.log").read_text()
    yield d, proc
    assert main(["pool", "--stop"]) == 0  # SIGTERM, as Ctrl-C: the workers exit, the pool's files go
    assert proc.wait(timeout=120) == 0, (tmp_path / "pool.log").read_text()[-3000:]
    assert "stopped" in "\n".join(_log_lines(d))
    assert pool.discover(d) is None and not list((d / "workers").glob("*.json"))


def _imported(d: Path) -> list[str]:
    """The workers' logs' lines saying they imported the backend."""
    return [line for line in _log_lines(d) if line.startswith("[pool]") and "imported in" in line]


def _log_lines(d: Path) -> list[str]:
    return [line for p in (d / "logs").glob("*.log") for line in p.read_text().splitlines()]


def _pids(d: Path) -> dict[str, int]:
    return {(info := json.loads(p.read_text()))["label"]: info["pid"] for p in (d / "workers").glob("*.json")}


@pytest.mark.integration
def test_one_pool_serves_two_successive_sweeps_without_importing_again(running_pool, tiny_overrides, tmp_path, capsys):
    d, _ = running_pool
    pids = _pids(d)
    assert len(pids) == 2
    url = f"sqlite:///{tmp_path}/study.db"
    assert main(["sweep", DEMO, "--n-trials", "2"] + _sets(tiny_overrides)) == 0
    first = capsys.readouterr().out
    assert main(["sweep", DEMO, "--n-trials", "2"] + _sets(tiny_overrides + ["study.name=tiny2"])) == 0
    second = capsys.readouterr().out
    for name, out in (("tiny", first), ("tiny2", second)):
        study = optuna.load_study(study_name=name, storage=url)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2, out
        assert {t.user_attrs["worker"] for t in study.trials} <= set(pids), "the pool's workers ran them"
        assert "handed to the pool" in out and out.count("COMPLETE r=") == 2
    assert _pids(d) == pids, "the same worker processes served both studies"
    assert len(_imported(d)) == 2, "each worker imported the backend once"
    setups = [
        float(m.group(1))
        for line in _log_lines(d)
        if (m := re.search(r"^\[setup\] .*\(imported in ([\d.]+) s\)", line))
    ]
    assert len(setups) == 4 and max(setups) < 0.5, setups  # two studies x two workers, each finding it loaded
    # The second study's first trial starts soon after it is handed over: no import, only the study's own setup
    # (cached data, its base losses). A cold `cpt-harness worker` imports torch, transformers and peft first.
    waited = float(re.search(r"first trial started ([\d.]+) s after", second).group(1))
    imports = [float(re.search(r"imported in ([\d.]+) s", line).group(1)) for line in _imported(d)]
    print(f"second study: first trial {waited:.1f} s after submitting; the workers' imports took {imports}")
    assert waited < 15, second
    assert (tmp_path / "runs" / "tiny2").is_dir()
    assert not list((d / "jobs").iterdir()), "the jobs are gone once done"


@pytest.mark.integration
def test_a_pool_worker_killed_mid_trial_is_restarted_and_its_trial_failed_and_retried(
    running_pool, tiny_overrides, tmp_path
):
    d, _ = running_pool
    overrides = tiny_overrides + [
        "study.heartbeat_interval=1",
        "study.grace_period=10",
        "train.max_steps=150",
        "train.eval_every=150",
    ]
    submit_log = tmp_path / "submit.log"
    submitter = subprocess.Popen(
        [sys.executable, "-m", "cpt_harness", "sweep", DEMO, "--n-trials", "3"] + _sets(overrides),
        stdout=open(submit_log, "w"),
        stderr=subprocess.STDOUT,
        env=_env(d),
    )
    url = f"sqlite:///{tmp_path}/study.db"
    deadline, running = time.time() + 180, None
    while time.time() < deadline and running is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="tiny", storage=url)
        except Exception:  # noqa: BLE001 - not created yet (KeyError), or its tables being created
            continue
        running = next(
            (t for t in study.get_trials(states=[TrialState.RUNNING]) if "wandb_run_id" in t.user_attrs), None
        )
    assert running is not None, submit_log.read_text()[-3000:]
    victim_label = running.user_attrs["worker"]
    victim = _pids(d)[victim_label]
    time.sleep(1)
    os.kill(victim, signal.SIGKILL)
    assert submitter.wait(timeout=600) == 0, submit_log.read_text()[-3000:]

    study = optuna.load_study(study_name="tiny", storage=url)
    killed = study.trials[running.number]
    assert killed.state == TrialState.FAIL
    complete = study.get_trials(states=[TrialState.COMPLETE])
    states = [(t.number, t.state.name, t.user_attrs.get("worker"), t.user_attrs.get("retry_of")) for t in study.trials]
    assert len(complete) == 3 and len(study.trials) == 4, states
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == running.number]
    assert retry.params == killed.params
    (row,) = [r for r in storage.trial_rows(study) if r["number"] == killed.number]
    assert row["fail_reason"] == f"worker died (no heartbeat for over 10 s); retried as trial {retry.number}"
    # The pool restarted the killed worker under its label; the other one is the same process as before.
    after = _pids(d)
    assert set(after) == set(_pids(d)) and after[victim_label] != victim
    assert (tmp_path / "pool.log").read_text().count("restarting it") == 1


def test_without_a_pool_nothing_is_handed_over(tmp_path, monkeypatch, tiny_overrides, capsys):
    monkeypatch.setenv(pool.ENV_POOL, str(tmp_path / "none"))
    assert pool.discover() is None
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "pool.json").write_text(
        json.dumps(  # a dead pool's file
            {"pid": 2**22 + 12345, "host": __import__("socket").gethostname(), "backend": "peft", "slots": []}
        )
    )
    assert pool.discover() is None
    assert main(["pool", "--workers", "0"]) == 2
    assert "must be >= 1" in capsys.readouterr().err
    # a storage URL with a password never goes into a job file: such a command does not use the pool
    from cpt_harness.config.validate import load_config

    live = pool.Pool(tmp_path, os.getpid(), "peft", [])
    cfg = load_config(DEMO, tiny_overrides)
    assert pool_submit.usable(live, cfg)
    cfg.study.storage = "postgresql://cpt:secret@dbhost/cpt"
    assert not pool_submit.usable(live, cfg) and "holds a password" in capsys.readouterr().out
    cfg.study.storage = "postgresql://cpt:${CPT_DB_PASSWORD}@dbhost/cpt"
    assert pool_submit.usable(live, cfg)
    cfg.backend = "unsloth"
    assert not pool_submit.usable(live, cfg)


@pytest.mark.integration
def test_ablate_and_confirm_run_on_the_pool_and_bad_input_exits_2(running_pool, tiny_overrides, tmp_path, capsys):
    d, _ = running_pool
    pids = _pids(d)
    url = f"sqlite:///{tmp_path}/study.db"
    assert main(["sweep", DEMO, "--n-trials", "2"] + _sets(tiny_overrides)) == 0
    ablation = tiny_overrides + [
        "ablation.seeds=2",
        "ablation.factors=[gate_proj]",
        "ablation.rank=8",
        "ablation.learning_rate=2e-3",
    ]
    assert main(["ablate", DEMO] + _sets(ablation)) == 0
    assert main(["confirm", DEMO, "--top", "1", "--seeds", "2"] + _sets(tiny_overrides)) == 0
    out = capsys.readouterr().out
    assert out.count("handed to the pool") == 3
    abl = optuna.load_study(study_name="tiny-ablation", storage=url)
    assert [t.state for t in abl.trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in abl.trials) == sorted(
        (arm, s) for arm in abl.user_attrs["design"]["arms"] for s in (0, 1)
    ), "each arm x seed exactly once"
    conf = optuna.load_study(study_name="tiny-confirm", storage=url)
    assert [t.state for t in conf.trials] == [TrialState.COMPLETE] * 2
    assert {t.user_attrs["worker"] for t in abl.trials + conf.trials} <= set(pids)
    assert _pids(d) == pids
    # A study the workers refuse (resumed with another protocol, found only when they open it): the command
    # exits 2 naming the key, and the pool serves on.
    assert main(["sweep", DEMO, "--n-trials", "2"] + _sets(tiny_overrides + ["train.max_steps=7"])) == 2
    captured = capsys.readouterr()
    assert "handed to the pool" in captured.out
    assert "train.max_steps: 6 -> 7" in captured.err and "use a new study.name" in captured.err, captured.err
    assert _pids(d) == pids and not list((d / "jobs").iterdir())
    # --no-pool: this command's own workers, as without a pool
    assert main(["sweep", DEMO, "--n-trials", "3", "--workers", "2", "--no-pool"] + _sets(tiny_overrides)) == 0
    assert "handed to the pool" not in capsys.readouterr().out
    assert len(list((tmp_path / "runs" / "tiny" / "workers").glob("*.log"))) == 2


def _long_sweep_running(d, tiny_overrides, tmp_path):
    """A 2-trial sweep of long trials handed to the pool in ``d``, once one of its trials runs: (process, log, URL)."""
    overrides = tiny_overrides + ["train.max_steps=300", "train.eval_every=300"]
    submit_log = tmp_path / "submit.log"
    submitter = subprocess.Popen(
        [sys.executable, "-m", "cpt_harness", "sweep", DEMO, "--n-trials", "2"] + _sets(overrides),
        stdout=open(submit_log, "w"),
        stderr=subprocess.STDOUT,
        env=_env(d),
    )
    url = f"sqlite:///{tmp_path}/study.db"
    deadline, running = time.time() + 180, []
    while time.time() < deadline and not running:
        time.sleep(0.5)
        try:
            running = optuna.load_study(study_name="tiny", storage=url).get_trials(states=[TrialState.RUNNING])
        except Exception:  # noqa: BLE001 - not created yet (KeyError), or its tables being created
            continue
    assert running, submit_log.read_text()[-3000:]
    return submitter, submit_log, url


@pytest.mark.integration
def test_ctrl_c_on_a_handed_over_sweep_fails_its_trials_and_the_workers_serve_on(
    running_pool, tiny_overrides, tmp_path
):
    d, _ = running_pool
    pids = _pids(d)
    submitter, submit_log, url = _long_sweep_running(d, tiny_overrides, tmp_path)
    time.sleep(1)
    submitter.send_signal(signal.SIGINT)
    assert submitter.wait(timeout=120) == 130, submit_log.read_text()[-3000:]
    deadline = time.time() + 60
    while time.time() < deadline and any(json.loads(p.read_text())["job"] for p in (d / "workers").glob("*.json")):
        time.sleep(0.5)
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.get_trials(states=[TrialState.RUNNING]) == []
    failed = study.get_trials(states=[TrialState.FAIL])
    assert failed and all(t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in failed)
    assert not list((d / "jobs").glob("*.json")), "the job was withdrawn"
    assert _pids(d) == pids, "the workers were interrupted, not stopped"
    # and they take the next study at once
    assert main(["sweep", DEMO, "--n-trials", "1"] + _sets(tiny_overrides + ["study.name=next"])) == 0
    assert [t.state for t in optuna.load_study(study_name="next", storage=url).trials] == [TrialState.COMPLETE]


@pytest.mark.integration
def test_stopping_the_pool_mid_trial_fails_the_trial_and_the_command_says_so(running_pool, tiny_overrides, tmp_path):
    d, proc = running_pool
    submitter, submit_log, url = _long_sweep_running(d, tiny_overrides, tmp_path)
    time.sleep(1)
    assert main(["pool", "--stop"]) == 0
    assert proc.wait(timeout=120) == 0
    assert submitter.wait(timeout=120) == 1, submit_log.read_text()[-3000:]
    study = optuna.load_study(study_name="tiny", storage=url)
    assert study.get_trials(states=[TrialState.RUNNING]) == [], "no trial is left running"
    assert all(
        t.user_attrs["fail_reason"] == "interrupted (Ctrl-C)" for t in study.get_trials(states=[TrialState.FAIL])
    )
    assert "run the same command again" in submit_log.read_text() or "trials complete" in submit_log.read_text()


@pytest.mark.integration
def test_a_worker_whose_job_is_interrupted_inside_an_import_restarts_itself(tmp_path):
    """A Ctrl-C that cuts an import short leaves the package half set up in the process (pandas then fails every
    later trial with "partially initialized module"): the worker starts afresh, same process id, and serves on."""
    d, label = tmp_path / "pool", "test/cpu/0"
    (d / "jobs").mkdir(parents=True)
    pool._write_json(
        d / "pool.json",
        {
            "pid": os.getpid(),
            "host": pool.socket.gethostname(),
            "backend": "peft",
            "slots": [{"label": label, "gpu": None}],
        },
    )
    pool._write_json(d / "jobs" / "1.json", {"id": "1"})
    started = tmp_path / "importing"
    (tmp_path / "slow_to_import.py").write_text(f"import time\nopen({str(started)!r}, 'w').close()\ntime.sleep(120)\n")
    job_that_imports = (
        f"import sys\nfrom pathlib import Path\nsys.path.insert(0, {str(tmp_path)!r})\n"
        "from cpt_harness.run import pool\n"
        "def run_job(job, label, index):\n    import slow_to_import\n"
        f"pool._run_job = run_job\nsys.exit(pool.worker_main(Path({str(d)!r}), {label!r}, 0, 'peft'))\n"
    )
    log = tmp_path / "worker.log"
    with open(log, "w") as fh:
        worker = subprocess.Popen(
            [sys.executable, "-c", job_that_imports], stdout=fh, stderr=subprocess.STDOUT, env=_env(d)
        )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and not started.exists():
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        worker.send_signal(signal.SIGINT)  # what a withdrawn job's Ctrl-C sends the workers on it
        while time.time() < deadline and log.read_text().count("imported in") < 2:
            assert worker.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert "the interrupt landed in an import; restarting this worker" in text and text.count("imported in") == 2
        assert json.loads((d / "jobs" / "1.left" / "test_cpu_0.json").read_text())["rc"] == 130
        assert _pids(d) == {label: worker.pid}  # the same process, waiting for the next job
        (d / "pool.json").unlink()  # the pool is gone: so is its worker
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
