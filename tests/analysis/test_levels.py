"""The shared-arms design judged over match levels (issue 26): the band verdict rules on constructed effects, the LR
grid extension on a constructed edge optimum, and the demo's shared ablation on the tiny model end to end."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.analysis import ablation, claims, levels, stats
from cpt_harness.analysis import grid as grid_mod
from cpt_harness.cli import main
from cpt_harness.config import ConfigError
from cpt_harness.config.validate import load_config
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _result(per_level: list[list[float]], direction: int = +1, delta: float = 0.01) -> levels.LevelResult:
    spec = claims.Spec("gate_proj", "claim", "analysis", "nats", direction, "other")
    fractions = [0.25, 0.5, 0.75, 1.0][: len(per_level)]
    effects = [
        levels.LevelEffect(f, 0.4 * f, dict(enumerate(v)), lambda rs: math.nan) for f, v in zip(fractions, per_level)
    ]
    return levels.LevelResult(spec, "gain", 0.4, effects, delta)


def test_a_sign_change_over_the_levels_is_level_dependent_and_names_the_crossing():
    # The claimed sign (positive) at the low levels, the opposite at the high ones; seeds agree closely.
    r = _result(
        [
            [0.10, 0.11, 0.12, 0.10, 0.11],
            [0.05, 0.06, 0.05, 0.06, 0.05],
            [-0.05, -0.06, -0.05, -0.06, -0.05],
            [-0.10, -0.11, -0.10, -0.12, -0.11],
        ]
    )
    (r,) = levels.judge([r])
    assert r.label == levels.LEVEL_DEPENDENT
    assert "the claimed sign at 0.25–0.5" in r.holds and "the opposite at 0.75–1" in r.holds
    # The estimates +0.054 at level 0.2 and −0.054 at 0.3 cross zero half-way, at domain gain 0.25.
    assert "crosses zero near domain gain +0.2500 nats" in r.holds
    assert [e.verdict.label for e in r.levels] == ["SUPPORTED", "SUPPORTED", "CONTRADICTED", "CONTRADICTED"]
    # The band is simultaneous: each level's t-interval at 1 - 0.05/4, wider than the 95% one.
    e = r.levels[0]
    plain = stats.t_interval(list(e.per_seed.values()))
    assert e.low < plain.low and e.high > plain.high


def test_a_verdict_holds_only_where_every_level_agrees():
    supported = levels.judge([_result([[0.05, 0.06, 0.05, 0.06]] * 4)])[0]
    assert supported.label == stats.SUPPORTED and supported.holds.startswith("holds at every level tried")
    negligible = levels.judge([_result([[0.001, -0.001, 0.0005, 0.0]] * 4)])[0]
    assert negligible.label == stats.NEGLIGIBLE
    # Supported at the high levels, negligible at the low ones: no verdict over the band, and it says where.
    mixed = levels.judge(
        [
            _result(
                [
                    [0.001, -0.001, 0.0005, 0.0],
                    [0.001, 0.0, 0.0005, -0.0005],
                    [0.05, 0.06, 0.05, 0.06],
                    [0.08, 0.09, 0.08, 0.09],
                ]
            )
        ]
    )[0]
    assert mixed.label == stats.INCONCLUSIVE
    assert mixed.holds == (
        "no verdict over the whole band; by level: NEGLIGIBLE at 0.25–0.5 of the common reach, "
        "domain gain +0.1000 to +0.2000 nats; SUPPORTED at 0.75–1 of the common reach, domain gain "
        "+0.3000 to +0.4000 nats"
    )
    # The contradicted direction: a claim predicting a negative effect, measured positive everywhere.
    contra = levels.judge([_result([[0.05, 0.06, 0.05, 0.06]] * 4, direction=-1)])[0]
    assert contra.label == stats.CONTRADICTED


def test_the_grid_is_extended_past_an_edge_optimum_until_the_best_lr_is_inside():
    seeds = [0, 1, 2]
    gains = {1e-3: {0: 0.30, 1: 0.31, 2: 0.29}, 4e-3: {0: 0.40, 1: 0.41, 2: 0.39}}  # best at the top edge
    assert grid_mod.extend_grid([1e-3, 4e-3], gains, seeds, 4, 6) == [1e-3, 4e-3, 0.016]  # the next LR up
    gains[0.016] = {0: 0.35, 1: 0.36}  # seed 2 has not run it yet: no decision beyond it
    assert grid_mod.extend_grid([1e-3, 4e-3], gains, seeds, 4, 6) == [1e-3, 4e-3, 0.016]
    gains[0.016][2] = 0.34  # worse than 4e-3: the best is inside, the grid stops growing
    assert grid_mod.extend_grid([1e-3, 4e-3], gains, seeds, 4, 6) == [1e-3, 4e-3, 0.016]
    # A diverged new LR (-inf) brackets the best below it.
    diverged = {1e-3: {0: 0.3}, 4e-3: {0: 0.4}, 0.016: {0: -math.inf}}
    assert grid_mod.extend_grid([1e-3, 4e-3], diverged, [0], 4, 6) == [1e-3, 4e-3, 0.016]
    # Best at the bottom edge: extended downwards; and never beyond max_learning_rates.
    low = {1e-3: {0: 0.5}, 4e-3: {0: 0.2}, 2.5e-4: {0: 0.6}, 6.25e-5: {0: 0.7}}
    assert grid_mod.extend_grid([1e-3, 4e-3], low, [0], 4, 4) == [6.25e-5, 2.5e-4, 1e-3, 4e-3]
    assert grid_mod.extend_grid([1e-3, 4e-3], low, [0], 4, 6) == [1.5625e-5, 6.25e-5, 2.5e-4, 1e-3, 4e-3]


def test_shared_design_arms_and_checks(tiny_overrides):
    sets = tiny_overrides + [
        "ablation.design=shared",
        "ablation.learning_rates=[1e-3, 4e-3]",
        "ablation.rank=4",
        "ablation.high_rank=16",
        "ablation.factors=[gate_proj, embeddings, embedding_lr_ratio, rslora]",
    ]
    cfg = load_config(DEMO, sets)
    names = [a.name for a in ablation.arms(cfg)]
    default = "gate_proj=in,embeddings=trained,embedding_lr_ratio=0.2,rank=4,rslora=off"
    assert names[0] == default and len(names) == 8 and len(set(names)) == 8
    assert "gate_proj=out,embeddings=trained,embedding_lr_ratio=0.2,rank=4,rslora=off" in names
    assert {"rank=4,rslora=on", "rank=16,rslora=off", "rank=16,rslora=on"} <= {n.split(",", 3)[3] for n in names}
    design = ablation.design(cfg)["design"]
    assert [c["gate_proj"] for c in ablation.claim_arms(design, "gate_proj")] == ["in", "out"]
    assert len(ablation.claim_arms(design, "rslora")) == 4
    with pytest.raises(ConfigError, match=r"ablation.embedding_lr_ratio: 0.3 must be one of ablation.ratios"):
        load_config(DEMO, sets + ["ablation.embedding_lr_ratio=0.3"])
    with pytest.raises(ConfigError, match=r"ablation.design: shared is a frontier design"):
        load_config(DEMO, tiny_overrides + ["ablation.design=shared"])


@pytest.mark.integration
def test_demo_shared_ablation_with_wsd_and_log_evals_end_to_end(tiny_overrides, tmp_path):
    """The demo's ablation as issue 26 runs it: shared arms, wsd (auto in ablate), log-spaced evals, each arm's
    grid extended at most to 3 LRs; the report has levels.png and per-claim schedule, levels, best_lr_interior."""
    sets = [
        x
        for o in tiny_overrides
        + [
            "ablation.design=shared",
            "ablation.factors=[gate_proj, embeddings]",
            "ablation.seeds=2",
            "ablation.learning_rates=[1e-3, 4e-3]",
            "ablation.max_learning_rates=3",
            "train.eval_schedule=log",
            "train.eval_points=3",
            "ablation.min_effect=0.001",
        ]
        for x in ("--set", o)
    ]
    assert main(["ablate", DEMO] + sets) == 0
    study = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert {t.user_attrs["arm"] for t in done} == set(study.user_attrs["design"]["arms"]) and len(
        study.user_attrs["design"]["arms"]
    ) == 3
    # Every point annealed: the curve's steps are the log schedule's, each with its decay branch.
    assert all([p["step"] for p in t.user_attrs["curve"]] == [1, 2, 6] for t in done)
    assert all(p["decay_steps"] == 1 for t in done for p in t.user_attrs["curve"])
    # Each arm's grid: extended only while its best LR was at the edge, never past 3 LRs, every seed run on it.
    runs = grid_mod.done_runs(study.trials)
    for arm, by_lr in runs.items():
        grid = sorted(by_lr)
        assert 2 <= len(grid) <= 3 and all(set(s) == {0, 1} for s in by_lr.values())
        best = grid_mod.best_grid_lr(grid, by_lr, [0, 1])
        assert grid[0] < best < grid[-1] or len(grid) == 3, (arm, grid, best)
    assert main(["ablate", DEMO] + sets) == 0  # resuming a complete design adds nothing
    assert len(optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db").trials) == len(
        study.trials
    )
    out = tmp_path / "report"
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    assert all((out / f).is_file() for f in ("levels.png", "frontier.png", "curves.png", "effects.json", "evals.npz"))
    effects = json.loads((out / "effects.json").read_text())
    assert [e["factor"] for e in effects] == ["gate_proj", "embeddings"]
    for e in effects:
        assert e["schedule"] == "wsd" and len(e["levels"]) == 4 and 0 <= e["best_lr_interior"] <= 1
        assert [lv["fraction"] for lv in e["levels"]] == [0.25, 0.5, 0.75, 1.0]
        assert e["verdict"] in ("NEGLIGIBLE", "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE", "LEVEL-DEPENDENT")
        assert e["levels"][-1]["estimate"] == pytest.approx(e["estimate"], nan_ok=True)
    md = (out / "report.md").read_text()
    assert "Annealing cost" in md and "simultaneous 95% band" in md and "## Each claim at each level" in md
