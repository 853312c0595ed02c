"""A warm worker pool: ``cpt-harness pool`` starts its workers once; `sweep`, `ablate` and `confirm` hand their
study to it while it runs, instead of starting workers that each import the training backend again (31-45 s with
Unsloth, issue 18).

Nothing new decides which trial runs where: a job is what ``cpt_harness.run.parallel`` puts on a worker's command line
(the sweep file, the overrides, ``--n-trials``/``--ablation``/``--confirm``), and every pool worker runs it as
``cpt-harness worker`` would, in its own process, pulling trials from the study under the study's lock, with
heartbeats, and retries of dead workers' trials (cpt_harness.trials). When the study is done the worker goes back
to waiting, its imports (and its kept base model, model.keep_loaded) still loaded.

The pool lives in a folder, ``$CPT_HARNESS_POOL`` or ``$CPT_HARNESS_CACHE/pool``:

- ``pool.json``: the pool's process id, host, backend and worker slots; a submitting command finds the pool by it
  (on the same host, while that process lives).
- ``jobs/<id>.json``: one job per submitted study, written whole (temporary file, then rename), readable by the
  user only. It holds the storage URL, never a password: a URL with one is not handed to the pool (``${NAME}``,
  PGPASSWORD and ~/.pgpass are). Every worker works on every job in order of submission.
- ``jobs/<id>.left/<worker>.json``: a worker has left the job: the study is done, or why not (exit code, error).
  The submitting command waits until every worker has left, prints progress from the study meanwhile, and
  removes the job.
- ``workers/<worker>.json``: each worker's process id and current job.

A worker that dies (SIGKILL, out of memory) is restarted by the pool; its running trial is failed once its heartbeat
is older than study.grace_period and retried, as with any worker. Ctrl-C on a submitting command withdraws its job
and interrupts the workers on it (their running trials are marked FAIL, as today); they go back to waiting. Ctrl-C
(or SIGTERM, or ``cpt-harness pool --stop``) on the pool stops it and its workers.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from cpt_harness.errors import ConfigError, HarnessError
from cpt_harness.infra import urls
from cpt_harness.train.checkpointing import ENV_TRIALS_ON_GPU

ENV_POOL = "CPT_HARNESS_POOL"
POLL_S = 0.3  # how often an idle worker looks for a job
DEAD_SLOT_S = 60.0  # a worker slot with no live process for this long no longer holds a submitted study up


def pool_dir() -> Path:
    """Where the pool's files are: ``$CPT_HARNESS_POOL``, else ``$CPT_HARNESS_CACHE/pool``."""
    if os.environ.get(ENV_POOL):
        return Path(os.environ[ENV_POOL])
    from cpt_harness.infra.cache import cache_dir

    return cache_dir() / "pool"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (exited, not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _write_json(path: Path, data: dict, private: bool = False) -> None:
    """Whole or not at all: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _safe(label: str) -> str:
    return label.replace("/", "_")


@dataclass
class Pool:
    dir: Path
    pid: int
    backend: str
    slots: list[dict]  # {"label", "gpu"}

    @property
    def labels(self) -> list[str]:
        return [s["label"] for s in self.slots]


def discover(directory: Path | None = None) -> Pool | None:
    """The pool running on this host, or None (no pool file, another host's, or its process is gone)."""
    d = directory or pool_dir()
    info = _read_json(d / "pool.json")
    if not info or info.get("host") != socket.gethostname() or not _alive(int(info.get("pid", 0))):
        return None
    return Pool(d, int(info["pid"]), info["backend"], info["slots"])


# ------------------------------------------------------------------------------------------------ the pool


def serve(gpus: list[int] | None, per_gpu: int, workers: int, backend: str, log=print) -> int:
    """`cpt-harness pool`: start the workers, keep them running (a dead one is restarted), until Ctrl-C/SIGTERM."""
    d = pool_dir()
    if (running := discover(d)) is not None:
        raise ConfigError(
            [
                f"a pool is already running in {d} (process {running.pid}, {len(running.slots)} workers); "
                "stop it first (`cpt-harness pool --stop`) or set $CPT_HARNESS_POOL to another folder"
            ],
            "pool",
        )
    if gpus:
        from cpt_harness.run.parallel import _check_gpus

        _check_gpus(gpus)
    if per_gpu < 1 or workers < 1:
        raise ConfigError([f"--trials-per-gpu / --workers: must be >= 1, got {per_gpu if gpus else workers}"], "pool")
    host = socket.gethostname()
    slots = (
        [{"label": f"{host}/gpu{g}/{k}", "gpu": g} for g in gpus for k in range(per_gpu)]
        if gpus
        else [{"label": f"{host}/cpu/{i}", "gpu": None} for i in range(workers)]
    )
    (d / "workers").mkdir(parents=True, exist_ok=True)
    (d / "jobs").mkdir(parents=True, exist_ok=True)
    for stale in (d / "workers").glob("*.json"):
        stale.unlink()
    for stale in (d / "jobs").glob("*.json"):  # a dead pool's jobs: their commands saw it go and stopped
        stale.unlink()
    _write_json(
        d / "pool.json", {"pid": os.getpid(), "host": host, "backend": backend, "slots": slots, "started": time.time()}
    )
    log_dir = d / "logs"
    log_dir.mkdir(exist_ok=True)
    procs = {i: _start_worker(d, s, i, len(slots), backend, log_dir, per_gpu) for i, s in enumerate(slots)}
    log(
        f"[pool] {len(slots)} workers ({', '.join(s['label'] for s in slots)}), backend {backend}; folder {d}, logs "
        f"in {log_dir}. `cpt-harness sweep|ablate|confirm` on this host now run on this pool. Ctrl-C stops it."
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    restarts: dict[int, float] = {}
    try:
        while True:
            time.sleep(1.0)
            _sweep_left(d)
            for i, proc in list(procs.items()):
                if proc.poll() is None:
                    continue
                if time.time() - restarts.get(i, 0.0) < 5.0:  # at most one restart per slot every 5 s
                    continue
                log(f"[pool] worker {slots[i]['label']} (pid {proc.pid}) exited with {proc.returncode}: restarting it")
                restarts[i] = time.time()
                procs[i] = _start_worker(d, slots[i], i, len(slots), backend, log_dir, per_gpu)
    except KeyboardInterrupt:
        log("\n[pool] stopping: its workers fail their running trials (interrupted) and exit")
    finally:
        signal.signal(signal.SIGTERM, previous)
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        info = _read_json(d / "pool.json")
        if info and info.get("pid") == os.getpid():
            (d / "pool.json").unlink(missing_ok=True)
    return 0


def _sweep_left(d: Path, age_s: float = 300.0) -> None:
    """Remove what workers wrote for a job that is gone (withdrawn by Ctrl-C) once nobody can want it."""
    import shutil

    for left in (d / "jobs").glob("*.left"):
        job = d / "jobs" / left.name.removesuffix(".left")
        try:
            if not job.with_suffix(".json").exists() and time.time() - left.stat().st_mtime > age_s:
                shutil.rmtree(left, ignore_errors=True)
        except OSError:
            pass


def stop(log=print) -> int:
    """`cpt-harness pool --stop`: stop the running pool (as Ctrl-C would) and wait for it to go."""
    pool = discover()
    if pool is None:
        log(f"[pool] no pool is running ({pool_dir()})")
        return 0
    os.kill(pool.pid, signal.SIGTERM)
    deadline = time.time() + 120
    while _alive(pool.pid) and time.time() < deadline:
        time.sleep(0.2)
    log(f"[pool] stopped the pool (process {pool.pid})")
    return 0


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def _start_worker(
    d: Path, slot: dict, index: int, n: int, backend: str, log_dir: Path, per_gpu: int = 1
) -> subprocess.Popen:
    from cpt_harness.run.parallel import physical_gpu

    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ENV_POOL: str(d)})
    env.pop("WANDB_SERVICE", None)  # each worker its own W&B service, as cpt_harness.parallel starts them
    if slot["gpu"] is not None:
        env["CUDA_VISIBLE_DEVICES"] = physical_gpu(slot["gpu"])
        env[ENV_TRIALS_ON_GPU] = str(per_gpu)  # train.gradient_checkpointing auto fits this many trials on the card
    threads = str(max(1, (os.cpu_count() or 1) // n))
    env.setdefault("OMP_NUM_THREADS", threads)
    env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", threads)
    cmd = [sys.executable, "-m", "cpt_harness.run.pool", str(d), slot["label"], str(index), backend]
    fh = open(log_dir / (_safe(slot["label"]) + ".log"), "a")
    return subprocess.Popen(
        cmd,
        stdout=fh,
        stderr=subprocess.STDOUT,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


# ------------------------------------------------------------------------------------------------ a worker


def worker_main(d: Path, label: str, index: int, backend: str) -> int:
    """One pool worker: import the backend once, then run every job, in order, until the pool stops (SIGTERM:
    as Ctrl-C, the running trial is marked FAIL, interrupted; then the worker exits)."""
    stopping = []

    def on_term(signum, frame):
        stopping.append(signum)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    status = d / "workers" / f"{_safe(label)}.json"
    _write_json(status, {"pid": os.getpid(), "label": label, "job": None, "importing": True})
    t = time.perf_counter()
    try:
        from cpt_harness.model import backends

        if stopping:
            return 0
        backends.keep_backends()
        backends.load(backend)  # the import this pool exists to pay once (unsloth: before transformers)
        _warm_imports()
        print(f"[pool] {label}: backend {backend} imported in {time.perf_counter() - t:.1f} s", flush=True)
        home = os.getcwd()
        while True:
            _write_json(status, {"pid": os.getpid(), "label": label, "job": None})
            job, half_imported = None, False
            try:
                job = _next_job(d, label)
                if job is None:
                    if discover(d) is None:  # the pool is gone: so is this worker
                        return 0
                    time.sleep(POLL_S)
                    continue
                _write_json(status, {"pid": os.getpid(), "label": label, "job": job["id"]})
                rc, error = _run_job(job, label, index)
            except KeyboardInterrupt as e:  # a withdrawn job (its command's Ctrl-C): back to waiting
                rc, error = 130, "interrupted"
                half_imported = _interrupted_an_import(e)
            finally:
                os.chdir(home)
            if job is not None:
                _write_json(d / "jobs" / f"{job['id']}.left" / f"{_safe(label)}.json", {"rc": rc, "error": error})
                print(f"[pool] {label}: left job {job['id']} (exit {rc}{': ' + error if error else ''})", flush=True)
            if stopping:
                print(f"[pool] {label}: stopped", flush=True)
                return 0
            if rc == 130 and half_imported:
                # An import cut short leaves its package's submodules half set up in this process (pandas then
                # fails every later trial with "partially initialized module"): start afresh, same process id.
                print(f"[pool] {label}: the interrupt landed in an import; restarting this worker", flush=True)
                sys.stdout.flush()
                os.execv(
                    sys.executable, [sys.executable, "-m", "cpt_harness.run.pool", str(d), label, str(index), backend]
                )
    except KeyboardInterrupt:  # the pool stopped it while it imported or wrote a file
        print(f"[pool] {label}: stopped", flush=True)
        return 0
    finally:
        status.unlink(missing_ok=True)


# What a trial imports beyond the backend (measured: a PEFT trial in a fresh process loads these on its first trial).
# Imported when the worker starts, so that the pool pays them once and a Ctrl-C on a job does not cut one short.
WARM_IMPORTS = (
    "cpt_harness.cli",
    "cpt_harness.run.sweep",
    "cpt_harness.analysis.ablation",
    "cpt_harness.analysis.confirm",
    "cpt_harness.train.loop",
    "cpt_harness.data",
    "cpt_harness.evaluate.evals",
    "cpt_harness.infra.tracking",
    "peft",
    "datasets",
    "pandas",
    "pyarrow",
    "sqlalchemy",
    "alembic",
    "optuna.storages",
    "wandb",
)


def _warm_imports() -> None:
    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional package this install lacks: the trial says so if it needs it
            pass


def _interrupted_an_import(e: BaseException) -> bool:
    """Whether the interrupt was raised inside an import: a module's top-level code on its traceback, or importlib's
    own frames (which Python strips from most import tracebacks, so the module frame is the usual sign)."""
    tb = e.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "<module>" or code.co_filename.startswith("<frozen importlib"):
            return True
        tb = tb.tb_next
    return False


def _next_job(d: Path, label: str) -> dict | None:
    for path in sorted((d / "jobs").glob("*.json")):
        if not (path.parent / f"{path.stem}.left" / f"{_safe(label)}.json").exists():
            job = _read_json(path)
            if job is not None:
                return job
    return None


def _run_job(job: dict, label: str, index: int) -> tuple[int, str | None]:
    """The job, as `cpt-harness worker` runs it, in this process: (exit code, error or None)."""
    from cpt_harness.run import jobs

    os.chdir(job["cwd"])
    previous = os.environ.get(urls.ENV_STORAGE)
    os.environ[urls.ENV_STORAGE] = job["storage"]
    print(f"[pool] {label}: job {job['id']}: study {job['study']}", flush=True)
    try:
        jobs.run_worker(jobs.build(jobs.Spec.from_dict(job["spec"])), label, index)
        return 0, None
    except HarnessError as e:
        return e.exit_code, urls.redact(str(e))
    except Exception as e:  # noqa: BLE001 - a job's failure is reported to its submitter; the worker serves on
        traceback.print_exc()
        return 1, urls.redact(f"{type(e).__name__}: {e}".split("\n")[0][:500])
    finally:
        if previous is None:
            os.environ.pop(urls.ENV_STORAGE, None)
        else:
            os.environ[urls.ENV_STORAGE] = previous


# ------------------------------------------------------------------------------------------------ submitting


if __name__ == "__main__":
    sys.exit(worker_main(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]))
