"""Continued training from a saved adapter (lora.init_adapter): one of the guidance's three CPT workflows."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

from cpt_harness.cli import main
from cpt_harness.config import ConfigError
from cpt_harness.config.validate import load_config
from cpt_harness.evaluate import evals
from cpt_harness.model import modules
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.search.space import derive
from cpt_harness.train import loop as train
from tests.conftest import ROOT
from tests.train.test_train import Recorder, corpora_for

DEMO = ROOT / "sweeps" / "demo.yaml"


@pytest.fixture
def first_adapter(tiny_overrides, tmp_path):
    """A finished trial's adapter (rank 16), saved by a real sweep."""
    sets = ["--set", "study.keep_adapters=all", "--set", "search.rank.choices=[16]"]
    assert main(["sweep", str(DEMO), "--n-trials", "1"] + sets + [x for o in tiny_overrides for x in ("--set", o)]) == 0
    (t,) = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/study.db").trials
    return t.user_attrs["adapter_dir"], t


@pytest.mark.integration
def test_the_adapter_fixes_rank_targets_and_embeddings(first_adapter, tiny_overrides):
    adapter, _ = first_adapter
    with pytest.raises(ConfigError) as e:
        load_config(
            DEMO,
            tiny_overrides
            + [
                f"lora.init_adapter={adapter}",
                "search.rank.choices=[16,64]",
                "lora.train_embeddings=false",
                "lora.target_modules=[q_proj]",
            ],
        )
    joined = "\n".join(e.value.problems)
    assert "search.rank.choices: the adapter in lora.init_adapter has rank 16; set [16]" in joined
    assert "lora.target_modules: the adapter in lora.init_adapter targets" in joined
    assert "lora.train_embeddings: the adapter in lora.init_adapter trains the embeddings; set true" in joined
    with pytest.raises(ConfigError, match="not a saved adapter folder"):
        load_config(DEMO, tiny_overrides + ["lora.init_adapter=/tmp", "search.rank.choices=[16]"])


@pytest.mark.integration
def test_continued_training_starts_from_the_adapter_and_trains_on(
    first_adapter, tiny_overrides, tiny_corpora, tmp_path
):
    adapter, first = first_adapter
    # New domain data for the continuation: Brown as the "domain" this time.
    cfg = load_config(
        DEMO,
        tiny_overrides
        + [f"lora.init_adapter={adapter}", "search.rank.choices=[16]", f"data.domain={tiny_corpora['general']}"],
    )
    backend = PeftBackend()
    params = derive(16, 2e-3, 0.2, cfg)
    saved = load_file(f"{adapter}/adapter_model.safetensors")
    model = backend.load_for_training(cfg.model.name, cfg, params)
    named = dict(model.named_parameters())
    lora_b = [k for k in saved if "lora_B" in k]
    assert lora_b
    for key in lora_b:  # loaded exactly: the saved key plus PEFT's adapter name
        live = named[key.replace(".weight", ".default.weight")]
        assert live.requires_grad and torch.equal(live.detach().float(), saved[key].float())
    embed = modules.active_weight(model.get_input_embeddings())
    saved_embed = next(v for k, v in saved.items() if "embed_tokens" in k)
    assert torch.equal(embed.detach().float(), saved_embed.float())
    assert embed.data_ptr() == modules.active_weight(model.get_output_embeddings()).data_ptr(), "still one matrix"

    result = train.run_trial(
        backend, cfg.model.name, cfg, params, corpora_for(cfg, backend), Recorder(), tmp_path / "continued"
    )
    assert result.audit["groups"]["embedding"]["lr"] == pytest.approx(params.embedding_lr)
    after = load_file(str(tmp_path / "continued" / "adapter_model.safetensors"))
    assert any(not torch.equal(after[k], saved[k]) for k in lora_b), "training went on from the adapter"


@pytest.mark.integration
def test_continuation_runs_as_a_sweep_and_is_measured_from_the_adapter(
    first_adapter, tiny_overrides, tiny_corpora, tmp_path
):
    adapter, first = first_adapter
    sets = [
        f"lora.init_adapter={adapter}",
        "search.rank.choices=[16]",
        "study.name=continued",
        f"data.domain={tiny_corpora['general']}",
    ]
    assert main(["sweep", str(DEMO), "--n-trials", "1"] + [x for o in tiny_overrides + sets for x in ("--set", o)]) == 0
    study = optuna.load_study(study_name="continued", storage=f"sqlite:///{tmp_path}/study.db")
    (t,) = study.trials
    a, base = t.user_attrs, study.user_attrs["base"]
    assert t.state == TrialState.COMPLETE and a["rank"] == 16
    # Step 0 is the adapter as saved: on the same general text, exactly where the first trial ended.
    start = a["curve"][0]
    assert (start["step"], start["tokens_seen"]) == (0, 0) and [p["step"] for p in a["curve"]] == [0, 3, 6]
    assert a["general_loss_start"] == start["general_loss"] == pytest.approx(first.user_attrs["general_loss"], rel=1e-5)
    assert a["general_kl_start"] == pytest.approx(first.user_attrs["general_kl"], rel=1e-4)
    assert a["general_kl_start"] > 0, "the adapter had moved away from the base"
    assert a["domain_loss_start"] == start["domain_loss"]
    assert a["domain_gain_from_start"] == pytest.approx(a["domain_loss_start"] - a["domain_loss"])
    assert a["forgetting_from_start"] == pytest.approx(a["general_loss"] - a["general_loss_start"])
    assert a["domain_gain_from_start"] > 0, "the continuation learned its new domain"
    # ... beside the metrics against the raw base, which include what the adapter had already done.
    assert a["forgetting"] == pytest.approx(a["general_loss"] - base["general_loss"])
    assert a["forgetting"] != pytest.approx(a["forgetting_from_start"])
    assert evals.read_trial(tmp_path / "runs" / "continued", t).step.tolist() == [0, 3, 6]
