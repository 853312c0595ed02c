"""One trial on the tiny model with the PEFT backend: what trains, in which group, at which LR."""

from __future__ import annotations

import math

import pytest
import torch

from cpt_harness import data
from cpt_harness.evaluate import evaluation as train_evaluation
from cpt_harness.infra.tracking import Tracker
from cpt_harness.model import modules
from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.search.space import derive
from cpt_harness.train import audit
from cpt_harness.train import loop as train
from cpt_harness.train import optim as train_optim


class Recorder(Tracker):
    def __init__(self):
        self.logged, self.audits = [], []

    def log(self, metrics):
        self.logged.append(metrics)

    def log_audit(self, record):
        self.audits.append(record)


@pytest.fixture(scope="module")
def backend():
    return PeftBackend()


def corpora_for(cfg, backend):
    tok = backend.load_tokenizer(cfg.model.name)
    return data.prepare(cfg.data, tok, cfg.model.max_seq_length, cfg.eval.max_tokens)


def base_state(model_dir):
    from transformers import AutoModelForCausalLM

    return {k: v.clone() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()}


def run(cfg, backend, rank=16, lr=3e-3, ratio=0.2, adapter_dir=None):
    params = derive(rank, lr, ratio if cfg.lora.train_embeddings else None, cfg)
    rec = Recorder()
    result = train.run_trial(backend, cfg.model.name, cfg, params, corpora_for(cfg, backend), rec, adapter_dir)
    return result, rec, params


def trained_model(cfg, backend, rank=16, lr=3e-3, ratio=0.2):
    """Train and keep the model in hand (run_trial frees it) by capturing it from the backend."""
    captured = {}
    original = backend.load_for_training

    def capture(*a, **k):
        captured["model"] = original(*a, **k)
        return captured["model"]

    backend.load_for_training = capture
    try:
        result, rec, params = run(cfg, backend, rank, lr, ratio)
    finally:
        backend.load_for_training = original
    return captured["model"], result, rec, params


@pytest.mark.integration
def test_base_frozen_lora_and_tied_embedding_trained(tiny_cfg, tiny_model, backend):
    before = base_state(tiny_model)
    model, result, rec, params = trained_model(tiny_cfg, backend)
    named = dict(model.named_parameters())
    # Base weights are frozen and unchanged.
    for name, p in named.items():
        if "lora_" not in name and "modules_to_save" not in name:
            assert not p.requires_grad, name
            key = name.replace("base_model.model.", "").replace(".base_layer", "").replace(".original_module", "")
            assert torch.equal(p.detach().float(), before[key].float()), f"base weight {key} changed"
    # LoRA B starts at zero: any non-zero value is training at work, on every requested module.
    for target in tiny_cfg.lora.target_modules:
        bs = [p for n, p in named.items() if f"{target}.lora_B" in n]
        assert bs and all(b.abs().sum() > 0 for b in bs), target
    # The tied embedding trained as one matrix: changed, and lm_head reads the very same tensor.
    embed = modules.active_weight(model.get_input_embeddings())
    head = modules.active_weight(model.get_output_embeddings())
    assert embed.data_ptr() == head.data_ptr()
    assert not torch.equal(embed.detach(), before["model.embed_tokens.weight"].float())
    groups = rec.audits[0]["groups"]
    assert groups["embedding"]["lr"] == pytest.approx(params.embedding_lr)
    assert groups["embedding"]["parameters"] == embed.numel(), "a tied embedding counts once"
    assert result.metrics["trainable_embedding"] == embed.numel()


@pytest.mark.integration
def test_untied_model_trains_both_matrices_in_the_embedding_group(tiny_cfg, tiny_untied_model, backend):
    tiny_cfg.model.name = str(tiny_untied_model)
    model, result, rec, params = trained_model(tiny_cfg, backend)
    embed = modules.active_weight(model.get_input_embeddings())
    head = modules.active_weight(model.get_output_embeddings())
    assert embed.data_ptr() != head.data_ptr()
    assert rec.audits[0]["groups"]["embedding"]["parameters"] == embed.numel() + head.numel()
    before = base_state(tiny_untied_model)
    assert not torch.equal(head.detach(), before["lm_head.weight"].float())


@pytest.mark.integration
def test_embedding_group_lr_stays_ratio_times_lr_through_the_schedule(tiny_cfg, backend):
    model, result, rec, params = trained_model(tiny_cfg, backend, lr=2e-3, ratio=0.25)
    lrs = [m["train/lr"] for m in rec.logged if "train/lr" in m]
    assert lrs, "the LR was logged"
    # Rebuild the optimizer the trial used and step its schedule: the ratio holds at every step.
    opt = train_optim.configure_optimizer(model, params, tiny_cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, train.lr_lambda(tiny_cfg.train.max_steps, 0.1))
    for _ in range(tiny_cfg.train.max_steps):
        by_name = {g["name"]: g["lr"] for g in opt.param_groups}
        assert by_name["embedding"] == pytest.approx(0.25 * by_name["lora"])
        opt.step()
        sched.step()


@pytest.mark.integration
def test_no_embeddings_when_not_requested(tiny_cfg, backend):
    tiny_cfg.lora.train_embeddings = False
    model, result, rec, params = trained_model(tiny_cfg, backend)
    assert set(rec.audits[0]["groups"]) == {"lora"}
    assert not modules.active_weight(model.get_input_embeddings()).requires_grad


@pytest.mark.integration
def test_rslora_scaling_is_used_above_64(tiny_cfg, backend):
    tiny_cfg.search.rank.choices = [32, 128]
    for rank, expected in ((32, 32 / 32), (128, 32 / math.sqrt(128))):
        model, *_ = trained_model(tiny_cfg, backend, rank=rank)
        q = model.base_model.model.model.layers[0].self_attn.q_proj
        assert q.scaling["default"] == pytest.approx(expected)
        assert q.lora_A["default"].weight.shape[0] == rank


@pytest.mark.integration
def test_metrics_and_curve(tiny_cfg, backend, tmp_path):
    result, rec, _ = run(tiny_cfg, backend, adapter_dir=tmp_path / "adapter")
    m = result.metrics
    assert m["tokens_seen"] == 6 * 4 * 64
    assert m["tokens_per_s"] > 0 and m["peak_memory_gb"] > 0
    assert [p["step"] for p in result.curve] == [3, 6]
    assert [p["tokens_seen"] for p in result.curve] == [768, 1536]
    assert m["domain_loss"] == result.curve[-1]["domain_loss"]
    assert {"general_kl", "general_loss/brown"} <= set(result.curve[-1]) and m["general_kl"] > 0
    assert result.evals.step.tolist() == [3, 6] and result.evals.domain_nll.shape[0] == 2
    assert {"load", "train", "eval", "log", "save"} <= set(result.timings)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_exploding_loss_fails_the_trial_at_once(tiny_cfg, backend):
    tiny_cfg.train.max_grad_norm = 0.0
    tiny_cfg.train.warmup_ratio = 0.0
    tiny_cfg.train.divergence_factor = 1.5
    with pytest.raises(train.TrialFailed, match="loss exploded at step|training diverged"):
        run(tiny_cfg, backend, lr=5.0)


def test_time_limit_fails_the_trial(tiny_cfg, backend):
    tiny_cfg.train.time_limit_s = 1e-6
    with pytest.raises(train.TrialFailed, match="time limit"):
        run(tiny_cfg, backend)


def test_audit_catches_a_frozen_or_misgrouped_lm_head(tiny_cfg, tiny_untied_model, backend):
    tiny_cfg.model.name = str(tiny_untied_model)
    params = derive(16, 1e-3, 0.2, tiny_cfg)
    model = backend.load_for_training(tiny_cfg.model.name, tiny_cfg, params)
    names = ("embed_tokens", "lm_head")
    head = modules.active_weight(model.get_output_embeddings())

    # lm_head silently left out of training (the Unsloth bug the audit exists for)
    head.requires_grad_(False)
    opt = torch.optim.AdamW(train_optim.param_groups(model, 1e-3, 2e-4, 0.0))
    with pytest.raises(audit.AuditError, match="lm_head is not trainable"):
        audit.audit(model, opt, params, tiny_cfg.lora, names, 1e-3)

    # lm_head trained at the full LR in the LoRA group
    head.requires_grad_(True)
    groups = train_optim.param_groups(model, 1e-3, 2e-4, 0.0)
    groups[1]["params"] = [p for p in groups[1]["params"] if p is not head]
    groups[0]["params"].append(head)
    with pytest.raises(audit.AuditError, match="lm_head is in optimizer group 'lora', not 'embedding'"):
        audit.audit(model, torch.optim.AdamW(groups), params, tiny_cfg.lora, names, 1e-3)

    # embedding group at the wrong LR
    opt = torch.optim.AdamW(train_optim.param_groups(model, 1e-3, 1e-3, 0.0))
    with pytest.raises(audit.AuditError, match="embedding group LR is 0.001, expected 0.0002"):
        audit.audit(model, opt, params, tiny_cfg.lora, names, 1e-3)


def test_audit_catches_missing_lora_on_a_requested_module(tiny_cfg, backend):
    params = derive(16, 1e-3, 0.2, tiny_cfg)
    tiny_cfg.lora.target_modules = ["q_proj", "gate_proj"]
    model = backend.load_for_training(tiny_cfg.model.name, tiny_cfg, params)
    opt = torch.optim.AdamW(train_optim.param_groups(model, 1e-3, 2e-4, 0.0))
    tiny_cfg.lora.target_modules = ["q_proj", "gate_proj", "up_proj"]  # asked for, never applied
    with pytest.raises(audit.AuditError, match="2 of 2 up_proj modules carry no LoRA weights"):
        audit.audit(model, opt, params, tiny_cfg.lora, ("embed_tokens", "lm_head"), 1e-3)


def test_evaluate_is_token_mean_cross_entropy(tiny_cfg, backend):
    corpora = corpora_for(tiny_cfg, backend)
    model = backend.load_base(tiny_cfg.model.name, tiny_cfg.model)
    loss = train_evaluation.evaluate(model, corpora.domain_eval, 3, backend.device, backend.autocast)
    x = torch.from_numpy(corpora.domain_eval).long()
    with torch.no_grad():
        logits = model(input_ids=x).logits
    ref = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
    assert loss == pytest.approx(ref.item(), rel=1e-5)
    assert 0 < loss < math.log(model.config.vocab_size) + 1


def test_audit_catches_bf16_trainable_weights(tiny_cfg, backend):
    params = derive(16, 1e-3, 0.2, tiny_cfg)
    model = backend.load_for_training(tiny_cfg.model.name, tiny_cfg, params)
    lora_a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    lora_a.data = lora_a.data.bfloat16()
    opt = torch.optim.AdamW(train_optim.param_groups(model, 1e-3, 2e-4, 0.0))
    with pytest.raises(audit.AuditError, match=r"trainable weights in \['torch.bfloat16'\]"):
        audit.audit(model, opt, params, tiny_cfg.lora, ("embed_tokens", "lm_head"), 1e-3)


def test_a_trainable_base_weight_joins_no_group_and_the_audit_names_it(tiny_cfg, backend):
    params = derive(16, 1e-3, 0.2, tiny_cfg)
    model = backend.load_for_training(tiny_cfg.model.name, tiny_cfg, params)
    leak = next(p for n, p in model.named_parameters() if n.endswith("layers.0.mlp.up_proj.base_layer.weight"))
    leak.requires_grad_(True)
    groups = train_optim.param_groups(model, 1e-3, 2e-4, 0.0)
    assert [g["name"] for g in groups] == ["lora", "embedding"]
    assert all(p is not leak for g in groups for p in g["params"]), "the optimizer builder does not check"
    with pytest.raises(
        audit.AuditError,
        match=r"trainable but in no optimizer group: \[.*layers\.0\.mlp\.up_proj"
        r"\.base_layer\.weight.*base weights are trainable",
    ):
        audit.audit(
            model, torch.optim.AdamW(groups), params, tiny_cfg.lora, modules.embedding_module_names(model), 1e-3
        )
