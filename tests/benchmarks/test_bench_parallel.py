"""benchmarks/parallel.py on the CPU: a run through its own workers and a run handed to a warm pool (--pool)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def _bench(args, tiny_overrides, tmp_path):
    keep = [o for o in tiny_overrides if not o.startswith(("study.storage", "study.output_dir", "study.name"))]
    out = tmp_path / "bench.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", "CPT_HARNESS_CACHE": str(tmp_path / "cache")}
    env.pop("WANDB_SERVICE", None)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.parallel",
            str(ROOT / "sweeps" / "demo.yaml"),
            "--workers",
            "--steps",
            "4",
            "--rank",
            "8",
            "--lr",
            "2e-3",
            "--out",
            str(out),
            *args,
            *[x for o in keep for x in ("--set", o)],
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return json.loads(out.read_text())["runs"], proc.stdout


@pytest.mark.integration
def test_a_run_through_its_own_workers_starts_them(tiny_overrides, tmp_path):
    [run], stdout = _bench(["--ks", "2", "--waves", "1"], tiny_overrides, tmp_path)
    assert "pool" not in run and run["complete"] == 2 and "[parallel] 2 workers:" in stdout


@pytest.mark.integration
def test_a_pooled_run_hands_its_study_to_a_warm_pool_and_counts_its_trials(tiny_overrides, tmp_path):
    [run], stdout = _bench(["--ks", "2", "--waves", "1", "--pool"], tiny_overrides, tmp_path)
    assert run["pool"] is True and run["label"] == "k2-cpu-pool" and run["workers"] == 2
    assert run["complete"] == run["n_trials"] == 2 and run["failed"] == 0 and run["rc"] == 0
    assert run["pool_warm_up_s"] > 0 and run["trials_per_hour"] > 0
    # the sweep ran on the pool's workers: it handed its study over and started none of its own
    assert "handed to the pool" in stdout and "[parallel] 2 workers:" not in stdout, stdout[-2000:]
