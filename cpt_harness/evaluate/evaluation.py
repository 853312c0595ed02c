"""One trial's held-out evaluation: at each checkpoint the domain and general losses (each general corpus's too)
and general_kl, from per-document sums kept for evals.npz; and the plain mean loss of a set of blocks."""

from __future__ import annotations

import numpy as np
import torch

from cpt_harness.config import Config
from cpt_harness.data import Corpora, replayed_corpora
from cpt_harness.evaluate import metrics as metrics_mod
from cpt_harness.evaluate.evals import Evals


class Evaluation:
    """A trial's held-out evaluation: at each checkpoint the domain and general losses (each general corpus's
    too) and general_kl, from per-document sums that are kept for evals.npz; with eval.test_fraction, on the
    selection part, and the test part's beside them (metrics.held_out_metrics). The start model general_kl
    compares against is the backend's kept base, or loaded at the first checkpoint and freed by ``close``."""

    def __init__(self, backend, model_path: str, cfg: Config, corpora: Corpora):
        self.backend, self.model_path, self.cfg = backend, model_path, cfg
        self.domain, self.general = corpora.domain_set(), corpora.general_set()
        self.split = metrics_mod.EvalSplit.of(self.domain, self.general, cfg.eval.test_fraction, cfg.data.seed)
        self.replayed = replayed_corpora(cfg.data) if cfg.data.replay is not None else None
        self.checkpoints: list = []
        self._start = None

    def __call__(self, model, step: int, tokens_seen: int) -> dict[str, float]:
        if self._start is None:
            self._start, _ = self.backend.start_model(self.model_path, self.cfg.model)
        b, device, autocast = self.cfg.eval.batch_size, self.backend.device, self.backend.autocast
        domain = metrics_mod.doc_losses(model, self.domain, b, device, autocast)
        general = metrics_mod.doc_losses(model, self.general, b, device, autocast, start=self._start)
        self.checkpoints.append((step, tokens_seen, domain, general))
        return {
            "step": step,
            "tokens_seen": tokens_seen,
            **metrics_mod.held_out_metrics(domain, general, self.general, self.split, self.replayed, self.domain),
        }

    def evals(self) -> Evals | None:
        if not self.checkpoints:
            return None
        return Evals.from_checkpoints(self.checkpoints, self.general.corpus, self.general.names, self.domain.corpus)

    def close(self) -> None:
        self._start = None  # a start model loaded for this trial goes with it; a kept one stays with the backend


def evaluate(model, blocks: np.ndarray, batch_size: int, device, autocast) -> float:
    """Mean next-token cross-entropy (nats/token) over all blocks; every block has the same length. (Trials
    use ``Evaluation``, per document; this is the plain mean, for healing and as a reference.)"""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad(), autocast():
        for i in range(0, len(blocks), batch_size):
            x = torch.from_numpy(blocks[i : i + batch_size]).long().to(device)
            loss = model(input_ids=x, labels=x).loss
            total += loss.float().item() * x.shape[0]
            count += x.shape[0]
    model.train(was_training)
    return total / count
