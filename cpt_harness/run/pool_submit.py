"""Handing a job to a running pool (`sweep`, `ablate` and `confirm` with a pool up): whether to, the job file its
workers pick up, and waiting for them while printing progress as a parallel run does."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace
from pathlib import Path

from cpt_harness.errors import RunAborted, UserError
from cpt_harness.infra import urls
from cpt_harness.run.pool import DEAD_SLOT_S, Pool, _alive, _read_json, _safe, _write_json, discover


def usable(pool: Pool | None, cfg, log=print) -> bool:
    """Whether a command hands its study to ``pool``: one is running, and it trains with the config's backend."""
    if pool is None:
        return False
    if cfg.backend not in ("auto", pool.backend):
        log(
            f"[pool] not using the running pool: it trains with backend {pool.backend}, this config with "
            f"{cfg.backend} (start a pool with `--backend {cfg.backend}`, or pass --no-pool)"
        )
        return False
    if urls.redact(cfg.study.storage) != cfg.study.storage:  # a job file would hold the password: never written
        log(
            "[pool] not using the running pool: study.storage holds a password, which a job file would have to "
            "hold; give it as ${NAME} in the URL, PGPASSWORD or ~/.pgpass to use the pool"
        )
        return False
    return True


def submit_command(pool: Pool, job, log=print) -> int:
    """What `sweep`, `ablate` and `confirm` do with a pool running: ``job`` (a ``jobs.Job``) handed to its workers,
    each of which rebuilds it from its spec."""
    return submit(pool, job.cfg, job.spec, job.target, log=log)


def submit(pool: Pool, scfg, spec, target: int, log=print, poll_s: float = 1.0) -> int:
    """Hand the study to the pool and wait for it to be done, printing progress as a parallel sweep does; the exit
    code as ``parallel.run``'s (2 when the workers found the input bad)."""
    from cpt_harness.reporting import tables as report
    from cpt_harness.run import parallel, sweep
    from cpt_harness.run.parallel import _report_finished
    from cpt_harness.search import study as storage

    d = pool.dir
    job_id = f"{time.time_ns():020d}-{os.getpid()}"
    spec = replace(spec, config=str(Path(spec.config).resolve()))
    job = {
        "id": job_id,
        "study": scfg.study.name,
        "cwd": os.getcwd(),
        "storage": scfg.study.storage,
        "spec": spec.as_dict(),
    }
    path, left = d / "jobs" / f"{job_id}.json", d / "jobs" / f"{job_id}.left"
    # Before the job is there: the study's tables exist when the workers open it (as parallel.run does), and the
    # trials finished before this command are known, so that every one finished since is printed.
    db = storage.storage_for(scfg)
    study = storage.load_if_exists(db, scfg.study.name)
    seen = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()} if study else set()
    submitted = time.perf_counter()
    _write_json(path, job, private=True)
    log(
        f"[pool] study {scfg.study.name!r} handed to the pool ({len(pool.slots)} workers: "
        f"{', '.join(pool.labels)}; logs in {d / 'logs'}); --workers/--gpus are the pool's"
    )
    first_said = False
    last_alive = {label: time.time() for label in pool.labels}
    try:
        while True:
            time.sleep(poll_s)
            alive = _alive_workers(d)
            last_alive.update({label: time.time() for label in alive})
            if study is None:
                study = storage.load_if_exists(db, scfg.study.name)
            if study is not None:
                if not first_said and (started := _first_start(study, submitted)) is not None:
                    log(f"[pool] first trial started {started:.1f} s after this command handed the study over")
                    first_said = True
                seen = _report_finished(study, seen, log)
                parallel._status(study, target, [], alive=len(alive))
            gone = {p.stem for p in left.glob("*.json")}
            # done when every worker has left the job; a slot dead for over a minute (its restart fails) does not count
            if all(_safe(label) in gone or time.time() - last_alive[label] > DEAD_SLOT_S for label in pool.labels):
                break
            if discover(d) is None:
                raise PoolGone(
                    f"the pool in {d} stopped before study {scfg.study.name!r} was done; run the same "
                    "command again to resume it (with or without a pool)"
                )
    except KeyboardInterrupt:
        _withdraw(pool, job_id)
        raise
    finally:
        path.unlink(missing_ok=True)
    results = {label: _read_json(left / f"{_safe(label)}.json") or {} for label in pool.labels}
    for f in left.glob("*.json"):
        f.unlink()
    left.rmdir()
    if study is not None:
        _report_finished(study, seen, log)
    errors = {label: r for label, r in results.items() if r.get("rc")}
    for label, r in errors.items():
        log(f"[pool] {label}: exit {r['rc']}: {r.get('error')}")
    if study is None or (len(errors) == len(results) and all(r.get("rc") == 2 for r in errors.values())):
        first = next(iter(errors.values()), {})
        reason = first.get("error") or "the pool's workers did not start the study"
        if first.get("rc") == 2 or study is None and not errors:
            raise JobRefused(reason)
        raise RunAborted(reason)
    log(report.table(study, study.user_attrs.get("base")))
    complete = storage.count(study, _complete())
    if spec.kind == "sweep" and (why := sweep.pruned_out(study, target)):
        log(f"[pool] {why}")
        return 0
    if complete < target:
        log(f"[pool] only {complete} of {target} trials complete; worker logs in {d / 'logs'}")
        return 1
    return 0


def _complete():
    from optuna.trial import TrialState

    return TrialState.COMPLETE


def _first_start(study, since_perf: float) -> float | None:
    """Seconds from handing the study over to the first trial of this run starting (None: none yet)."""
    import datetime

    handed = datetime.datetime.now() - datetime.timedelta(seconds=time.perf_counter() - since_perf)
    starts = [
        t.datetime_start
        for t in study.get_trials(deepcopy=False)
        if t.datetime_start is not None and t.datetime_start >= handed
    ]
    return (min(starts) - handed).total_seconds() if starts else None


def _alive_workers(d: Path) -> set[str]:
    """The labels of the pool's workers whose process lives (importing, waiting or on a job)."""
    out = set()
    for status in (d / "workers").glob("*.json"):
        info = _read_json(status)
        if info and _alive(int(info.get("pid", 0))):
            out.add(info["label"])
    return out


def _withdraw(pool: Pool, job_id: str) -> None:
    """Ctrl-C: the job goes, and the workers on it are interrupted (their running trials end FAIL)."""
    (pool.dir / "jobs" / f"{job_id}.json").unlink(missing_ok=True)
    for status in (pool.dir / "workers").glob("*.json"):
        info = _read_json(status)
        if info and info.get("job") == job_id and _alive(int(info["pid"])):
            os.kill(int(info["pid"]), signal.SIGINT)


class PoolGone(RunAborted):
    """The pool stopped while a command waited on it (exit 1)."""


class JobRefused(UserError):
    """Every pool worker refused the job as bad input (exit 2), with the first one's reason."""
