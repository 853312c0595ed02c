"""Tokenizers rebuilt from a GGUF's vocabulary where transformers' own GGUF conversion gets them wrong.

Gemma's tokenizer is a SentencePiece BPE. transformers' GGUF loader (``GGUFGemmaConverter``, 5.x) builds a
*Unigram* model over the GGUF's BPE scores (-rank), which prefers frequent short pieces: "The capital of France"
becomes The/▁c/ap/it/al/▁of/▁Fr/an/ce, ids the model never saw, and a base model's loss is near uniform. Here
the tokenizer is built as Gemma's own is: BPE with byte fallback, merges ordered by the merged piece's score,
control tokens special, user-defined pieces (newline and tab runs, image markers) matched whole, a BOS added.
"""

from __future__ import annotations

from pathlib import Path

GEMMA_MODEL_TYPES = ("gemma", "gemma2", "gemma3", "gemma3_text")
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4  # GGUF tokenizer.ggml.token_type values


def needs_rebuilt_tokenizer(model_type: str) -> bool:
    return model_type in GEMMA_MODEL_TYPES


def gemma_tokenizer_from_gguf(gguf: Path):
    """Gemma's BPE tokenizer from a GGUF's ``tokenizer.ggml`` tokens, scores and token types."""
    from gguf import GGUFReader
    from tokenizers import AddedToken
    from transformers.convert_slow_tokenizer import generate_merges
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer

    fields = GGUFReader(str(gguf)).fields

    def array(key: str, conv) -> list:
        field = fields[key]
        return [conv(field.parts[i]) for i in field.data]

    tokens = array("tokenizer.ggml.tokens", lambda p: bytes(p).decode("utf-8"))
    scores = array("tokenizer.ggml.scores", lambda p: float(p[0]))
    types = array("tokenizer.ggml.token_type", lambda p: int(p[0]))
    tokens = ["▁" * len(t) if t and not t.strip(" ") else t for t in tokens]  # space runs are ▁ runs in the model
    vocab = {t: i for i, t in enumerate(tokens)}
    normal = {t: s for t, s, kind in zip(tokens, scores, types) if kind == _NORMAL}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=generate_merges(vocab, normal), add_bos_token=True)
    tokenizer.add_tokens(
        [
            AddedToken(t, special=kind == _CONTROL, normalized=False)
            for t, kind in zip(tokens, types)
            if kind in (_CONTROL, _USER_DEFINED)
        ]
    )
    return tokenizer
