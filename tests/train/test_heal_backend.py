"""Healing goes through the backend: the base is loaded and wrapped in LoRA by ``backend.load_for_training`` (in
the settings ``heal.heal_settings`` gives, whatever the trials' lora.* and train.* say) and trained with
``train.train_step``, the step every trial takes; the healed base is that model's LoRA merged into the base."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cpt_harness.config import DEFAULT_TARGETS
from cpt_harness.config.validate import load_config
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.train import heal
from cpt_harness.train import loop as train
from tests.conftest import ROOT


class RecordingBackend(PeftBackend):
    """The real peft backend, remembering what it was asked to load."""

    def __init__(self):
        super().__init__()
        self.loads = []

    def load_for_training(self, model_path, cfg, params):
        model = super().load_for_training(model_path, cfg, params)
        wrapped = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")}
        self.loads.append((model_path, cfg, params, wrapped))
        return model


@pytest.fixture
def heal_cfg(tiny_overrides, tmp_path, monkeypatch):
    monkeypatch.setenv("CPT_HARNESS_CACHE", str(tmp_path / "cache"))  # a heal of its own, not another test's
    trial_settings = [
        "lora.target_modules=[q_proj]",
        "lora.dropout=0.1",
        "lora.alpha=64",
        "lora.use_rslora=true",
        "train.seed=7",
        "train.gradient_checkpointing=true",
        "model.keep_loaded=true",
    ]
    heal_settings = [
        "model.heal.steps=3",
        "model.heal.rank=4",
        "model.heal.batch_size=2",
        "model.heal.learning_rate=1e-2",
    ]
    return load_config(ROOT / "sweeps" / "demo.yaml", tiny_overrides + trial_settings + heal_settings)


@pytest.mark.integration
def test_heal_loads_through_the_backend_and_trains_with_the_shared_step(heal_cfg, tiny_model, monkeypatch):
    steps = []
    shared_step = train.train_step

    def counted(*args, **kwargs):
        steps.append(args[3][0].shape)  # the micro-batches of this step
        return shared_step(*args, **kwargs)

    monkeypatch.setattr(train, "train_step", counted)
    backend = RecordingBackend()
    assert backend.healer() is backend
    healed = Path(heal.healed_base(str(tiny_model), heal_cfg, backend, log=lambda _: None))

    [(path, cfg, params, wrapped)] = backend.loads
    assert path == str(tiny_model)
    assert (cfg.model.dtype, cfg.model.keep_loaded, cfg.train.seed, cfg.train.gradient_checkpointing) == (
        "float32",
        False,
        0,
        False,
    ), "the heal's own settings, not the trials'"
    assert (cfg.lora.target_modules, cfg.lora.dropout, cfg.lora.train_embeddings) == (DEFAULT_TARGETS, 0.0, False)
    assert (params.rank, params.alpha, params.use_rslora, params.learning_rate) == (4, 4.0, False, 1e-2)
    assert steps == [torch.Size([2, 64])] * 3, "three steps of model.heal.batch_size blocks, through train_step"
    assert wrapped == set(DEFAULT_TARGETS)

    assert re.fullmatch(r"healed-[0-9a-f]{16}", healed.name)
    prov = json.loads((healed / "provenance.json").read_text())
    assert prov["recipe"] == healed.name.removeprefix("healed-") and prov["healed_from"] == str(tiny_model)
    assert prov["heal"] == {"steps": 3, "data": "builtin:austen", "rank": 4, "learning_rate": 1e-2, "batch_size": 2}
    assert set(prov["heal_held_out"]) == {"general_loss", "domain_loss"}
    assert prov["heal_validation"]["general_loss"][0] != prov["heal_validation"]["general_loss"][1]
    before, after = load_file(tiny_model / "model.safetensors"), load_file(healed / "model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.split(".")[-2] in DEFAULT_TARGETS for k in changed), "the merged LoRA, nothing else"
    assert {k.split(".")[-2] for k in changed} == set(DEFAULT_TARGETS)


def test_heal_settings_take_nothing_from_the_trials_settings(heal_cfg, tiny_overrides):
    plain = load_config(
        ROOT / "sweeps" / "demo.yaml",
        tiny_overrides
        + ["model.heal.steps=3", "model.heal.rank=4", "model.heal.batch_size=2", "model.heal.learning_rate=1e-2"],
    )
    (a, pa), (b, pb) = heal.heal_settings(heal_cfg), heal.heal_settings(plain)
    assert (a.model, a.lora, a.train, pa) == (b.model, b.lora, b.train, pb)
