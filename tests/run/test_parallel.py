"""Several workers on one study: SQLite on one host, PostgreSQL across "hosts", and a worker killed mid-trial.

The PostgreSQL test needs a server: `.ci/run` installs Debian's and exports CPT_TEST_POSTGRES_URL. Without
it the test is skipped locally and fails in CI (CI=1), so it can never pass by being skipped there.
"""

from __future__ import annotations

import fcntl
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.config import ConfigError
from cpt_harness.infra.wandb_files import read_runs
from cpt_harness.run.parallel import auto_trials_per_gpu, physical_gpu
from cpt_harness.search import study as storage
from tests.conftest import ROOT, builtin_docs

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _worker(overrides, label, index, n_trials, log: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "cpt_harness",
        "worker",
        DEMO,
        "--n-trials",
        str(n_trials),
        "--label",
        label,
        "--index",
        str(index),
    ] + _sets(overrides)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("WANDB_SERVICE", None)  # as cpt_harness.parallel does: not this pytest process's W&B service
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)


def _assert_each_trial_completed_once(study, n: int):
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * n, [
        (
            t.number,
            t.state.name,
            t.user_attrs.get("worker"),
            str(t.datetime_start.time()),
            str(t.datetime_complete.time()),
        )
        for t in trials
    ]
    assert sorted(t.number for t in trials) == list(range(n)), "no trial lost, none duplicated"
    assert len({tuple(sorted(t.params.items())) for t in trials}) == n, "every trial proposed its own parameters"


@pytest.mark.integration
def test_sqlite_workers_on_one_host(tiny_overrides, tmp_path, capsys):
    assert main(["sweep", DEMO, "--n-trials", "6", "--workers", "4"] + _sets(tiny_overrides)) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    _assert_each_trial_completed_once(study, 6)
    assert len({t.user_attrs["worker"] for t in study.trials}) >= 2, "the trials were shared out"
    logs = list((tmp_path / "runs" / "tiny" / "workers").glob("*.log"))
    assert len(logs) == 4
    text = "".join(p.read_text() for p in logs)
    assert "database is locked" not in text and "Traceback" not in text
    out = capsys.readouterr().out
    # Workers start while the parent prepares: whichever gets the study's lock first measures the base, once.
    assert (text + out).count("measuring the base model") == 1
    # Each worker says how long its start-up took, up to its first trial (the benchmark's start stagger).
    claimed = [
        re.search(r"first trial (\d+) claimed ([\d.]+) s after this process started", p.read_text()) for p in logs
    ]
    workers_with_trials = {t.user_attrs["worker"] for t in study.trials}
    assert sum(m is not None for m in claimed) == len(workers_with_trials)
    assert all(0 < float(m.group(2)) < 600 for m in claimed if m)
    assert {int(m.group(1)) for m in claimed if m} <= {t.number for t in study.trials}
    assert out.count("COMPLETE r=") == 6 and "6 complete" in out


def test_postgresql_workers_start_cold_and_share_one_study(tiny_overrides, tmp_path):
    url = os.environ.get("CPT_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide a PostgreSQL server (CPT_TEST_POSTGRES_URL); see .ci/run")
        pytest.skip("no PostgreSQL server (set CPT_TEST_POSTGRES_URL)")
    name = f"pg-{uuid.uuid4().hex[:8]}"
    overrides = tiny_overrides + [f"study.storage={url}", f"study.name={name}"]
    # Four "hosts" start at once against a study that does not exist yet.
    procs = [_worker(overrides, f"host{i}", i, 6, tmp_path / f"w{i}.log") for i in range(4)]
    for p in procs:
        assert p.wait(timeout=600) == 0, (tmp_path / f"w{procs.index(p)}.log").read_text()[-3000:]
    study = optuna.load_study(study_name=name, storage=url)
    _assert_each_trial_completed_once(study, 6)
    logs = [(tmp_path / f"w{i}.log").read_text() for i in range(4)]
    assert sum("measuring the base model" in log for log in logs) == 1, "one worker measured the base; others waited"
    assert all("Traceback" not in log for log in logs)
    assert len(set(study.user_attrs["base"].values())) == 2


def test_a_parallel_sweep_whose_setup_fails_stops_its_workers(tiny_overrides, tmp_path, capsys):
    # The workers start while the parent prepares; a setup error must stop them, not leave them running.
    # One paragraph of over 64 KiB: validate reads only the first 64 KiB, so this passes it and fails at setup.
    (tmp_path / "one-doc.txt").write_text("".join(" ".join(d.split()) + "\n" for d in builtin_docs("legal", 80)))
    bad = tiny_overrides + [f"data.domain={tmp_path}/one-doc.txt"]
    assert main(["sweep", DEMO, "--n-trials", "2", "--workers", "2"] + _sets(bad)) != 0
    captured = capsys.readouterr()
    assert "need at least 2 documents" in captured.err + captured.out and "Traceback" not in captured.err
    logs = list((tmp_path / "runs" / "tiny" / "workers").glob("*.log"))
    assert len(logs) == 2, "both workers had started"
    still_running = [
        p for p in Path("/proc").glob("[0-9]*") if _cmdline(p).count(str(tmp_path)) and "worker" in _cmdline(p)
    ]
    assert not still_running, [_cmdline(p) for p in still_running]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_storage_setup_waits_on_the_claim_lock_only_while_the_tables_do_not_exist(tmp_path):
    def set_up_in_thread(url):
        t = threading.Thread(target=storage.make_storage, args=(url, 30), daemon=True)
        t.start()
        return t

    empty = f"sqlite:///{tmp_path}/empty.db"
    assert not storage.schema_ready(empty)
    with storage.claim_lock(empty):  # another worker is creating the tables: wait for it, do not race it
        t = set_up_in_thread(empty)
        t.join(timeout=3)
        assert t.is_alive(), "set up an empty database without the lock"
    t.join(timeout=60)
    assert not t.is_alive() and storage.schema_ready(empty)
    # Tables there: a worker joining while another holds the lock to claim a trial does not queue behind it.
    with storage.claim_lock(empty):
        t = set_up_in_thread(empty)
        t.join(timeout=60)
        assert not t.is_alive(), "queued behind the claim lock although the tables exist"


def test_a_worker_that_waited_for_the_tables_sets_up_its_storage_after_the_lock(tmp_path, monkeypatch):
    # Many workers on an empty database queue for the lock; once one has created the tables, the rest must not
    # set up their storage (~1 s each) while holding it, or they queue behind each other again.
    url = f"sqlite:///{tmp_path}/s.db"
    real, under_lock = optuna.storages.RDBStorage, []

    def recording(*args, **kwargs):
        with open(tmp_path / "s.db.lock", "a") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(fh, fcntl.LOCK_UN)
                under_lock.append(False)
            except BlockingIOError:
                under_lock.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", recording)
    with storage.claim_lock(url):  # another worker holds it and creates the tables
        t = threading.Thread(target=storage.make_storage, args=(url, 30), daemon=True)
        t.start()
        t.join(timeout=3)
        assert t.is_alive()
        real(url)
    t.join(timeout=60)
    assert not t.is_alive() and under_lock == [False]


@pytest.mark.integration
def test_a_killed_worker_trial_is_failed_retried_and_its_run_resumed(tiny_overrides, tmp_path):
    overrides = tiny_overrides + [
        "study.heartbeat_interval=1",
        "study.grace_period=10",
        "train.max_steps=150",
        "train.eval_every=150",
    ]
    victim = _worker(overrides, "victim", 0, 3, tmp_path / "victim.log")
    study_url = f"sqlite:///{tmp_path}/study.db"
    deadline, running = time.time() + 180, None
    while time.time() < deadline and running is None:
        time.sleep(0.5)
        try:
            study = optuna.load_study(study_name="tiny", storage=study_url)
        except KeyError:
            continue
        running = next(
            (
                t
                for t in study.get_trials(states=[TrialState.RUNNING])
                if t.user_attrs.get("worker") == "victim" and "wandb_run_id" in t.user_attrs
            ),
            None,
        )
    assert running is not None, (tmp_path / "victim.log").read_text()[-3000:]
    time.sleep(1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = _worker(overrides, "survivor", 1, 3, tmp_path / "survivor.log")
    assert survivor.wait(timeout=600) == 0, (tmp_path / "survivor.log").read_text()[-3000:]

    study = optuna.load_study(study_name="tiny", storage=study_url)
    killed = study.trials[running.number]
    assert killed.state == TrialState.FAIL
    complete = study.get_trials(states=[TrialState.COMPLETE])
    states = [(t.number, t.state.name, t.user_attrs.get("worker"), t.user_attrs.get("retry_of")) for t in study.trials]
    assert len(complete) == 3 and len(study.trials) == 4, states
    (retry,) = [t for t in complete if t.user_attrs.get("retry_of") == running.number]
    assert retry.params == killed.params and retry.user_attrs["worker"] == "survivor"
    assert retry.user_attrs.get("fail_reason") is None
    (row,) = [r for r in storage.trial_rows(study) if r["number"] == killed.number]
    assert row["fail_reason"] == f"worker died (no heartbeat for over 10 s); retried as trial {retry.number}"
    # The dead worker's W&B run is resumed by the retry (same run id), which closes it.
    runs = [
        r
        for r in read_runs(Path(os.environ["WANDB_DIR"]))
        if r.path.parent.name.endswith(running.user_attrs["wandb_run_id"])
        or running.user_attrs["wandb_run_id"] in r.path.parent.name
    ]
    assert len(runs) == 2 and sorted(r.exit_code is not None for r in runs) == [False, True]


def test_auto_trials_per_gpu_fits_the_card():
    assert auto_trials_per_gpu(peak_gb=1.2, free_gb=139.0) == 8  # capped
    assert auto_trials_per_gpu(peak_gb=20.0, free_gb=78.0) == 2
    assert auto_trials_per_gpu(peak_gb=70.0, free_gb=78.0) == 1  # never zero


def test_gpu_numbers_are_as_this_process_sees_them():
    # A worker's CUDA_VISIBLE_DEVICES replaces the parent's, so it must name the device the parent calls GPU n.
    assert physical_gpu(0, visible="") == "0" and physical_gpu(3, visible="") == "3"
    assert physical_gpu(0, visible="2,3") == "2" and physical_gpu(1, visible="2, 3") == "3"
    assert physical_gpu(0, visible="GPU-5f1c") == "GPU-5f1c"
    with pytest.raises(ConfigError, match=r"GPU 2 is not visible.*use 0\.\.1"):
        physical_gpu(2, visible="2,3")


@pytest.mark.integration
def test_a_killed_workers_trial_resumes_from_its_saved_state_and_ends_as_an_uninterrupted_run(tiny_overrides, tmp_path):
    # train.checkpoint_every: the worker is killed (SIGKILL) mid-trial once it has saved a state; the retry goes on
    # from there and ends with the losses, curve and per-document evals of the same trial run without a death.
    overrides = tiny_overrides + [
        "study.heartbeat_interval=1",
        "study.grace_period=5",
        "lora.dropout=0.1",
        "train.max_steps=600",
        "train.eval_every=50",
        "train.checkpoint_every=50",
    ]
    state = tmp_path / "runs" / "tiny" / "trial-0000" / "resume" / "state.pt"
    victim = _worker(overrides, "victim", 0, 1, tmp_path / "victim.log")
    deadline = time.time() + 300
    while time.time() < deadline and not state.exists() and victim.poll() is None:
        time.sleep(0.05)
    assert state.exists(), (tmp_path / "victim.log").read_text()[-3000:]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    survivor = _worker(overrides, "survivor", 1, 1, tmp_path / "survivor.log")
    # The same trial, never interrupted: a study of its own, worker index 0 as the victim (the same sampler seed,
    # so the same first parameters).
    reference = _worker(overrides + ["study.name=tiny-ref"], "reference", 0, 1, tmp_path / "reference.log")
    for name, proc in (("survivor", survivor), ("reference", reference)):
        assert proc.wait(timeout=600) == 0, (tmp_path / f"{name}.log").read_text()[-3000:]

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    killed, retry = study.trials
    assert killed.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.user_attrs["retry_of"] == 0
    resumed = retry.user_attrs["resumed_from"]
    assert resumed["trial"] == 0 and resumed["step"] % 50 == 0 and 50 <= resumed["step"] < 600, resumed
    (ref,) = optuna.load_study(study_name="tiny-ref", storage=f"sqlite:///{tmp_path}/study.db").trials
    assert ref.state == TrialState.COMPLETE and ref.params == retry.params and "resumed_from" not in ref.user_attrs
    for key in ("domain_loss", "general_loss", "general_kl", "train_loss", "tokens_seen", "forgetting"):
        assert retry.user_attrs[key] == ref.user_attrs[key], key
    assert retry.values == ref.values
    assert retry.user_attrs["curve"] == ref.user_attrs["curve"] and len(ref.user_attrs["curve"]) == 12
    import numpy as np

    runs = tmp_path / "runs"  # evals_file: relative to the study's folder
    with (
        np.load(runs / "tiny" / retry.user_attrs["evals_file"]) as a,
        np.load(runs / "tiny-ref" / ref.user_attrs["evals_file"]) as b,
    ):
        assert sorted(a.files) == sorted(b.files)
        for name in a.files:
            assert np.array_equal(a[name], b[name]), name
    assert not state.parent.exists(), "the saved state goes once the trial has completed"
