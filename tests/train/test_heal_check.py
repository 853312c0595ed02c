"""benchmarks.heal_check on the tiny model: every candidate heals in its own process, the results are the
heals' own measurements, and the chosen one is the largest drop in general loss on the validation documents
(never on the held-out test documents that measure forgetting)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import heal_check
from tests.conftest import ROOT


@pytest.mark.integration
def test_heal_check_records_every_candidate_and_picks_the_largest_validation_drop(
    tiny_overrides, tiny_corpora, tmp_path
):
    out, chosen = tmp_path / "heal.json", tmp_path / "chosen.txt"
    sets = [x for o in tiny_overrides + ["model.heal.rank=4", "model.heal.batch_size=2"] for x in ("--set", o)]
    candidates = ["builtin:austen,3,1e-2", f"{tiny_corpora['general']},3,1e-2", "builtin:austen,0x,1e-2"]
    rc = heal_check.main(
        [
            str(ROOT / "sweeps" / "demo.yaml"),
            "--candidate",
            candidates[0],
            "--candidate",
            candidates[1],
            "--out",
            str(out),
            "--args-out",
            str(chosen),
        ]
        + sets
    )
    assert rc == 0
    results = json.loads(out.read_text())
    rows = {r["candidate"]: r for r in results["candidates"]}
    assert set(rows) == set(candidates[:2])
    for c, row in rows.items():
        prov = json.loads((Path(row["path"]) / "provenance.json").read_text())
        (g0, g1), (v0, v1) = prov["heal_held_out"]["general_loss"], prov["heal_validation"]["general_loss"]
        assert row["test_change"] == round(g1 - g0, 4) and prov["heal"]["steps"] == 3
        assert row["validation_change"] == round(v1 - v0, 4) and v0 != g0, "validation is other text than test"
    assert rows[candidates[1]]["heal"]["data"].endswith("(training documents only)")
    best = min(rows.values(), key=lambda r: r["validation_change"])
    assert results["chosen"] == best["candidate"] and "validation" in results["rule"]
    data, _, _ = best["candidate"].split(",")
    assert chosen.read_text().splitlines() == [
        f"model.heal.data={data}",
        "model.heal.steps=3",
        "model.heal.learning_rate=0.01",
    ]
    try:
        heal_check.main([str(ROOT / "sweeps" / "demo.yaml"), "--candidate", candidates[2]])
    except SystemExit as e:
        assert e.code == 2
    else:
        raise AssertionError("a malformed candidate must be refused")
