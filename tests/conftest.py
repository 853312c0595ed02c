"""Shared fixtures: a tiny real Llama (random init, BPE tokenizer trained on the shipped corpora), tiny real
corpora cut from the built-in ones, and a tiny sweep config pointing at both. Nothing here downloads."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CORPORA = ROOT / "cpt_harness" / "corpora"


def builtin_docs(name: str, n: int) -> list[str]:
    with lzma.open(CORPORA / f"{name}.jsonl.xz", "rt") as fh:
        return [json.loads(line)["text"] for _, line in zip(range(n), fh)]


@pytest.fixture(autouse=True)
def _isolated(tmp_path_factory, monkeypatch):
    """Each test gets its own W&B folder; the model/data cache is shared by the session."""
    monkeypatch.setenv("CPT_HARNESS_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path_factory.mktemp("wandb")))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _make_tiny_model(path: Path, tied: bool) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = builtin_docs("legal", 80) + builtin_docs("brown", 40)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=512,
            special_tokens=["<|endoftext|>", "<unk>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", unk_token="<unk>", pad_token="<|endoftext|>"
    )
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tied,
        eos_token_id=0,
        bos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(path)
    fast.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama with tied embeddings (like SmolLM2), saved as a normal HF folder."""
    return _make_tiny_model(tmp_path_factory.mktemp("tiny-tied"), tied=True)


@pytest.fixture(scope="session")
def tiny_untied_model(tmp_path_factory) -> Path:
    return _make_tiny_model(tmp_path_factory.mktemp("tiny-untied"), tied=False)


@pytest.fixture(scope="session")
def tiny_corpora(tmp_path_factory) -> dict[str, Path]:
    """Small real corpora: 60 license texts (domain) and 30 Brown texts (general), as .jsonl and .txt; and 20
    State of the Union addresses cut to 3000 characters (a second general corpus)."""
    d = tmp_path_factory.mktemp("corpora")
    legal, brown = builtin_docs("legal", 60), builtin_docs("brown", 30)
    (d / "legal.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in legal))
    (d / "brown.txt").write_text("\n\n".join(" ".join(t.split()) for t in brown))  # one paragraph per document
    (d / "sotu.jsonl").write_text("".join(json.dumps({"text": t[:3000]}) + "\n" for t in builtin_docs("sotu", 20)))
    return {"domain": d / "legal.jsonl", "general": d / "brown.txt", "sotu": d / "sotu.jsonl"}


@pytest.fixture
def tiny_overrides(tiny_model, tiny_corpora, tmp_path) -> list[str]:
    """--set overrides that turn sweeps/demo.yaml into a seconds-long sweep on the tiny model."""
    return [
        f"model.name={tiny_model}",
        "model.max_seq_length=64",
        f"study.storage=sqlite:///{tmp_path}/study.db",
        f"study.output_dir={tmp_path}/runs",
        "study.name=tiny",
        f"data.domain={tiny_corpora['domain']}",
        f"data.general={tiny_corpora['general']}",
        "train.max_steps=6",
        "train.batch_size=4",
        "train.eval_every=3",
        "eval.max_tokens=512",
        # 512 tokens hold one document per corpus: too few to split (tests/analysis/test_confirm.py splits shorter ones)
        "eval.test_fraction=0",
        "search.learning_rate.low=1e-3",
        "search.learning_rate.high=3e-3",
        "tracking.wandb.mode=offline",
        "backend=peft",
    ]


@pytest.fixture
def tiny_cfg(tiny_overrides):
    from cpt_harness.config.validate import load_config

    return load_config(ROOT / "sweeps" / "demo.yaml", tiny_overrides)
