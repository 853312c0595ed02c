"""The trial's optimizer (nanoGPT's ``configure_optimizers``): AdamW over two named groups, the LoRA weights at the
trial's LR and the embeddings at ratio x LR, with fp32 masters of any weight the model holds in less than fp32.
The audit then checks what this built."""

from __future__ import annotations

import torch

from cpt_harness.config import Config
from cpt_harness.model.modules import classify, embedding_module_names
from cpt_harness.train.params import TrialParams


def configure_optimizer(model, params: TrialParams, cfg: Config) -> MasterAdamW:
    """The trial's optimizer (nanoGPT's ``configure_optimizers``): AdamW over two named groups, ``param_groups``.
    The audit then checks what this built."""
    groups = param_groups(model, params.learning_rate, params.embedding_lr, cfg.train.weight_decay)
    return adamw(model, groups, betas=(0.9, 0.95))


def adamw(model, groups: list[dict], betas: tuple[float, float]) -> MasterAdamW:
    """AdamW over ``groups`` (each with its own lr and weight_decay), fused where the model is on a GPU; a weight
    the model holds in less than float32 is stepped as an fp32 master copy (``MasterAdamW``)."""
    fused = {"fused": True} if next(model.parameters()).device.type == "cuda" else {}
    return MasterAdamW(groups, betas=betas, eps=1e-8, **fused)


class MasterAdamW(torch.optim.AdamW):
    """AdamW that keeps an fp32 master of every weight the model holds in a lower precision (standard mixed
    precision; issue 18). The model computes with its bf16 weight, as raw Unsloth does with the embedding it
    trains; the optimizer's group holds the fp32 master, whose gradient is the bf16 one upcast as backward
    writes it (a hook; micro-batches accumulate in fp32), and each step copies the stepped masters back into the
    model's weights, rounded. The update is the fp32 path's: a 1e-5 step lands in the master instead of vanishing
    in bf16 rounding, and it adds up over steps. Holding the embedding itself in fp32 costs the model's forward
    and backward ~4.5% on a 1B model (benchmarks/RESULTS.md); this costs ~1%.

    ``masters``: (the model's weight, its master) pairs; the audit reads them. ``state_dict`` carries the masters'
    values, so a resumed trial goes on from the same fp32 weights."""

    def __init__(self, groups: list[dict], **kwargs):
        self.masters: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        groups = [{**g, "params": [self._master(p) for p in g["params"]]} for g in groups]
        super().__init__(groups, **kwargs)

    def _master(self, p: torch.nn.Parameter) -> torch.Tensor:
        if p.dtype == torch.float32:
            return p
        master = p.detach().float().requires_grad_(True)

        def to_master(weight: torch.Tensor) -> None:
            if weight.grad is None:  # taken by another optimizer's hook on the same weight
                return
            grad = weight.grad.float()
            master.grad = grad if master.grad is None else master.grad.add_(grad)
            weight.grad = None

        p.register_post_accumulate_grad_hook(to_master)
        self.masters.append((p, master))
        return master

    @torch.no_grad()
    def step(self, closure=None):
        loss = super().step(closure)
        if self.masters:
            torch._foreach_copy_([p for p, _ in self.masters], [m for _, m in self.masters])
        return loss

    def state_dict(self) -> dict:
        return {**super().state_dict(), "masters": [m for _, m in self.masters]}

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        saved = state_dict.pop("masters", None) or []
        super().load_state_dict(state_dict)
        if len(saved) != len(self.masters):
            raise ValueError(f"the saved optimizer has {len(saved)} fp32 masters, this one {len(self.masters)}")
        with torch.no_grad():
            for (p, m), value in zip(self.masters, saved):
                m.copy_(value)
                p.copy_(m)


def optimized(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The tensors the optimizer steps (fp32 masters where it keeps them): what gradient clipping measures."""
    return [p for g in optimizer.param_groups for p in g["params"]]


def param_groups(model, learning_rate: float, embedding_lr: float | None, weight_decay: float) -> list[dict]:
    """``lora``: the LoRA weights at the trial's LR, with weight decay. ``embedding``: embed_tokens and lm_head,
    trained in full, at embedding_lr = ratio x LR (the Unsloth CPT rule: 2-10x smaller), without weight decay, and
    only when they train. Any other trainable weight joins no group: the audit names it and fails the trial."""
    names = embedding_module_names(model)
    groups: dict[str, list] = {"lora": [], "embedding": [], "other": []}
    for name, p in model.named_parameters():  # named_parameters yields a tied weight once
        if p.requires_grad:
            groups[classify(name, names)].append(p)
    out = [{"name": "lora", "params": groups["lora"], "lr": learning_rate, "weight_decay": weight_decay}]
    if groups["embedding"] and embedding_lr is not None:
        out.append({"name": "embedding", "params": groups["embedding"], "lr": embedding_lr, "weight_decay": 0.0})
    return out
