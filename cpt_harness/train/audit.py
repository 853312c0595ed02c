"""Which parameters train, in which optimizer group, at which learning rate: checked, never built.

The training loop builds the optimizer (``train.configure_optimizer``); ``audit`` checks it against what the
trial asked for, reading the optimizer's actual ``param_groups`` rather than trusting the construction code. Any
mismatch fails the trial with a message naming what is wrong: Unsloth has shipped versions where ``lm_head``
silently did not train.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from cpt_harness.errors import AuditError
from cpt_harness.model.modules import active_weight, classify


def audit(model, optimizer, params, lora_cfg, embedding_names: tuple[str, ...], base_lr: float) -> dict[str, Any]:
    """Check the optimizer's real groups against the trial; return the audit record (logged to W&B)."""
    problems: list[str] = []
    named = dict(model.named_parameters())
    by_id = {id(p): n for n, p in named.items()}
    trainable = {id(p) for p in named.values() if p.requires_grad}
    # A weight the model holds in bf16 trains through its fp32 master in the optimizer (train.MasterAdamW): the
    # group holds the master, which stands for the model's weight here.
    weight_of, masters = {}, getattr(optimizer, "masters", [])
    for weight, master in masters:
        weight_of[id(master)] = weight
        problems += _check_master(by_id.get(id(weight), "?"), weight, master)
    group_of: dict[int, str] = {}
    record: dict[str, Any] = {"groups": {}}
    for g in optimizer.param_groups:
        gname = g.get("name", f"group{len(record['groups'])}")
        for p in (weight_of.get(id(t), t) for t in g["params"]):
            if id(p) in group_of:
                problems.append(f"{by_id.get(id(p), '?')} is in two optimizer groups ({group_of[id(p)]}, {gname})")
            group_of[id(p)] = gname
            if not p.requires_grad:
                problems.append(f"{by_id.get(id(p), '?')} is in optimizer group {gname} but frozen")
        record["groups"][gname] = {
            "lr": g["lr"],
            "tensors": len(g["params"]),
            "parameters": sum(p.numel() for p in g["params"]),
            "dtypes": sorted({str(p.dtype).removeprefix("torch.") for p in g["params"]}),  # what is stepped
            "model_dtypes": sorted({str(weight_of.get(id(p), p).dtype).removeprefix("torch.") for p in g["params"]}),
            "devices": sorted({str(p.device) for p in g["params"]}),
        }
    mastered = {id(w) for w, _ in masters}
    low_precision = sorted(
        {str(p.dtype) for p in named.values() if p.requires_grad and p.dtype != torch.float32 and id(p) not in mastered}
    )
    if low_precision:
        problems.append(
            f"trainable weights in {low_precision} without an fp32 master in the optimizer: an update "
            "smaller than the weight's precision is lost"
        )
    missing = [by_id[i] for i in trainable - set(group_of)]
    if missing:
        problems.append(f"trainable but in no optimizer group: {missing[:5]}")

    lr_of = {name: info["lr"] for name, info in record["groups"].items()}
    if not math.isclose(lr_of.get("lora", float("nan")), base_lr, rel_tol=1e-9):
        problems.append(f"LoRA group LR is {lr_of.get('lora')}, expected {base_lr}")
    problems += _check_lora_coverage(model, lora_cfg.target_modules)
    problems += _check_embeddings(model, params, lora_cfg, group_of, lr_of, by_id, base_lr)
    problems += _check_frozen_base(named, embedding_names)
    if problems:
        raise AuditError("parameter audit failed: " + "; ".join(problems))
    record["trainable_parameters"] = {k: v["parameters"] for k, v in record["groups"].items()}
    record["total_parameters"] = sum(p.numel() for p in named.values())
    return record


def _check_master(name: str, weight, master) -> list[str]:
    """The master is fp32, on the weight's device, of its shape, and holds its value (rounded to the weight's
    dtype, the master is the weight): the optimizer steps the weight the model computes with."""
    if master.dtype != torch.float32 or master.shape != weight.shape or master.device != weight.device:
        return [
            f"the optimizer's master of {name} is {master.dtype} {tuple(master.shape)} on {master.device}, "
            f"not float32 {tuple(weight.shape)} on {weight.device}"
        ]
    if not torch.equal(master.detach().to(weight.dtype), weight.detach()):
        return [f"the optimizer's fp32 master of {name} does not hold the model's weight"]
    return []


def _check_lora_coverage(model, targets) -> list[str]:
    """Every module named in ``targets`` carries LoRA weights, in every layer."""
    problems = []
    for target in targets:
        found = [m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == target]
        if not found:
            problems.append(f"the model has no module named {target!r} (lora.target_modules)")
            continue
        without = [m for m in found if not hasattr(m, "lora_A") or len(m.lora_A) == 0]
        if without:
            problems.append(f"{len(without)} of {len(found)} {target} modules carry no LoRA weights")
    return problems


def _check_embeddings(model, params, lora_cfg, group_of, lr_of, by_id, base_lr) -> list[str]:
    problems = []
    embed = active_weight(model.get_input_embeddings())
    head_module = model.get_output_embeddings()
    head = active_weight(head_module) if head_module is not None else None
    if not lora_cfg.train_embeddings:
        for label, w in (("embed_tokens", embed), ("lm_head", head)):
            if w is not None and w.requires_grad:
                problems.append(f"{label} is trainable but lora.train_embeddings is false")
        return problems
    for label, w in (("embed_tokens", embed), ("lm_head", head)):
        if w is None:
            continue
        if not w.requires_grad:
            problems.append(f"{label} is not trainable although lora.train_embeddings is true")
        elif group_of.get(id(w)) != "embedding":
            problems.append(f"{label} is in optimizer group {group_of.get(id(w))!r}, not 'embedding'")
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    if tied and head is not None and embed.data_ptr() != head.data_ptr():
        problems.append("the model ties embed_tokens and lm_head, but they train as two separate copies")
    expected = params.embedding_lr
    if expected is not None and not math.isclose(lr_of.get("embedding", float("nan")), expected, rel_tol=1e-9):
        problems.append(
            f"embedding group LR is {lr_of.get('embedding')}, expected {expected} "
            f"(= {params.embedding_lr_ratio:.4g} x {base_lr:.4g})"
        )
    return problems


def _check_frozen_base(named, embedding_names) -> list[str]:
    leaked = [n for n, p in named.items() if p.requires_grad and classify(n, embedding_names) == "other"]
    return [f"base weights are trainable: {leaked[:5]}"] if leaked else []
