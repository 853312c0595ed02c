"""model.keep_loaded: a worker keeps the base model loaded and starts each trial from a copy of it. The copy must
train exactly like a fresh load, and no trial may change the kept base."""

from __future__ import annotations

import copy

import pytest
import torch

from cpt_harness import data
from cpt_harness.infra.tracking import Tracker
from cpt_harness.model.backends import base as backend_base
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.search.space import derive
from cpt_harness.train import loop as train


class Quiet(Tracker):
    def log(self, metrics):
        pass

    def log_audit(self, record):
        pass


def trial(cfg, backend, rank=16, lr=3e-3):
    tok = backend.load_tokenizer(cfg.model.name)
    corpora = data.prepare(cfg.data, tok, cfg.model.max_seq_length, cfg.eval.max_tokens)
    params = derive(rank, lr, 0.2 if cfg.lora.train_embeddings else None, cfg)
    return train.run_trial(backend, cfg.model.name, cfg, params, corpora, Quiet(), None)


def with_keep(cfg, keep: bool):
    out = copy.deepcopy(cfg)
    out.model.keep_loaded = keep
    return out


@pytest.mark.integration
def test_trials_from_the_kept_base_match_fresh_loads(tiny_cfg):
    assert tiny_cfg.lora.train_embeddings  # the embeddings are trained in full: the copy must not share them
    kept, fresh = PeftBackend(), PeftBackend()
    cfg = with_keep(tiny_cfg, True)
    first, second = trial(cfg, kept), trial(cfg, kept)
    assert (first.base_load, second.base_load) == ("disk", "copy")
    reference = trial(with_keep(tiny_cfg, False), fresh)
    assert reference.base_load == "disk" and fresh._kept is None
    start, loaded = kept.start_model(cfg.model.name, cfg.model)
    assert start is kept._kept[1] and not loaded, "general_kl compares against the kept base, not a second copy"
    for r in (first, second):
        assert r.metrics["domain_loss"] == pytest.approx(reference.metrics["domain_loss"], rel=1e-6)
        assert r.metrics["general_loss"] == pytest.approx(reference.metrics["general_loss"], rel=1e-6)
        # general_kl against the kept base, or (keep_loaded off) against a base loaded for the eval: the same
        assert r.metrics["general_kl"] == pytest.approx(reference.metrics["general_kl"], rel=1e-5)
        assert [p["domain_loss"] for p in r.curve] == pytest.approx(
            [p["domain_loss"] for p in reference.curve], rel=1e-6
        )


@pytest.mark.integration
def test_no_trial_changes_the_kept_base(tiny_cfg, tiny_model):
    from transformers import AutoModelForCausalLM

    backend = PeftBackend()
    cfg = with_keep(tiny_cfg, True)
    trial(cfg, backend, lr=3e-2)  # a large step: any shared tensor would move
    trial(cfg, backend, rank=8, lr=3e-2)
    kept = backend._kept[1].state_dict()
    on_disk = AutoModelForCausalLM.from_pretrained(tiny_model).state_dict()
    assert set(kept) == set(on_disk)
    for name, tensor in on_disk.items():
        assert torch.equal(kept[name].float(), tensor.float()), f"{name} changed in the kept base"
    assert not any(p.requires_grad for p in backend._kept[1].parameters())


@pytest.mark.integration
def test_another_model_replaces_the_kept_one(tiny_cfg, tiny_untied_model):
    backend = PeftBackend()
    trial(with_keep(tiny_cfg, True), backend)
    first = backend._kept[1]
    other = with_keep(tiny_cfg, True)
    other.model.name = str(tiny_untied_model)
    assert trial(other, backend).base_load == "disk"
    assert backend._kept[1] is not first and backend._kept[0][0] == str(tiny_untied_model)


@pytest.mark.integration
def test_a_base_that_cannot_be_copied_is_loaded_from_disk_with_one_warning(tiny_cfg, monkeypatch, capsys):
    def refuse(model):
        raise TypeError("cannot pickle 'SomeHandle' object")

    monkeypatch.setattr(backend_base, "copy_model", refuse)
    backend = PeftBackend()
    cfg = with_keep(tiny_cfg, True)
    results = [trial(cfg, backend), trial(cfg, backend)]
    assert [r.base_load for r in results] == ["disk", "disk"]
    assert backend._kept is None  # nothing held for nothing
    err = capsys.readouterr().err
    assert err.count("copying the loaded base model failed (TypeError: cannot pickle") == 1
    assert "model.keep_loaded: false" in err
