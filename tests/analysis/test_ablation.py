"""Ablations and reports: the statistics by hand, the factorial design, and the tiny-model runs end to end."""

from __future__ import annotations

import json
import math
import os
import statistics
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from cpt_harness import data
from cpt_harness.analysis import ablation, stats
from cpt_harness.cli import main
from cpt_harness.config import ConfigError
from cpt_harness.config.validate import load_config
from cpt_harness.infra.wandb_files import read_runs
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def test_t_interval_matches_a_hand_computation():
    iv = stats.t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    half = 2.7764451 * statistics.stdev([1, 2, 3, 4, 5]) / math.sqrt(5)  # t(0.975, 4) = 2.7764451
    assert (iv.n, iv.mean) == (5, 3.0)
    assert iv.low == pytest.approx(3.0 - half) and iv.high == pytest.approx(3.0 + half)
    assert iv.low == pytest.approx(1.03676, abs=1e-5) and iv.verdict_sign == 1
    assert stats.t_interval([-1.0, 1.0, 0.5]).verdict_sign == 0
    assert stats.t_interval([-3.0, -2.0, -2.5]).verdict_sign == -1


def test_effects_pair_by_seed_and_average_over_the_other_factor():
    # forgetting = 0.10 base + 0.05 if gate_proj is out; domain loss = 2.0 - 0.2 if embeddings are trained; noise by seed
    rows = []
    for seed, noise in enumerate([0.01, -0.02, 0.03]):
        for gate in ("in", "out"):
            for emb in ("trained", "frozen"):
                rows.append(
                    {
                        "seed": seed,
                        "level:gate_proj": gate,
                        "level:embeddings": emb,
                        "forgetting": 0.10
                        + (0.05 if gate == "out" else 0)
                        + noise
                        + (0.001 * seed if gate == "out" else 0),
                        "domain_loss": 2.0 - (0.2 if emb == "trained" else 0) + noise,
                    }
                )
    eff = {(e.factor.name, e.metric): e for e in ablation.effects(rows, ["gate_proj", "embeddings"])}
    gate = eff[("gate_proj", "forgetting")]
    assert gate.per_seed == pytest.approx({0: 0.05, 1: 0.051, 2: 0.052})
    assert gate.interval.mean == pytest.approx(0.051)
    assert gate.verdict == "supported"  # leaving gate_proj out raised forgetting, as the guidance says
    emb = eff[("embeddings", "domain_loss")]
    assert emb.per_seed == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2}) and emb.verdict == "supported"
    assert eff[("gate_proj", "domain_loss")].verdict == ""  # not the claim's metric: reported, no verdict
    # A seed missing one of its pairs is left out, not half-counted.
    partial = [
        r for r in rows if not (r["seed"] == 2 and r["level:gate_proj"] == "out" and r["level:embeddings"] == "frozen")
    ]
    assert set(ablation.effects(partial, ["gate_proj", "embeddings"])[0].per_seed) == {0, 1}


@pytest.mark.integration
def test_arm_configs_apply_the_levels(tiny_cfg):
    tiny_cfg.ablation.factors = ["gate_proj", "embeddings", "rslora"]
    arms = ablation.arms(tiny_cfg)
    assert len(arms) == 8 and arms[0].name == "gate_proj=in,embeddings=trained,rslora=on"
    worst = ablation.arm_config(tiny_cfg, arms[-1], seed=3)  # gate out, embeddings frozen, rsLoRA off
    assert "gate_proj" not in worst.lora.target_modules and not worst.lora.train_embeddings
    assert worst.lora.use_rslora is False and worst.rules.rslora_above_64 is False
    assert worst.search.rank.choices == [tiny_cfg.ablation.high_rank] and worst.train.seed == 3
    tiny_cfg.ablation.factors = ["embedding_lr_ratio"]
    high = ablation.arm_config(tiny_cfg, ablation.arms(tiny_cfg)[1], seed=0)
    assert high.search.embedding_lr_ratio.low == 1.0 and high.rules.embedding_lr_ratio_range is False


def test_same_seed_same_init_on_shared_modules(tiny_cfg):
    from cpt_harness.model.backends.peft_backend import PeftBackend
    from cpt_harness.search.space import derive
    from cpt_harness.train.loop import reseed_lora

    backend = PeftBackend()
    arms = ablation.arms(tiny_cfg)  # gate in/out x embeddings trained/frozen

    def q_init(arm, seed):
        cfg = ablation.arm_config(tiny_cfg, arm, seed)
        model = backend.load_for_training(cfg.model.name, cfg, derive(cfg.search.rank.choices[0], 1e-3, 0.2, cfg))
        reseed_lora(model, seed)
        return model.base_model.model.model.layers[1].self_attn.q_proj.lora_A["default"].weight.detach().clone()

    assert torch.equal(q_init(arms[0], 0), q_init(arms[3], 0)), "gate_proj in vs out: same q_proj init"
    assert not torch.equal(q_init(arms[0], 0), q_init(arms[0], 1))


def test_ablation_checks():
    for bad, msg in (
        (["gate_proj", "nope"], "unknown factor 'nope'"),
        (["embeddings", "embedding_lr_ratio"], "cannot be"),
    ):
        with pytest.raises(Exception, match=msg):
            load_config(DEMO, [f"ablation.factors={bad}"])
    with pytest.raises(Exception, match="at least 2 seeds"):
        load_config(DEMO, ["ablation.seeds=1"])


@pytest.mark.integration
def test_ablate_end_to_end_and_its_report(tiny_overrides, tmp_path, capsys):
    sets = _sets(
        tiny_overrides
        + ["ablation.seeds=2", "ablation.rank=8", "ablation.learning_rate=2e-3", "tracking.wandb.mode=offline"]
    )
    assert main(["ablate", DEMO] + sets) == 0
    study = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert sorted((t.user_attrs["arm"], t.user_attrs["seed"]) for t in trials) == sorted(
        (arm, s) for arm in study.user_attrs["design"]["arms"] for s in (0, 1)
    ), "each arm x seed exactly once"
    frozen = [t for t in trials if t.user_attrs["level:embeddings"] == "frozen"]
    assert all("embedding_lr_ratio" not in t.params and t.user_attrs["trainable_embedding"] == 0 for t in frozen)
    no_gate = [t for t in trials if t.user_attrs["level:gate_proj"] == "out"]
    assert all(
        t.user_attrs["audit"]["groups"]["lora"]["tensors"] < trials[0].user_attrs["audit"]["groups"]["lora"]["tensors"]
        for t in no_gate
    )
    # Resuming a finished ablation runs nothing.
    assert main(["ablate", DEMO] + sets) == 0
    assert len(optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db").trials) == 8

    runs = [r for r in read_runs(Path(os.environ["WANDB_DIR"])) if r.job_type == "ablation"]
    assert len(runs) == 8 and all(r.group == "tiny-ablation" and "arm" in r.config for r in runs)
    assert all(f"gate_proj={r.config['levels']['gate_proj']}" in r.tags for r in runs)

    # The report, from the database alone: figures, verdict lines, and effects equal to a hand computation.
    out = tmp_path / "report"
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    md = (out / "report.md").read_text()
    assert (out / "report.html").is_file() and (out / "curves.png").stat().st_size > 1000
    first_screen = md.split("## Effects")[0]
    for claim in (
        "leaving gate_proj out of the LoRA targets speeds up forgetting",
        "training lm_head and embed_tokens helps learn the domain",
    ):
        assert claim in first_screen
    assert first_screen.count("[95% CI") == 2
    assert "**NOT TESTED** here: *rsLoRA helps at high rank* (factor `rslora`)" in first_screen
    negative = sum(t.user_attrs["forgetting"] < 0 for t in trials)
    assert ("**Caveat: general loss fell in" in first_screen) == (negative > 0)
    if 0 < negative < len(trials):
        assert f"fell in {negative} of the 8 complete trials" in first_screen
    effects = {(e["factor"], e["metric"]): e for e in json.loads((out / "effects.json").read_text())}
    by = {
        (t.user_attrs["seed"], t.user_attrs["level:gate_proj"], t.user_attrs["level:embeddings"]): t.user_attrs
        for t in trials
    }
    hand = [
        statistics.fmean(
            [by[(s, "out", e)]["forgetting"] - by[(s, "in", e)]["forgetting"] for e in ("trained", "frozen")]
        )
        for s in (0, 1)
    ]
    g = effects[("gate_proj", "forgetting")]
    assert [g["per_seed"][k] for k in ("0", "1")] == pytest.approx(hand)
    half = 12.7062047 * statistics.stdev(hand) / math.sqrt(2)
    assert (g["low"], g["high"]) == pytest.approx((statistics.fmean(hand) - half, statistics.fmean(hand) + half))
    verdict = {1: "supported", -1: "contradicted", 0: "inconclusive"}[stats.t_interval(hand).verdict_sign]
    assert g["verdict"] == verdict and f"**{verdict.upper()}**: *leaving gate_proj" in md
    summary = [r for r in read_runs(Path(os.environ["WANDB_DIR"])) if r.job_type == "summary"]
    assert len(summary) == 1 and any(k.startswith("trials") for h in summary[0].history for k in h)


@pytest.mark.integration
def test_sweep_report_and_the_chosen_config_reruns(tiny_overrides, tmp_path):
    sets = _sets(tiny_overrides)
    assert main(["sweep", DEMO, "--n-trials", "4"] + sets) == 0
    out = tmp_path / "report"
    assert main(["report", DEMO, "--out", str(out)] + sets) == 0
    for name in ("report.md", "report.html", "pareto.png", "curves.png", "chosen.yaml"):
        assert (out / name).is_file(), name
    md = (out / "report.md").read_text()
    assert "![Pareto front](pareto.png)" in md and "not healed" in md
    chosen_cfg = yaml.safe_load((out / "chosen.yaml").read_text())
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    front = {t.number: t for t in study.best_trials}
    number = int(chosen_cfg["study"]["name"].rsplit("-t", 1)[1])
    assert number in front, "the chosen trial is on the Pareto front"
    # The chosen config is a sweep file that trains the chosen trial again, to the same numbers.
    assert main(["sweep", str(out / "chosen.yaml")]) == 0
    rerun = optuna.load_study(study_name=chosen_cfg["study"]["name"], storage=f"sqlite:///{tmp_path}/study.db")
    (t,) = rerun.trials
    assert t.params == front[number].params
    assert t.user_attrs["domain_loss"] == pytest.approx(front[number].user_attrs["domain_loss"], rel=1e-5)


@pytest.mark.integration
def test_choose_trial_respects_max_forgetting(tiny_overrides, tmp_path):
    from cpt_harness.reporting.sweep_report import choose_trial

    assert main(["sweep", DEMO, "--n-trials", "3"] + _sets(tiny_overrides)) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    front = study.best_trials
    lowest_forgetting = min(t.user_attrs["forgetting"] for t in front)
    chosen = choose_trial(study, max_forgetting=lowest_forgetting)
    assert chosen.user_attrs["forgetting"] <= lowest_forgetting
    assert chosen.user_attrs["domain_loss"] == min(
        t.user_attrs["domain_loss"] for t in front if t.user_attrs["forgetting"] <= lowest_forgetting
    )


@pytest.mark.integration
def test_ablate_from_study_takes_the_chosen_hyperparameters(tiny_overrides, tmp_path):
    sets = _sets(tiny_overrides)
    assert main(["sweep", DEMO, "--n-trials", "2"] + sets) == 0
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db")
    config = tmp_path / "sweep.yaml"
    cfg = load_config(DEMO, tiny_overrides)
    config.write_text(yaml.safe_dump(cfg.to_dict()))
    pick = study.trials[1]
    assert (
        main(
            [
                "ablate",
                DEMO,
                "--from-study",
                str(config),
                "--trial",
                "1",
                "--set",
                "ablation.seeds=2",
                "--set",
                "ablation.factors=[gate_proj]",
            ]
            + sets
        )
        == 0
    )
    abl = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    assert abl.user_attrs["design"]["fixed"]["rank"] == pick.params["rank"]
    assert abl.user_attrs["design"]["fixed"]["learning_rate"] == pytest.approx(pick.params["learning_rate"])
    assert all(t.params["rank"] == pick.params["rank"] for t in abl.trials) and len(abl.trials) == 4


@pytest.mark.integration
def test_healed_base_is_cached_recorded_and_reported(tiny_overrides, tmp_path, tiny_model):
    from safetensors.torch import load_file

    sets = _sets(
        tiny_overrides
        + [
            "model.heal.steps=4",
            "model.heal.rank=4",
            "model.heal.learning_rate=1e-2",
            "model.heal.batch_size=2",
            "study.name=healed",
        ]
    )
    assert main(["sweep", DEMO, "--n-trials", "1"] + sets) == 0
    study = optuna.load_study(study_name="healed", storage=f"sqlite:///{tmp_path}/study.db")
    prov = study.user_attrs["model_provenance"]
    assert prov["healed_from"] == str(tiny_model) and prov["heal"]["steps"] == 4
    healed = Path(os.environ["CPT_HARNESS_CACHE"]) / "models"
    folder = next(healed.glob("healed-*"))
    before, after = load_file(f"{tiny_model}/model.safetensors"), load_file(f"{folder}/model.safetensors")
    assert not torch.equal(
        before["model.layers.0.self_attn.q_proj.weight"], after["model.layers.0.self_attn.q_proj.weight"]
    )
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"]), "healing is LoRA only"
    out = tmp_path / "rep"
    assert main(["report", DEMO, "--out", str(out)] + sets) == 0
    md = (out / "report.md").read_text()
    assert "a *healed* base (4 LoRA steps on builtin:austen, merged)" in md
    (g0, g1), (d0, d1) = prov["heal_held_out"]["general_loss"], prov["heal_held_out"]["domain_loss"]
    assert all(math.isfinite(v) and v > 0 for v in (g0, g1, d0, d1)) and g1 != g0
    assert f"healing moved the held-out general loss from {g0:.4f} to {g1:.4f}" in md
    assert ("it made the base worse on general text" in md) == (g1 > g0)


def test_forgetting_note_says_when_general_loss_fell(tiny_overrides, tmp_path):
    from cpt_harness.reporting.page import forgetting_note

    study = optuna.create_study(directions=["minimize", "minimize"])
    for f in (-0.05, -0.01):
        study.add_trial(optuna.trial.create_trial(values=[1.0, f], user_attrs={"forgetting": f}))
    assert "fell in every one of the 2 complete trials" in forgetting_note(study)
    assert "(forgetting -0.0500 to -0.0100)" in forgetting_note(study)
    study.add_trial(optuna.trial.create_trial(values=[1.0, 0.02], user_attrs={"forgetting": 0.02}))
    assert "fell in 2 of the 3 complete trials" in forgetting_note(study)
    clean = optuna.create_study(directions=["minimize", "minimize"])
    clean.add_trial(optuna.trial.create_trial(values=[1.0, 0.02], user_attrs={"forgetting": 0.02}))
    assert forgetting_note(clean) is None


@pytest.mark.integration
def test_healing_on_the_general_corpus_reads_only_its_training_documents(tiny_overrides, tiny_corpora, tmp_path):
    from transformers import AutoTokenizer

    from cpt_harness.config.validate import load_config
    from cpt_harness.train import heal

    sets = tiny_overrides + [
        "model.heal.steps=2",
        "model.heal.rank=4",
        "model.heal.batch_size=2",
        f"model.heal.data={tiny_corpora['general']}",
        "study.name=healed-general",
    ]
    cfg = load_config(DEMO, sets)
    docs = heal.heal_documents(cfg)
    general = data.read_documents(cfg.data.general)
    train_docs, validation, test = data.split_general(general, cfg.data.eval_fraction, cfg.data.seed)
    _, held_out = data.split_documents(general, cfg.data.eval_fraction, cfg.data.seed)
    assert test == held_out, "the test documents are the ones data.prepare holds out to measure forgetting"
    assert docs == train_docs and validation and test
    # Healing trains on neither the test documents nor the validation documents it is judged on, and the
    # validation documents are not test documents.
    assert not set(docs) & set(test) and not set(docs) & set(validation) and not set(validation) & set(test)
    assert len(docs) + len(validation) + len(test) == len(general)
    assert main(["sweep", DEMO, "--n-trials", "1"] + _sets(sets)) == 0
    study = optuna.load_study(study_name="healed-general", storage=f"sqlite:///{tmp_path}/study.db")
    prov = study.user_attrs["model_provenance"]
    assert prov["heal"]["data"] == f"{tiny_corpora['general']} (training documents only)"
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name)
    measured = data.pack(validation, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)
    assert prov["heal_validation"]["tokens"] == measured.size  # measured on exactly the validation documents
    other_split = load_config(DEMO, sets + ["data.seed=1"])
    assert heal.heal_documents(other_split) != docs  # the split follows data.seed, and so does the cache key


@pytest.mark.integration
def test_rslora_ablation_report_states_each_arms_lora_scale(tiny_overrides, tmp_path):
    sets = _sets(
        tiny_overrides
        + [
            "ablation.seeds=2",
            "ablation.factors=[rslora]",
            "ablation.high_rank=16",
            "lora.alpha=8",
            "ablation.learning_rate=2e-3",
            "study.name=rs",
        ]
    )
    assert main(["ablate", DEMO] + sets) == 0
    out = tmp_path / "rs-report"
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    design = next(line for line in (out / "report.md").read_text().splitlines() if line.startswith("Design:"))
    assert "fixed rank 16" in design
    assert "rslora=off 0.5, rslora=on 2;" in design  # alpha/r = 8/16, alpha/sqrt(r) = 8/4


@pytest.mark.integration
def test_lr_crossed_ablation_end_to_end_and_its_frontier_report(tiny_overrides, tmp_path, capsys):
    sets = _sets(
        tiny_overrides
        + [
            "ablation.factors=[gate_proj]",
            "ablation.seeds=3",
            "ablation.learning_rates=[1e-3, 4e-3]",
            "ablation.min_effect=0.001",
            "ablation.lr_extend=1",
            "train.schedule=cosine",
        ]
    )
    assert main(["ablate", DEMO] + sets) == 0
    study = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    # every arm x LR x seed once, each trial at its own LR
    assert sorted((t.user_attrs["arm"], t.user_attrs["lr"], t.user_attrs["seed"]) for t in done) == sorted(
        (f"gate_proj={g}", lr, s) for g in ("in", "out") for lr in (1e-3, 4e-3) for s in range(3)
    )
    assert all(t.params["learning_rate"] == t.user_attrs["lr"] for t in done)
    assert study.user_attrs["design"]["learning_rates"] == [1e-3, 4e-3]
    assert main(["ablate", DEMO] + sets) == 0  # resuming a complete design adds nothing
    assert len(optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db").trials) == 12
    assert "verdicts on the learning-forgetting frontier" in capsys.readouterr().out

    out = tmp_path / "report"
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    md = (out / "report.md").read_text()
    assert "matched" in md and "leaving gate_proj out" in md and "LR grid 0.001, 0.004" in md
    assert all((out / f).is_file() for f in ("frontier.png", "forest.png", "curves.png", "effects.json", "evals.npz"))
    assert "a bootstrap over the eval documents" in md and "general_kl (KL from the start model" in md
    (effect,) = json.loads((out / "effects.json").read_text())
    assert effect["var_boot"] > 0, "the document bootstrap widened the interval"
    # Rebuilt where the trial folders are gone (a committed report), it reads evals.npz beside it: same numbers.
    import shutil

    shutil.rmtree(tmp_path / "runs" / "tiny-ablation")
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    assert json.loads((out / "effects.json").read_text()) == [effect]
    assert effect["verdict"] in ("NEGLIGIBLE", "SUPPORTED", "CONTRADICTED", "INCONCLUSIVE") and effect["n"] <= 3
    # The effect is recomputed from the trials' own curves: forgetting at matched gain, out - in, per seed.
    from cpt_harness.analysis import claims, frontier

    runs = claims.runs_from_study(study)
    m = frontier.matched_effect(runs, "gain", "gate_proj", "in", "out")
    assert effect["estimate"] == pytest.approx(m.mean) and len(runs) == 12


def test_the_lr_grid_must_span_the_rslora_scale_ratio(tiny_overrides):
    with pytest.raises(ConfigError, match=r"ablation.learning_rates: spans 4x.*16x"):
        load_config(
            DEMO,
            tiny_overrides
            + [
                "ablation.factors=[rslora]",
                "ablation.rank=16",
                "ablation.high_rank=256",
                "ablation.learning_rates=[1e-4, 4e-4]",
            ],
        )
    cfg = load_config(
        DEMO,
        tiny_overrides
        + [
            "ablation.factors=[rslora]",
            "ablation.rank=16",
            "ablation.high_rank=256",
            "ablation.learning_rates=[1e-4, 4e-4, 1.6e-3]",
        ],
    )
    arms = ablation.arms(cfg)
    assert [a.name for a in arms] == [
        "rank=16,rslora=on",
        "rank=16,rslora=off",
        "rank=256,rslora=on",
        "rank=256,rslora=off",
    ]
    configs = {a.name: ablation.arm_config(cfg, a, 0, 4e-4) for a in arms}
    # One parameter, one set of choices in a study (Optuna refuses others): the arm's rank is enqueued.
    assert {tuple(c.search.rank.choices) for c in configs.values()} == {(16, 256)}
    assert [ablation.arm_rank(cfg, a) for a in arms] == [16, 16, 256, 256]
    assert configs["rank=256,rslora=off"].lora.use_rslora is False and configs["rank=16,rslora=on"].lora.use_rslora
    assert configs["rank=16,rslora=on"].search.learning_rate.low == 4e-4
    assert ablation.AblationPlan(cfg).target == 4 * 3 * cfg.ablation.seeds


def test_seeds_with_a_missing_arm_or_lr_are_left_out_of_the_frontier():
    from cpt_harness.analysis import claims, frontier

    def run(gate, seed, lr):
        return frontier.Run({"gate_proj": gate}, seed, lr, [0.0, 0.1 * lr * 1e3], [0.0, 0.05 * lr * 1e3])

    runs = [run(g, s, lr) for g in ("in", "out") for s in (0, 1) for lr in (1e-3, 2e-3)]
    runs += [run("in", 2, 1e-3), run("out", 2, 1e-3), run("in", 2, 2e-3)]  # seed 2: gate out at 2e-3 missing
    kept, partial = claims.complete_seeds(runs, {"gate_proj": ["in", "out"]}, [1e-3, 2e-3])
    assert partial == [2] and {r.seed for r in kept} == {0, 1} and len(kept) == 8


@pytest.mark.integration
def test_rank_x_rslora_frontier_ablation_runs_every_arm_at_its_rank(tiny_overrides, tmp_path):
    sets = _sets(
        tiny_overrides
        + [
            "ablation.factors=[rslora]",
            "ablation.rank=4",
            "ablation.high_rank=16",
            "ablation.seeds=2",
            "ablation.learning_rates=[1e-3, 4e-3]",
            "train.max_steps=3",
            "ablation.lr_extend=1",
            "train.eval_every=3",
        ]
    )
    assert main(["ablate", DEMO] + sets) == 0
    study = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 16 and all(t.params["rank"] == int(t.user_attrs["level:rank"]) for t in done)
    assert {(t.user_attrs["level:rslora"], t.user_attrs["use_rslora"]) for t in done} == {("on", True), ("off", False)}


def test_the_readme_claims_table_is_what_the_committed_reports_say():
    import subprocess
    import sys

    # The table lives in docs/ablations.md (the README keeps a one-line summary and links to it).
    script = ROOT / "scripts" / "readme_claims_table.py"
    done = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (ROOT / "docs" / "ablations.md").read_text()
    assert "| leaving gate_proj out of the LoRA targets speeds up forgetting | builtin:legal | **" in page
    assert "<!-- claims-table:begin" not in (ROOT / "README.md").read_text()


@pytest.mark.integration
def test_replay_ablation_judges_forgetting_on_the_general_text_not_replayed(
    tiny_overrides, tiny_corpora, tmp_path, capsys
):
    """ablation.factors=[replay]: the "on" arm mixes data.replay.fraction of general text into its batches, the
    "off" arm none; the claim is judged at matched domain gain on the general corpora that are not replayed, and
    its bootstrap draws only their documents."""
    replay = [
        f"data.general=[{tiny_corpora['general']}, {tiny_corpora['sotu']}]",
        f"data.replay={{source: {tiny_corpora['general']}, fraction: 0.25}}",
    ]
    with pytest.raises(ConfigError, match=r"ablation.factors: replay compares data.replay.fraction"):
        load_config(DEMO, tiny_overrides + ["ablation.factors=[replay]"])
    with pytest.raises(ConfigError, match=r"search.replay_fraction: an ablation of replay"):
        load_config(
            DEMO, tiny_overrides + replay + ["ablation.factors=[replay]", "search.replay_fraction={low: 0, high: 0.5}"]
        )
    sets = _sets(
        tiny_overrides
        + replay
        + [
            "ablation.factors=[replay]",
            "ablation.seeds=2",
            "eval.max_tokens=2048",
            "ablation.learning_rates=[1e-3, 4e-3]",
            "ablation.min_effect=0.001",
            "ablation.lr_extend=1",
            "train.schedule=cosine",
        ]
    )
    assert main(["ablate", DEMO] + sets) == 0
    study = optuna.load_study(study_name="tiny-ablation", storage=f"sqlite:///{tmp_path}/study.db")
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted((t.user_attrs["arm"], t.user_attrs["lr"], t.user_attrs["seed"]) for t in done) == sorted(
        (f"replay={r}", lr, s) for r in ("on", "off") for lr in (1e-3, 4e-3) for s in range(2)
    )
    assert {t.user_attrs["arm"]: t.user_attrs["replay_fraction"] for t in done} == {
        "replay=on": 0.25,
        "replay=off": 0.0,
    }
    assert study.user_attrs["design"]["replayed"] == ["brown"]
    assert all("forgetting_unreplayed" in t.user_attrs for t in done)

    out = tmp_path / "report"
    assert main(["report", DEMO, "--ablation", "--out", str(out)] + sets) == 0
    (effect,) = json.loads((out / "effects.json").read_text())
    from cpt_harness.analysis import claims, frontier
    from cpt_harness.evaluate import evals

    runs = claims.runs_from_study(study, forgetting="general_loss_unreplayed")
    matched = lambda rs: frontier.matched_effect(rs, "gain", "replay", "on", "off").mean  # noqa: E731
    assert effect["factor"] == "replay" and effect["estimate"] == pytest.approx(matched(runs))
    base, by_trial = evals.read_collected(out / "evals.npz")
    doc_runs, doc_base = claims.doc_runs_from_study(study, by_trial, base)
    sotu_only = claims.unreplayed_docs(doc_runs, doc_base, [0])  # brown, the replayed corpus, is general corpus 0
    assert (sotu_only[1].general_corpus == 1).all() and len(sotu_only[1].general_corpus) > 1
    assert effect["var_boot"] == pytest.approx(frontier.bootstrap_var(*sotu_only, matched)) and effect["var_boot"] > 0
    assert "replaying general text while training lowers forgetting" in (out / "report.md").read_text()
