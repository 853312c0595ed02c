"""Replay mixing (data.replay, search.replay_fraction): the config, the replay blocks (training documents only),
the batches (the fraction holds), the fingerprint, and a sweep that searches the fraction and reports forgetting on
a general corpus that is not replayed."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from cpt_harness import data
from cpt_harness.cli import main
from cpt_harness.config import DataConfig, DataSource, ReplayConfig
from cpt_harness.config.validate import load_config
from cpt_harness.search import space as search_space
from cpt_harness.train import batches as train_batches
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _replay_sets(tiny_corpora, extra=()) -> list[str]:
    return [
        f"data.general=[{tiny_corpora['general']}, {tiny_corpora['sotu']}]",
        f"data.replay={{source: {tiny_corpora['general']}}}",
        *extra,
    ]


def test_replay_config_is_checked_naming_the_keys(tiny_overrides, tiny_corpora, capsys):
    sets = lambda extra: [x for o in tiny_overrides + list(extra) for x in ("--set", o)]  # noqa: E731
    assert (
        main(["validate", DEMO] + sets(_replay_sets(tiny_corpora, ["search.replay_fraction={low: 0, high: 0.5}"]))) == 0
    )
    assert "replay " in capsys.readouterr().out
    assert main(["validate", DEMO] + sets(["search.replay_fraction={low: 0, high: 0.5}"])) == 2
    assert "search.replay_fraction: needs data.replay: {source: ...}" in capsys.readouterr().err
    assert (
        main(
            ["validate", DEMO]
            + sets(
                _replay_sets(tiny_corpora, ["search.replay_fraction={low: 0.6, high: 0.5}", "data.replay.fraction=1"])
            )
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "search.replay_fraction: 0 <= low <= high < 1 must hold, but got (low=0.6, high=0.5)" in err
    assert "data.replay.fraction: must be in [0, 1), got 1.0" in err
    # every general corpus replayed: forgetting would only be measured on text the trials train on
    assert main(["validate", DEMO] + sets([f"data.replay={{source: {tiny_corpora['general']}, fraction: 0.2}}"])) == 2
    assert (
        "data.general: every corpus in it is data.replay.source; add one that is not replayed"
        in capsys.readouterr().err
    )


def test_replay_is_in_the_fingerprints_only_when_set(tiny_cfg, tiny_corpora):
    before = search_space.space_fingerprint(tiny_cfg)
    cfg = load_config(DEMO, [f"model.name={tiny_cfg.model.name}"] + _replay_sets(tiny_corpora))
    plain = load_config(
        DEMO, [f"model.name={tiny_cfg.model.name}", f"data.general=[{tiny_corpora['general']}, {tiny_corpora['sotu']}]"]
    )
    assert search_space.space_fingerprint(plain) != search_space.space_fingerprint(cfg)
    searched = load_config(
        DEMO,
        [
            f"model.name={tiny_cfg.model.name}",
            *_replay_sets(tiny_corpora),
            "search.replay_fraction={low: 0, high: 0.5}",
        ],
    )
    assert search_space.space_fingerprint(searched) != search_space.space_fingerprint(cfg)
    assert "replay_fraction" not in search_space.space_payload(tiny_cfg)["search"]
    assert search_space.space_fingerprint(tiny_cfg) == before


def test_replay_blocks_hold_only_training_documents_of_the_replay_source(tiny_model, tiny_corpora):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    general = DataSource(str(tiny_corpora["general"]))
    cfg = DataConfig(
        domain=DataSource(str(tiny_corpora["domain"])),
        general=[general, DataSource(str(tiny_corpora["sotu"]))],
        replay=ReplayConfig(general, 0.3),
    )
    corpora = data.prepare(cfg, tok, 32, 256)
    plain = data.prepare(DataConfig(domain=cfg.domain, general=cfg.general), tok, 32, 256)
    assert corpora.fingerprint != plain.fingerprint and plain.replay_train is None
    assert np.array_equal(corpora.domain_train, plain.domain_train)
    train_docs, validation, test = data.split_general(data.read_documents(general), cfg.eval_fraction, cfg.seed)
    assert isinstance(corpora.replay_train, np.memmap)
    assert np.array_equal(corpora.replay_train, data.pack(train_docs, tok, 32))
    replayed = corpora.replay_train.tobytes()
    for doc in validation + test:  # no window of a held-out or heal-validation document is in the replay blocks
        ids = np.asarray(tok(doc, add_special_tokens=False)["input_ids"][:12], dtype=np.int32)
        assert ids.tobytes() not in replayed
    assert corpora.stats["replay_train"]["documents"] == len(train_docs)
    assert list(data.replayed_corpora(cfg)) == [True, False]


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_mixed_batches_hold_the_fraction_at_every_step(fraction):
    domain = np.zeros((10, 4), np.int32)
    replay = np.ones((7, 4), np.int32)
    stream = train_batches.mixed_batches(domain, replay, fraction, batch_size=6, seed=0)
    drawn = 0
    for n in range(1, 41):
        batch = next(stream)
        assert batch.shape == (6, 4)
        drawn += int(batch[:, 0].sum())
        assert drawn == math.floor(fraction * 6 * n + 1e-9), "replay blocks so far: floor(fraction x blocks so far)"
    # the replay corpus is read in its own shuffled order, epoch after epoch: every block once per epoch
    replay = np.arange(1, 8, dtype=np.int32)[:, None]
    stream = train_batches.mixed_batches(np.zeros((5, 1), np.int32), replay, 0.5, batch_size=2, seed=0)
    used = np.concatenate([next(stream)[:, 0].numpy() for _ in range(21)])
    assert sorted(used[used > 0].tolist()) == sorted(list(range(1, 8)) * 3)


def test_no_replay_gives_todays_batches(tiny_cfg):
    corpora = data.Corpora(
        np.arange(40 * 4, dtype=np.int32).reshape(40, 4),
        np.zeros((1, 4), np.int32),
        np.zeros((1, 4), np.int32),
        "x",
        {},
    )
    params = search_space.derive(16, 1e-3, 0.2, tiny_cfg, replay=0.0)
    mixed, plain = (
        train_batches.training_batches(corpora, params, 4, 0),
        train_batches.batches(corpora.domain_train, 4, 0),
    )
    for _ in range(25):
        assert torch.equal(next(mixed), next(plain))


@pytest.mark.integration
def test_a_sweep_searches_the_replay_fraction_and_reports_unreplayed_forgetting(tiny_overrides, tiny_corpora, capsys):
    sets = tiny_overrides + _replay_sets(tiny_corpora, ["search.replay_fraction={low: 0, high: 0.5}"])
    assert main(["sweep", DEMO, "--n-trials", "2"] + [x for o in sets for x in ("--set", o)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(DEMO, sets)
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    assert "replay_fraction" in study.user_attrs["fingerprint_inputs"]["search_space"]["search"]
    assert study.user_attrs["base"]["general_loss_unreplayed"] == pytest.approx(
        study.user_attrs["base"]["general_loss/sotu"]
    )
    for t in study.trials:
        assert t.state.name == "COMPLETE"
        assert (
            0 <= t.params["replay_fraction"] <= 0.5 and t.user_attrs["replay_fraction"] == t.params["replay_fraction"]
        )
        assert t.user_attrs["forgetting_unreplayed"] == pytest.approx(t.user_attrs["forgetting/sotu"])
    assert "replay" in out and "forg. unreplayed" in out
    # a resume with another replay range is refused, naming the key
    assert (
        main(
            ["sweep", DEMO, "--n-trials", "3"]
            + [x for o in sets + ["search.replay_fraction.high=0.4"] for x in ("--set", o)]
        )
        == 2
    )
    assert "search.replay_fraction.high: 0.5 -> 0.4" in capsys.readouterr().err
