"""The selection/test split of the held-out documents (eval.test_fraction): deterministic, per corpus, disjoint,
covering every document; too few documents to split is a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from cpt_harness.cli import main
from cpt_harness.data import DataError, EvalSet
from cpt_harness.evaluate import metrics
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _eval_set(corpus: list[int], names: list[str]) -> EvalSet:
    n = len(corpus)
    return EvalSet(
        np.zeros((1, n + 1), np.int32),
        np.arange(n + 1, dtype=np.int32)[None, :] % n,
        np.asarray(corpus, np.int32),
        names,
    )


def test_the_split_is_deterministic_disjoint_per_corpus_and_covers_every_document():
    general = _eval_set([0] * 7 + [1] * 5, ["brown", "sotu"])
    a = metrics.test_documents(general, 0.5, seed=0)
    assert np.array_equal(a, metrics.test_documents(general, 0.5, seed=0)), "deterministic"
    test, selection = set(np.flatnonzero(a)), set(np.flatnonzero(~a))
    assert test.isdisjoint(selection) and test | selection == set(range(12))
    assert a[:7].sum() == 4 and a[7:].sum() == 2, "about half of each corpus (round(3.5) = 4, round(2.5) = 2)"
    seeds = {tuple(np.flatnonzero(metrics.test_documents(general, 0.5, seed=s))) for s in range(6)}
    assert len(seeds) > 1, "data.seed changes which documents are test"
    # A corpus added after brown leaves brown's split alone (the hash is per corpus and per index within it).
    alone = metrics.test_documents(_eval_set([0] * 7, ["brown"]), 0.5, seed=0)
    assert np.array_equal(alone, a[:7])
    # At least one document on each side, whatever the fraction.
    assert metrics.test_documents(_eval_set([0] * 3, ["x"]), 0.01, 0).sum() == 1
    assert metrics.test_documents(_eval_set([0] * 3, ["x"]), 0.99, 0).sum() == 2
    with pytest.raises(DataError, match="eval.test_fraction.*1 document"):
        metrics.test_documents(_eval_set([0, 1, 1], ["brown", "sotu"]), 0.5, 0, "data.general")
    assert metrics.EvalSplit.of(general, general, 0.0, 0) is None


def test_one_document_per_corpus_is_refused_naming_the_key(tiny_overrides, tmp_path, capsys):
    shared = [o for o in tiny_overrides if not o.startswith("eval.test_fraction")]
    assert main(["sweep", DEMO, "--n-trials", "1"] + _sets(shared)) == 2
    err = capsys.readouterr().err
    assert "eval.test_fraction" in err and "raise eval.max_tokens" in err and "Traceback" not in err


def test_a_fraction_outside_0_1_and_a_single_confirmation_seed_are_refused(tiny_overrides, capsys):
    assert main(["validate", DEMO] + _sets(tiny_overrides + ["eval.test_fraction=1"])) == 2
    assert "eval.test_fraction: must be in [0, 1)" in capsys.readouterr().err
    assert main(["confirm", DEMO, "--seeds", "1"] + _sets(tiny_overrides)) == 2
    assert "--seeds: a 95% interval needs at least 2 seeds" in capsys.readouterr().err
