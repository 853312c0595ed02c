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
from typing import Any, Callable, cast

import torch

from cpt_harness.config import Config, TrainConfig
from cpt_harness.data import Corpora
from cpt_harness.errors import Diverged, TrialFailed
from cpt_harness.evaluate.evals import Evals
from cpt_harness.evaluate.evaluation import Evaluation
from cpt_harness.evaluate.metrics import with_forgetting
from cpt_harness.model.modules import embedding_module_names
from cpt_harness.train import audit as audit_mod
from cpt_harness.train import resume
from cpt_harness.train.batches import training_batches
from cpt_harness.train.optim import configure_optimizer, optimized
from cpt_harness.train.params import TrialParams
from cpt_harness.train.schedule import decay_steps, eval_steps, schedule


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


def run_trial(
    backend,
    model_path: str,
    cfg: Config,
    params: TrialParams,
    corpora: Corpora,
    tracker,
    adapter_dir: Path | None,
    progress=None,
    checkpoint=None,
    base: dict[str, float] | None = None,
    saver: resume.Saver | None = None,
) -> TrialResult:
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
        record = audit_mod.audit(
            model, optimizer, params, cfg.lora, embedding_module_names(model), params.learning_rate
        )
    with timer("log"):
        tracker.log_audit(record)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(cfg.train.max_steps, cfg.train.warmup_ratio, schedule(cfg.train))
    )
    evaluation = Evaluation(backend, model_path, cfg, corpora)
    try:
        stream = training_batches(corpora, params, cfg.train.batch_size, cfg.train.seed)
        resumed = saver.load() if saver is not None else None
        if resumed is not None:
            _restore(resumed, model, optimizer, scheduler, stream, evaluation, timer, checkpoint)
        result = _loop(
            model,
            optimizer,
            scheduler,
            backend,
            cfg,
            evaluation,
            stream,
            tracker,
            timer,
            progress,
            checkpoint,
            base,
            saver,
            resumed,
        )
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


def _restore(
    state: resume.TrainState, model, optimizer, scheduler, stream, evaluation: Evaluation, timer: Timer, checkpoint
) -> None:
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


def _loop(
    model,
    optimizer,
    scheduler,
    backend,
    cfg: Config,
    evaluation: Evaluation,
    stream,
    tracker,
    timer: Timer,
    progress,
    checkpoint=None,
    base=None,
    saver: resume.Saver | None = None,
    resumed: resume.TrainState | None = None,
):
    t = cfg.train
    device = backend.device
    tokens_seen, first_loss, curve, stopped, done = 0, None, [], None, 0
    if resumed is not None:
        tokens_seen, first_loss, curve, done = (
            resumed.tokens_seen,
            resumed.first_loss,
            list(resumed.curve),
            resumed.step,
        )
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
            loss, grad_norm = train_step(
                model, optimizer, scheduler, micro, backend.autocast, trainable, t.max_grad_norm
            )
            tokens_seen += sum(x.numel() for x in micro)
            # The one host sync per step: the divergence check needs the value, and so does the progress bar.
            step_loss = loss.item()
        first_loss = step_loss if first_loss is None else first_loss
        _check_divergence(step, step_loss, first_loss, t.divergence_factor)
        if progress is not None:
            progress(step, step_loss)
        if step % log_every == 0 or step == t.max_steps:
            with timer("log"):
                tracker.log(
                    {
                        "train/loss": step_loss,
                        "train/lr": scheduler.get_last_lr()[0],
                        "train/grad_norm": float(grad_norm) if grad_norm is not None else float("nan"),
                        "tokens_seen": tokens_seen,
                        "step": step,
                    }
                )
        if step in points:
            if wsd:
                curve.append(
                    decay_branch(
                        model,
                        optimizer,
                        stream,
                        backend,
                        t,
                        trainable,
                        step,
                        tokens_seen,
                        first_loss,
                        lambda tokens: _eval_point(evaluation, model, step, tokens, tracker, timer, base),
                        timer,
                    )
                )
            else:
                curve.append(_eval_point(evaluation, model, step, tokens_seen, tracker, timer, base))
            if checkpoint is not None and (stopped := checkpoint(curve[-1])) is not None:
                break
        if saver is not None and saver.due(step, t.max_steps):
            with timer("save_state"):
                saver.save(
                    resume.TrainState(
                        step=step,
                        tokens_seen=tokens_seen,
                        first_loss=first_loss,
                        curve=list(curve),
                        checkpoints=list(evaluation.checkpoints),
                        elapsed_s=time.perf_counter() - started,
                        timings=dict(timer.totals),
                        trainable=resume.trainable_state(model),
                        optimizer=optimizer.state_dict(),
                        scheduler=scheduler.state_dict(),
                        stream=stream.state_dict(),
                        rng=resume.rng_state(),
                    )
                )
        if t.time_limit_s is not None and time.perf_counter() - started > t.time_limit_s:
            raise TrialFailed(
                f"time limit: {time.perf_counter() - started:.0f} s > train.time_limit_s={t.time_limit_s:g} "
                f"at step {step}/{t.max_steps}"
            )
    final = curve[-1]
    train_time = timer.totals["train"]
    metrics = {
        **{k: v for k, v in final.items() if k not in ("step", "tokens_seen", "decay_steps")},
        "train_loss": step_loss,
        "tokens_seen": tokens_seen,
        "train_time_s": train_time,
        "tokens_per_s": tokens_seen / train_time if train_time > 0 else float("nan"),
    }
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


def decay_branch(
    model,
    optimizer,
    stream,
    backend,
    t: TrainConfig,
    trainable: list,
    step: int,
    tokens_seen: int,
    first_loss: float,
    evaluate_at: Callable[[int], dict],
    timer: Timer,
) -> dict:
    """wsd's annealed eval point at ``step``: from a copy of the training state (trainable weights, optimizer with
    its fp32 masters and LRs, data position, RNG), train ``decay_steps`` more steps on the batches the run would see
    next with the LR decayed linearly from where the run is to 0 (step j of d at (d - j) / (d + 1) of it: neither
    end's value, which would be a wasted step or no decay), evaluate, and put everything back. The point is the
    end of a complete schedule of step + d steps, the same as a wsd run of max_steps = step would end with.
    The main run then goes on as if the branch had not happened."""
    d = decay_steps(t, step)
    saved = {
        "trainable": {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": copy.deepcopy(optimizer.state_dict()),
        "stream": copy.deepcopy(stream.state_dict()),
        "rng": resume.rng_state(),
    }
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


def train_step(
    model, optimizer, scheduler, micro: list[torch.Tensor], autocast, trainable: list, max_grad_norm: float
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One optimizer step, the only one in the codebase (trials and healing take it): forward and backward over
    the micro-batches (gradients accumulated, each loss divided by their number), the gradient norm of
    ``trainable`` clipped to ``max_grad_norm`` (0: not clipped), then optimizer, scheduler, zeroed gradients.
    Returns the mean loss and the norm before clipping (None unclipped) as tensors: the caller decides when to
    sync with the device."""
    loss_sum: torch.Tensor | float = 0.0  # a tensor once a micro-batch has run, and there is always one
    for x in micro:
        with autocast():
            loss = model(input_ids=x, labels=x).loss
        (loss / len(micro)).backward()
        loss_sum += loss.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return cast(torch.Tensor, loss_sum) / len(micro), grad_norm


def _eval_point(
    evaluation: Evaluation,
    model,
    step: int,
    tokens_seen: int,
    tracker,
    timer: Timer,
    base: dict[str, float] | None = None,
) -> dict:
    """One eval checkpoint, logged; with the base losses known, forgetting and domain gain are curves too."""
    with timer("eval"):
        point = evaluation(model, step, tokens_seen)
    with timer("log"):
        logged = with_forgetting(point, base) if base else point
        tracker.log(
            {
                **{f"eval/{k}": v for k, v in logged.items() if k not in ("step", "tokens_seen")},
                "tokens_seen": tokens_seen,
                "step": step,
            }
        )
    return point


def from_start(start: dict[str, float], final: dict[str, float]) -> dict[str, float]:
    """A continuation (lora.init_adapter) measured from the adapter it started from, beside the metrics that
    compare against the raw base: the start's losses, domain_gain_from_start = start domain loss - domain_loss,
    forgetting_from_start = general_loss - start general loss."""
    return {
        "domain_loss_start": start["domain_loss"],
        "general_loss_start": start["general_loss"],
        "general_kl_start": start["general_kl"],
        "domain_gain_from_start": start["domain_loss"] - final["domain_loss"],
        "forgetting_from_start": final["general_loss"] - start["general_loss"],
    }


def _check_divergence(step: int, loss: float, first: float, factor: float) -> None:
    if not math.isfinite(loss):
        raise Diverged(f"loss is {loss} at step {step}: training diverged (lower the learning rate)")
    if loss > factor * first:
        raise Diverged(
            f"loss exploded at step {step}: {loss:.3f} > {factor:g} x first loss {first:.3f} "
            "(lower the learning rate or raise train.divergence_factor)"
        )


def _memory(device) -> dict[str, float]:
    if device.type == "cuda":
        return {"peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30}
    import resource

    return {"peak_memory_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # process peak RSS, KiB
