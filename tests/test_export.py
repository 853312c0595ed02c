"""`cpt-harness export` on a real tiny sweep: the adapter with the sweep file that trains it again, and the merged
model that transformers loads alone; both reproduce the trial's domain loss."""

from __future__ import annotations

import contextlib

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cpt_harness import data, train
from cpt_harness.cli import main
from cpt_harness.config import load_config
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")


def _domain_loss(model, tokenizer_dir, cfg) -> float:
    from transformers import AutoTokenizer

    corpora = data.prepare(cfg.data, AutoTokenizer.from_pretrained(tokenizer_dir), 64, cfg.eval.max_tokens)
    return train.evaluate(model, corpora.domain_eval, 8, "cpu", contextlib.nullcontext)


def test_export_the_adapter_and_the_merged_model(tiny_overrides, tiny_model, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sets = [x for o in tiny_overrides for x in ("--set", o)]
    assert main(["sweep", DEMO, "--n-trials", "1", "--set", "study.keep_adapters=all"] + sets) == 0
    (trial,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db").get_trials(
        states=[TrialState.COMPLETE])
    cfg = load_config(DEMO, tiny_overrides)

    adapter = tmp_path / "adapter-out"
    assert main(["export", DEMO, str(adapter), "--trial", "0"] + sets) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "cpt-harness.yaml", "tokenizer.json"} <= {
        p.name for p in adapter.iterdir()}
    rerun = yaml.safe_load((adapter / "cpt-harness.yaml").read_text())
    assert rerun["search"]["rank"]["choices"] == [trial.params["rank"]] and rerun["study"]["n_trials"] == 1
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    assert _domain_loss(model, adapter, cfg) == pytest.approx(trial.user_attrs["domain_loss"], rel=1e-4)

    merged = tmp_path / "merged-out"
    assert main(["export", DEMO, str(merged), "--merge"] + sets) == 0  # --chosen: the recommendation
    assert "trial 0 of study 'tiny'" in capsys.readouterr().out
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)  # no PEFT: a plain model folder
    assert not hasattr(model, "peft_config")
    assert _domain_loss(model, merged, cfg) == pytest.approx(trial.user_attrs["domain_loss"], rel=1e-4)

    assert main(["export", DEMO, str(merged)] + sets) == 2
    assert "merged-out exists and is not empty" in capsys.readouterr().err
    assert main(["export", DEMO, str(tmp_path / "x"), "--trial", "7"] + sets) == 2
    assert "--trial 7: no complete trial 7 in study 'tiny'" in capsys.readouterr().err
