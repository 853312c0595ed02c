"""Per-document eval files of a real tiny sweep with two general corpora: written beside each trial and once for
the base, read back, consistent with the metrics stored on the trials, collected into one file."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.evaluate import evals
from cpt_harness.infra.wandb_files import read_runs
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def sweep(overrides, n):
    return main(["sweep", DEMO, "--n-trials", str(n)] + [x for o in overrides for x in ("--set", o)])


@pytest.fixture
def two_general(tiny_overrides, tiny_corpora):
    return tiny_overrides + [
        f"data.general=[{tiny_corpora['general']}, {tiny_corpora['sotu']}]",
        "eval.max_tokens=1024",
    ]


@pytest.mark.integration
def test_trials_write_per_document_results_and_the_base_writes_once(two_general, tmp_path):
    assert sweep(two_general, 2) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    study_dir = tmp_path / "runs" / "tiny"
    base_file = study_dir / evals.BASE_FILE
    assert study.user_attrs["base_evals_file"] == evals.BASE_FILE and base_file.is_file()
    base_written = base_file.stat().st_mtime_ns
    base = evals.read_base(study_dir)
    base_attrs = study.user_attrs["base"]
    assert base.step.tolist() == [0] and base.domain_loss()[0] == pytest.approx(base_attrs["domain_loss"], rel=1e-9)
    assert base.general_loss()[0] == pytest.approx(base_attrs["general_loss"], rel=1e-9)
    assert np.all(base.general_kl == 0)
    assert list(base.general_names) == ["brown", "sotu"]

    for t in study.get_trials(states=[TrialState.COMPLETE]):
        a = t.user_attrs
        assert a["evals_file"] == f"trial-{t.number:04d}/evals.npz"
        e = evals.read_trial(study_dir, t)
        n_domain, n_general = len(e.domain_tokens), len(e.general_tokens)
        assert e.step.tolist() == [3, 6] and e.tokens_seen.tolist() == [768, 1536]
        assert e.domain_nll.shape == (2, n_domain) and e.general_nll.shape == e.general_kl.shape == (2, n_general)
        assert e.domain_nll.dtype == np.float64 and e.domain_tokens.dtype == np.int64
        assert e.general_corpus.shape == (n_general,) and set(e.general_corpus) == {0, 1}
        assert np.array_equal(e.general_tokens, base.general_tokens), "every model is evaluated on the same documents"
        # The stored metrics are the files' ratios of sums.
        assert a["domain_loss"] == pytest.approx(e.domain_loss()[-1], rel=1e-9)
        assert a["general_loss"] == pytest.approx(e.general_loss()[-1], rel=1e-9)
        assert a["general_kl"] == pytest.approx(e.general_kl_mean()[-1], rel=1e-9) and a["general_kl"] > 0
        assert [p["general_kl"] for p in a["curve"]] == pytest.approx(e.general_kl_mean().tolist(), rel=1e-9)
        # Forgetting is token-weighted over both corpora, and each corpus is reported on its own.
        per = {n: a[f"general_loss/{n}"] for n in ("brown", "sotu")}
        weights = {n: e.general_tokens[e.general_corpus == i].sum() for i, n in enumerate(("brown", "sotu"))}
        pooled = sum(per[n] * weights[n] for n in per) / sum(weights.values())
        assert a["general_loss"] == pytest.approx(pooled, rel=1e-9)
        assert per["brown"] == pytest.approx(e.general_loss("brown")[-1], rel=1e-9) and per["brown"] != per["sotu"]
        assert a["forgetting"] == pytest.approx(a["general_loss"] - base_attrs["general_loss"])
        for n in per:
            assert a[f"forgetting/{n}"] == pytest.approx(per[n] - base_attrs[f"general_loss/{n}"])
            assert [p[f"general_loss/{n}"] for p in a["curve"]] == pytest.approx(e.general_loss(n).tolist())
        # No per-document array went into the database.
        assert max(len(json.dumps(v)) for v in a.values()) < 5000

    runs = read_runs(Path(os.environ["WANDB_DIR"]))
    for run in runs:
        last = [h for h in run.history if "eval/general_kl" in h][-1]
        assert {"eval/general_loss/brown", "eval/general_loss/sotu"} <= set(last)
        assert run.summary["forgetting/sotu"] == pytest.approx(
            run.summary["general_loss/sotu"] - study.user_attrs["base"]["general_loss/sotu"]
        )

    from cpt_harness.reporting.page import _header

    c = study.user_attrs["data_stats"]["contamination"]
    assert f"near-copies of training documents**: {c['dropped']} of {c['held_out_documents']}" in "\n".join(
        _header(study, "Sweep")
    )

    assert sweep(two_general, 3) == 0  # resume: one more trial, the base is not measured again
    assert base_file.stat().st_mtime_ns == base_written

    out = evals.collect(study, study_dir, tmp_path / "report" / "evals.npz")
    base_c, trials = evals.read_collected(out)
    assert sorted(trials) == [t.number for t in study.get_trials(states=[TrialState.COMPLETE])] and len(trials) == 3
    for number, e in trials.items():
        full = evals.read(study_dir / f"trial-{number:04d}" / "evals.npz")
        assert e.general_nll.dtype == np.float32 and e.step.dtype == np.int64
        np.testing.assert_allclose(e.general_nll, full.general_nll, rtol=1e-6)
    np.testing.assert_allclose(base_c.domain_nll, base.domain_nll, rtol=1e-6)
    assert out.stat().st_size < 100_000

    # A study resumed on another machine: the first block's trial folders (and base) are gone, only its collected
    # file is left; the new block's folder holds trial 2. Collecting keeps both; with neither, it refuses.
    import shutil

    for number in (0, 1):
        shutil.rmtree(study_dir / f"trial-{number:04d}")
    base_file.unlink()
    with pytest.raises(FileNotFoundError, match=r"trials \[0, 1\]"):
        evals.collect(study, study_dir, tmp_path / "report" / "again.npz")
    merged = evals.collect(study, study_dir, tmp_path / "report" / "merged.npz", previous=out)
    base_m, trials_m = evals.read_collected(merged)
    assert sorted(trials_m) == sorted(trials)
    for number, e in trials_m.items():
        np.testing.assert_array_equal(e.general_nll, trials[number].general_nll)
    np.testing.assert_array_equal(base_m.domain_nll, base_c.domain_nll)


@pytest.mark.integration
def test_several_domain_sources_are_recorded_per_document_and_files_without_them_still_read(
    tiny_overrides, tiny_corpora, tmp_path
):
    """With a data.domain list, every evals file says which source each domain document came from (the document
    bootstrap draws within each); the committed reports' files, written before, read as one source."""
    sets = tiny_overrides + [f"data.domain=[{tiny_corpora['domain']}, {tiny_corpora['sotu']}]", "eval.max_tokens=2048"]
    assert sweep(sets, 1) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    study_dir = tmp_path / "runs" / "tiny"
    (trial,) = study.get_trials(states=[TrialState.COMPLETE])
    e, base = evals.read_trial(study_dir, trial), evals.read_base(study_dir)
    assert set(e.domain_corpus) == {0, 1} and np.array_equal(e.domain_corpus, base.domain_corpus)
    assert len(e.domain_corpus) == len(e.domain_tokens)
    base_c, trials = evals.read_collected(evals.collect(study, study_dir, tmp_path / "collected.npz"))
    assert np.array_equal(trials[trial.number].domain_corpus, e.domain_corpus)
    old_base, old = evals.read_collected(ROOT / "reports" / "legal-claims" / "evals.npz")
    assert old_base.domain_corpus is None and all(t.domain_corpus is None for t in old.values())
    # a study resumed past the change: its earlier trials' collected file has no sources, the new folder has them
    without = evals.Evals(**{k: v for k, v in vars(e).items() if k != "domain_corpus"})
    assert without.domain_corpus is None
    evals.write(study_dir / trial.user_attrs["evals_file"], without)
    mixed = evals.read_collected(evals.collect(study, study_dir, tmp_path / "mixed.npz"))[1][trial.number]
    assert mixed.domain_corpus is None  # left out, not refused: the bootstrap then draws over all documents
