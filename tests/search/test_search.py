"""A search that spends trials where they pay: the forgetting budget as an Optuna constraint, samplers and pruners
by name, pruned trials, a constrained (single-objective) study, and known points enqueued first. Tiny model, real
Optuna SQLite studies, real W&B offline run files."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from cpt_harness.cli import main
from cpt_harness.config.validate import load_config
from cpt_harness.infra.wandb_files import read_runs
from cpt_harness.reporting import report_files, sweep_report
from cpt_harness.reporting import tables as report
from cpt_harness.search import pruning, samplers
from cpt_harness.search import space as search_space
from cpt_harness.search import study as storage
from cpt_harness.search.space import space_fingerprint
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")
COMPLETE, PRUNED = TrialState.COMPLETE, TrialState.PRUNED


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def load(tmp_path, name="tiny"):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{tmp_path}/study.db")


def _runs() -> dict[int, object]:
    return {r.config["trial"]["number"]: r for r in read_runs(Path(os.environ["WANDB_DIR"]))}


@pytest.mark.integration
def test_a_trial_over_the_forgetting_budget_stops_early_and_every_trial_records_its_constraint(
    tiny_overrides, tmp_path, capsys
):
    sets = _sets(tiny_overrides)  # demo.yaml samples at random: the budget is then not part of the fingerprint
    assert main(["sweep", DEMO, "--n-trials", "1", "--set", "study.max_forgetting=10"] + sets) == 0
    # The same study under a budget no trial can meet: each is stopped at its first checkpoint (step 3 of 6), and
    # the sweep stops at 3 x n_trials complete and pruned trials.
    assert main(["sweep", DEMO, "--n-trials", "2", "--set", "study.max_forgetting=-10"] + sets) == 0
    out = capsys.readouterr().out
    study = load(tmp_path)
    assert [t.state for t in study.trials] == [COMPLETE] + [PRUNED] * 5
    assert "stopped with 1 of 2 trials complete: 5 were pruned" in out and out.count("PRUNED   r=") == 5
    done, *pruned = study.trials
    assert done.constraints == {"forgetting": pytest.approx(done.user_attrs["forgetting"] - 10)}
    assert len(done.user_attrs["curve"]) == 2 and done.user_attrs["tokens_seen"] == 6 * 4 * 64
    runs = _runs()
    for t in pruned:
        a = t.user_attrs
        assert t.constraints == {"forgetting": pytest.approx(a["forgetting"] + 10)}, "read back from storage"
        assert t.values is None, "a pareto study reports no intermediate values"
        assert a["pruned_step"] == 3 and [p["step"] for p in a["curve"]] == [3] and a["tokens_seen"] == 3 * 4 * 64
        assert a["forgetting"] == pytest.approx(a["general_loss"] - study.user_attrs["base"]["general_loss"])
        assert a["prune_reason"].startswith(
            f"forgetting {a['forgetting']:+.4f} at step 3 is over "
            "study.max_forgetting -10 by more than study.prune_margin 0.05"
        )
        assert (
            a["adapter_dir"] is None and not (tmp_path / "runs" / "tiny" / f"trial-{t.number:04d}" / "adapter").exists()
        )
        run = runs[t.number]
        assert run.exit_code == 0, "a pruned trial's W&B run is finished cleanly"
        assert run.summary["state"] == "PRUNED" and run.summary["prune_reason"] == a["prune_reason"]
        assert run.summary["pruned_step"] == 3 and run.summary["domain_loss"] == pytest.approx(a["domain_loss"])
        assert [h["step"] for h in run.history if "eval/domain_loss" in h] == [3]
    assert runs[done.number].summary["state"] == "COMPLETE"

    table = report.table(study, None, -10)
    assert "1 complete, 5 pruned" in table
    pruned_rows = [line for line in table.splitlines() if " PRUNED " in line]
    assert len(pruned_rows) == 5 and all(" over " in row and "forgetting " in row for row in pruned_rows)
    assert sweep_report.choose_trial(study, -10).number == done.number, "none within the budget: the knee"


@pytest.mark.integration
def test_a_constrained_study_prunes_with_the_median_pruner_and_runs_its_enqueued_points_first(tiny_overrides, tmp_path):
    points = (
        "[{rank: 64, learning_rate: 2.0e-3, embedding_lr_ratio: 0.2, name: good},"
        " {rank: 64, learning_rate: 1.0e-6, embedding_lr_ratio: 0.2, name: slow},"
        " {rank: 64, learning_rate: 3.0e-3, embedding_lr_ratio: 0.2, name: fast}]"
    )
    sets = _sets(
        tiny_overrides
        + [
            "study.objective=constrained",
            "study.max_forgetting=10",
            "study.sampler=tpe",
            "study.pruner=median",
            "study.pruner_options={n_startup_trials: 1}",
            f"study.enqueue={points}",
        ]
    )
    assert main(["sweep", DEMO, "--n-trials", "3"] + sets) == 0
    study = load(tmp_path)
    assert study.directions == [StudyDirection.MINIMIZE]
    good, slow, fast = study.trials[:3]  # the enqueued points, in order, then what the sampler proposed
    assert [t.user_attrs["baseline"] for t in study.trials[:3]] == ["good", "slow", "fast"]
    assert [t.state for t in study.trials[:3]] == [COMPLETE, PRUNED, COMPLETE]
    sampled = [t for t in study.trials[3:] if t.state == COMPLETE]
    assert len(sampled) == 1 and "baseline" not in sampled[0].user_attrs
    assert slow.params["learning_rate"] == 1e-6, "an enqueued learning rate outside the range runs as given"
    assert slow.user_attrs["outside_search_space"] == [
        "learning_rate 1e-06 outside search.learning_rate [0.001, 0.003]"
    ]
    # Every checkpoint reported its domain loss: the pruned trial stopped at the first, worse than the median.
    assert list(good.intermediate_values) == [3, 6] and good.value == good.user_attrs["domain_loss"]
    assert list(slow.intermediate_values) == [3] and slow.user_attrs["pruned_step"] == 3
    assert slow.intermediate_values[3] > good.intermediate_values[3]
    assert (
        slow.user_attrs["prune_reason"] == f"median pruner: domain loss {slow.user_attrs['domain_loss']:.4f} at step 3"
    )
    for t in study.trials:
        if t.state in (COMPLETE, PRUNED):
            assert t.constraints == {"forgetting": pytest.approx(t.user_attrs["forgetting"] - 10)}
    runs = _runs()
    assert {"baseline", "baseline=slow"} <= set(runs[slow.number].tags) and runs[slow.number].config[
        "baseline"
    ] == "slow"

    out = tmp_path / "report"
    assert main(["report", DEMO, "--out", str(out)] + sets) == 0
    md = (out / "report.md").read_text()
    # Baselines are compared with, never recommended: the recommendation is the sampled trial.
    best = sampled[0]
    assert md.index("## What to use") < md.index("## Search")
    assert f"(trial {best.number} of this sweep; the lowest domain loss with forgetting ≤ 10 on the selection" in md
    assert f"{len(study.trials)} trials, 3 complete, " in md
    assert "- **Baseline** `slow` (trial 1: r 64, lr 1e-06, embedding ratio 0.2; learning_rate 1e-06 outside" in md
    assert (
        "pruned (median pruner: domain loss" in md
        and "- **Forgetting budget** (study.max_forgetting = 10 nats): 3 of 3" in md
    )
    assert "baseline slow; median pruner" in md, "the table's note"
    for name in ("pareto.png", "curves.png", "chosen.yaml"):
        assert (out / name).is_file(), name
    chosen = load_config(out / "chosen.yaml")  # a sweep file that reruns the chosen trial, and nothing else
    assert (chosen.study.enqueue, chosen.study.pruner, chosen.study.n_trials) == ([], "none", 1)
    assert chosen.search.learning_rate.low == chosen.search.learning_rate.high == best.params["learning_rate"]


@pytest.mark.integration
def test_baselines_run_first_tagged_even_outside_the_search_space_and_are_enqueued_once(tiny_overrides, tmp_path):
    sets = _sets(tiny_overrides + ["study.enqueue=baselines"])
    assert main(["sweep", DEMO, "--n-trials", "2"] + sets) == 0
    study = load(tmp_path)
    unsloth, defaults = study.trials
    assert unsloth.params == {"rank": 128, "learning_rate": 5e-5, "embedding_lr_ratio": 0.1}
    assert unsloth.user_attrs["use_rslora"] is True and unsloth.user_attrs["embedding_lr"] == pytest.approx(5e-6)
    assert unsloth.user_attrs["outside_search_space"] == [
        "learning_rate 5e-05 outside search.learning_rate [0.001, 0.003]"
    ]
    assert defaults.params == {"rank": 64, "learning_rate": 2e-4, "embedding_lr_ratio": 0.2}
    assert [t.user_attrs["baseline"] for t in study.trials] == ["unsloth-cpt", "ablation-defaults"]
    assert all(t.state == COMPLETE for t in study.trials)
    runs = _runs()
    assert {"baseline", "baseline=unsloth-cpt", "rslora", "r128"} <= set(runs[0].tags)
    assert "baseline=ablation-defaults" in runs[1].tags
    assert "baseline unsloth-cpt" in report.table(study)
    # Resuming queues nothing again: the third trial is sampled.
    assert main(["sweep", DEMO, "--n-trials", "3"] + sets) == 0
    study = load(tmp_path)
    assert len(study.trials) == 3 and "baseline" not in study.trials[2].user_attrs
    assert study.user_attrs["enqueued"] == ["unsloth-cpt", "ablation-defaults"]


@pytest.mark.parametrize("name", ["tpe", "random", "nsga2", "gp", "qmc"])
@pytest.mark.integration
def test_every_sampler_runs_a_budgeted_study_with_running_trials_and_an_outside_point(name, tiny_cfg, tmp_path):
    tiny_cfg.study.sampler, tiny_cfg.study.max_forgetting, tiny_cfg.study.n_trials = name, 0.5, 9
    sampler = samplers.make_sampler(tiny_cfg.study, 0)
    assert type(sampler).__name__ == samplers.SAMPLERS[name]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path}/s.db", directions=["minimize"] * 2, sampler=sampler)
    study.enqueue_trial({"rank": 64, "learning_rate": 1e-6, "embedding_lr_ratio": 0.2})
    running = None
    for i in range(9):
        trial = study.ask()
        p = search_space.suggest(trial, tiny_cfg)
        if i == 5:  # left running while the others are proposed
            running = trial
            continue
        forgetting = (p.learning_rate * 1e3 - 2) ** 2
        pruning.record_constraint(trial, forgetting, tiny_cfg.study.max_forgetting)
        study.tell(trial, [1 / p.learning_rate / 1e3 + p.rank / 100, forgetting])
    assert running.number == 5 and study.trials[5].state == TrialState.RUNNING
    finished = [t for t in study.trials if t.state == COMPLETE]
    assert len(finished) == 8 and all(set(t.constraints) == {"forgetting"} for t in finished)
    assert study.trials[0].params["learning_rate"] == 1e-6
    assert all(
        tiny_cfg.search.learning_rate.low <= t.params["learning_rate"] <= tiny_cfg.search.learning_rate.high
        for t in study.trials[1:]
    )


def test_sampler_and_pruner_defaults_scale_to_the_sweep_and_options_override_them(tiny_cfg):
    s = tiny_cfg.study
    s.sampler, s.n_trials = "tpe", 12
    assert samplers.sampler_kwargs(s, 7) == {
        "n_startup_trials": 4,
        "multivariate": True,
        "constant_liar": True,
        "seed": 7,
    }
    s.n_trials = 60
    assert samplers.sampler_kwargs(s, 7)["n_startup_trials"] == 10
    s.sampler_options = {"n_startup_trials": 2, "n_ei_candidates": 48}
    assert samplers.sampler_kwargs(s, 7) == {
        "n_startup_trials": 2,
        "multivariate": True,
        "constant_liar": True,
        "n_ei_candidates": 48,
        "seed": 7,
    }
    s.sampler, s.sampler_options, s.n_trials = "nsga2", {}, 12
    assert samplers.sampler_kwargs(s, 7) == {"population_size": 4, "seed": 7}
    s.sampler = "qmc"
    assert samplers.sampler_kwargs(s, 7)["seed"] == s.seed, "every worker draws the study's one sequence"
    assert samplers.sampler_kwargs(s, 7)["scramble"] is True, "seeded by the study, not the same points for every study"
    s.sampler_options = {"scramble": False}
    assert samplers.sampler_kwargs(s, 7)["scramble"] is False
    s.sampler_options = {}
    s.objective, s.max_forgetting, s.pruner = "constrained", 0.1, "hyperband"
    tiny_cfg.train.max_steps, tiny_cfg.train.eval_every = 200, 50
    assert samplers.pruner_kwargs(tiny_cfg) == {"min_resource": 50, "max_resource": 200}
    assert type(samplers.make_pruner(tiny_cfg)).__name__ == "HyperbandPruner"


@pytest.mark.parametrize(
    "sets,expect",
    [
        (
            ["study.sampler_options={n_startup_trial: 5}"],
            "study.sampler_options.n_startup_trial: not an option of sampler random (optuna's RandomSampler); valid: none",
        ),
        (
            ["study.sampler=tpe", "study.sampler_options={n_startup_trial: 5}"],
            "study.sampler_options.n_startup_trial: not an option of sampler tpe (optuna's TPESampler); valid: ",
        ),
        (["study.sampler=tpe", "study.sampler_options={seed: 1}"], "study.sampler_options.seed: set by study.seed"),
        (
            ["study.sampler=qmc", "study.sampler_options={qmc_type: lattice}"],
            "study.sampler_options: optuna's QMCSampler refuses them",
        ),
        (["study.sampler=cmaes"], "study.sampler: must be one of tpe, random, nsga2, gp, qmc; got 'cmaes'"),
        (["study.pruner=median"], "study.pruner: median needs objective: constrained"),
        (["study.objective=constrained"], "study.max_forgetting: objective: constrained minimizes domain loss"),
        (
            [
                "study.objective=constrained",
                "study.max_forgetting=0.1",
                "study.pruner=successive_halving",
                "study.pruner_options={reduction: 3}",
            ],
            "study.pruner_options.reduction: not an option of pruner successive_halving (optuna's SuccessiveHalvingPruner); "
            "valid: min_resource, reduction_factor, min_early_stopping_rate, bootstrap_count",
        ),
        (["study.prune_margin=-0.1"], "study.prune_margin: must be >= 0 (nats) or null, got -0.1"),
        (
            ["study.enqueue=[{rank: 32, learning_rate: 1e-4, embedding_lr_ratio: 0.2}]"],
            "study.enqueue[0].rank: rank 32 is not in search.rank.choices [16, 64, 128]",
        ),
        (
            ["study.enqueue=[{rank: 64, learning_rate: 1e-4}]"],
            "study.enqueue[0].embedding_lr_ratio: required while lora.train_embeddings is true",
        ),
        (["study.enqueue=[{rank: 64, lr: 1e-4}]"], "study.enqueue[0].lr: unknown key"),
        (
            ["study.enqueue=baselines", "search.rank.choices=[16, 64]"],
            "study.enqueue: rank 128 (baseline unsloth-cpt) is not in search.rank.choices [16, 64]",
        ),
    ],
)
def test_bad_search_settings_exit_2_naming_the_key(sets, expect, capsys):
    assert main(["validate", DEMO] + _sets(sets)) == 2
    assert expect in capsys.readouterr().err


def test_good_search_settings_validate(capsys):
    for sets in (
        ["study.sampler=gp", "study.sampler_options={n_startup_trials: 3}"],
        ["study.sampler=nsga2", "study.sampler_options={population_size: 6, crossover_prob: 8e-1}"],  # YAML: a string
        ["study.sampler=tpe", "study.sampler_options={n_ei_candidates: 48, multivariate: false}"],
        [
            "study.objective=constrained",
            "study.max_forgetting=0.05",
            "study.pruner=median",
            "study.pruner_options={n_startup_trials: 3, n_warmup_steps: 6}",
            "study.enqueue=baselines",
        ],
    ):
        assert main(["validate", DEMO] + _sets(sets)) == 0, capsys.readouterr().err


def test_max_forgetting_joins_the_fingerprint_only_where_it_drives_the_search(tiny_cfg):
    before = space_fingerprint(tiny_cfg)  # demo.yaml: random sampler, pareto
    tiny_cfg.study.max_forgetting = 0.1
    assert space_fingerprint(tiny_cfg) == before, "used only to choose a trial afterwards"
    tiny_cfg.study.sampler = "tpe"
    tpe = space_fingerprint(tiny_cfg)
    assert tpe != before
    tiny_cfg.study.max_forgetting = 0.2
    assert space_fingerprint(tiny_cfg) != tpe
    tiny_cfg.study.sampler, tiny_cfg.study.objective = "random", "constrained"
    constrained = space_fingerprint(tiny_cfg)
    assert constrained not in (before, tpe)
    tiny_cfg.study.pruner, tiny_cfg.study.prune_margin, tiny_cfg.study.enqueue = "median", None, "baselines"
    assert space_fingerprint(tiny_cfg) == constrained, "pruning and enqueued points change no trial's numbers"


def _synthetic(study, rows, max_forgetting):
    """Complete trials with the attributes a report reads, each recording its forgetting constraint."""
    dists = {
        "rank": optuna.distributions.CategoricalDistribution([16, 64, 128]),
        "learning_rate": optuna.distributions.FloatDistribution(1e-4, 1e-3, log=True),
    }
    for rank, lr, domain, forgetting in rows:
        attrs = {
            "domain_loss": domain,
            "forgetting": forgetting,
            "domain_gain": 5.0 - domain,
            "general_loss": 3.0 + forgetting,
            "curve": [{"tokens_seen": 100, "domain_loss": domain, "general_loss": 3.0 + forgetting}],
        }
        values = [domain] if len(study.directions) == 1 else [domain, forgetting]
        study.add_trial(
            optuna.create_trial(
                params={"rank": rank, "learning_rate": lr},
                distributions=dists,
                values=values,
                user_attrs=attrs,
                constraints={"forgetting": forgetting - max_forgetting},
            )
        )
    study.set_user_attr("base", {"domain_loss": 5.0, "general_loss": 3.0})


ROWS = [
    (16, 1e-4, 4.0, 0.01),
    (64, 3e-4, 3.5, 0.04),
    (128, 1e-3, 3.0, 0.20),
    (64, 6e-4, 3.2, 0.08),
    (16, 2e-4, 3.8, 0.045),
]


def test_a_constrained_studys_report_chooses_within_the_budget_and_estimates_importances(tiny_cfg, tmp_path):
    tiny_cfg.study.objective, tiny_cfg.study.max_forgetting = "constrained", 0.05
    study = optuna.create_study(study_name="c", storage=f"sqlite:///{tmp_path}/c.db", directions=["minimize"])
    _synthetic(study, ROWS, 0.05)
    assert [t.number for t in storage.pareto_front(study)] == [1], "lowest domain loss with forgetting <= 0.05"
    assert study.best_trial.number == 1, "Optuna agrees"
    path = report_files.write(study, tiny_cfg, tmp_path / "report")
    md = path.read_text()
    assert "(trial 1 of this sweep; the lowest domain loss with forgetting ≤ 0.05" in md, "What to use"
    assert "- **Forgetting budget** (study.max_forgetting = 0.05 nats): 3 of 5 complete trials within it" in md
    assert "| parameter | domain_loss | forgetting |" in md, "importances of both metrics, one objective"
    assert "Estimated with PED-ANOVA (Optuna's PedAnovaImportanceEvaluator) from" in md
    assert (tmp_path / "report" / "importances.png").is_file() and (tmp_path / "report" / "pareto.png").is_file()
    table = report.table(study)
    assert "'*' marks the best" in table and sum(" over " in line for line in table.splitlines()) == 2
    # What if the budget were tighter: the report reads it from the config, over the recorded constraint.
    assert sweep_report.choose_trial(study, 0.015).number == 0
    assert sweep_report.choose_trial(study, 0.001).number == 0, "none within: the one that forgot least"
    assert (
        sweep_report.chosen_how(study, study.trials[0], 0.001)
        == "no trial has forgetting ≤ 0.001: the one that forgot least"
    )


def test_a_pareto_front_under_a_budget_leaves_out_the_trials_over_it(tmp_path):
    study = optuna.create_study(study_name="p", storage=f"sqlite:///{tmp_path}/p.db", directions=["minimize"] * 2)
    _synthetic(study, ROWS, 0.05)
    assert sorted(t.number for t in storage.pareto_front(study)) == [0, 1]
    assert sorted(t.number for t in study.best_trials) == [0, 1], "Optuna's constrained front agrees"
    assert sorted(t.number for t in storage.pareto_front(study, max_forgetting=1.0)) == [0, 1, 2, 3]
    assert sweep_report.choose_trial(study, None).number == 1, "the lowest domain loss within the recorded budget"
    assert sorted(t.number for t in storage.pareto_front(study, max_forgetting=0.0)) == [0, 1, 2, 3], (
        "none within the budget: the front of all"
    )
