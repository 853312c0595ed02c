"""train.schedule: wsd (each eval point the end of its own annealed schedule) and the eval steps."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cpt_harness.config import TrainConfig
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.train import loop as train
from cpt_harness.train.schedule import decay_steps, eval_steps
from tests.train.test_train import run


@pytest.fixture(scope="module")
def backend():
    return PeftBackend()


def test_log_eval_schedule_is_geometric_distinct_and_ends_at_max_steps():
    assert eval_steps(TrainConfig(max_steps=200, eval_schedule="log")) == [1, 3, 8, 24, 69, 200]
    assert eval_steps(TrainConfig(max_steps=4, eval_schedule="log")) == [1, 2, 3, 4]  # min(6, max_steps) points
    # Rounding makes duplicates at the low end: topped up with the smallest unused steps.
    steps = eval_steps(TrainConfig(max_steps=12, eval_schedule="log", eval_points=8))
    assert len(steps) == 8 and len(set(steps)) == 8 and steps[-1] == 12 and steps == sorted(steps)
    assert eval_steps(TrainConfig(max_steps=10, eval_schedule="log", eval_points=1)) == [10]
    assert eval_steps(TrainConfig(max_steps=200, eval_every=50)) == [50, 100, 150, 200]
    # eval_steps wins over both, and max_steps is always evaluated.
    assert eval_steps(TrainConfig(max_steps=20, eval_every=3, eval_schedule="log", eval_steps=[5, 2, 30])) == [2, 5, 20]


def test_decay_branch_length():
    t = TrainConfig(decay_fraction=0.2)
    assert [decay_steps(t, k) for k in (1, 3, 8, 24, 200)] == [1, 1, 2, 5, 40]


def _wsd(cfg, max_steps, warmup_ratio, steps):
    cfg = copy.deepcopy(cfg)
    cfg.train.schedule, cfg.train.max_steps, cfg.train.warmup_ratio = "wsd", max_steps, warmup_ratio
    cfg.train.eval_steps = steps
    cfg.lora.dropout = 0.0
    return cfg


@pytest.mark.integration
def test_a_decay_branch_equals_a_standalone_wsd_run_of_that_length(tiny_cfg, backend):
    """The point at step 8 of a 16-step wsd run (after a branch at step 4 that must leave no trace) equals the
    final point of a wsd run of max_steps 8 with the same warmup (2 steps) and seed; the main run is not changed
    by its branches: its later points equal a run with no branch before them."""
    long, _, _ = run(_wsd(tiny_cfg, 16, 0.125, [4, 8, 16]), backend)
    short, _, _ = run(_wsd(tiny_cfg, 8, 0.25, [8]), backend)
    no_early, _, _ = run(_wsd(tiny_cfg, 16, 0.125, [16]), backend)
    by_step = {p["step"]: p for p in long.curve}
    assert [p["step"] for p in long.curve] == [4, 8, 16]
    assert [p["decay_steps"] for p in long.curve] == [1, 2, 3]
    for key in ("domain_loss", "general_loss", "general_kl"):
        assert by_step[8][key] == pytest.approx(short.curve[-1][key], rel=1e-5, abs=1e-6)
        assert by_step[16][key] == pytest.approx(no_early.curve[-1][key], rel=1e-5, abs=1e-6)
    # The branch trains: its point differs from the un-annealed model's at the same step.
    assert by_step[8]["tokens_seen"] == short.curve[-1]["tokens_seen"] == (8 + 2) * 4 * 64
    np.testing.assert_allclose(long.evals.domain_nll[1], short.evals.domain_nll[-1], rtol=1e-5)
    m = long.metrics
    assert m["decay_steps_total"] == 6 and m["branch_time_s"] > 0 and m["tokens_seen"] == 16 * 4 * 64
    assert m["domain_loss"] == long.curve[-1]["domain_loss"]


@pytest.mark.integration
def test_wsd_keeps_the_stable_lr_and_the_branch_decays_it(tiny_cfg, backend):
    f = train.lr_lambda(100, 0.1, "wsd")
    assert [f(s) for s in (0, 9, 10, 50, 99)] == [pytest.approx(1 / 11), pytest.approx(10 / 11), 1.0, 1.0, 1.0]
    cosine = train.lr_lambda(100, 0.1)
    assert cosine(99) < 0.01
    _, rec, params = run(_wsd(tiny_cfg, 8, 0.0, [4, 8]), backend)
    lrs = [m["train/lr"] for m in rec.logged if "train/lr" in m]
    assert lrs and all(lr == pytest.approx(params.learning_rate) for lr in lrs)  # the main run never decays
