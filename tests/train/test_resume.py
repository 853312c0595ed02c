"""Long trials survive (train.checkpoint_every): a trial interrupted after a saved state and resumed ends exactly
as an uninterrupted run does (CPU float32), its eval curve and per-document evals included; a state saved for
another setting is not resumed. (tests/run/test_parallel.py kills a real worker mid-trial and checks its retry.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cpt_harness import data
from cpt_harness.config.validate import load_config
from cpt_harness.infra.tracking import Tracker
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.search import space as search_space
from cpt_harness.train import batches as train_batches
from cpt_harness.train import loop as train
from cpt_harness.train import resume
from tests.conftest import ROOT


class Killed(Exception):
    """Stands in for the worker's death: raised mid-trial, after a state was saved."""


class Progress:
    def __init__(self, die_at=None):
        self.die_at, self.steps = die_at, []

    def __call__(self, step, loss):
        self.steps.append(step)
        if step == self.die_at:
            raise Killed(step)


@pytest.fixture(scope="module")
def backend():
    return PeftBackend()


def _cfg(tiny_overrides, tiny_corpora, replay: bool):
    extra = ["train.max_steps=12", "train.eval_every=3", "train.checkpoint_every=4", "lora.dropout=0.1"]
    if replay:  # the data position then includes where each corpus's shuffled order is
        extra += [
            f"data.general=[{tiny_corpora['general']}, {tiny_corpora['sotu']}]",
            f"data.replay={{source: {tiny_corpora['general']}, fraction: 0.25}}",
        ]
    return load_config(ROOT / "sweeps" / "demo.yaml", tiny_overrides + extra)


def _run(cfg, backend, corpora, params, saver=None, progress=None):
    return train.run_trial(backend, cfg.model.name, cfg, params, corpora, Tracker(), None, progress, saver=saver)


def _saver(folder, cfg, params, **change):
    return resume.Saver(
        folder,
        cfg.train.checkpoint_every,
        {"params": {**params.as_dict(), **change}, "protocol": search_space.space_payload(cfg)},
    )


@pytest.mark.parametrize("replay", [False, True], ids=["domain", "replay"])
@pytest.mark.integration
def test_an_interrupted_trial_resumes_and_ends_as_an_uninterrupted_one(
    tiny_overrides, tiny_corpora, backend, tmp_path, replay
):
    cfg = _cfg(tiny_overrides, tiny_corpora, replay)
    corpora = data.prepare(
        cfg.data, backend.load_tokenizer(cfg.model.name), cfg.model.max_seq_length, cfg.eval.max_tokens
    )
    params = search_space.derive(16, 3e-3, 0.2, cfg, replay=0.25 if replay else None)
    whole = _run(cfg, backend, corpora, params)

    folder = tmp_path / "trial-0000" / resume.FOLDER
    with pytest.raises(Killed):
        _run(cfg, backend, corpora, params, _saver(folder, cfg, params), Progress(die_at=10))
    saved = torch.load(folder / resume.STATE, weights_only=False)["state"]
    assert saved["step"] == 8 and [p["step"] for p in saved["curve"]] == [3, 6]

    progress = Progress()
    again = _run(cfg, backend, corpora, params, _saver(folder, cfg, params), progress)
    assert again.resumed_step == 8 and progress.steps == [9, 10, 11, 12], "trained on from step 9, not from 0"
    for key in ("domain_loss", "general_loss", "general_kl", "train_loss", "tokens_seen"):
        assert again.metrics[key] == whole.metrics[key], key  # exactly: CPU float32, same order of operations
    assert again.curve == whole.curve and [p["step"] for p in again.curve] == [3, 6, 9, 12]
    for name in ("step", "tokens_seen", "domain_nll", "domain_tokens", "general_nll", "general_kl"):
        assert np.array_equal(getattr(again.evals, name), getattr(whole.evals, name)), name  # per document, every eval
    assert not folder.exists(), "the saved state goes once the trial has its outcome"
    assert whole.resumed_step is None


@pytest.mark.integration
def test_without_the_saved_rng_and_data_position_the_result_differs(
    tiny_overrides, tiny_corpora, backend, tmp_path, monkeypatch
):
    # The check above can fail: restoring weights and optimizer alone (RNG of lora dropout and the data position
    # from scratch) gives another result.
    cfg = _cfg(tiny_overrides, tiny_corpora, replay=False)
    corpora = data.prepare(
        cfg.data, backend.load_tokenizer(cfg.model.name), cfg.model.max_seq_length, cfg.eval.max_tokens
    )
    params = search_space.derive(16, 3e-3, 0.2, cfg)
    whole = _run(cfg, backend, corpora, params)
    folder = tmp_path / resume.FOLDER
    with pytest.raises(Killed):
        _run(cfg, backend, corpora, params, _saver(folder, cfg, params), Progress(die_at=10))
    monkeypatch.setattr(resume, "set_rng_state", lambda state: None)
    monkeypatch.setattr(train_batches.Batches, "load_state_dict", lambda self, state: None)
    again = _run(cfg, backend, corpora, params, _saver(folder, cfg, params))
    assert again.resumed_step == 8 and again.metrics["domain_loss"] != whole.metrics["domain_loss"]


@pytest.mark.integration
def test_a_state_saved_for_another_setting_is_not_resumed(tiny_overrides, tiny_corpora, backend, tmp_path):
    cfg = _cfg(tiny_overrides, tiny_corpora, replay=False)
    corpora = data.prepare(
        cfg.data, backend.load_tokenizer(cfg.model.name), cfg.model.max_seq_length, cfg.eval.max_tokens
    )
    params = search_space.derive(16, 3e-3, 0.2, cfg)
    folder = tmp_path / resume.FOLDER
    with pytest.raises(Killed):
        _run(cfg, backend, corpora, params, _saver(folder, cfg, params, learning_rate=1e-3), Progress(die_at=5))
    saver = _saver(folder, cfg, params)
    progress = Progress()
    result = _run(cfg, backend, corpora, params, saver, progress)
    assert result.resumed_step is None and progress.steps[0] == 1
    assert "saved by another trial setting; training from step 0" in saver.skipped


def test_checkpoint_every_is_checked_and_leaves_the_fingerprint_alone(tiny_cfg, tiny_overrides, capsys):
    from cpt_harness.cli import main

    before = search_space.space_fingerprint(tiny_cfg)
    tiny_cfg.train.checkpoint_every = 25
    assert search_space.space_fingerprint(tiny_cfg) == before, "a reliability setting: studies still resume"
    sets = [x for o in tiny_overrides + ["train.checkpoint_every=0"] for x in ("--set", o)]
    assert main(["validate", str(ROOT / "sweeps" / "demo.yaml")] + sets) == 2
    assert "train.checkpoint_every: must be >= 1 (steps) or null (off)" in capsys.readouterr().err
