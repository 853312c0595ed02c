"""The trial protocol (cpt_harness.trials) against a real SQLite study: heartbeats keep a long trial alive, a dead
worker's retry says what it retries, an outcome told after another worker failed the trial leaves it failed."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.search import trials


def _study(tiny_cfg, name: str):
    from cpt_harness.search import study as storage

    tiny_cfg.study.heartbeat_interval, tiny_cfg.study.grace_period, tiny_cfg.study.max_retries = 1, 2, 1
    db = storage.storage_for(tiny_cfg)
    return optuna.create_study(study_name=name, storage=db, directions=["minimize"] * 2), db


@pytest.mark.integration
def test_a_long_trial_keeps_beating_and_a_retry_knows_its_original(tiny_cfg):
    study, db = _study(tiny_cfg, "beat")
    study.enqueue_trial({"x": 1.0})
    dead = trials.ask(study)
    dead.suggest_float("x", 0, 2)
    db.record_heartbeat(trials.trial_id(db, study, dead.number))  # its worker dies after one beat
    time.sleep(3.1)  # SQLite keeps heartbeats to the second: over the 2 s grace period for sure
    trials.fail_stale(study)
    seen = {}

    def objective(trial):
        seen["retry_of"] = trial.user_attrs.get("retry_of")
        time.sleep(3.1)  # longer than the grace period: only the heartbeat keeps it from being failed
        trials.fail_stale(study)  # as another worker does before each claim
        seen["state"] = study.get_trials()[trial.number].state
        return trial.suggest_float("x", 0, 2), 0.0

    finished = trials.run(study, db, objective, trials.ask(study))
    assert seen == {"retry_of": 0, "state": TrialState.RUNNING}
    assert finished.number == 1 and finished.state == TrialState.COMPLETE and finished.values == [1.0, 0.0]
    assert finished.user_attrs["retry_of"] == 0


def test_an_outcome_told_after_another_worker_failed_the_trial_leaves_it_failed(tiny_cfg):
    study, db = _study(tiny_cfg, "late")

    def objective(trial):
        study.tell(trial.number, state=TrialState.FAIL)  # what fail_stale does to a trial whose beat was late
        return 1.0, 0.0

    finished = trials.run(study, db, objective, trials.ask(study))
    assert finished.state == TrialState.FAIL and study.get_trials()[0].values is None


def test_the_sweep_ablation_and_confirmation_plans_are_plans(tiny_cfg):
    from cpt_harness.analysis import ablation, confirm
    from cpt_harness.run import sweep

    plans = [
        sweep.SweepPlan(tiny_cfg, 2),
        ablation.AblationPlan(ablation.study_config(tiny_cfg)),
        confirm.ConfirmPlan(tiny_cfg, [{"setting": 0, "params": {"rank": 8, "learning_rate": 1e-3}}], [1, 2]),
    ]
    assert all(isinstance(p, trials.Plan) for p in plans)
    assert [p.job_type for p in plans] == ["trial", "ablation", "confirm"]
    assert not isinstance(object(), trials.Plan)
