"""One trial: load, build the two optimizer groups (``configure_optimizer``), audit them, train with periodic eval, save the adapter.

The loop is the same for every backend (a backend only supplies the model), so a difference between
backends is the backend's and nothing else's.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cpt_harness import audit as audit_mod
from cpt_harness import metrics as metrics_mod
from cpt_harness import resume
from cpt_harness.schedule import decay_steps, eval_steps, schedule
from cpt_harness.config import Config, TrainConfig
from cpt_harness.data import Corpora, DataError, replayed_corpora
from cpt_harness.errors import Diverged, TrialFailed
from cpt_harness.evals import Evals
from cpt_harness.modules import classify, embedding_module_names
from cpt_harness.search_space import TrialParams


@dataclass
class TrialResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    audit: dict[str, Any]
    timings: dict[str, float]
    adapter_dir: str | None = None
    base_load: str = ""  # "disk", or "copy" of the base the worker keeps loaded (model.keep_loaded)
    evals: Evals | None = None  # per-document results of every eval checkpoint (written to evals.npz)
    stopped: str | None = None  # why the trial stopped at an eval checkpoint before max_steps (it is pruned)
    resumed_step: int | None = None  # the saved step it went on from (train.checkpoint_every), if it resumed


@dataclass
class Timer:
    """Wall time per phase. Phases that end in a host sync anyway (a training step ends with ``loss.item()``)
    pass ``sync=False``, so timing adds no extra GPU stalls to the hot loop."""

    totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    sync: Callable[[], None] = lambda: None

    @contextmanager
    def __call__(self, name: str, sync: bool = True):
        if sync:
            self.sync()
        t = time.perf_counter()
        try:
            yield
        finally:
            if sync:
                self.sync()
            self.totals[name] += time.perf_counter() - t


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
        return {"step": step, "tokens_seen": tokens_seen,
                **metrics_mod.held_out_metrics(domain, general, self.general, self.split, self.replayed, self.domain)}

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


def lr_lambda(max_steps: int, warmup_ratio: float, schedule: str = "cosine") -> Callable[[int], float]:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to zero (``schedule`` "cosine") or the
    stable LR to the end ("wsd": the decay happens in each eval point's branch, ``decay_branch``)."""
    warmup = int(round(warmup_ratio * max_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if schedule == "wsd":
            return 1.0
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Batches:
    """Endless shuffled batches; seed k gives the same order in every trial. ``blocks`` may be memory-mapped:
    only the rows of a batch are read. Each epoch is a fresh seeded permutation of the blocks cut into full
    batches (one batch of all the blocks when there are fewer than a batch). ``state_dict``: where the stream
    is, for a trial that resumes (train.checkpoint_every)."""

    def __init__(self, blocks: np.ndarray, batch_size: int, seed: int):
        self.blocks, self.batch_size = blocks, batch_size
        self.g = torch.Generator().manual_seed(seed)
        self.order: np.ndarray | None = None
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        n, b = len(self.blocks), self.batch_size
        if self.order is None or (self.i + b > n if n >= b else self.i > 0):
            self.order, self.i = torch.randperm(n, generator=self.g).numpy(), 0
        rows = self.order[self.i : self.i + b]
        self.i += b
        return torch.from_numpy(self.blocks[rows]).long()  # a copy of those rows (memory-mapped)

    def state_dict(self) -> dict:
        return {"g": self.g.get_state(), "order": None if self.order is None else self.order.copy(), "i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])
        self.order, self.i = state["order"], state["i"]


def batches(blocks: np.ndarray, batch_size: int, seed: int) -> Batches:
    return Batches(blocks, batch_size, seed)


class MixedBatches:
    """Endless batches of which ``fraction`` of the blocks (so of the tokens: every block is as long) come from
    ``replay``: after n batches exactly floor(fraction x batch_size x n) replay blocks have been drawn, so the
    fraction holds to within one block at any step. Each corpus is drawn in its own seeded shuffled order."""

    def __init__(self, domain: np.ndarray, replay: np.ndarray | None, fraction: float, batch_size: int, seed: int,
                 domain_rows: WeightedRows | None = None):
        self.domain, self.replay, self.fraction, self.batch_size = domain, replay, fraction, batch_size
        self.dom = domain_rows if domain_rows is not None else Rows(len(domain), seed)
        self.rep = Rows(len(replay), seed + 1) if replay is not None else None
        self.n = self.drawn = 0

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        self.n += 1
        k = math.floor(self.fraction * self.batch_size * self.n + 1e-9) - self.drawn
        self.drawn += k
        rows = [self.domain[self.dom.take(self.batch_size - k)]]
        if self.rep is not None:
            rows.append(self.replay[self.rep.take(k)])
        return torch.from_numpy(np.concatenate(rows)).long()

    def state_dict(self) -> dict:
        return {"dom": self.dom.state_dict(), "rep": self.rep.state_dict() if self.rep is not None else None,
                "n": self.n, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.dom.load_state_dict(state["dom"])
        if self.rep is not None:
            self.rep.load_state_dict(state["rep"])
        self.n, self.drawn = state["n"], state["drawn"]


def mixed_batches(domain: np.ndarray, replay: np.ndarray, fraction: float, batch_size: int, seed: int
                  ) -> MixedBatches:
    return MixedBatches(domain, replay, fraction, batch_size, seed)


class Rows:
    """Endless row indices: a fresh seeded permutation of range(n) per epoch, drawn ``take(k)`` at a time."""

    def __init__(self, n: int, seed: int):
        self.n, self.g = n, torch.Generator().manual_seed(seed)
        self.order: list[int] = []
        self.i = 0

    def take(self, k: int) -> list[int]:
        out: list[int] = []
        while len(out) < k:
            if self.i >= len(self.order):
                self.order, self.i = torch.randperm(self.n, generator=self.g).tolist(), 0
            j = min(len(self.order), self.i + k - len(out))
            out += self.order[self.i : j]
            self.i = j
        return out

    def state_dict(self) -> dict:
        return {"g": self.g.get_state(), "order": np.asarray(self.order, dtype=np.int64), "i": self.i}

    def load_state_dict(self, state: dict) -> None:
        self.g.set_state(state["g"])
        self.order, self.i = state["order"].tolist(), state["i"]


class WeightedRows:
    """Row indices into the training blocks of several domain sources (source i: rows offsets[i]:offsets[i+1]),
    each source drawn in its own seeded shuffled order, their shares held to the weights: after T rows, source i
    has given floor(T x w_i / sum w) or one more (the largest remainders get the spare rows, ties to the first)."""

    def __init__(self, offsets: list[int], weights: list[float], seed: int):
        self.offsets, self.weights = list(offsets), [w / sum(weights) for w in weights]
        self.rows = [Rows(offsets[i + 1] - offsets[i], seed + 2 + i) for i in range(len(weights))]
        self.drawn = [0] * len(weights)

    def take(self, k: int) -> list[int]:
        total = sum(self.drawn) + k
        target = [total * w for w in self.weights]
        counts = [max(0, math.floor(t + 1e-9) - d) for t, d in zip(target, self.drawn)]
        spare = k - sum(counts)
        by_remainder = sorted(range(len(counts)), key=lambda i: -(target[i] - self.drawn[i] - counts[i]))
        for i in by_remainder[:max(0, spare)]:
            counts[i] += 1
        out: list[int] = []
        for i, c in enumerate(counts):
            out += [self.offsets[i] + r for r in self.rows[i].take(c)]
            self.drawn[i] += c
        return out

    def state_dict(self) -> dict:
        return {"rows": [r.state_dict() for r in self.rows], "drawn": list(self.drawn)}

    def load_state_dict(self, state: dict) -> None:
        for r, s in zip(self.rows, state["rows"]):
            r.load_state_dict(s)
        self.drawn = list(state["drawn"])


def training_batches(corpora: Corpora, params: TrialParams, batch_size: int, seed: int):
    """The trial's batches: the domain's alone, or mixed with replay at the trial's replay fraction; several
    domain sources mixed by their weights (data.domain as a list)."""
    fraction = params.replay_fraction or 0.0
    if fraction > 0 and corpora.replay_train is None:
        raise DataError("a replay fraction without replay blocks: set data.replay.source")
    offsets = corpora.domain_train_offsets
    if offsets is not None and len(offsets) > 2:
        rows = WeightedRows(offsets, corpora.domain_weights or [1.0] * (len(offsets) - 1), seed)
        return MixedBatches(corpora.domain_train, corpora.replay_train if fraction > 0 else None, fraction,
                            batch_size, seed, domain_rows=rows)
    if fraction <= 0:
        return batches(corpora.domain_train, batch_size, seed)
    return mixed_batches(corpora.domain_train, corpora.replay_train, fraction, batch_size, seed)


def run_trial(backend, model_path: str, cfg: Config, params: TrialParams, corpora: Corpora, tracker,
              adapter_dir: Path | None, progress=None, checkpoint=None, base: dict[str, float] | None = None,
              saver: resume.Saver | None = None) -> TrialResult:
    """``checkpoint``: called with each eval point; a reason it returns stops training there (no adapter is
    saved) and comes back as ``stopped``, the metrics being those of that checkpoint. ``base``: the base model's
    losses; with them every eval point also logs eval/forgetting and eval/domain_gain. ``saver``
    (train.checkpoint_every): the training state is saved every N steps, and a state saved there before (by a
    worker that died) is resumed; it is removed once the trial ends with an outcome."""
    device = backend.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = Timer(sync=sync)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with timer("load"):
        model = backend.load_for_training(model_path, cfg, params)
        if not cfg.lora.init_adapter:
            reseed_lora(model, cfg.train.seed)
        optimizer = configure_optimizer(model, params, cfg)
        record = audit_mod.audit(model, optimizer, params, cfg.lora, embedding_module_names(model),
                                 params.learning_rate)
    with timer("log"):
        tracker.log_audit(record)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.train.max_steps, cfg.train.warmup_ratio, schedule(cfg.train)))
    evaluation = Evaluation(backend, model_path, cfg, corpora)
    try:
        stream = training_batches(corpora, params, cfg.train.batch_size, cfg.train.seed)
        resumed = saver.load() if saver is not None else None
        if resumed is not None:
            _restore(resumed, model, optimizer, scheduler, stream, evaluation, timer, checkpoint)
        result = _loop(model, optimizer, scheduler, backend, cfg, evaluation, stream, tracker, timer, progress,
                       checkpoint, base, saver, resumed)
    except TrialFailed:  # a failure of its own (divergence, time limit) would only repeat: nothing to resume
        if saver is not None:
            saver.clear()
        raise
    finally:
        evaluation.close()
    if saver is not None:
        saver.clear()
    result.resumed_step = resumed.step if resumed is not None else None
    result.evals = evaluation.evals()
    if result.stopped is not None:
        adapter_dir = None
    if adapter_dir is not None:
        with timer("save"):
            model.save_pretrained(str(adapter_dir))
    result.audit = record
    result.timings = dict(timer.totals)
    result.adapter_dir = str(adapter_dir) if adapter_dir is not None else None
    result.base_load = backend.last_load
    result.metrics.update(_memory(device))
    result.metrics["trainable_lora"] = record["trainable_parameters"].get("lora", 0)
    result.metrics["trainable_embedding"] = record["trainable_parameters"].get("embedding", 0)
    return result


def reseed_lora(model, seed: int) -> None:
    """LoRA A matrices initialised from (seed, module name) alone: trials with the same seed start from the same
    init on every module they share, whatever else they target and whichever backend built them. B stays zero,
    as PEFT initialises it, so the model still starts as the base model."""
    for name, module in model.named_modules():
        for adapter, linear in getattr(module, "lora_A", {}).items():
            g = torch.Generator().manual_seed(zlib.crc32(f"{seed}/{name}/{adapter}".encode()))
            w = torch.empty(linear.weight.shape, dtype=torch.float32)
            torch.nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)  # PEFT's default for lora_A
            with torch.no_grad():
                linear.weight.copy_(w)


def configure_optimizer(model, params: TrialParams, cfg: Config) -> MasterAdamW:
    """The trial's optimizer (nanoGPT's ``configure_optimizers``): AdamW over two named groups, ``param_groups``.
    The audit then checks what this built."""
    groups = param_groups(model, params.learning_rate, params.embedding_lr, cfg.train.weight_decay)
    return adamw(model, groups, betas=(0.9, 0.95))


def adamw(model, groups: list[dict], betas: tuple[float, float]) -> MasterAdamW:
    """AdamW over ``groups`` (each with its own lr and weight_decay), fused where the model is on a GPU; a weight
    the model holds in less than float32 is stepped as an fp32 master copy (``MasterAdamW``)."""
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return MasterAdamW(groups, betas=betas, eps=1e-8, **fused)


class MasterAdamW(torch.optim.AdamW):
    """AdamW that keeps an fp32 master of every weight the model holds in a lower precision (standard mixed
    precision; issue 18). The model computes with its bf16 weight, as raw Unsloth does with the embedding it
    trains; the optimizer's group holds the fp32 master, whose gradient is the bf16 one upcast as backward
    writes it (a hook; micro-batches accumulate in fp32), and each step copies the stepped masters back into the
    model's weights, rounded. The update is the fp32 path's: a 1e-5 step lands in the master instead of vanishing
    in bf16 rounding, and it adds up over steps. Holding the embedding itself in fp32 costs the model's forward
    and backward ~4.5% on a 1B model (benchmarks/RESULTS.md); this costs ~1%.

    ``masters``: (the model's weight, its master) pairs; the audit reads them. ``state_dict`` carries the masters'
    values, so a resumed trial goes on from the same fp32 weights."""

    def __init__(self, groups: list[dict], **kwargs):
        self.masters: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        groups = [{**g, "params": [self._master(p) for p in g["params"]]} for g in groups]
        super().__init__(groups, **kwargs)

    def _master(self, p: torch.nn.Parameter) -> torch.Tensor:
        if p.dtype == torch.float32:
            return p
        master = p.detach().float().requires_grad_(True)

        def to_master(weight: torch.Tensor) -> None:
            if weight.grad is None:  # taken by another optimizer's hook on the same weight
                return
            grad = weight.grad.float()
            master.grad = grad if master.grad is None else master.grad.add_(grad)
            weight.grad = None

        p.register_post_accumulate_grad_hook(to_master)
        self.masters.append((p, master))
        return master

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self.masters:
            torch._foreach_copy_([p for p, _ in self.masters], [m for _, m in self.masters])
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "masters": [m for _, m in self.masters]}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("masters", None) or []
        super().load_state_dict(state_dict)
        if len(saved) != len(self.masters):
            raise ValueError(f"the saved optimizer has {len(saved)} fp32 masters, this one {len(self.masters)}")
        with torch.no_grad():
            for (p, m), value in zip(self.masters, saved):
                m.copy_(value)
                p.copy_(m)


def optimized(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps (fp32 masters where it keeps them): what gradient clipping measures."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def param_groups(model, learning_rate: float, embedding_lr: float | None, weight_decay: float) -> list[dict]:
    """``lora``: the LoRA weights at the trial's LR, with weight decay. ``embedding``: embed_tokens and lm_head,
    trained in full, at embedding_lr = ratio x LR (the Unsloth CPT rule: 2-10x smaller), without weight decay, and
    only when they train. Any other trainable weight joins no group: the audit names it and fails the trial."""
    names = embedding_module_names(model)
    groups: dict[str, list] = {"lora": [], "embedding": [], "other": []}
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        if p.requires_grad:
            groups[classify(name, names)].append(p)
    out = [{"name": "lora", "params": groups["lora"], "lr": learning_rate, "weight_decay": weight_decay}]
    if groups["embedding"] and embedding_lr is not None:
        out.append({"name": "embedding", "params": groups["embedding"], "lr": embedding_lr, "weight_decay": 0.0})
    return out


def _restore(state: resume.TrainState, model, optimizer, scheduler, stream, evaluation: Evaluation, timer: Timer,
             checkpoint) -> None:
    """Put a resumed trial where its saved state was: weights, optimizer, scheduler, data position, the evals so
    far (re-reported to the pruner, which the retried trial has not seen), timings, and last the RNG states."""
    resume.load_trainable(model, state.trainable)
    optimizer.load_state_dict(state.optimizer)
    scheduler.load_state_dict(state.scheduler)
    stream.load_state_dict(state.stream)
    evaluation.checkpoints = list(state.checkpoints)
    for name, seconds in state.timings.items():
        timer.totals[name] += seconds
    if checkpoint is not None and hasattr(checkpoint, "replay"):
        for point in state.curve:
            checkpoint.replay(point)
    resume.set_rng_state(state.rng)


def _loop(model, optimizer, scheduler, backend, cfg: Config, evaluation: Evaluation, stream, tracker,
          timer: Timer, progress, checkpoint=None, base=None, saver: resume.Saver | None = None,
          resumed: resume.TrainState | None = None):
    t = cfg.train
    device = backend.device
    tokens_seen, first_loss, curve, stopped, done = 0, None, [], None, 0
    if resumed is not None:
        tokens_seen, first_loss, curve, done = resumed.tokens_seen, resumed.first_loss, list(resumed.curve), resumed.step
    elif cfg.lora.init_adapter:  # where the adapter starts: what this continuation adds is measured from here
        curve.append(_eval_point(evaluation, model, 0, 0, tracker, timer, base))
    log_every = max(1, t.max_steps // 50)
    points, wsd = set(eval_steps(t)), schedule(t) == "wsd"
    trainable = optimized(optimizer)  # the masters hold the gradients of weights that have one
    started = time.perf_counter() - (resumed.elapsed_s if resumed is not None else 0.0)
    for step in range(done + 1, t.max_steps + 1):
        with timer("data", sync=False):
            micro = [next(stream).to(device, non_blocking=True) for _ in range(t.grad_accum)]
        with timer("train", sync=False):
            loss, grad_norm = train_step(model, optimizer, scheduler, micro, backend.autocast, trainable,
                                         t.max_grad_norm)
            tokens_seen += sum(x.numel() for x in micro)
            # The one host sync per step: the divergence check needs the value, and so does the progress bar.
            step_loss = loss.item()
        first_loss = step_loss if first_loss is None else first_loss
        _check_divergence(step, step_loss, first_loss, t.divergence_factor)
        if progress is not None:
            progress(step, step_loss)
        if step % log_every == 0 or step == t.max_steps:
            with timer("log"):
                tracker.log({"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                             "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                             "tokens_seen": tokens_seen, "step": step})
        if step in points:
            if wsd:
                curve.append(decay_branch(model, optimizer, stream, backend, t, trainable, step, tokens_seen,
                                          first_loss, lambda tokens: _eval_point(evaluation, model, step, tokens,
                                                                                 tracker, timer, base), timer))
            else:
                curve.append(_eval_point(evaluation, model, step, tokens_seen, tracker, timer, base))
            if checkpoint is not None and (stopped := checkpoint(curve[-1])) is not None:
                break
        if saver is not None and saver.due(step, t.max_steps):
            with timer("save_state"):
                saver.save(resume.TrainState(
                    step=step, tokens_seen=tokens_seen, first_loss=first_loss, curve=list(curve),
                    checkpoints=list(evaluation.checkpoints), elapsed_s=time.perf_counter() - started,
                    timings=dict(timer.totals), trainable=resume.trainable_state(model),
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    stream=stream.state_dict(), rng=resume.rng_state()))
        if t.time_limit_s is not None and time.perf_counter() - started > t.time_limit_s:
            raise TrialFailed(f"time limit: {time.perf_counter() - started:.0f} s > train.time_limit_s={t.time_limit_s:g} "
                              f"at step {step}/{t.max_steps}")
    final = curve[-1]
    train_time = timer.totals["train"]
    metrics = {**{k: v for k, v in final.items() if k not in ("step", "tokens_seen", "decay_steps")},
               "train_loss": step_loss, "tokens_seen": tokens_seen, "train_time_s": train_time,
               "tokens_per_s": tokens_seen / train_time if train_time > 0 else float("nan")}
    if wsd:  # what the annealed points cost beyond the run itself (the report's header sums it)
        metrics["decay_steps_total"] = sum(p.get("decay_steps", 0) for p in curve)
        metrics["branch_time_s"] = timer.totals["branch"]
    if cfg.lora.init_adapter:
        metrics.update(from_start(curve[0], final))
    return TrialResult(metrics=metrics, curve=curve, audit={}, timings={}, stopped=stopped)


class _Fixed:
    """A scheduler that leaves the LRs as the caller set them (a decay branch sets them step by step)."""

    @staticmethod
    def step() -> None:
        pass


def decay_branch(model, optimizer, stream, backend, t: TrainConfig, trainable: list, step: int, tokens_seen: int,
                 first_loss: float, evaluate_at: Callable[[int], dict], timer: Timer) -> dict:
    """wsd's annealed eval point at ``step``: from a copy of the training state (trainable weights, optimizer with
    its fp32 masters and LRs, data position, RNG), train ``decay_steps`` more steps on the batches the run would see
    next with the LR decayed linearly from where the run is to 0 (step j of d at (d - j) / (d + 1) of it: neither
    end's value, which would be a wasted step or no decay), evaluate, and put everything back. The point is the
    end of a complete schedule of step + d steps, the same as a wsd run of max_steps = step would end with.
    The main run then goes on as if the branch had not happened."""
    d = decay_steps(t, step)
    saved = {"trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
             "optimizer": copy.deepcopy(optimizer.state_dict()), "stream": copy.deepcopy(stream.state_dict()),
             "rng": resume.rng_state()}
    start = [g["lr"] for g in optimizer.param_groups]  # what the run's next step would take
    tokens = tokens_seen
    with timer("branch", sync=False):
        for j in range(d):
            for g, lr in zip(optimizer.param_groups, start):
                g["lr"] = lr * (d - j) / (d + 1)
            micro = [next(stream).to(backend.device, non_blocking=True) for _ in range(t.grad_accum)]
            loss, _ = train_step(model, optimizer, _Fixed, micro, backend.autocast, trainable, t.max_grad_norm)
            tokens += sum(x.numel() for x in micro)
            _check_divergence(step + j + 1, loss.item(), first_loss, t.divergence_factor)
    point = {**evaluate_at(tokens), "decay_steps": d}
    resume.load_trainable(model, saved["trainable"])
    optimizer.load_state_dict(saved["optimizer"])  # its LRs too; MasterAdamW copies its masters back into the model
    stream.load_state_dict(saved["stream"])
    resume.set_rng_state(saved["rng"])
    return point


def train_step(model, optimizer, scheduler, micro: list[torch.Tensor], autocast, trainable: list,
               max_grad_norm: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step, the only one in the codebase (trials and healing take it): forward and backward over
    the micro-batches (gradients accumulated, each loss divided by their number), the gradient norm of
    ``trainable`` clipped to ``max_grad_norm`` (0: not clipped), then optimizer, scheduler, zeroed gradients.
    Returns the mean loss and the norm before clipping (None unclipped) as tensors: the caller decides when to
    sync with the device."""
    loss_sum = 0.0
    for x in micro:
        with autocast():
            loss = model(input_ids=x, labels=x).loss
        (loss / len(micro)).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum / len(micro), grad_norm


def _eval_point(evaluation: Evaluation, model, step: int, tokens_seen: int, tracker, timer: Timer,
                base: dict[str, float] | None = None) -> dict:
    """One eval checkpoint, logged; with the base losses known, forgetting and domain gain are curves too."""
    from cpt_harness.objective import with_forgetting

    with timer("eval"):
        point = evaluation(model, step, tokens_seen)
    with timer("log"):
        logged = with_forgetting(point, base) if base else point
        tracker.log({**{f"eval/{k}": v for k, v in logged.items() if k not in ("step", "tokens_seen")},
                     "tokens_seen": tokens_seen, "step": step})
    return point


def from_start(start: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """A continuation (lora.init_adapter) measured from the adapter it started from, beside the metrics that
    compare against the raw base: the start's losses, domain_gain_from_start = start domain loss - domain_loss,
    forgetting_from_start = general_loss - start general loss."""
    return {"domain_loss_start": start["domain_loss"], "general_loss_start": start["general_loss"],
            "general_kl_start": start["general_kl"],
            "domain_gain_from_start": start["domain_loss"] - final["domain_loss"],
            "forgetting_from_start": final["general_loss"] - start["general_loss"]}


def _check_divergence(step: int, loss: float, first: float, factor: float) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss} at step {step}: training diverged (lower the learning rate)")
    if loss > factor * first:
        raise Diverged(f"loss exploded at step {step}: {loss:.3f} > {factor:g} x first loss {first:.3f} "
                          "(lower the learning rate or raise train.divergence_factor)")


def _memory(device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # process peak RSS, KiB
