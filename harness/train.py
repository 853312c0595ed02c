"""One trial: load, build the two optimizer groups, audit them, train with periodic eval, save the adapter.

The loop is the same for every backend (a backend only supplies the model), so a difference between
backends is the backend's and nothing else's.
"""

from __future__ import annotations

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

from harness import audit as audit_mod
from harness.backends.peft_backend import embedding_module_names
from harness.config import Config
from harness.data import Corpora
from harness.search_space import TrialParams


class TrialFailed(Exception):
    """A trial that cannot finish: diverged, over its time limit, failed its audit. The message is the reason."""


@dataclass
class TrialResult:
    metrics: dict[str, float]
    curve: list[dict[str, float]]
    audit: dict[str, Any]
    timings: dict[str, float]
    adapter_dir: str | None = None
    base_load: str = ""  # "disk", or "copy" of the base the worker keeps loaded (model.keep_loaded)


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


def evaluate(model, blocks: np.ndarray, batch_size: int, device, autocast) -> float:
    """Mean next-token cross-entropy (nats/token) over all blocks; every block has the same length."""
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


def lr_lambda(max_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Linear warmup over ``warmup_ratio`` of the steps, then cosine decay to zero."""
    warmup = int(round(warmup_ratio * max_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def batches(blocks: np.ndarray, batch_size: int, seed: int):
    """Endless shuffled batches; seed k gives the same order in every trial."""
    g = torch.Generator().manual_seed(seed)
    data = torch.from_numpy(blocks)
    while True:
        order = torch.randperm(len(data), generator=g)
        for i in range(0, len(order) - batch_size + 1, batch_size):
            yield data[order[i : i + batch_size]].long()
        if len(order) < batch_size:
            yield data[order].long()


def run_trial(backend, model_path: str, cfg: Config, params: TrialParams, corpora: Corpora, tracker,
              adapter_dir: Path | None, progress=None) -> TrialResult:
    device = backend.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    timer = Timer(sync=sync)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with timer("load"):
        model = backend.load_for_training(model_path, cfg, params)
        if not cfg.lora.init_adapter:
            reseed_lora(model, cfg.train.seed)
        optimizer = _optimizer(model, params, cfg)
        record = audit_mod.audit(model, optimizer, params, cfg.lora, _embedding_names(model), params.learning_rate)
    with timer("log"):
        tracker.log_audit(record)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.max_steps, cfg.train.warmup_ratio))
    result = _loop(model, optimizer, scheduler, backend, cfg, corpora, tracker, timer, progress)
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


def _optimizer(model, params: TrialParams, cfg: Config):
    groups = audit_mod.build_param_groups(model, params.learning_rate, params.embedding_lr, cfg.train.weight_decay,
                                          _embedding_names(model))
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return torch.optim.AdamW(groups, betas=(0.9, 0.95), eps=1e-8, **fused)


def _embedding_names(model) -> tuple[str, ...]:
    return tuple(embedding_module_names(model))


def _loop(model, optimizer, scheduler, backend, cfg: Config, corpora: Corpora, tracker, timer: Timer, progress):
    t = cfg.train
    device = backend.device
    stream = batches(corpora.domain_train, t.batch_size, t.seed)
    tokens_seen, first_loss, curve = 0, None, []
    log_every = max(1, t.max_steps // 50)
    trainable = [p for p in model.parameters() if p.requires_grad]
    started = time.perf_counter()
    for step in range(1, t.max_steps + 1):
        with timer("data", sync=False):
            micro = [next(stream).to(device, non_blocking=True) for _ in range(t.grad_accum)]
        with timer("train", sync=False):
            loss_sum = 0.0
            for x in micro:
                with backend.autocast():
                    loss = model(input_ids=x, labels=x).loss
                (loss / t.grad_accum).backward()
                loss_sum += loss.detach()
                tokens_seen += x.numel()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, t.max_grad_norm) if t.max_grad_norm > 0 else None
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            # The one host sync per step: the divergence check needs the value, and so does the progress bar.
            step_loss = (loss_sum / t.grad_accum).item()
        first_loss = step_loss if first_loss is None else first_loss
        _check_divergence(step, step_loss, first_loss, t.divergence_factor)
        if progress is not None:
            progress(step, step_loss)
        if step % log_every == 0 or step == t.max_steps:
            with timer("log"):
                tracker.log({"train/loss": step_loss, "train/lr": scheduler.get_last_lr()[0],
                             "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                             "tokens_seen": tokens_seen, "step": step})
        if step % t.eval_every == 0 or step == t.max_steps:
            with timer("eval"):
                point = {"step": step, "tokens_seen": tokens_seen,
                         "domain_loss": evaluate(model, corpora.domain_eval, cfg.eval.batch_size, device, backend.autocast),
                         "general_loss": evaluate(model, corpora.general_eval, cfg.eval.batch_size, device, backend.autocast)}
            curve.append(point)
            with timer("log"):
                tracker.log({"eval/domain_loss": point["domain_loss"], "eval/general_loss": point["general_loss"],
                             "tokens_seen": tokens_seen, "step": step})
        if t.time_limit_s is not None and time.perf_counter() - started > t.time_limit_s:
            raise TrialFailed(f"time limit: {time.perf_counter() - started:.0f} s > train.time_limit_s={t.time_limit_s:g} "
                              f"at step {step}/{t.max_steps}")
    final = curve[-1]
    train_time = timer.totals["train"]
    metrics = {"domain_loss": final["domain_loss"], "general_loss": final["general_loss"],
               "train_loss": step_loss, "tokens_seen": tokens_seen, "train_time_s": train_time,
               "tokens_per_s": tokens_seen / train_time if train_time > 0 else float("nan")}
    return TrialResult(metrics=metrics, curve=curve, audit={}, timings={})


def _check_divergence(step: int, loss: float, first: float, factor: float) -> None:
    if not math.isfinite(loss):
        raise TrialFailed(f"loss is {loss} at step {step}: training diverged (lower the learning rate)")
    if loss > factor * first:
        raise TrialFailed(f"loss exploded at step {step}: {loss:.3f} > {factor:g} x first loss {first:.3f} "
                          "(lower the learning rate or raise train.divergence_factor)")


def _memory(device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # process peak RSS, KiB
