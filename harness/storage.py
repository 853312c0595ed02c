"""The Optuna study: storage by URL, sampler by name, fingerprints and base losses kept on the study itself.

A study records fingerprints of the model, data and search space. Resuming it with different ones would mix
incomparable trials, so it is refused with a message saying what changed. The base model's losses are
measured once per study and stored with it, so forgetting is always measured against the same numbers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import optuna
from optuna.trial import TrialState

from harness.config import Config

DIRECTIONS = {"pareto": ["minimize", "minimize"]}  # domain_loss, forgetting
OBJECTIVE_NAMES = {"pareto": ["domain_loss", "forgetting"]}


class StudyMismatch(Exception):
    pass


def storage_url(storage: str) -> str:
    """A bare path means a SQLite file; anything with '://' is an SQLAlchemy URL."""
    return storage if "://" in storage else f"sqlite:///{storage}"


def make_storage(url: str) -> optuna.storages.BaseStorage:
    url = storage_url(url)
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        # Several processes on one host: wait for SQLite's write lock instead of failing at once.
        return optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.storages.RDBStorage(url)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    samplers: dict[str, Callable[[], optuna.samplers.BaseSampler]] = {
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True),
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "nsga2": lambda: optuna.samplers.NSGAIISampler(seed=seed),
    }
    return samplers[name]()


def open_study(cfg: Config, fingerprints: dict[str, str]) -> optuna.Study:
    """Create the study, or load it and check that it measures the same thing."""
    storage = make_storage(cfg.study.storage)
    existing = _load(storage, cfg.study.name)
    if existing is not None:
        _check_fingerprints(existing, fingerprints, cfg)
        # A resumed sampler is seeded past the trials it already proposed, so it does not repeat them.
        seed = cfg.study.seed + len(existing.trials)
        return optuna.load_study(study_name=cfg.study.name, storage=storage, sampler=make_sampler(cfg.study.sampler, seed))
    study = optuna.create_study(
        study_name=cfg.study.name, storage=storage, directions=DIRECTIONS[cfg.study.objective],
        sampler=make_sampler(cfg.study.sampler, cfg.study.seed), load_if_exists=True,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(OBJECTIVE_NAMES[cfg.study.objective])
    if "fingerprints" not in study.user_attrs:
        study.set_user_attr("fingerprints", fingerprints)
    else:  # another process created it between our check and create_study
        _check_fingerprints(study, fingerprints, cfg)
    return study


def _load(storage, name: str) -> optuna.Study | None:
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None


def _check_fingerprints(study: optuna.Study, current: dict[str, str], cfg: Config) -> None:
    stored = study.user_attrs.get("fingerprints", {})
    changed = [k for k in current if k in stored and stored[k] != current[k]]
    if changed:
        raise StudyMismatch(
            f"study {cfg.study.name!r} in {cfg.study.storage} was run with a different {', '.join(changed)} "
            f"(stored {', '.join(f'{k}={stored[k]}' for k in changed)}; now "
            f"{', '.join(f'{k}={current[k]}' for k in changed)}). Its trials would not be comparable: "
            "use a new study.name, or restore the original settings to resume it."
        )


def ensure_base_losses(study: optuna.Study, measure: Callable[[], dict[str, float]]) -> dict[str, float]:
    """The base model's held-out losses, measured once per study and stored on it."""
    base = study.user_attrs.get("base")
    if base is None:
        base = measure()
        study.set_user_attr("base", base)
    return base


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """Every trial as a flat dict of params, objective values and stored metrics (for tables and reports)."""
    front = {t.number for t in pareto_front(study)}
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {"number": t.number, "state": t.state.name, "pareto": t.number in front, **t.params}
        row.update({k: v for k, v in t.user_attrs.items() if not isinstance(v, (list, dict))})
        row["duration_s"] = t.duration.total_seconds() if t.duration else None
        rows.append(row)
    return rows


def pareto_front(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    if not count(study, TrialState.COMPLETE):
        return []
    return study.best_trials

