"""`cpt-harness export` on a real tiny sweep: the adapter with the sweep file that trains it again, and the merged
model that transformers loads alone; both reproduce the trial's domain loss. Each carries a filled model card, the
adapter names its base portably, and a plain transformers + PEFT script (no cpt_harness) loads both."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from cpt_harness import data
from cpt_harness.cli import main
from cpt_harness.config.validate import load_config
from cpt_harness.evaluate import evaluation as train_evaluation
from cpt_harness.model import resolve as models
from cpt_harness.reporting import export, model_card
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")
BUILTIN = "builtin:smollm2-135m-instruct"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
SECTIONS = (
    "## Base model",
    "## Data",
    "## Training settings",
    "## Results",
    "## How it was chosen",
    "## Caveats",
    "## How to use it",
)


def _domain_loss(model, tokenizer_dir, cfg) -> float:
    from transformers import AutoTokenizer

    corpora = data.prepare(cfg.data, AutoTokenizer.from_pretrained(tokenizer_dir), 64, cfg.eval.max_tokens)
    return train_evaluation.evaluate(model, corpora.domain_eval, 8, "cpu", contextlib.nullcontext)


@pytest.fixture
def demo_sweep(tiny_overrides, tmp_path):
    """The demo sweep as these tests run it: one trial of sweeps/demo.yaml on the tiny model, its adapter kept.
    Called with more overrides; returns the --set arguments, the config and the complete trial."""

    def run(*more: str):
        overrides = [*tiny_overrides, *more]
        sets = [x for o in overrides for x in ("--set", o)]
        assert main(["sweep", DEMO, "--n-trials", "1", "--set", "study.keep_adapters=all"] + sets) == 0
        (trial,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db").get_trials(
            states=[TrialState.COMPLETE]
        )
        return sets, load_config(DEMO, overrides), trial

    return run


def _card(folder):
    """The model card's metadata (parsed as the Hub parses it) and its text."""
    from huggingface_hub import ModelCard

    text = (folder / "README.md").read_text()
    ModelCard(text)  # the Hub's parser: the metadata and model-index are valid (it raises otherwise)
    assert text.startswith("---\n") and "[More Information Needed]" not in text
    assert all(s in text for s in SECTIONS), [s for s in SECTIONS if s not in text]
    return yaml.safe_load(text.split("---\n")[1]), text


@pytest.mark.integration
def test_export_the_adapter_and_the_merged_model(demo_sweep, tiny_model, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sets, cfg, trial = demo_sweep()
    adapter = tmp_path / "adapter-out"
    assert main(["export", DEMO, str(adapter), "--trial", "0"] + sets) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "cpt-harness.yaml", "tokenizer.json", "README.md"} <= {
        p.name for p in adapter.iterdir()
    }
    rerun = yaml.safe_load((adapter / "cpt-harness.yaml").read_text())
    assert rerun["search"]["rank"]["choices"] == [trial.params["rank"]] and rerun["study"]["n_trials"] == 1
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter))
    assert _domain_loss(model, adapter, cfg) == pytest.approx(trial.user_attrs["domain_loss"], rel=1e-4)
    # A local folder has no hub id: the adapter keeps its path, the card names no base_model, the log says so
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model)
    assert f"adapter_config.json names the base {tiny_model} (a local path" in capsys.readouterr().out
    meta, text = _card(adapter)
    assert "base_model" not in meta and "license" not in meta and meta["library_name"] == "peft"
    assert "`cpt-harness export --base-id NAME` names a Hub model instead" in text

    named = tmp_path / "named-out"
    assert main(["export", DEMO, str(named), "--trial", "0", "--base-id", "my-org/tiny-llama"] + sets) == 0
    assert "names the base my-org/tiny-llama (given with --base-id)" in capsys.readouterr().out
    assert json.loads((named / "adapter_config.json").read_text())["base_model_name_or_path"] == "my-org/tiny-llama"
    assert _card(named)[0]["base_model"] == "my-org/tiny-llama"

    merged = tmp_path / "merged-out"
    assert main(["export", DEMO, str(merged), "--merge"] + sets) == 0  # --chosen: the recommendation
    assert "trial 0 of study 'tiny'" in (log := capsys.readouterr().out) and "saved in float32, the base's dtype" in log
    assert not (merged / "adapter_config.json").exists()
    model = AutoModelForCausalLM.from_pretrained(merged)  # no PEFT: a plain model folder
    assert not hasattr(model, "peft_config")
    assert _domain_loss(model, merged, cfg) == pytest.approx(trial.user_attrs["domain_loss"], rel=1e-4)
    assert _card(merged)[0]["library_name"] == "transformers"

    assert main(["export", DEMO, str(merged)] + sets) == 2
    assert "merged-out exists and is not empty" in capsys.readouterr().err
    assert main(["export", DEMO, str(tmp_path / "x"), "--trial", "7"] + sets) == 2
    assert "--trial 7: no complete trial 7 in study 'tiny'" in capsys.readouterr().err
    for bad, says in (("", "--base-id: must not be empty"), ("not an id!", "is not a Hugging Face model id")):
        assert main(["export", DEMO, str(tmp_path / "y"), "--base-id", bad] + sets) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()


# A new user's script: transformers and PEFT only. The adapter's config names a hub id it cannot reach offline, so
# the base is loaded from the local folder and given to PeftModel.from_pretrained. Everything is computed in float32,
# so that the two compare the weights exported, not bfloat16 arithmetic.
PLAIN_CLIENT = """
import json
import sys

import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base_dir, adapter_dir, merged_dir, text_file = sys.argv[1:]
docs = json.loads(open(text_file).read())


def loss(model, tokenizer):
    total, n = 0.0, 0
    with torch.no_grad():
        for doc in docs:
            ids = tokenizer(doc, return_tensors="pt").input_ids[:, :128]
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return total / n


def generate(model, tokenizer):
    ids = tokenizer(docs[0], return_tensors="pt").input_ids[:, :24]
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=5, min_new_tokens=5,
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.shape[1]:]), int(out.shape[1] - ids.shape[1])


tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
out = {"base": loss(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), tokenizer)}
adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32), adapter_dir)
out["adapter"], (out["adapter_text"], out["adapter_new"]) = loss(adapter, tokenizer), generate(adapter, tokenizer)
merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
merged_tokenizer = AutoTokenizer.from_pretrained(merged_dir)
out["merged"], (out["merged_text"], out["merged_new"]) = (loss(merged, merged_tokenizer),
                                                          generate(merged, merged_tokenizer))
out["imported"] = sorted({m.split(".")[0] for m in sys.modules} & {"cpt_harness", "optuna"})
print(json.dumps(out))
"""


@pytest.mark.integration
def test_a_builtin_models_export_names_its_hub_id_and_loads_in_a_plain_client(
    demo_sweep, tiny_model, tmp_path, monkeypatch, capsys
):
    """The demo's builtin model, stood in for by the tiny one saved in bfloat16 as the dequantized SmolLM2 is
    (nothing downloads): its export names HuggingFaceTB/SmolLM2-135M-Instruct, its card says what the base was and
    how it was loaded, and the merged model is saved in bfloat16 only where that keeps the update."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    stand_in = tmp_path / "smollm2-stand-in"
    AutoModelForCausalLM.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(stand_in)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(stand_in)
    resolve = models.resolve
    monkeypatch.setattr(models, "resolve", lambda name: str(stand_in) if name == BUILTIN else resolve(name))
    sets, cfg, trial = demo_sweep(f"model.name={BUILTIN}")
    adapter, merged = tmp_path / "adapter-out", tmp_path / "merged-out"
    assert main(["export", DEMO, str(adapter)] + sets) == 0
    assert main(["export", DEMO, str(merged), "--merge"] + sets) == 0
    log = capsys.readouterr().out
    assert f"the model card names the base {HUB_ID}" in log
    # this short run's update survives rounding to bfloat16 (3% of it lost, by norm): saved in the base's dtype;
    # where rounding would lose more than export.ROUNDING_LIMIT of it, float32
    assert "saved in bfloat16, the base's dtype (rounding to it loses" in log
    assert json.loads((merged / "config.json").read_text())["dtype"] == "bfloat16"
    monkeypatch.setattr(export, "ROUNDING_LIMIT", 0.01)
    assert main(["export", DEMO, str(tmp_path / "merged-fp32"), "--merge"] + sets) == 0
    assert "saved in float32: rounding the merged weights to the base's bfloat16 would lose" in capsys.readouterr().out
    assert json.loads((tmp_path / "merged-fp32" / "config.json").read_text())["dtype"] == "float32"
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID

    a = trial.user_attrs
    stats = optuna.load_study(study_name="tiny", storage=cfg.study.storage).user_attrs["data_stats"]
    for folder, library, fits in (
        (adapter, "peft", "The adapter fits that dequantized base, not the original"),
        (merged, "transformers", "the dequantized base plus the update, not the original"),
    ):
        meta, text = _card(folder)
        assert meta["base_model"] == HUB_ID and meta["library_name"] == library and meta["license"] == "apache-2.0"
        assert {"cpt-harness", "lora", "continued-pretraining"} <= set(meta["tags"])
        assert "datasets" not in meta  # local files: no Hub dataset to link
        metrics = {m["type"]: m["value"] for r in meta["model-index"][0]["results"] for m in r["metrics"]}
        assert metrics == {"loss": round(a["domain_loss"], 4), "forgetting": round(a["forgetting"], 4)}
        assert "Q4_1 GGUF" in text and f"{fits} weights of {HUB_ID}" in text
        assert "**Unconfirmed: one run**" in text and "cpt-harness sweep cpt-harness.yaml" in text
        assert f"| LoRA rank | {trial.params['rank']} |" in text and "q_proj" in text
        assert f"{stats['domain_train']['tokens']:,} tokens" in text

    # the plain client: held-out domain documents, the base from its local folder
    _, held_out = data.split_documents(
        data.read_documents(cfg.data.domain_sources()[0]), cfg.data.eval_fraction, cfg.data.seed
    )
    (tmp_path / "held_out.json").write_text(json.dumps(held_out))
    (tmp_path / "client.py").write_text(PLAIN_CLIENT)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "client.py", str(stand_in), str(adapter), str(merged), "held_out.json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["imported"] == []
    assert out["adapter"] == pytest.approx(out["merged"], abs=1e-3)
    assert out["adapter"] < out["base"] and out["merged"] < out["base"], out
    assert out["adapter_new"] == out["merged_new"] == 5 and out["adapter_text"] and out["merged_text"]


def test_the_card_reports_a_confirmed_setting_on_the_test_documents(tiny_cfg, tmp_path):
    """From stored numbers alone (no training): a sweep trial with test-part metrics whose setting the
    confirmation study ran with three seeds; the card gives their means and intervals."""
    storage = tiny_cfg.study.storage
    study = optuna.create_study(study_name="tiny", storage=storage, directions=["minimize", "minimize"])
    base = {"domain_loss": 3.0, "general_loss": 3.5, "test_domain_loss": 3.1, "test_general_loss": 3.6}
    study.set_user_attr("base", base)
    attrs = {
        "rank": 16,
        "learning_rate": 2e-3,
        "embedding_lr_ratio": 0.2,
        "use_rslora": False,
        "alpha": 32.0,
        "lora_scale": 2.0,
        "domain_loss": 2.5,
        "forgetting": 0.01,
        "general_loss": 3.51,
        "test_domain_loss": 2.6,
        "test_forgetting": 0.02,
        "test_general_loss": 3.62,
        "test_domain_gain": 0.5,
        "tokens_seen": 1536,
    }
    dist = {
        "rank": optuna.distributions.CategoricalDistribution([16, 64, 128]),
        "learning_rate": optuna.distributions.FloatDistribution(1e-3, 3e-3, log=True),
        "embedding_lr_ratio": optuna.distributions.FloatDistribution(0.1, 0.5, log=True),
    }
    params = {"rank": 16, "learning_rate": 2e-3, "embedding_lr_ratio": 0.2}
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dist, values=[2.5, 0.01], user_attrs=attrs))
    confirmation = optuna.create_study(study_name="tiny-confirm", storage=storage, directions=["minimize", "minimize"])
    confirmation.set_user_attr("design", {"settings": [{"setting": 0, "params": params}]})
    confirmation.set_user_attr("seeds", [1, 2, 3])
    for seed, d in zip((1, 2, 3), (2.55, 2.60, 2.65)):
        confirmation.add_trial(
            optuna.trial.create_trial(
                params=params,
                distributions=dist,
                values=[d, 0.01],
                user_attrs={
                    "setting": 0,
                    "seed": seed,
                    "domain_loss": d,
                    "forgetting": 0.01,
                    "test_domain_loss": d + 0.1,
                    "test_forgetting": 0.02,
                    "general_loss": 3.5,
                },
            )
        )
    (trial,) = study.get_trials()
    ref = export.reference(tiny_cfg, str(tmp_path), "my-org/base")
    text = model_card.build(study, tiny_cfg, trial, base=ref, merged=False, why="by hand", folder="out")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert "**Confirmed over 3 seeds**" in text and "Unconfirmed" not in text
    assert "| the same setting, 3 new seeds (`tiny-confirm`) | 2.7000 [2.5758, 2.8242] |" in text
    assert "on the test documents" in text and "| base model | 3.1000 | 3.6000 | +0.0000 | — |" in text
    assert meta["model-index"][0]["results"][0]["metrics"][0]["value"] == 2.6  # this run's, on the test part
    assert "[More Information Needed]" not in text and "?" not in text.split("## Training settings")[1].split("##")[0]
