"""What Optuna samples and what follows from it under the CPT rules (no training)."""

from __future__ import annotations

import math

import optuna
import pytest

from cpt_harness.search.space import accepted_fingerprints, space_fingerprint, suggest


@pytest.mark.parametrize("rank, rslora", [(16, False), (64, False), (128, True), (256, True)])
def test_rslora_switches_on_exactly_above_64(tiny_cfg, rank, rslora):
    tiny_cfg.search.rank.choices = [16, 64, 128, 256]
    p = suggest(optuna.trial.FixedTrial({"rank": rank, "learning_rate": 2e-3, "embedding_lr_ratio": 0.2}), tiny_cfg)
    assert p.use_rslora is rslora
    expected = tiny_cfg.lora.alpha / (math.sqrt(rank) if rslora else rank)
    assert p.lora_scale == pytest.approx(expected)
    assert p.rule_violations == ()


def test_embedding_lr_is_ratio_times_lr(tiny_cfg):
    p = suggest(optuna.trial.FixedTrial({"rank": 16, "learning_rate": 2e-3, "embedding_lr_ratio": 0.25}), tiny_cfg)
    assert p.embedding_lr == pytest.approx(5e-4)


def test_rule_breaking_trials_are_marked(tiny_cfg):
    tiny_cfg.lora.use_rslora = False
    tiny_cfg.search.rank.choices = [16, 128]
    tiny_cfg.search.embedding_lr_ratio.high = 1.0
    p = suggest(optuna.trial.FixedTrial({"rank": 128, "learning_rate": 2e-3, "embedding_lr_ratio": 1.0}), tiny_cfg)
    assert p.rule_violations == ("rank 128 > 64 without rsLoRA", "embedding_lr_ratio 1 outside [0.1, 0.5]")
    assert p.lora_scale == pytest.approx(tiny_cfg.lora.alpha / 128)


def test_no_ratio_is_sampled_without_trained_embeddings(tiny_cfg):
    tiny_cfg.lora.train_embeddings = False
    p = suggest(optuna.trial.FixedTrial({"rank": 16, "learning_rate": 2e-3}), tiny_cfg)
    assert p.embedding_lr_ratio is None and p.embedding_lr is None


def test_fingerprint_tracks_what_a_trial_measures(tiny_cfg):
    before = space_fingerprint(tiny_cfg)
    tiny_cfg.study.n_trials += 5  # how many trials: not what they measure
    assert space_fingerprint(tiny_cfg) == before
    tiny_cfg.search.rank.choices = [8]
    assert space_fingerprint(tiny_cfg) != before


def test_the_committed_gpu_study_can_still_be_resumed():
    """New config fields must not change what an existing study's fingerprint means (reports/gpu-legal/). The
    sweep file now evaluates on more text (131072 tokens per corpus): that does change what a trial measures, so
    the study ran with its own eval.max_tokens, 32768. It chose and reported its trials on the same documents:
    eval.test_fraction 0; the default split (0.5) is a new measurement, refused on resume."""
    import optuna

    from cpt_harness.config.validate import load_config
    from tests.conftest import ROOT

    study = optuna.load_study(study_name="gpu-legal", storage=f"sqlite:///{ROOT}/reports/gpu-legal/study.db")
    cfg = load_config(ROOT / "sweeps" / "gpu-legal.yaml", ["eval.max_tokens=32768", "eval.test_fraction=0"])
    # run with gradient_checkpointing: true, hashed then; a speed-only key now (any value resumes it)
    for value in ("true", "false", "auto"):
        resumed = load_config(
            ROOT / "sweeps" / "gpu-legal.yaml",
            ["eval.max_tokens=32768", "eval.test_fraction=0", f"train.gradient_checkpointing={value}"],
        )
        assert study.user_attrs["fingerprints"]["search_space"] in accepted_fingerprints(resumed)
    assert study.user_attrs["fingerprints"]["search_space"] not in accepted_fingerprints(
        load_config(ROOT / "sweeps" / "gpu-legal.yaml")
    )
    split = load_config(ROOT / "sweeps" / "gpu-legal.yaml", ["eval.max_tokens=32768"])
    assert space_fingerprint(split) != space_fingerprint(cfg)


def test_a_set_dtype_is_part_of_the_fingerprint_and_auto_keeps_the_old_one(tiny_cfg):
    before = space_fingerprint(tiny_cfg)
    tiny_cfg.model.dtype = "auto"
    assert space_fingerprint(tiny_cfg) == before, "studies run before dtype was fingerprinted still resume"
    tiny_cfg.model.dtype = "float32"
    fp32 = space_fingerprint(tiny_cfg)
    tiny_cfg.model.dtype = "bfloat16"
    assert len({before, fp32, space_fingerprint(tiny_cfg)}) == 3
