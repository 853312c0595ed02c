"""The trial protocol every worker of a study follows (and a one-process sweep is one worker):

    claim   under the study's lock: fail the running trials of dead workers (their retries are queued), then the
            plan names the next trial (``ask``), says to wait for others' running trials, or says it is done
    run     the objective trains it while a thread beats its heartbeat into the database
    tell    its outcome; a trial another worker already failed (its heartbeat was late) stays failed

What runs next is a ``Plan``'s decision: a sweep's (Optuna samples), an ablation's or a confirmation's (fixed
trials enqueued with user attributes). This is the one module that asks, tells and beats heartbeats, and it uses
Optuna's public API only (``BaseStorage`` methods, ``Study.ask``/``tell``, ``fail_stale_trials``,
``RetryHeartbeatStaleTrialCallback``), so an Optuna upgrade touches it and storage.py at most.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Callable, Final, Protocol, Union, runtime_checkable

import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from cpt_harness.search import study as storage

if TYPE_CHECKING:
    from cpt_harness.config import Config


class Done:
    """A plan's answer when nothing is left to run."""

    def __repr__(self) -> str:
        return "DONE"


DONE: Final = Done()
Claim = Union[Trial, None, Done]  # a trial to run now, None: wait for others' running trials, or DONE


@runtime_checkable
class Plan(Protocol):
    """What a worker runs. ``claim`` is called under the study's lock, so that several workers never start more
    trials than are missing; it either returns ``ask(study)`` (after enqueueing a fixed trial, if it wants one),
    None, or DONE."""

    job_type: str  # W&B job_type of its trials: trial (sweep), ablation, confirm
    target: int  # complete trials when done

    def claim(self, study: optuna.Study) -> Claim: ...

    def config_for(self, trial: Trial) -> Config:
        """The full config the trial trains with (an ablation arm's, a confirmation setting's)."""
        ...


def ask(study: optuna.Study) -> Trial:
    """A new trial of ``study`` (an enqueued or re-queued one first), claimed by this worker."""
    with warnings.catch_warnings():  # Optuna assumes heartbeats come with optimize(); `run` beats them itself
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
        return study.ask()


def enqueue_and_ask(study: optuna.Study, params: dict[str, Any], user_attrs: dict[str, Any]) -> Trial:
    """A fixed trial (an ablation arm, a confirmation seed), claimed by this worker."""
    study.enqueue_trial(params, user_attrs=user_attrs)
    return ask(study)


def claim(study: optuna.Study, plan: Plan, url: str) -> Claim:
    """The next trial this worker runs, None to wait, or DONE: decided under the study's lock (``url``: the
    study's storage URL), after failing the trials of dead workers, so that their retries are claimed first."""
    with storage.claim_lock(url):
        fail_stale(study)
        return plan.claim(study)


def fail_stale(study: optuna.Study) -> None:
    """Fail the running trials whose heartbeat is older than the storage's grace period, and queue their retries
    (the storage's RetryHeartbeatStaleTrialCallback, set up by storage.make_storage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def mark_running(trial: Trial, cfg: Config) -> None:
    """A running trial says from its start why it would end FAIL without a word from its worker: a finished trial
    takes no more attributes, so the reason must be there before the worker dies. The objective replaces it with
    the real outcome; ``storage.trial_rows`` adds which trial retried it."""
    grace = cfg.study.grace_period or 4 * cfg.study.heartbeat_interval  # as storage.make_storage sets it
    trial.set_user_attr("fail_reason", f"worker died (no heartbeat for over {grace} s)")


def trial_id(db: optuna.storages.BaseStorage, study: optuna.Study, number: int) -> int:
    """The storage's id of trial ``number`` of ``study``."""
    return db.get_trial_id_from_study_id_trial_number(db.get_study_id_from_name(study.study_name), number)


def retried_trial(frozen: FrozenTrial) -> int | None:
    """The number of the dead worker's trial that ``frozen`` re-runs (the first one, if it was retried before)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(frozen)


def run(
    study: optuna.Study, db: optuna.storages.BaseStorage, objective: Callable[[Trial], Any], trial: Trial
) -> FrozenTrial:
    """Run one claimed trial with its heartbeat and tell its outcome; the finished trial as stored. A retried
    trial carries ``retry_of`` (the failed original's number) before the objective sees it. Ctrl-C marks it FAIL
    and goes on up; a pruned trial (the objective raised optuna.TrialPruned, having recorded its metrics so far)
    is told PRUNED; any other exception is a FAIL whose reason the objective recorded on the trial."""
    tid = trial_id(db, study, trial.number)
    if (original := retried_trial(db.get_trial(tid))) is not None:
        trial.set_user_attr("retry_of", original)
    with heartbeat(db, tid):
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            return tell(study, trial, state=TrialState.PRUNED)
        except KeyboardInterrupt:
            tell(study, trial, state=TrialState.FAIL)
            raise
        except Exception:  # noqa: BLE001 - whatever went wrong, the trial is told FAIL
            return tell(study, trial, state=TrialState.FAIL)
        return tell(study, trial, values)


def tell(study: optuna.Study, trial: Trial, values=None, state: TrialState | None = None) -> FrozenTrial:
    """Record the outcome. A trial another worker failed meanwhile (its heartbeat was late) stays failed, and its
    retry carries on."""
    return study.tell(trial, values, state=state, skip_if_finished=True)


@contextlib.contextmanager
def heartbeat(db: optuna.storages.BaseStorage, tid: int) -> Iterator[None]:
    """Beat trial ``tid``'s heartbeat every heartbeat interval while the block runs (nothing when the storage has
    no heartbeat: study.heartbeat_interval unset, or a storage without one)."""
    interval = getattr(db, "get_heartbeat_interval", lambda: None)()
    if not interval:
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            db.record_heartbeat(tid)  # type: ignore[attr-defined]  # it has one: get_heartbeat_interval said so
            if stop.wait(interval):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{tid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
