"""Held-out evaluation per document: the loss of every predicted token, summed per document, and the KL
divergence from the model every trial starts from.

A document bootstrap (the frontier statistics) resamples held-out documents, so the numbers kept are per
document: ``nll[doc]`` (float64 sums of per-token negative log-likelihood, computed in fp32) and ``tokens[doc]``.
Their ratio of sums is the mean loss ``train.evaluate`` returns. ``general_kl`` is the mean per-token
KL(start || model) on the held-out general text: how far the trained model's next-token distribution moved from
the one it started from, whatever that start's own loss. It does not depend on a heal lowering or raising the
base's general loss, as forgetting (a difference of losses) does.

Memory stays bounded: the model runs up to its output head on an eval batch, and the head (vocabulary-sized
logits, then fp32 log-probabilities) runs on ``chunk_tokens`` tokens at a time, never on the whole batch. The
head's matmul itself runs in fp32 (on GPU the body of the model still runs under bf16 autocast), so on a GPU the
numbers differ slightly from ``train.evaluate``'s bf16 logits; on a CPU they agree to float rounding.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass

import numpy as np
import torch

from cpt_harness.data import DataError, EvalSet

CHUNK_BYTES = 64 * 2**20  # one fp32 [tokens, vocab] tensor of the head is at most this large


@dataclass
class DocLosses:
    """One model on one eval set: per-document sums (index = document of the EvalSet)."""

    nll: np.ndarray  # float64 [n_docs]: summed negative log-likelihood, nats
    tokens: np.ndarray  # int64 [n_docs]: predicted tokens
    kl: np.ndarray | None = None  # float64 [n_docs]: summed KL(start || model), nats; None without a start model

    @property
    def loss(self) -> float:
        return float(self.nll.sum() / self.tokens.sum())

    @property
    def mean_kl(self) -> float:
        return float(self.kl.sum() / self.tokens.sum()) if self.kl is not None else float("nan")

    def part(self, keep: np.ndarray) -> DocLosses:
        """The documents where ``keep`` (bool [n_docs]) is true."""
        return DocLosses(self.nll[keep], self.tokens[keep], self.kl[keep] if self.kl is not None else None)

    def corpus_losses(self, corpus: np.ndarray, names: list[str]) -> dict[str, float]:
        """Mean loss of each corpus (documents grouped by ``corpus``, an index into ``names``)."""
        nll = np.bincount(corpus, weights=self.nll, minlength=len(names))
        tokens = np.bincount(corpus, weights=self.tokens, minlength=len(names))
        return {name: float(nll[i] / tokens[i]) for i, name in enumerate(names)}


# ------------------------------------------------------------------------------- selection and test documents


@dataclass(frozen=True)
class EvalSplit:
    """Which held-out documents are the *test* part (True); the rest are the *selection* part. The sampler, the
    pruner and the choice of trials see selection-part losses only (the metrics under their usual names); the
    recommendation reports the test part (the same metrics prefixed ``test_``), so the numbers a user is given
    were not used to pick the setting they describe."""

    domain: np.ndarray  # bool [domain documents]
    general: np.ndarray  # bool [general documents, every general corpus]

    @classmethod
    def of(cls, domain: EvalSet, general: EvalSet, fraction: float, seed: int) -> EvalSplit | None:
        """The split at eval.test_fraction = ``fraction`` and data.seed = ``seed``; None at 0 (no split)."""
        if fraction <= 0:
            return None
        return cls(
            test_documents(domain, fraction, seed, "data.domain"),
            test_documents(general, fraction, seed, "data.general"),
        )

    def describe(self, general_set: EvalSet) -> dict:
        """Stored on the study: how many documents each part holds, and which are test."""
        per = {
            name: {
                "selection": int(np.sum(~self.general & (general_set.corpus == i))),
                "test": int(np.sum(self.general & (general_set.corpus == i))),
            }
            for i, name in enumerate(general_set.names)
        }
        return {
            "domain": {"selection": int(np.sum(~self.domain)), "test": int(np.sum(self.domain))},
            "general": per,
            "domain_test_docs": np.flatnonzero(self.domain).tolist(),
            "general_test_docs": np.flatnonzero(self.general).tolist(),
        }


def test_documents(eval_set: EvalSet, fraction: float, seed: int, key: str = "data") -> np.ndarray:
    """bool [n_docs]: the test part of an eval set. Within each corpus, documents are ordered by a stable hash of
    (seed, corpus name, the document's index within its corpus) and the first round(fraction x n) are test, at
    least one and never all: deterministic, and a corpus added to data.general leaves the others' split alone."""
    test = np.zeros(eval_set.n_docs, dtype=bool)
    for c, name in enumerate(eval_set.names):
        docs = np.flatnonzero(eval_set.corpus == c)
        if len(docs) < 2:
            where = key if len(eval_set.names) == 1 else f"{key} ({name})"
            raise DataError(
                f"eval.test_fraction: the held-out text of {where} evaluated within eval.max_tokens holds "
                f"{len(docs)} document{'s' if len(docs) != 1 else ''}, too few to split into selection "
                "and test parts; raise eval.max_tokens or data.eval_fraction, or set eval.test_fraction: "
                "0 (trials chosen and reported on the same documents)"
            )
        order = np.argsort([_doc_hash(seed, name, i) for i in range(len(docs))], kind="stable")
        n_test = min(len(docs) - 1, max(1, round(fraction * len(docs))))
        test[docs[order[:n_test]]] = True
    return test


def _doc_hash(seed: int, corpus: str, index: int) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}/{corpus}/{index}".encode(), digest_size=8).digest(), "little")


def held_out_metrics(
    domain: DocLosses,
    general: DocLosses,
    general_set: EvalSet,
    split: EvalSplit | None,
    replayed: np.ndarray | None = None,
    domain_set: EvalSet | None = None,
) -> dict[str, float]:
    """One model's held-out metrics from its per-document sums: domain_loss, general_loss (every general corpus,
    token-weighted), general_loss/<name>, and general_kl where there is a start model. With a split these are the
    selection part's, and the test part's follow as test_domain_loss, test_general_loss, ...; forgetting is
    derived from them against the base's (objective.with_forgetting). ``replayed`` (bool per general corpus, under
    data.replay): general_loss_unreplayed too, over the corpora no trial trains on. ``domain_set`` with several
    sources (a data.domain list): domain_loss/<name> too, each source's."""
    corpus, names = general_set.corpus, general_set.names
    several = domain_set is not None and len(domain_set.names) > 1
    dcorpus = domain_set.corpus if several else None
    dnames = domain_set.names if several else None
    if split is None:
        return _metrics(domain, general, corpus, names, replayed, dcorpus, dnames)
    sel, test = ~split.general, split.general
    dsel, dtest = ~split.domain, split.domain
    selection = _metrics(
        domain.part(dsel), general.part(sel), corpus[sel], names, replayed, dcorpus[dsel] if several else None, dnames
    )
    tested = _metrics(
        domain.part(dtest),
        general.part(test),
        corpus[test],
        names,
        replayed,
        dcorpus[dtest] if several else None,
        dnames,
    )
    return {**selection, **{f"test_{k}": v for k, v in tested.items()}}


def _metrics(
    domain: DocLosses,
    general: DocLosses,
    corpus: np.ndarray,
    names: list[str],
    replayed: np.ndarray | None = None,
    domain_corpus: np.ndarray | None = None,
    domain_names: list[str] | None = None,
) -> dict[str, float]:
    out = {"domain_loss": domain.loss, "general_loss": general.loss}
    if domain_corpus is not None:
        out.update({f"domain_loss/{name}": v for name, v in domain.corpus_losses(domain_corpus, domain_names).items()})
    if general.kl is not None:
        out["general_kl"] = general.mean_kl
    if replayed is not None and replayed.any() and not replayed.all():
        out["general_loss_unreplayed"] = general.part(~replayed[corpus]).loss
    return {**out, **{f"general_loss/{name}": v for name, v in general.corpus_losses(corpus, names).items()}}


def doc_losses(model, data: EvalSet, batch_size: int, device, autocast, start=None) -> DocLosses:
    """Per-document loss of ``model`` on ``data``; with ``start`` (the model every trial starts from), also the
    per-document KL(start || model). Both models are put in eval mode for the pass and restored after."""
    tokens = data.tokens_per_doc()
    nll = torch.zeros(data.n_docs, dtype=torch.float64, device=device)
    kl = torch.zeros(data.n_docs, dtype=torch.float64, device=device) if start is not None else None
    modes = [(m, m.training) for m in (model, start) if m is not None]
    for m, _ in modes:
        m.eval()
    try:
        with torch.no_grad(), autocast():
            for i in range(0, len(data.blocks), batch_size):
                x = torch.from_numpy(data.blocks[i : i + batch_size]).long().to(device)
                docs = torch.from_numpy(data.docs[i : i + batch_size, 1:]).long().to(device).reshape(-1)
                _accumulate(model, start, x, docs, nll, kl)
    finally:
        for m, was_training in modes:
            m.train(was_training)
    return DocLosses(nll.cpu().numpy(), tokens, kl.cpu().numpy() if kl is not None else None)


def _accumulate(model, start, x, docs, nll, kl) -> None:
    """Add one batch's per-token NLL (and KL) into the per-document sums."""
    targets = x[:, 1:].reshape(-1)
    h, head = _head_inputs(model, x)
    ref = _head_inputs(start, x) if start is not None else None
    step = chunk_tokens(head_vocab(model))
    for s in range(0, targets.numel(), step):
        e = min(s + step, targets.numel())
        logp = torch.log_softmax(head(h[s:e]).float(), dim=-1)
        nll.index_add_(0, docs[s:e], -logp.gather(1, targets[s:e, None])[:, 0].double())
        if ref is not None:
            logq = torch.log_softmax(ref[1](ref[0][s:e]).float(), dim=-1)
            kl.index_add_(0, docs[s:e], (logq.exp() * (logq - logp)).sum(-1).double())


def chunk_tokens(vocab: int) -> int:
    return max(1, CHUNK_BYTES // (4 * vocab))


def head_vocab(model) -> int:
    weight = getattr(model.get_output_embeddings(), "weight", None)
    return int(weight.shape[0]) if weight is not None else int(model.config.vocab_size)


# ---------------------------------------------------------------------------------------------- the head's input


class _HeadInput(Exception):
    """Raised by a pre-hook on the output head to stop the forward pass once the head's input is known."""

    def __init__(self, hidden):
        super().__init__()
        self.hidden = hidden


_SPLIT_OK: dict[tuple, bool] = {}  # per model class: does head(captured input) reproduce the model's logits?


def _head_inputs(model, x):
    """(hidden [B*(L-1), H] of the positions that predict a token, the head to apply to them).

    The model's own forward runs up to its output head, whatever the backend patched (Unsloth's fast paths,
    its attention masks): a pre-hook on the head takes its input and stops there, so the [B, L, vocab] logits
    are never built. Once per model class it is checked that the head applied to that input gives the model's
    logits (an architecture that scales or caps logits after the head would not); where it does not, logits
    come from full forward passes, one block at a time."""
    head = model.get_output_embeddings()
    key = (type(model).__name__, getattr(getattr(model, "config", None), "model_type", None))
    if key not in _SPLIT_OK:
        _SPLIT_OK[key] = _split_matches(model, head, x[:1])
    if not _SPLIT_OK[key]:
        return _FullLogits(model, x), _identity
    hidden = _capture(model, head, x)
    if hidden.shape[:2] != x.shape:
        raise RuntimeError(
            f"the output head of {type(model).__name__} saw {tuple(hidden.shape[:2])} positions, "
            f"not the {tuple(x.shape)} of the input"
        )
    return hidden[:, :-1].reshape(-1, hidden.shape[-1]), _fp32_head(head)


def _fp32_head(head):
    """The head as an fp32 matmul outside autocast. Under bf16 autocast, logits near 20 are rounded to steps of
    0.125: noise that a KL between two models would count as a difference. A head whose weight is not a plain
    float matrix (quantized) is called as it is."""
    w = getattr(head, "weight", None)
    if not (isinstance(w, torch.Tensor) and w.is_floating_point() and w.dim() == 2):
        return head
    w32 = w.detach().float()  # no copy for an fp32 (trained) head; a [vocab, hidden] copy per batch for bf16
    b = getattr(head, "bias", None)
    b32 = b.detach().float() if isinstance(b, torch.Tensor) else None

    def logits(h):
        with torch.autocast(h.device.type, enabled=False):
            return torch.nn.functional.linear(h.float(), w32, b32)

    return logits


def _capture(model, head, x):
    def hook(module, args):
        raise _HeadInput(args[0])

    handle = head.register_forward_pre_hook(hook)
    try:
        model(input_ids=x, use_cache=False)
    except _HeadInput as e:
        return e.hidden
    finally:
        handle.remove()
    raise RuntimeError(f"{type(model).__name__}'s forward never called its output embedding")


def _split_matches(model, head, x) -> bool:
    logits = model(input_ids=x, use_cache=False).logits.float()
    mine = head(_capture(model, head, x)).float()
    ok = mine.shape == logits.shape and bool((mine - logits).abs().max() <= 1e-2 * logits.abs().max() + 1e-3)
    if not ok:
        print(
            f"[eval] {type(model).__name__}: logits are not the output head of its last hidden state (scaled or "
            "capped?); evaluating from full logits, one block at a time",
            file=sys.stderr,
        )
    return ok


class _FullLogits:
    """Fallback: slices of the flattened [B*(L-1), vocab] logits, computed one block per forward pass."""

    def __init__(self, model, x):
        self.model, self.x, self.L = model, x, x.shape[1] - 1
        self._row, self._logits = -1, None

    def __getitem__(self, sl: slice):
        parts, t = [], sl.start
        while t < sl.stop:
            b = t // self.L
            if b != self._row:
                self._row, self._logits = b, self.model(input_ids=self.x[b : b + 1], use_cache=False).logits[0, :-1]
            end = min(sl.stop, (b + 1) * self.L)
            parts.append(self._logits[t - b * self.L : end - b * self.L])
            t = end
        return torch.cat(parts)


def _identity(t):
    return t


def with_forgetting(metrics: dict[str, float], base: dict[str, float]) -> dict[str, float]:
    """forgetting = general_loss - base general loss (positive: the model got worse at general text), over all
    general corpora (token-weighted), forgetting/<name> for each one, and under replay forgetting_unreplayed
    over the general corpora that are not data.replay.source (replay cannot flatter itself there); domain_gain = base domain loss -
    domain_loss (positive: the model learned the domain). With a selection/test split (eval.test_fraction) the
    same again on the test part, each against the base's test part: test_forgetting, test_domain_gain, ..."""
    out = dict(metrics)
    prefixes = [""] + (["test_"] if "test_general_loss" in metrics and "test_general_loss" in base else [])
    for p in prefixes:
        out[f"{p}forgetting"] = metrics[f"{p}general_loss"] - base[f"{p}general_loss"]
        out[f"{p}domain_gain"] = base[f"{p}domain_loss"] - metrics[f"{p}domain_loss"]
        if f"{p}general_loss_unreplayed" in metrics and f"{p}general_loss_unreplayed" in base:
            out[f"{p}forgetting_unreplayed"] = (
                metrics[f"{p}general_loss_unreplayed"] - base[f"{p}general_loss_unreplayed"]
            )
        for key, value in metrics.items():
            if key.startswith(f"{p}general_loss/") and key in base:
                out[f"{p}forgetting/" + key.removeprefix(f"{p}general_loss/")] = value - base[key]
            if key.startswith(f"{p}domain_loss/") and key in base:  # several domain sources
                out[f"{p}domain_gain/" + key.removeprefix(f"{p}domain_loss/")] = base[key] - value
    return out
