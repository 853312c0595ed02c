"""Per-document evaluation and general_kl on the tiny model, against direct computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from cpt_harness.config import DataSource
from cpt_harness.evaluate import evaluation as train_evaluation
from cpt_harness.evaluate import metrics
from cpt_harness.model.backends.peft_backend import PeftBackend
from tests.train.test_train import corpora_for


@pytest.fixture(scope="module")
def backend():
    return PeftBackend()


@pytest.fixture
def corpora(tiny_cfg, tiny_corpora, backend):
    tiny_cfg.eval.max_tokens = 2048  # per corpus: several legal documents, and several (cut) SOTU addresses
    tiny_cfg.data.general = [tiny_cfg.data.general, DataSource(str(tiny_corpora["sotu"]))]
    return corpora_for(tiny_cfg, backend)


@pytest.fixture
def base(tiny_cfg, backend):
    return backend.load_base(tiny_cfg.model.name, tiny_cfg.model)


def moved(model, seed: int = 0, scale: float = 0.05):
    """A copy of ``model`` with every weight nudged: a stand-in for a trained model."""
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other


def direct(model, blocks: np.ndarray, docs: np.ndarray, n_docs: int, start=None):
    """Per-document NLL and KL(start || model) from the full logits, by plain per-token loops over documents."""
    x = torch.from_numpy(blocks).long()
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].double(), -1)
        nll = -logp.gather(-1, x[:, 1:, None])[..., 0]
        kl = None
        if start is not None:
            logq = torch.log_softmax(start(input_ids=x).logits[:, :-1].double(), -1)
            kl = torch.nn.functional.kl_div(logp, logq, log_target=True, reduction="none").sum(-1)
    owner = docs[:, 1:]
    sums = np.array([nll.numpy()[owner == d].sum() for d in range(n_docs)])
    kls = np.array([kl.numpy()[owner == d].sum() for d in range(n_docs)]) if kl is not None else None
    return sums, np.array([(owner == d).sum() for d in range(n_docs)]), kls


@pytest.mark.integration
def test_per_document_sums_give_the_mean_loss_evaluate_returns(tiny_cfg, backend, corpora, base):
    for eval_set, blocks in (
        (corpora.domain_set(), corpora.domain_eval),
        (corpora.general_set(), corpora.general_eval),
    ):
        assert eval_set.n_docs > 1, "the tiny held-out text spans several documents"
        res = metrics.doc_losses(base, eval_set, 3, backend.device, backend.autocast)
        assert res.nll.dtype == np.float64 and res.nll.shape == res.tokens.shape == (eval_set.n_docs,)
        assert res.tokens.sum() == blocks.shape[0] * (blocks.shape[1] - 1)
        assert res.loss == pytest.approx(
            train_evaluation.evaluate(base, blocks, 3, backend.device, backend.autocast), rel=1e-6
        )
        nll, tokens, _ = direct(base, blocks, eval_set.docs, eval_set.n_docs)
        assert np.array_equal(res.tokens, tokens)
        np.testing.assert_allclose(res.nll, nll, rtol=1e-5)


@pytest.mark.integration
def test_general_kl_is_the_kl_from_the_start_model_and_zero_at_the_start(tiny_cfg, backend, corpora, base):
    general = corpora.general_set()
    trained = moved(base)
    res = metrics.doc_losses(trained, general, 4, backend.device, backend.autocast, start=base)
    nll, _, kl = direct(trained, general.blocks, general.docs, general.n_docs, start=base)
    np.testing.assert_allclose(res.kl, kl, rtol=1e-4)
    np.testing.assert_allclose(res.nll, nll, rtol=1e-5)
    assert res.mean_kl == pytest.approx(kl.sum() / res.tokens.sum(), rel=1e-4) and res.mean_kl > 1e-4
    same = metrics.doc_losses(base, general, 4, backend.device, backend.autocast, start=base)
    assert np.all(same.kl == 0) and same.mean_kl == 0.0


@pytest.mark.integration
def test_small_chunks_give_the_same_sums(tiny_cfg, backend, corpora, base, monkeypatch):
    general, trained = corpora.general_set(), moved(base, seed=1)
    whole = metrics.doc_losses(trained, general, 8, backend.device, backend.autocast, start=base)
    vocab = metrics.head_vocab(base)
    monkeypatch.setattr(metrics, "CHUNK_BYTES", 4 * vocab * 7)  # 7 tokens a chunk: chunks straddle blocks
    assert metrics.chunk_tokens(vocab) == 7
    chunked = metrics.doc_losses(trained, general, 8, backend.device, backend.autocast, start=base)
    np.testing.assert_allclose(chunked.nll, whole.nll, rtol=1e-6)
    np.testing.assert_allclose(chunked.kl, whole.kl, rtol=1e-5, atol=1e-9)


@pytest.mark.integration
def test_a_model_whose_logits_are_not_its_heads_output_is_evaluated_from_full_logits(
    tiny_cfg, backend, corpora, base, monkeypatch, capsys
):
    class Capped(torch.nn.Module):  # like Gemma's final soft-capping: logits = cap * tanh(head(h) / cap)
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

        def forward(self, input_ids, **kwargs):
            out = self.inner(input_ids=input_ids, **kwargs)
            out.logits = 2.0 * torch.tanh(out.logits / 2.0)
            return out

    monkeypatch.setattr(metrics, "_SPLIT_OK", {})
    capped, domain = Capped(base), corpora.domain_set()
    res = metrics.doc_losses(capped, domain, 4, backend.device, backend.autocast)
    assert "evaluating from full logits" in capsys.readouterr().err
    nll, _, _ = direct(capped, domain.blocks, domain.docs, domain.n_docs)
    np.testing.assert_allclose(res.nll, nll, rtol=1e-5)


def test_corpus_losses_are_token_weighted_within_each_corpus():
    res = metrics.DocLosses(nll=np.array([2.0, 4.0, 9.0]), tokens=np.array([1, 3, 3]))
    assert res.corpus_losses(np.array([0, 0, 1]), ["a", "b"]) == {"a": 6.0 / 4, "b": 3.0}
    assert res.loss == 15.0 / 7
