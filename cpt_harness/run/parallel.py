"""Several trials at once: worker processes, K per GPU or N on a CPU, all pulling trials from one Optuna study.

There is no scheduler here: the study database is the queue (cpt_harness.sweep.work claims trials under the study's
lock), so workers on other hosts join by pointing ``cpt-harness worker`` at the same PostgreSQL URL. This module
starts the workers, prepares what they share (model, data, study, base losses: built once, by whichever process
gets there first) alongside them, shows progress for the whole sweep, and waits for them.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cpt_harness.config import Config, ConfigError
from cpt_harness.infra import urls
from cpt_harness.reporting import tables as report
from cpt_harness.run import jobs, sweep
from cpt_harness.run.jobs import Job
from cpt_harness.search import study as storage
from cpt_harness.train.checkpointing import ENV_TRIALS_ON_GPU


@dataclass
class Worker:
    label: str
    gpu: int | None
    proc: subprocess.Popen
    log: Path


def run(job: Job, log=print) -> int:
    """Start the workers of ``job`` (a sweep, an ablation or a confirmation) and wait for them; 0 when its study
    is complete."""
    from optuna.trial import TrialState

    cfg, scfg, target = job.source, job.cfg, job.target
    config_path, overrides = job.spec.config, job.spec.overrides
    if cfg.parallel.gpus:  # before anything starts: a GPU that is not there fails now, not in a worker
        _check_gpus(cfg.parallel.gpus)
    log_dir = Path(scfg.study.output_dir) / scfg.study.name / "workers"
    log_dir.mkdir(parents=True, exist_ok=True)
    host = socket.gethostname()
    # Creates the study's tables if need be, so that starting workers find them and do not queue for the lock.
    existing = _existing_study(scfg)
    per_gpu = _initial_per_gpu(scfg, existing)
    slots = _slots(scfg, per_gpu, host)
    extra = job.flags
    # The workers start first and prepare model, data and study while this process does the same: each import
    # of the training backend takes 30-45 s with Unsloth, so waiting for the parent's setup first delayed the
    # first trials by that much. What they share is built once (the cache's build locks; one process measures
    # the base losses under the study's lock while the others wait), and no trial starts before the base is known.
    workers = [
        _start(scfg, config_path, overrides, target, label, gpu, i, log_dir, len(slots), extra)
        for i, (label, gpu) in enumerate(slots)
    ]
    log(f"[parallel] {len(workers)} workers: {', '.join(w.label for w in workers)} (logs in {log_dir})")
    try:
        session = jobs.setup(job, log)  # errors surface here once, not per worker log
    except BaseException:
        _stop(workers)
        raise
    cfg, study = session.cfg, session.study
    seen: set[int] = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    pending_auto = cfg.parallel.trials_per_gpu == "auto" and bool(cfg.parallel.gpus) and _measured_peak(study) is None
    try:
        while any(w.proc.poll() is None for w in workers):
            time.sleep(2)
            seen = _report_finished(study, seen, log)
            _status(study, target, workers)
            if pending_auto and _measured_peak(study) is not None:
                workers += _top_up(cfg, config_path, overrides, target, study, host, log_dir, workers, log, extra)
                pending_auto = False
    except KeyboardInterrupt:
        _stop(workers)
        raise
    _report_finished(study, seen, log)
    print(file=sys.stderr)
    log(report.table(study, session.base))
    complete = storage.count(study, TrialState.COMPLETE)
    bad = [w for w in workers if w.proc.returncode not in (0, None)]
    if job.kind == "sweep" and (why := sweep.pruned_out(study, target)):
        log(f"[parallel] {why}")
        return 0
    if complete < target:
        log(
            f"[parallel] only {complete} of {target} trials complete; worker logs: "
            + ", ".join(str(w.log) for w in bad or workers)
        )
        return 1
    return 0


def _stop(workers: list[Worker]) -> None:
    """Ctrl-C to every worker (each fails its running trial, closes its W&B run and exits); wait for them."""
    for w in workers:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGINT)
    for w in workers:
        w.proc.wait()


def _existing_study(cfg: Config):
    """The study if it is already there (a resumed sweep: trials_per_gpu auto reads its measured peaks), else None.
    The storage is set up either way: its tables are there before the workers start."""
    return storage.load_if_exists(storage.storage_for(cfg), cfg.study.name)


def _slots(cfg: Config, per_gpu: int, host: str) -> list[tuple[str, int | None]]:
    if cfg.parallel.gpus:
        return [(f"{host}/gpu{g}/{k}", g) for g in cfg.parallel.gpus for k in range(per_gpu)]
    return [(f"{host}/cpu/{i}", None) for i in range(cfg.parallel.workers)]


def _start(cfg, config_path, overrides, target, label, gpu, index, log_dir, n_workers, extra=()) -> Worker:
    # The storage URL (perhaps with a password) through the environment, never the command line.
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{urls.ENV_STORAGE: cfg.study.storage})
    env.pop("WANDB_SERVICE", None)  # each worker its own W&B service: a killed worker's runs must not stay "in use"
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = physical_gpu(gpu)
        # how many trials share its card: train.gradient_checkpointing auto fits them all (cpt_harness.checkpointing)
        env[ENV_TRIALS_ON_GPU] = str(max(1, n_workers // len(cfg.parallel.gpus or [gpu])))
    # Share the cores instead of every worker spinning on all of them (torchrun does the same). GPU workers too:
    # on a 32-core host, per-trial model load grew from 11 s with one worker to 60 s with 16 (2x H200,
    # 2026-11-27, before this setting); oversubscribed threads are one suspect, not yet measured.
    threads = str(max(1, (os.cpu_count() or 1) // n_workers))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", threads)
    cmd = [
        sys.executable,
        "-m",
        "cpt_harness",
        "worker",
        config_path,
        "--label",
        label,
        "--index",
        str(index),
        *extra,
    ] + [x for o in overrides for x in ("--set", o)]
    log_path = log_dir / (label.replace("/", "_") + ".log")
    fh = open(log_path, "a")
    # SIG_DFL: workers must take the Ctrl-C the parent forwards even if this process was started with SIGINT
    # ignored (nohup, a background job), which exec would otherwise pass on.
    proc = subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    return Worker(label, gpu, proc, log_path)


def _check_gpus(gpus: list[int]) -> None:
    """Every listed GPU is there: without this, `--gpus 0` on a host with no CUDA trained on the CPU as "gpu0"."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n == 0:
        raise ConfigError(
            [
                "parallel.gpus: no CUDA GPU is visible on this host (torch.cuda.is_available() is "
                "False); drop --gpus and use --workers N to run several trials on the CPU"
            ]
        )
    for gpu in gpus:
        physical_gpu(gpu)
        if gpu >= n:
            raise ConfigError([f"parallel.gpus: GPU {gpu} does not exist: this process sees {n} (use 0..{n - 1})"])


def physical_gpu(gpu: int, visible: str | None = None) -> str:
    """The device a worker for GPU ``gpu`` must see. GPU numbers are as this process sees them, as in torch's
    ``cuda:N``: under ``CUDA_VISIBLE_DEVICES=2,3``, GPU 0 is device 2. A worker's own CUDA_VISIBLE_DEVICES
    replaces the parent's, so it names the device itself."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    ids = [v.strip() for v in (visible or "").split(",") if v.strip()]
    if not ids:
        return str(gpu)
    if gpu >= len(ids):
        raise ConfigError(
            [
                f"parallel.gpus: GPU {gpu} is not visible to this process (CUDA_VISIBLE_DEVICES={visible} "
                f"shows {len(ids)}: use 0..{len(ids) - 1})"
            ]
        )
    return ids[gpu]


def _report_finished(study, seen: set[int], log) -> set[int]:
    for t in study.get_trials(deepcopy=False):
        if t.state.is_finished() and t.number not in seen:
            seen.add(t.number)
            print("\r\033[K" if sys.stderr.isatty() else "", end="", file=sys.stderr)
            log(report.trial_line(t) + (f"  [{t.user_attrs['worker']}]" if t.user_attrs.get("worker") else ""))
    return seen


def _status(study, target: int, workers: list[Worker], alive: int | None = None) -> None:
    """One line for the whole sweep: done / running / failed, and what runs on each GPU."""
    trials = study.get_trials(deepcopy=False)
    done = sum(t.state.name == "COMPLETE" for t in trials)
    failed = sum(t.state.name == "FAIL" for t in trials)
    pruned = sum(t.state.name == "PRUNED" for t in trials)
    running = [t for t in trials if t.state.name == "RUNNING"]
    by_device: dict[str, int] = {}
    for t in running:
        device = str(t.user_attrs.get("worker", "?")).rsplit("/", 1)[0].split("/")[-1]
        by_device[device] = by_device.get(device, 0) + 1
    alive = sum(w.proc.poll() is None for w in workers) if alive is None else alive
    line = (
        f"[parallel] {done}/{target} complete, {len(running)} running, {failed} failed"
        + (f", {pruned} pruned" if pruned else "")
        + "; "
        + " ".join(f"{d}: {n} running" for d, n in sorted(by_device.items()))
        + f"; {alive} workers alive"
    )
    if sys.stderr.isatty():
        print("\r\033[K" + line, end="", file=sys.stderr, flush=True)
    elif int(time.time()) % 30 < 2:
        print(line, file=sys.stderr, flush=True)


def _initial_per_gpu(cfg: Config, study) -> int:
    if cfg.parallel.trials_per_gpu != "auto":
        return cfg.parallel.trials_per_gpu
    peak = _measured_peak(study) if study is not None else None
    return 1 if peak is None or not cfg.parallel.gpus else auto_trials_per_gpu(peak, _free_gb(cfg.parallel.gpus))


def _measured_peak(study) -> float | None:
    peaks = [
        t.user_attrs["peak_memory_gb"]
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE" and "peak_memory_gb" in t.user_attrs
    ]
    return max(peaks) if peaks else None


def auto_trials_per_gpu(peak_gb: float, free_gb: float, cap: int = 8) -> int:
    """How many trials of a measured peak fit a card's free memory: 15% headroom, and per trial 20% on top of
    the allocator's peak (caching, fragmentation) plus ~0.8 GiB of CUDA context."""
    from cpt_harness.train.checkpointing import HEADROOM, per_trial_gb  # gradient_checkpointing: auto fits by the same

    return max(1, min(cap, math.floor(HEADROOM * free_gb / per_trial_gb(peak_gb))))


def _free_gb(gpus: list[int]) -> float:
    import torch

    return min(torch.cuda.mem_get_info(g)[0] for g in gpus) / 2**30


def _top_up(cfg, config_path, overrides, target, study, host, log_dir, workers, log, flags=()) -> list[Worker]:
    """trials_per_gpu: auto. Once the first trial has measured its peak memory, start the workers that fit."""
    peak = _measured_peak(study)
    if peak is None:
        return []
    k = auto_trials_per_gpu(peak, _free_gb(cfg.parallel.gpus) + peak)  # the running trial's share is free again soon
    log(f"\n[parallel] measured peak {peak:.1f} GiB per trial: {k} trials per GPU")
    slots = [(f"{host}/gpu{g}/{i}", g) for g in cfg.parallel.gpus for i in range(1, k)]
    n = len(workers) + len(slots)
    return [
        _start(cfg, config_path, overrides, target, label, gpu, len(workers) + j, log_dir, n, flags)
        for j, (label, gpu) in enumerate(slots)
    ]
