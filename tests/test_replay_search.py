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
    assert replay.main([str(DB), "--samplers", "random,tpe", "--pruners", "none,median", "--seeds", "3",
                        "--out", str(out)]) == 0
    result = json.loads((tmp_path / "replay.json").read_text())
    rows = {(r["mode"], r["sampler"], r["pruner"]): r for r in result["strategies"]}
    assert set(rows) == {("single", s, p) for s in ("random", "tpe") for p in ("none", "median")} | {
        ("pareto", "random", "none"), ("pareto", "tpe", "none")}
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
    assert median["full_gpu_s"] == none["full_gpu_s"], "random proposes the same trials whatever the pruner"
    md = (tmp_path / "replay.md").read_text()
    assert md.count("\n| single |") == 4 and md.count("\n| pareto |") == 2
