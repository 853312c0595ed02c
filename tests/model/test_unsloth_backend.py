"""The unsloth backend. Unsloth must be imported before transformers, which this pytest process has long since
imported, so every check here runs the real CLI in a fresh process and reads the results back from the
study database. Skipped where unsloth or a CUDA GPU is missing (CI has neither; the GPU run is recorded in
reports/ and benchmarks/RESULTS.md)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import ROOT


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


needs_unsloth_gpu = pytest.mark.skipif(
    importlib.util.find_spec("unsloth") is None or not _cuda(), reason="needs unsloth and a CUDA GPU"
)


def test_unsloth_backend_refuses_a_process_that_imported_transformers_first():
    code = (
        "import transformers, sys\nfrom cpt_harness.model import backends\n"
        "try:\n    backends.load('unsloth')\nexcept backends.BackendUnavailable as e:\n    print(e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 3, proc.stderr
    assert "must be loaded before transformers" in proc.stdout or "needs the GPU extra" in proc.stdout


def test_auto_picks_peft_without_a_gpu_or_unsloth():
    from cpt_harness.model.backends import resolve_name

    expected = "unsloth" if importlib.util.find_spec("unsloth") and _cuda() else "peft"
    assert resolve_name("auto") == expected


@pytest.mark.gpu
@needs_unsloth_gpu
def test_unsloth_sweep_trains_audited_trials(tiny_overrides, tmp_path):
    sets = [x for o in tiny_overrides + ["backend=unsloth", "search.rank.choices=[16,128]"] for x in ("--set", o)]
    proc = subprocess.run(
        [sys.executable, "-m", "cpt_harness", "sweep", str(ROOT / "sweeps" / "demo.yaml"), "--n-trials", "2"] + sets,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 2
    for t in trials:
        groups = t.user_attrs["audit"]["groups"]
        assert groups["embedding"]["lr"] == pytest.approx(t.params["learning_rate"] * t.params["embedding_lr_ratio"])
        assert groups["lora"]["parameters"] > 0
        # The embedding stays bf16 in the model (raw Unsloth's speed); the optimizer steps its fp32 master
        assert groups["embedding"]["model_dtypes"] == ["bfloat16"] and groups["embedding"]["dtypes"] == ["float32"]
        assert t.user_attrs["domain_gain"] > 0
        assert t.user_attrs["use_rslora"] == (t.params["rank"] > 64)
        # Per-document eval through Unsloth's forward: the head's input is its logits' (no fallback), KL > 0
        assert t.user_attrs["general_kl"] > 0 and (tmp_path / "runs" / "tiny" / t.user_attrs["evals_file"]).is_file()
    assert "evaluating from full logits" not in proc.stderr
