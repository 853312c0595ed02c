"""Several domain sources (data.domain as a list with weights): the config and its errors, the per-source split
and held-out blocks, batches mixed by weight (and resumable), per-source held-out losses on the trial, in the report
and W&B, and a single source left exactly as it was (cache key and fingerprint)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from cpt_harness import data
from cpt_harness.cli import main
from cpt_harness.config.validate import load_config
from cpt_harness.search import space as search_space
from cpt_harness.train import batches as train_batches
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _two(tiny_corpora, weights=(2, None)) -> str:
    a = f"{{path: {tiny_corpora['domain']}" + (f", weight: {weights[0]}" if weights[0] is not None else "") + "}"
    b = f"{{path: {tiny_corpora['sotu']}" + (f", weight: {weights[1]}" if weights[1] is not None else "") + "}"
    return f"data.domain=[{a}, {b}]"


@pytest.mark.parametrize(
    "weight, message",
    [
        (0, "data.domain[0].weight: must be a number > 0"),
        (-1.5, "data.domain[0].weight: must be a number > 0"),
        (".nan", "data.domain[0].weight: must be a finite number, got nan"),
        ("heavy", "data.domain[0].weight"),
    ],
)
def test_bad_weights_are_refused_naming_the_key(tiny_overrides, tiny_corpora, capsys, weight, message):
    assert main(["validate", DEMO] + _sets(tiny_overrides + [_two(tiny_corpora, (weight, None))])) == 2
    assert message in capsys.readouterr().err


def test_bad_sources_are_refused_naming_the_key(tiny_overrides, tiny_corpora, tmp_path, capsys):
    cases = [
        (
            f"data.domain={{path: {tiny_corpora['domain']}, weight: 2}}",
            "data.domain.weight: a weight mixes the sources of a list",
        ),
        (
            f"data.domain=[{tiny_corpora['domain']}, {tiny_corpora['domain']}]",
            f"data.domain[1]: {tiny_corpora['domain']} is listed twice",
        ),
        ("data.domain=[]", "data.domain: an empty list"),
        (
            f"data.domain=[{tiny_corpora['domain']}, {tmp_path}/missing.jsonl]",
            f"data.domain[1]: {tmp_path}/missing.jsonl does not exist",
        ),
        (
            f"data.general={{path: {tiny_corpora['general']}, weight: 3}}",
            "data.general.weight: a weight mixes the sources of a data.domain list",
        ),
    ]
    for override, message in cases:
        assert main(["validate", DEMO] + _sets(tiny_overrides + [override])) == 2, override
        assert message in capsys.readouterr().err, override
    assert main(["validate", DEMO] + _sets(tiny_overrides + [_two(tiny_corpora)])) == 0


def test_one_source_keeps_its_cache_key_and_fingerprint(tiny_cfg, tiny_overrides, tiny_corpora):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_cfg.model.name)
    listed = load_config(DEMO, tiny_overrides + [f"data.domain=[{tiny_corpora['domain']}]"])
    assert data.cache_key(listed.data, tok, 64, 512) == data.cache_key(tiny_cfg.data, tok, 64, 512)
    assert search_space.space_fingerprint(listed) == search_space.space_fingerprint(tiny_cfg)
    two = load_config(DEMO, tiny_overrides + [_two(tiny_corpora)])
    assert data.cache_key(two.data, tok, 64, 512) != data.cache_key(tiny_cfg.data, tok, 64, 512)
    other = load_config(DEMO, tiny_overrides + [_two(tiny_corpora, (3, None))])
    assert search_space.space_fingerprint(other) != search_space.space_fingerprint(two), "weights are the protocol's"
    assert data.cache_key(other.data, tok, 64, 512) == data.cache_key(two.data, tok, 64, 512), "the blocks are not"


def test_each_source_is_split_on_its_own(tiny_overrides, tiny_corpora):
    from transformers import AutoTokenizer

    cfg = load_config(DEMO, tiny_overrides + [_two(tiny_corpora)])
    tok = AutoTokenizer.from_pretrained(cfg.model.name)
    corpora = data.prepare(cfg.data, tok, 64, 512)
    names = ["legal", "sotu"]
    assert corpora.domain_names == names and corpora.domain_weights == [2.0, 1.0]
    offsets = corpora.domain_train_offsets
    assert offsets[0] == 0 and offsets[-1] == len(corpora.domain_train) and offsets[1] > 0
    per = corpora.stats["domain_corpora"]
    for name, n_docs in zip(names, (60, 20)):  # data.eval_fraction 0.1 of each source's documents
        assert per[name]["documents"] == round(0.1 * n_docs) - 0  # nothing near-copied in these corpora
    domain = corpora.domain_set()
    assert domain.names == names and set(np.unique(domain.corpus)) == {0, 1}
    assert len(domain.corpus) == domain.n_docs == int(domain.docs.max()) + 1
    # each source's training blocks hold its own text only: decode a block of each range
    legal = tok.decode(corpora.domain_train[0])
    sotu = tok.decode(corpora.domain_train[offsets[1]])
    assert any(w in legal.lower() for w in ("license", "software", "copyright", "permission"))
    assert any(w in sotu.lower() for w in ("congress", "states", "government", "nation"))
    # the held-out rows never appear among the training rows
    train_rows = {r.tobytes() for r in np.asarray(corpora.domain_train)}
    assert not any(r.tobytes() in train_rows for r in corpora.domain_eval)


def test_batches_mix_the_sources_by_weight_at_every_step_and_resume():
    offsets, weights = [0, 30, 40, 100], [2.0, 1.0, 1.0]
    blocks = np.repeat(np.arange(100, dtype=np.int32)[:, None], 3, axis=1)
    corpora = data.Corpora(
        blocks,
        blocks[:1],
        blocks[:1],
        "x",
        {},
        domain_train_offsets=offsets,
        domain_weights=weights,
        domain_names=["a", "b", "c"],
    )
    params = type("P", (), {"replay_fraction": None})()
    stream = train_batches.training_batches(corpora, params, 6, 0)
    seen = np.zeros(3, int)
    states = {}
    for step in range(1, 41):
        batch = next(stream)[:, 0].numpy()
        assert len(batch) == 6
        seen += np.bincount(np.searchsorted(offsets, batch, side="right") - 1, minlength=3)
        assert np.all(np.abs(seen - 6 * step * np.array(weights) / 4) < 1 + 1e-9), (step, seen)
        if step == 20:
            states = stream.state_dict()
            after = [next(stream) for _ in range(5)]
            break
    again = train_batches.training_batches(corpora, params, 6, 0)
    again.load_state_dict(states)
    assert all(np.array_equal(a, next(again)) for a in after)
    # each source's rows come from its own range only, every row of a source before any repeats
    stream = train_batches.training_batches(corpora, params, 6, 0)
    rows = np.concatenate([next(stream)[:, 0].numpy() for _ in range(5)])  # 30 rows: 15 of a, 7-8 of b and c
    a = rows[rows < 30]
    assert len(set(a.tolist())) == len(a)


@pytest.mark.integration
def test_a_sweep_reports_each_sources_domain_loss(tiny_overrides, tiny_corpora, capsys):
    sets = tiny_overrides + [_two(tiny_corpora)]
    assert main(["sweep", DEMO, "--n-trials", "1"] + _sets(sets)) == 0
    out = capsys.readouterr().out
    cfg = load_config(DEMO, sets)
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    base = study.user_attrs["base"]
    (t,) = study.trials
    a = t.user_attrs
    for p in (base, a):
        assert (
            min(p["domain_loss/legal"], p["domain_loss/sotu"])
            <= p["domain_loss"]
            <= max(p["domain_loss/legal"], p["domain_loss/sotu"])
        )
    assert a["domain_gain/sotu"] == pytest.approx(base["domain_loss/sotu"] - a["domain_loss/sotu"])
    assert all("domain_loss/legal" in point and "domain_loss/sotu" in point for point in a["curve"])
    assert study.user_attrs["fingerprint_inputs"]["search_space"]["domain_weights"] == [2.0, 1.0]
    assert "domain legal" in out and "domain sotu" in out
    # W&B: every eval point logs each source's loss, and the run's summary holds the final ones
    import os
    from pathlib import Path

    from cpt_harness.infra.wandb_files import read_runs

    (run,) = [r for r in read_runs(Path(os.environ["WANDB_DIR"])) if r.job_type == "trial"]
    evals = [h for h in run.history if "eval/domain_loss/sotu" in h]
    assert len(evals) == len(a["curve"]) and evals[-1]["eval/domain_loss/legal"] == a["domain_loss/legal"]
    assert run.summary["domain_loss/sotu"] == a["domain_loss/sotu"]
    assert f"domain loss {base['domain_loss']:.4f} (legal {base['domain_loss/legal']:.4f}, sotu" in out


def test_replay_takes_its_share_first_and_the_domain_rows_mix_by_weight():
    offsets = [0, 20, 60]
    blocks = np.repeat(np.arange(60, dtype=np.int32)[:, None], 2, axis=1)
    replay = np.full((10, 2), -1, np.int32)
    corpora = data.Corpora(
        blocks,
        blocks[:1],
        blocks[:1],
        "x",
        {},
        replay_train=replay,
        domain_train_offsets=offsets,
        domain_weights=[1.0, 3.0],
        domain_names=["a", "b"],
    )
    params = type("P", (), {"replay_fraction": 0.25})()
    stream = train_batches.training_batches(corpora, params, 8, 0)
    rows = np.concatenate([next(stream)[:, 0].numpy() for _ in range(10)])
    assert (rows == -1).sum() == 20  # a quarter of 80 rows
    dom = rows[rows >= 0]
    assert (dom < 20).sum() == 15 and (dom >= 20).sum() == 45  # 60 domain rows at 1:3


def test_a_source_too_short_for_one_training_block_is_named(tiny_overrides, tiny_corpora, tmp_path):
    from transformers import AutoTokenizer

    from cpt_harness.errors import DataError

    (tmp_path / "two.txt").write_text("A short definition.\nAnother short one.\n")
    cfg = load_config(
        DEMO, tiny_overrides + [f"data.domain=[{tiny_corpora['domain']}, {{path: {tmp_path}/two.txt, format: lines}}]"]
    )
    with pytest.raises(
        DataError,
        match=r"data.domain\[1\]: the training part of .*two.txt \(1 document\) is "
        r"shorter than one block of model.max_seq_length=64",
    ):
        data.prepare(cfg.data, AutoTokenizer.from_pretrained(cfg.model.name), 64, 512)
