"""benchmarks.replay_search on a small recorded study (reports/gpu-legal: 12 trials with eval curves and
timings): the lookup, the GPU-time accounting with and without pruning, and sane quality numbers."""

from __future__ import annotations

import json

import pytest

from tests.conftest import ROOT

DB = ROOT / "reports" / "gpu-legal" / "study.db"


@pytest.fixture(scope="module")
def replay():
    from benchmarks import replay_search

    return replay_search


def test_lookup_and_cost_of_a_recorded_trial(replay):
    name, space, records = replay.load_records(str(DB), None)
    assert name == "gpu-legal" and len(records) == 12 and set(space) == {"rank", "learning_rate", "embedding_lr_ratio"}
    for r in records:  # a recorded trial's own params find it
        assert replay.nearest(replay.normalize(r.params, space), records) is r
    import optuna

    t = optuna.load_study(study_name=name, storage=f"sqlite:///{DB}").trials[records[0].number]
    tm, curve = t.user_attrs["timings"], t.user_attrs["curve"]
    share = curve[0]["tokens_seen"] / curve[-1]["tokens_seen"]
    assert records[0].cost[0] == pytest.approx(tm["load"] + (tm["train"] + tm["eval"] + tm["data"] + tm["log"]) * share)
    assert records[0].cost[-1] == pytest.approx(sum(tm.values())) and list(records[0].cost) == sorted(records[0].cost)
    assert records[0].forgetting[-1] == pytest.approx(t.user_attrs["forgetting"], abs=1e-9)


def test_replay_runs_and_its_numbers_are_sane(replay, tmp_path):
    out = tmp_path / "replay"
    assert (
        replay.main(
            [str(DB), "--samplers", "random,tpe", "--pruners", "none,median", "--seeds", "3", "--out", str(out)]
        )
        == 0
    )
    result = json.loads((tmp_path / "replay.json").read_text())
    rows = {(r["mode"], r["sampler"], r["pruner"]): r for r in result["strategies"]}
    assert set(rows) == {("single", s, p) for s in ("random", "tpe") for p in ("none", "median")} | {
        ("pareto", "random", "none"),
        ("pareto", "tpe", "none"),
    }
    best = result["best_recorded_feasible_domain_loss"]
    for key, r in rows.items():
        assert 0 < r["gpu_fraction"]["mean"] <= 1 + 1e-12
        if key[0] == "single":
            assert r["best_domain_loss"]["mean"] >= best - 1e-12 and r["regret"]["mean"] >= 0
            assert 0 <= r["hit_rate"] <= 1
        else:
            assert 0 < r["hypervolume_share"]["mean"] <= 1 + 1e-12
    # Random without pruning spends each looked-up trial's full recorded time, and nothing else ...
    none = rows[("single", "random", "none")]
    assert none["pruned"]["mean"] == 0 and none["gpu_s"] == none["full_gpu_s"]
    _, space, records = replay.load_records(str(DB), None)
    by_number = {r.number: r for r in records}
    o = replay.replay("random", "none", "single", 0, space, records, 12, None)
    assert len(o.looked_up) == 12 and o.gpu_s == pytest.approx(sum(by_number[n].cost[-1] for n in o.looked_up))
    # ... the median pruner stops some trials early and spends less on the same proposals.
    median = rows[("single", "random", "median")]
    assert median["pruned"]["mean"] > 0 and median["gpu_s"]["mean"] < median["full_gpu_s"]["mean"]
    # ... and, as a sweep does, goes on until n_trials complete: random proposes the same trials whatever the
    # pruner, so the pruned run's proposals begin with the unpruned run's
    m = replay.replay("random", "median", "single", 0, space, records, 12, None)
    assert m.looked_up[:12] == o.looked_up and m.pruned > 0
    assert len(m.completed) == 12 or len(m.looked_up) == replay.storage.PRUNED_CAP * 12
    assert len(m.looked_up) == len(m.completed) + m.pruned
    # A budget with a margin prunes a trial already far over it, without a pruner, in either mode
    worst = max(records, key=lambda r: r.forgetting[0])
    budget = float(worst.forgetting[0]) - 0.01
    for mode in ("single", "pareto"):
        b = replay.replay("random", "none", mode, 0, space, records, 12, budget, prune_margin=0.005)
        over = [n for n in b.looked_up if by_number[n].forgetting[0] > budget + 0.005]
        assert over and b.pruned >= len(over)
    md = (tmp_path / "replay.md").read_text()
    assert md.count("\n| single |") == 4 and md.count("\n| pareto |") == 2
    # The goal: each strategy stopped at 60% of random search's mean GPU time, against random search's full run
    budget = result["goal_budget_s"]
    assert budget == pytest.approx((1 - replay.GOAL_SAVING) * none["gpu_s"]["mean"])
    for key in rows:
        v = rows[key].get("vs_random")
        if key[0] == "pareto":
            assert v is None
            continue
        assert v["budget_s"] == budget
        if v["ci95"] is not None:
            assert v["ci95"][0] <= v["regret_diff"] <= v["ci95"][1] and v["missed"] == 0
            assert v["goal_met"] == (v["ci95"][1] <= replay.HIT_NATS)
        else:
            assert not v["goal_met"]
    assert "Goal (issue 14)" in md
    # Anytime quality: what a run had found by a point in its spending, never better than at its end
    full = min(d for d, f in o.completed)
    assert o.best_within(float("inf"), None) == full and o.best_within(0.0, None) == float("inf")
    assert o.spent == sorted(o.spent) and o.spent[-1] == pytest.approx(o.gpu_s)
    assert o.best_within(o.spent[5], None) == min(d for d, f in o.completed[:6])


def test_a_replay_is_reproducible_with_hyperband(replay):
    """HyperbandPruner assigns brackets by hashing the study's name: a replay names its study, so the same command
    gives the same table."""
    _, space, records = replay.load_records(str(DB), None)
    runs = [replay.replay("random", "hyperband", "single", 1, space, records, 12, None) for _ in range(2)]
    assert runs[0].pruned > 0
    assert runs[0].looked_up == runs[1].looked_up and runs[0].gpu_s == runs[1].gpu_s
