"""The Optuna study: storage by URL, sampler by name, fingerprints and base losses kept on the study itself.

A study records fingerprints of the model, data and search space. Resuming it with different ones would mix
incomparable trials, so it is refused with a message saying what changed. The base model's losses are
measured once per study and stored with it, so forgetting is always measured against the same numbers.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Literal

import optuna
from optuna.trial import TrialState

from cpt_harness.config import Config
from cpt_harness.errors import StudyMismatch
from cpt_harness.infra import urls
from cpt_harness.infra.cache import locked
from cpt_harness.infra.urls import StorageError
from cpt_harness.search import space as search_space
from cpt_harness.search.samplers import make_pruner, make_sampler

DIRECTIONS: dict[str, list[Literal["minimize", "maximize"]]] = {
    "pareto": ["minimize", "minimize"],
    "constrained": ["minimize"],
}
OBJECTIVE_NAMES = {"pareto": ["domain_loss", "forgetting"], "constrained": ["domain_loss"]}
CONSTRAINT = "forgetting"  # the Optuna constraint every finished trial records: forgetting - max_forgetting (<= 0 ok)
PRUNED_CAP = 3  # a sweep stops once the study holds PRUNED_CAP x n_trials complete and pruned trials together


def make_storage(
    url: str, heartbeat_interval: int | None = None, grace_period: int | None = None, max_retries: int = 2
) -> optuna.storages.RDBStorage:
    """The study's database. With a heartbeat, a running trial whose worker died (kill -9, OOM, node loss) is
    failed once its heartbeat is ``grace_period`` old and re-queued with the same parameters."""
    problems = urls.check(url)
    if problems:
        raise StorageError(problems[0])
    url = urls.connect_url(url)
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite:///"):
        if heartbeat_interval:  # a study that workers run (reading one for a report changes nothing)
            _prepare_sqlite(Path(url.removeprefix("sqlite:///")))
        # Several processes on one host: wait for SQLite's write lock instead of failing at once.
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 120}}
    with warnings.catch_warnings(), _storage_errors(url):
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval:
            kwargs.update(
                heartbeat_interval=heartbeat_interval,
                grace_period=grace_period or 4 * heartbeat_interval,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retries),
            )
        if not heartbeat_interval or schema_ready(url):
            return optuna.storages.RDBStorage(url, **kwargs)
        # Workers starting at once on an empty database would race to create its tables. Only then: setting up
        # the storage takes ~1 s a process (alembic), and 16 workers queueing for it on the claim lock delayed
        # their first trials by up to 25 s (2x H200, 2026-11-28; benchmarks/RESULTS.md).
        with claim_lock(url):
            if not schema_ready(url):
                return optuna.storages.RDBStorage(url, **kwargs)
        return optuna.storages.RDBStorage(url, **kwargs)  # created by the process this one waited for


@contextlib.contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """A database that refuses the connection (or breaks while opening) is a StorageError naming study.storage,
    with the password redacted; never a traceback."""
    import sqlalchemy

    try:
        yield
    except sqlalchemy.exc.SQLAlchemyError as e:
        reason = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise StorageError(
            f"study.storage: cannot open {urls.redact(url)} ({urls.redact(reason)[:300]}); check "
            "that the server is running and the URL, user and password (PGPASSWORD, ~/.pgpass or "
            "${NAME} in the URL) are right"
        ) from None


def schema_ready(url: str) -> bool:
    """Whether Optuna's tables are all there: stamping ``alembic_version`` is the last step of creating them."""
    import sqlalchemy

    url = urls.connect_url(url)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return False
    try:
        with _engine(url).connect() as con:
            return con.execute(sqlalchemy.text("SELECT version_num FROM alembic_version")).first() is not None
    except sqlalchemy.exc.SQLAlchemyError:  # no such table yet (or the database is not reachable: the lock path
        return False  # then reports that as before)


def storage_for(cfg: Config) -> optuna.storages.RDBStorage:
    s = cfg.study
    return make_storage(s.storage, s.heartbeat_interval, s.grace_period, s.max_retries)


def _prepare_sqlite(path: Path) -> None:
    """WAL journal: readers never block the writer, so several workers on one host share the file."""
    import sqlite3

    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.closing(sqlite3.connect(path, timeout=120)) as con:
        if con.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            con.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def claim_lock(url: str) -> Iterator[None]:
    """A lock shared by every worker of a study: a file lock beside a SQLite file (one host), a PostgreSQL
    advisory lock (any number of hosts). Held only to decide whether to start a trial, and while the base
    losses are measured, so that exactly n_trials complete and the base is measured once."""
    url = urls.connect_url(url)
    if url.startswith("sqlite:///"):
        with locked(Path(url.removeprefix("sqlite:///") + ".lock")):
            yield
    elif url.startswith("postgresql"):
        import sqlalchemy

        engine = _engine(url)
        with engine.connect() as con:
            key = lock_key(url)
            con.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                con.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    else:  # no cross-process lock for this database: at worst one trial more than asked for
        yield


def lock_key(url: str) -> int:
    """The advisory-lock key: from the database's name alone, so that every host takes the same lock whether it
    gives the password in the URL or through PGPASSWORD, and whatever it calls the server."""
    import sqlalchemy

    database = sqlalchemy.engine.make_url(urls.connect_url(url)).database or ""
    return int(hashlib.sha256(f"cpt-harness/{database}".encode()).hexdigest()[:15], 16)


@functools.lru_cache(maxsize=None)
def _engine(url: str):
    import sqlalchemy

    return sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)


def open_study(
    cfg: Config,
    fingerprints: dict[str, str],
    worker: int = 0,
    inputs: dict | None = None,
    storage: optuna.storages.BaseStorage | None = None,
    provenance: dict | None = None,
    accepted: dict[str, set[str]] | None = None,
) -> optuna.Study:
    """Create the study, or load it and check that it measures the same thing. Safe when several workers
    start at once: creation is load-if-exists, and the fingerprints they write are identical. ``inputs``: what
    the search-space fingerprint hashes, stored so that a refused resume names the keys that changed.
    ``storage``: the study's database as ``storage_for`` opens it (the caller keeps it to beat heartbeats).
    ``provenance``: the model's (models.provenance), which lets a healed base rebuilt on another machine resume
    its study (``rebuilt_heal``). ``accepted``: other stored fingerprints that match too, by kind
    (search_space.accepted_fingerprints: those of studies run before a speed-only key left the fingerprint)."""
    storage = storage or storage_for(cfg)
    existing = load_if_exists(storage, cfg.study.name)
    if existing is not None:
        _check_fingerprints(existing, fingerprints, cfg, inputs, provenance, accepted)
        # A resumed sampler is seeded past the trials it already proposed, and each worker differently,
        # so that none repeats another's proposals.
        seed = derived_seed(cfg.study.seed, len(existing.trials), worker)
        return optuna.load_study(
            study_name=cfg.study.name, storage=storage, sampler=make_sampler(cfg.study, seed), pruner=make_pruner(cfg)
        )
    study = optuna.create_study(
        study_name=cfg.study.name,
        storage=storage,
        directions=DIRECTIONS[cfg.study.objective],
        sampler=make_sampler(cfg.study, derived_seed(cfg.study.seed, 0, worker)),
        pruner=make_pruner(cfg),
        load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVE_NAMES[cfg.study.objective])
    if "fingerprints" not in study.user_attrs:
        study.set_user_attr("fingerprints", fingerprints)
        if inputs is not None:
            study.set_user_attr("fingerprint_inputs", inputs)
    else:  # another process created it between our check and create_study
        _check_fingerprints(study, fingerprints, cfg, inputs, provenance, accepted)
    enqueue_once(study, cfg)
    return study


def enqueue_once(study: optuna.Study, cfg: Config) -> None:
    """study.enqueue's points, queued when the study is created (under the claim lock, and marked on the study, so
    that workers starting at once queue them once): they run before any sampled trial, each with its name as the
    ``baseline`` user attribute."""
    points = search_space.enqueued(cfg)
    if not points:
        return
    with claim_lock(cfg.study.storage):
        if "enqueued" in study.user_attrs:
            return
        for name, params in points:
            study.enqueue_trial(params, user_attrs={"baseline": name}, skip_if_exists=True)
        study.set_user_attr("enqueued", [name for name, _ in points])


def derived_seed(seed: int, n_existing: int, worker: int) -> int:
    """The study's seed for a fresh single-process study; otherwise a hash of (seed, trials so far, worker):
    nearby integer seeds give visibly correlated first draws in Optuna's samplers."""
    if n_existing == 0 and worker == 0:
        return seed
    return int(hashlib.sha256(f"{seed}/{n_existing}/{worker}".encode()).hexdigest()[:8], 16)


def load_if_exists(storage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


# How far a healed base rebuilt from the same recipe may be from the study's, in held-out general loss (nats), and
# still resume it: GPU training is not bitwise reproducible, so every fresh GPU machine heals to slightly
# different weights (two H200 heals of sweeps/gpu-ablation.yaml differed by 4e-5 nats). A fifth of the
# smallest effect the ablations call a verdict (ablation.min_effect, 0.01).
HEAL_TOLERANCE = 0.002


def rebuilt_heal(stored: dict | None, current: dict | None) -> float | None:
    """The largest difference in general loss (held-out and validation, after healing) between two healed bases
    built by the same recipe (same base weights, heal settings and data), or None when they are not two heals of
    one recipe. The domain losses are not compared: a healed base is shared by studies of every domain."""
    if not stored or not current or not all("heal" in p and "heal_held_out" in p for p in (stored, current)):
        return None
    same = [stored.get(k) == current.get(k) for k in ("sha256", "heal", "dtype")]
    if "recipe" in stored and "recipe" in current:  # heals before 2026-11-28 did not record their recipe key
        same.append(stored["recipe"] == current["recipe"])
    if not all(same) or Path(str(stored.get("healed_from"))).name != Path(str(current.get("healed_from"))).name:
        return None
    try:
        pairs = [
            (stored["heal_held_out"]["general_loss"], current["heal_held_out"]["general_loss"]),
            (stored["heal_validation"]["general_loss"], current["heal_validation"]["general_loss"]),
        ]
        # Before healing: the same base on the same documents, up to GPU numerics (one base measured on two H200
        # machines differed by 2.7e-4 nats); another document set moves it far more.
        if any(abs(a[0] - b[0]) > HEAL_TOLERANCE for a, b in pairs):
            return None
        return max(abs(a[1] - b[1]) for a, b in pairs)
    except (KeyError, TypeError, IndexError):
        return None


def _check_fingerprints(
    study: optuna.Study,
    current: dict[str, str],
    cfg: Config,
    inputs: dict | None = None,
    provenance: dict | None = None,
    accepted: dict[str, set[str]] | None = None,
) -> None:
    stored = study.user_attrs.get("fingerprints", {})
    accepted = accepted or {}
    changed = [k for k in current if k in stored and stored[k] != current[k] and stored[k] not in accepted.get(k, ())]
    if changed == ["model"] and provenance is not None:
        delta = rebuilt_heal(study.user_attrs.get("model_provenance"), provenance)
        seen = {r["model"] for r in study.user_attrs.get("rebuilt_heals", [])}
        if delta is not None and delta <= HEAL_TOLERANCE:
            if current["model"] not in seen:  # which trials ran on which rebuild: from the trial count on
                record = {"model": current["model"], "general_loss_delta": delta, "from_trial": len(study.trials)}
                study.set_user_attr("rebuilt_heals", [*study.user_attrs.get("rebuilt_heals", []), record])
            return
        if delta is not None:
            raise StudyMismatch(
                f"study {cfg.study.name!r} in {urls.redact(cfg.study.storage)}: the healed base was rebuilt here "
                f"(same recipe: model.heal and the base weights) but its held-out general loss differs from the "
                f"study's by {delta:.4f} nats, more than the {HEAL_TOLERANCE} a rebuild may differ by. Its trials "
                "would not be comparable: carry the healed model folder from the first machine "
                "($CPT_HARNESS_CACHE/models/healed-*), or use a new study.name."
            )
    if changed:
        keys = changed_keys(study.user_attrs.get("fingerprint_inputs"), inputs)
        what = (
            ("; ".join(keys[:8]) + ("; ..." if len(keys) > 8 else ""))
            if keys
            else (
                f"stored {', '.join(f'{k}={stored[k]}' for k in changed)}; now "
                f"{', '.join(f'{k}={current[k]}' for k in changed)}"
            )
        )
        raise StudyMismatch(
            f"study {cfg.study.name!r} in {urls.redact(cfg.study.storage)} was run with a different "
            f"{', '.join(changed)} ({urls.redact(what)}). Its trials would not be comparable: "
            "use a new study.name, or restore the original settings to resume it."
        )


def changed_keys(stored: dict | None, current: dict | None) -> list[str]:
    """``key: stored -> now`` for every leaf that differs between two fingerprint inputs (empty if unknown)."""
    if not stored or not current:
        return []

    def flat(d: dict, p: str = "") -> dict:
        return {
            k2: v2
            for k, v in d.items()
            for k2, v2 in (flat(v, f"{p}{k}.").items() if isinstance(v, dict) else [(f"{p}{k}", v)])
        }

    from cpt_harness.search.space import SPEED_ONLY

    a, b = flat(stored), flat(current)
    for k in SPEED_ONLY:  # once hashed, never the reason a resume is refused
        for key in (f"train.{k}", f"search_space.train.{k}"):
            a.pop(key, None), b.pop(key, None)
    return [
        f"{k}: {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}"
        for k in sorted(set(a) | set(b))
        if a.get(k) != b.get(k)
    ]


def ensure_base_losses(study: optuna.Study, url: str, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The base model's held-out losses, measured once per study and stored on it. Under the claim lock: when
    several workers start cold, one measures and the others wait for its numbers."""
    base = study.user_attrs.get("base")
    if base is None:
        with claim_lock(url):
            base = study.user_attrs.get("base")
            if base is None:
                base = measure()
                study.set_user_attr("base", base)
    return base


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def objective_of(study: optuna.Study) -> str:
    """pareto (domain loss and forgetting) or constrained (domain loss alone), from the study's directions."""
    return "pareto" if len(study.directions) == 2 else "constrained"


def feasible(trial, max_forgetting: float | None = None) -> bool | None:
    """Whether the trial's forgetting is within the budget: against ``max_forgetting`` when given, else by the
    constraint the trial recorded; None when neither says."""
    if max_forgetting is not None and "forgetting" in trial.user_attrs:
        return trial.user_attrs["forgetting"] <= max_forgetting
    constraints = trial.constraints
    return all(v <= 0 for v in constraints.values()) if constraints else None


def trial_rows(study: optuna.Study, max_forgetting: float | None = None) -> list[dict[str, Any]]:
    """Every trial as a flat dict of params, objective values and stored metrics (for tables and reports)."""
    front = {t.number for t in pareto_front(study, max_forgetting)}
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        row = {"number": t.number, "state": t.state.name, "pareto": t.number in front, **t.params}
        row.update({k: v for k, v in t.user_attrs.items() if not isinstance(v, (list, dict))})
        if t.state != TrialState.FAIL:
            row.pop("fail_reason", None)  # a running trial's reason is only in case its worker dies
        elif str(row.get("fail_reason", "")).startswith("worker died"):
            row["fail_reason"] += _retry_text(t, trials)
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        row["feasible"] = feasible(t, max_forgetting) if t.state in (TrialState.COMPLETE, TrialState.PRUNED) else None
        rows.append(row)
    return rows


def _retry_text(failed, trials) -> str:
    """Which trial re-ran a dead worker's trial (Optuna's retry callback links them), if any."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
        numbers = [t.number for t in trials if retry(t) == failed.number]
    return f"; retried as trial {numbers[0]}" if numbers else "; not retried (study.max_retries reached, or not yet)"


def pareto_front(study: optuna.Study, max_forgetting: float | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials worth keeping. Pareto study: the front of the complete trials within the forgetting budget
    (``feasible``), or of all of them when none is. Constrained study: the lowest domain loss within the budget, or
    when none is, the trial that forgot least."""
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return []
    ok = [t for t in done if feasible(t, max_forgetting) is not False]
    if objective_of(study) == "constrained":
        return (
            [min(ok, key=lambda t: t.values[0])]
            if ok
            else [min(done, key=lambda t: t.user_attrs.get("forgetting", math.inf))]
        )
    pool = ok or done
    dominates = lambda a, b: all(x <= y for x, y in zip(a.values, b.values)) and a.values != b.values  # noqa: E731
    return [t for t in pool if not any(dominates(u, t) for u in pool)]
