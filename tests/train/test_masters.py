"""train_optim.MasterAdamW: a weight the model holds in bf16 (the unsloth backend's embedding) is stepped as an fp32
master, exactly as the fp32 path would step it; the audit checks the masters; a resume restores them."""

from __future__ import annotations

import copy

import pytest
import torch

from cpt_harness.model.backends.peft_backend import PeftBackend
from cpt_harness.search.space import derive
from cpt_harness.train import audit
from cpt_harness.train import loop as train
from cpt_harness.train import optim as train_optim


class TiedLM(torch.nn.Module):
    """An embedding tied to an output head (SmolLM2's layout) with one fp32 layer between."""

    def __init__(self, vocab=64, dim=16, dtype=torch.bfloat16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = torch.nn.Embedding(vocab, dim)
        sign = torch.randint(0, 2, (vocab, dim), generator=g) * 2 - 1
        w = sign * (1.0 + torch.rand(vocab, dim, generator=g))  # 1 <= |w| < 2: a bf16 ulp of 2^-7 everywhere
        self.embed.weight.data = w.to(dtype)
        self.mid = torch.nn.Linear(dim, dim)
        self.mid.weight.data = torch.randn(dim, dim, generator=g) / dim**0.5
        self.mid.bias.data.zero_()

    def forward(self, x):
        h = self.mid(self.embed(x).float())
        return h @ self.embed.weight.float().T


def loss_of(model, x):
    logits = model(x)
    return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))


def batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 64, (4, 12), generator=g) for _ in range(n)]


def groups(model, lr=1e-5):
    return [
        {"name": "lora", "params": list(model.mid.parameters()), "lr": lr, "weight_decay": 0.0},
        {"name": "embedding", "params": [model.embed.weight], "lr": lr, "weight_decay": 0.0},
    ]


def test_the_master_takes_the_fp32_paths_update_that_bf16_weights_lose():
    steps = batches(5)
    # bf16 weight stepped in place: a 1e-5 step is far below its precision and is lost
    plain = TiedLM()
    before = plain.embed.weight.detach().clone()
    opt = torch.optim.AdamW(groups(plain))
    for x in steps:
        loss_of(plain, x).backward()
        opt.step()
        opt.zero_grad()
    assert torch.equal(plain.embed.weight, before), "bf16 in-place updates were expected to vanish"

    # MasterAdamW: the master moves by the steps; the reference is fp32 AdamW on an fp32 copy of the weight fed
    # the same (bf16) gradients, upcast: the two must agree bit for bit
    model = TiedLM()
    opt = train_optim.MasterAdamW(groups(model))
    [(weight, master)] = opt.masters
    assert weight is model.embed.weight and master.dtype == torch.float32
    ref = torch.nn.Parameter(model.embed.weight.detach().float())
    ref_opt = torch.optim.AdamW([ref], lr=1e-5, weight_decay=0.0)
    for x in steps:
        loss_of(model, x).backward()
        assert model.embed.weight.grad is None and master.grad is not None  # moved by the hook, in fp32
        ref.grad = master.grad.clone()
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        ref_opt.zero_grad()
    assert torch.equal(master, ref)
    moved = (master - before.float()).abs()
    assert moved.max() > 4e-5, "five 1e-5 Adam steps should have moved the master"
    assert torch.equal(model.embed.weight, master.to(torch.bfloat16)), "the model computes with the master, rounded"


def test_micro_batches_accumulate_in_fp32_on_the_master():
    x1, x2 = batches(2, seed=1)
    each = []
    for x in (x1, x2):  # each micro-batch's gradient alone, as the master receives it
        model = TiedLM()
        opt = train_optim.MasterAdamW(groups(model))
        loss_of(model, x).backward()
        each.append(opt.masters[0][1].grad.clone())
    model = TiedLM()
    opt = train_optim.MasterAdamW(groups(model))
    loss_of(model, x1).backward()
    loss_of(model, x2).backward()
    assert model.embed.weight.grad is None
    assert torch.equal(opt.masters[0][1].grad, each[0] + each[1])


def test_a_resumed_optimizer_goes_on_from_the_same_fp32_masters():
    steps = batches(6, seed=2)
    model = TiedLM()
    opt = train_optim.MasterAdamW(groups(model, lr=3e-4))
    for x in steps[:3]:
        loss_of(model, x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    saved_weights = {k: v.clone() for k, v in model.state_dict().items()}
    saved = copy.deepcopy(opt.state_dict())  # as torch.save would: no tensor shared with the running optimizer
    assert not torch.equal(saved["masters"][0].to(torch.bfloat16).float(), saved["masters"][0]), (
        "the fp32 master should hold bits the bf16 weight does not"
    )

    resumed = TiedLM()
    resumed.load_state_dict(saved_weights)
    ropt = train_optim.MasterAdamW(groups(resumed, lr=3e-4))
    ropt.load_state_dict(saved)
    assert torch.equal(ropt.masters[0][1], saved["masters"][0])
    for m, o in ((model, opt), (resumed, ropt)):
        for x in steps[3:]:
            loss_of(m, x).backward()
            o.step()
            o.zero_grad(set_to_none=True)
    assert torch.equal(ropt.masters[0][1], opt.masters[0][1])
    assert torch.equal(resumed.embed.weight, model.embed.weight)

    with pytest.raises(ValueError, match="1 fp32 masters, this one 0"):
        torch_only = TiedLM(dtype=torch.float32)
        train_optim.MasterAdamW(groups(torch_only)).load_state_dict(saved)


def test_fp32_weights_get_no_master_and_clipping_sees_every_stepped_tensor():
    model = TiedLM(dtype=torch.float32)
    opt = train_optim.MasterAdamW(groups(model))
    assert opt.masters == []
    assert train_optim.optimized(opt) == list(model.mid.parameters()) + [model.embed.weight]
    mixed = TiedLM()
    mopt = train_optim.MasterAdamW(groups(mixed))
    assert train_optim.optimized(mopt)[-1] is mopt.masters[0][1]


@pytest.fixture(scope="module")
def backend():
    return PeftBackend()


def bf16_embedding_model(tiny_cfg, backend):
    """The tiny Llama as the unsloth backend holds it: LoRA in fp32, the trained (tied) embedding in bf16."""
    params = derive(16, 1e-3, 0.2, tiny_cfg)
    model = backend.load_for_training(tiny_cfg.model.name, tiny_cfg, params)
    emb = model.get_input_embeddings()
    w = emb.modules_to_save["default"].weight if hasattr(emb, "modules_to_save") else emb.weight
    w.data = w.data.bfloat16()
    return model, params, w


def test_the_audit_accepts_bf16_weights_with_masters_and_names_what_is_wrong(tiny_cfg, backend):
    model, params, w = bf16_embedding_model(tiny_cfg, backend)
    names = ("embed_tokens", "lm_head")
    opt = train_optim.configure_optimizer(model, params, tiny_cfg)
    record = audit.audit(model, opt, params, tiny_cfg.lora, names, 1e-3)
    assert record["groups"]["embedding"]["dtypes"] == ["float32"]
    assert record["groups"]["embedding"]["model_dtypes"] == ["bfloat16"]
    assert record["groups"]["lora"]["model_dtypes"] == ["float32"]

    with torch.no_grad():
        opt.masters[0][1].add_(1.0)  # a master that no longer holds the model's weight
    with pytest.raises(audit.AuditError, match="fp32 master of .*embed_tokens.* does not hold the model's weight"):
        audit.audit(model, opt, params, tiny_cfg.lora, names, 1e-3)

    plain = torch.optim.AdamW(train_optim.param_groups(model, 1e-3, 2e-4, 0.0))  # bf16 stepped in place
    with pytest.raises(audit.AuditError, match=r"trainable weights in \['torch.bfloat16'\] without an fp32 master"):
        audit.audit(model, plain, params, tiny_cfg.lora, names, 1e-3)


class Bf16EmbeddingBackend(PeftBackend):
    """The peft backend holding its trained embedding in bf16, as the unsloth backend does, with CPU bf16
    autocast: run_trial's loop through MasterAdamW on a CPU."""

    def load_for_training(self, model_path, cfg, params):
        model = super().load_for_training(model_path, cfg, params)
        for name, p in model.named_parameters():
            if p.requires_grad and "modules_to_save" in name:
                p.data = p.data.bfloat16()
        return model

    def autocast(self):
        return torch.autocast("cpu", dtype=torch.bfloat16)


def test_a_trial_trains_a_bf16_embedding_through_its_master(tiny_cfg):
    from cpt_harness import data
    from cpt_harness.infra.tracking import Tracker
    from cpt_harness.model import modules

    class Audits(Tracker):
        def __init__(self):
            self.audits = []

        def log(self, metrics):
            pass

        def log_audit(self, record):
            self.audits.append(record)

    backend = Bf16EmbeddingBackend()
    captured = {}
    load = backend.load_for_training
    backend.load_for_training = lambda *a: captured.setdefault("model", load(*a))
    params = derive(16, 3e-3, 0.2, tiny_cfg)
    corpora = data.prepare(
        tiny_cfg.data,
        backend.load_tokenizer(tiny_cfg.model.name),
        tiny_cfg.model.max_seq_length,
        tiny_cfg.eval.max_tokens,
    )
    tracker = Audits()
    result = train.run_trial(backend, tiny_cfg.model.name, tiny_cfg, params, corpora, tracker, None)
    model = captured["model"]
    embed = modules.active_weight(model.get_input_embeddings())
    assert embed.dtype == torch.bfloat16
    groups = tracker.audits[0]["groups"]
    assert groups["embedding"]["model_dtypes"] == ["bfloat16"] and groups["embedding"]["dtypes"] == ["float32"]
    from transformers import AutoModelForCausalLM

    start = AutoModelForCausalLM.from_pretrained(tiny_cfg.model.name).get_input_embeddings().weight
    assert not torch.equal(embed.float(), start.to(torch.bfloat16).float()), "the embedding did not train"
    assert result.metrics["trainable_embedding"] == embed.numel()
    assert torch.isfinite(torch.tensor(result.metrics["domain_loss"]))
