"""From a sweep to a recommendation: objective values and test attributes against the per-document files, the
confirmation study (K settings x S new seeds, workers, resume), and the report's "What to use", all on the tiny
model with corpora of short documents (the shared tiny corpora hold one long document per corpus within the eval
budget: too few to split)."""

from __future__ import annotations

import json
import re

import numpy as np
import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cpt_harness.analysis import confirm, stats
from cpt_harness.cli import main
from cpt_harness.evaluate import evals
from tests.conftest import ROOT, builtin_docs

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _chunks(texts: list[str], size: int) -> list[str]:
    words = " ".join(texts).split()
    out, cur = [], []
    for w in words:
        cur.append(w)
        if sum(len(x) + 1 for x in cur) >= size:
            out.append(" ".join(cur))
            cur = []
    return out


@pytest.fixture(scope="module")
def short_corpora(tmp_path_factory):
    """Legal (domain) and Brown (general) text cut into ~400-character documents: several per corpus fit the eval."""
    d = tmp_path_factory.mktemp("short")
    (d / "legal.jsonl").write_text(
        "".join(json.dumps({"text": t}) + "\n" for t in _chunks(builtin_docs("legal", 40), 400))
    )
    (d / "brown.txt").write_text("\n\n".join(_chunks(builtin_docs("brown", 12), 400)))
    return d


@pytest.fixture
def split_overrides(tiny_overrides, short_corpora):
    """The tiny sweep with the default split (eval.test_fraction 0.5) on short documents."""
    keep = [
        o
        for o in tiny_overrides
        if not o.startswith(("eval.test_fraction", "data.domain", "data.general", "eval.max_tokens"))
    ]
    return keep + [
        f"data.domain={short_corpora / 'legal.jsonl'}",
        f"data.general={short_corpora / 'brown.txt'}",
        "eval.max_tokens=1024",
        "data.eval_fraction=0.2",
    ]


def _by_hand(nll: np.ndarray, tokens: np.ndarray, keep: np.ndarray) -> float:
    return float(nll[keep].sum() / tokens[keep].sum())


@pytest.mark.integration
def test_sweep_confirm_and_the_recommendation(split_overrides, tmp_path, capsys):
    sets = _sets(split_overrides)
    assert main(["sweep", DEMO, "--n-trials", "3"] + sets) == 0
    db = f"sqlite:///{tmp_path}/study.db"
    study = optuna.load_study(study_name="tiny", storage=db)
    study_dir = tmp_path / "runs" / "tiny"
    split = study.user_attrs["eval_split"]
    base_e = evals.read_base(study_dir)
    d_test = np.isin(np.arange(len(base_e.domain_tokens)), split["domain_test_docs"])
    g_test = np.isin(np.arange(len(base_e.general_tokens)), split["general_test_docs"])
    assert d_test.sum() == split["domain"]["test"] >= 1 and (~d_test).sum() == split["domain"]["selection"] >= 1
    assert g_test.sum() >= 1 and (~g_test).sum() >= 1
    base = study.user_attrs["base"]
    assert base["domain_loss"] == pytest.approx(_by_hand(base_e.domain_nll[0], base_e.domain_tokens, ~d_test))
    assert base["test_general_loss"] == pytest.approx(_by_hand(base_e.general_nll[0], base_e.general_tokens, g_test))

    for t in study.get_trials(states=[TrialState.COMPLETE]):
        e, a = evals.read_trial(study_dir, t), t.user_attrs
        sel_domain = _by_hand(e.domain_nll[-1], e.domain_tokens, ~d_test)
        sel_general = _by_hand(e.general_nll[-1], e.general_tokens, ~g_test)
        # The objective values are the selection part's, by hand from evals.npz ...
        assert t.values == pytest.approx([sel_domain, sel_general - base["general_loss"]], rel=1e-9)
        assert (a["domain_loss"], a["forgetting"]) == pytest.approx(tuple(t.values), rel=1e-9)
        assert a["domain_loss"] != pytest.approx(e.domain_loss()[-1], rel=1e-6), "not the whole held-out set"
        # ... and the test attributes the test part's, against the base's test part.
        assert a["test_domain_loss"] == pytest.approx(_by_hand(e.domain_nll[-1], e.domain_tokens, d_test), rel=1e-9)
        test_general = _by_hand(e.general_nll[-1], e.general_tokens, g_test)
        assert a["test_forgetting"] == pytest.approx(test_general - base["test_general_loss"], rel=1e-9)
        assert a["test_general_kl"] == pytest.approx(
            float(e.general_kl[-1][g_test].sum() / e.general_tokens[g_test].sum())
        )
        assert a["test_domain_gain"] == pytest.approx(base["test_domain_loss"] - a["test_domain_loss"])
        assert [p["test_domain_loss"] for p in a["curve"]] == pytest.approx(
            [_by_hand(row, e.domain_tokens, d_test) for row in e.domain_nll]
        )

    # Before any confirmation: the report opens with the recommendation, marked unconfirmed.
    out = tmp_path / "report"
    assert main(["report", DEMO, "--out", str(out)] + sets) == 0
    md = (out / "report.md").read_text()
    assert md.index("## What to use") < md.index("- **Base model**") < md.index("## Pareto front")
    opening = md.split("## What to use")[1].split("\n- **Base model**")[0]
    assert "***unconfirmed***" in opening and "test documents" in opening and "cpt-harness confirm" in opening
    knee = confirm.candidates(study, None)[0]
    assert f"trial {knee.number} of this sweep" in opening
    assert f"**{knee.user_attrs['test_domain_loss']:.4f}**" in opening
    assert "| base model |" in opening and "No baseline trials" in opening
    assert "Held-out documents split by document" in md
    assert yaml.safe_load((out / "chosen.yaml").read_text())["study"]["name"] == f"tiny-t{knee.number}"

    # A budget no trial meets: nothing to confirm (exit 2, no study created).
    assert main(["confirm", DEMO, "--set", "study.max_forgetting=-100"] + sets) == 2
    assert "no setting met the budget" in capsys.readouterr().err
    assert optuna.study.get_all_study_names(db) == ["tiny"]

    # Confirm the top 2 settings with 2 new seeds, on two worker processes ...
    assert main(["confirm", DEMO, "--top", "2", "--seeds", "2", "--workers", "2"] + sets) == 0
    conf = optuna.load_study(study_name="tiny-confirm", storage=db)
    top2 = confirm.candidates(study, None)[:2]
    trials = conf.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert sorted((t.user_attrs["setting"], t.user_attrs["seed"]) for t in trials) == sorted(
        (s.number, seed) for s in top2 for seed in (1, 2)
    ), "each setting x new seed once; the sweep's seed 0 unused"
    by_number = {t.number: t for t in top2}
    assert all(t.params == by_number[t.user_attrs["setting"]].params for t in trials)
    assert len(list((tmp_path / "runs" / "tiny-confirm" / "workers").glob("*.log"))) == 2
    for s in top2:  # another seed, another run: not a copy of the sweep's
        runs = [t for t in trials if t.user_attrs["setting"] == s.number]
        assert all(t.user_attrs["domain_loss"] != s.user_attrs["domain_loss"] for t in runs)
    # ... resumed: nothing runs twice; more seeds add only what is missing.
    assert main(["confirm", DEMO, "--top", "2", "--seeds", "2"] + sets) == 0
    assert len(optuna.load_study(study_name="tiny-confirm", storage=db).trials) == 4
    assert main(["confirm", DEMO, "--top", "2", "--seeds", "3"] + sets) == 0
    conf = optuna.load_study(study_name="tiny-confirm", storage=db)
    keys = [(t.user_attrs["setting"], t.user_attrs["seed"]) for t in conf.get_trials(states=[TrialState.COMPLETE])]
    assert len(conf.trials) == 6 and sorted(keys) == sorted((s.number, seed) for s in top2 for seed in (1, 2, 3))
    assert conf.user_attrs["seeds"] == [1, 2, 3]
    capsys.readouterr()

    # The report now carries the mean and 95% t-interval over the confirmation seeds, on the test documents.
    assert main(["report", DEMO, "--out", str(out)] + sets) == 0
    assert "recommendation: trial" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    opening = md.split("## What to use")[1].split("\n- **Base model**")[0]
    assert "unconfirmed" not in opening
    rec_number = int(re.search(r"\(trial (\d+) of this sweep", opening).group(1))
    assert rec_number == knee.number, "without a budget: the knee, confirmed"
    runs = [
        t.user_attrs for t in conf.get_trials(states=[TrialState.COMPLETE]) if t.user_attrs["setting"] == rec_number
    ]
    d = stats.t_interval([a["test_domain_loss"] for a in sorted(runs, key=lambda a: a["seed"])])
    f = stats.t_interval([a["test_forgetting"] for a in sorted(runs, key=lambda a: a["seed"])])
    assert d.n == 3
    assert (
        f"over 3 new seeds (study `tiny-confirm`): domain loss **{d.mean:.4f}** (95% CI [{d.low:.4f}, {d.high:.4f}])"
        in opening
    )
    assert f"forgetting **{f.mean:+.4f}** (95% CI [{f.low:+.4f}, {f.high:+.4f}])" in opening
    assert "### Confirmed settings" in opening and opening.count("| 3 |") == 2
    chosen = (out / "chosen.yaml").read_text()
    assert "confirmed over 3 seeds" in chosen and yaml.safe_load(chosen)["study"]["name"] == f"tiny-t{rec_number}"

    # A budget no trial meets: the report says so, writes no chosen.yaml, and there is nothing to confirm.
    impossible = sets + ["--set", "study.max_forgetting=-100"]
    assert main(["report", DEMO, "--out", str(out)] + impossible) == 0
    md = (out / "report.md").read_text()
    assert "**No setting met the budget**" in md.split("- **Base model**")[0] and not (out / "chosen.yaml").exists()
    # A budget some trials meet: the lowest domain loss within it, among the confirmed settings' seed means.
    loose = max(t.user_attrs["forgetting"] for t in trials) + 1.0
    rec = confirm.recommend(study, loose, conf)
    means = {c.setting: c.mean("domain_loss") for c in rec.settings}
    assert rec.status == "confirmed" and rec.trial.number == min(means, key=means.get)


def test_a_confirmation_with_other_settings_names_the_changed_key(tmp_path):
    """The sweep's stored fingerprint inputs are compared key by key with the confirmation's config: the message
    names the changed key (and no speed-only one), not every key of the search space."""
    from cpt_harness.config.validate import load_config
    from cpt_harness.search import space as search_space
    from cpt_harness.search import study as storage

    sets = [f"study.storage=sqlite:///{tmp_path}/study.db", "study.name=s"]
    cfg = load_config(DEMO, sets)
    study = storage.open_study(
        cfg,
        {"model": "m", "data": "d", "search_space": search_space.space_fingerprint(cfg)},
        inputs={"search_space": search_space.space_payload(cfg)},
    )
    confirm._check_protocol(load_config(DEMO, sets + ["train.gradient_checkpointing=true"]), study)  # speed only
    with pytest.raises(storage.StudyMismatch) as e:
        confirm._check_protocol(
            load_config(DEMO, sets + ["train.max_steps=7", "train.gradient_checkpointing=true"]), study
        )
    assert re.search(r"other settings than this config \(train\.max_steps: \d+ -> 7\); a confirmation", str(e.value))
