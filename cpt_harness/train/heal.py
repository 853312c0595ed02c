"""Healing a dequantized base before measuring forgetting.

SmolLM2 ships as Q4_1; dequantized, any training on English text repairs some of the quantization loss, so
general loss drops in every trial and masks forgetting. Healing runs a short LoRA pass on general text that is
*not* the held-out set, merges it into the weights, and caches the result as the base every trial starts from.
The heal text is either another corpus (Austen by default) or a data.general corpus, of which healing then reads
only the training documents: the held-out (test) ones, which measure forgetting, are never trained on.

A heal is judged on data.general's *validation* documents (``data.split_general``: as many as are held out,
taken from the training documents and never healed on either), not on the test documents: choosing a heal by
the text forgetting is measured on would fit the base to that text. The model's provenance records that it was
healed, on what, and the general loss before and after on both (``heal_validation``, ``heal_held_out``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

from cpt_harness import data
from cpt_harness.config import DEFAULT_TARGETS, Config
from cpt_harness.evaluate.evaluation import evaluate
from cpt_harness.infra.cache import build_once, cache_dir
from cpt_harness.model import resolve as models
from cpt_harness.train import loop
from cpt_harness.train.batches import batches
from cpt_harness.train.optim import adamw, param_groups
from cpt_harness.train.params import TrialParams


def healed_base(model_path: str, cfg: Config, backend, log=print) -> str:
    """The healed copy of ``model_path`` (built once, cached by base weights and heal settings)."""
    h = cfg.model.heal
    split = [cfg.data.eval_fraction, cfg.data.seed] if heals_on_general(cfg) else None
    # "validation": heals measured on the validation split (and, on data.general, not trained on it)
    key = hashlib.sha256(
        json.dumps(
            [models.fingerprint(model_path), asdict(h), cfg.model.max_seq_length, split, "validation"], sort_keys=True
        ).encode()
    ).hexdigest()[:16]
    final = cache_dir() / "models" / f"healed-{key}"
    return str(build_once(final, lambda tmp: _heal(model_path, cfg, backend, tmp, log, key)))


def _heal(model_path: str, cfg: Config, backend, out: Path, log, recipe: str) -> None:
    import torch

    h = cfg.model.heal
    healer = backend.healer()
    log(f"[heal] {h.steps} LoRA steps (r={h.rank}) on {h.data.path}, merged into the base (once)")
    tokenizer = healer.load_tokenizer(model_path)
    docs = heal_documents(cfg)
    blocks = data.pack(docs, tokenizer, cfg.model.max_seq_length)
    log(
        f"[heal] {len(docs)} documents, {blocks.size:,} tokens; {h.steps} steps x {h.batch_size} blocks = "
        f"{h.steps * h.batch_size / max(1, len(blocks)):.2f} passes over them"
    )
    # Healing should lower general loss (repair), not shift the base toward the heal text. It is judged on the
    # validation documents; the held-out (test) and domain losses are recorded beside, never chosen on.
    held_out = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)
    validation = data.validation_blocks(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)
    device = healer.device
    heal_cfg, params = heal_settings(cfg)
    model = healer.load_for_training(model_path, heal_cfg, params)

    def held_out_losses(m) -> dict:
        return {
            name: evaluate(m, b, cfg.eval.batch_size, device, healer.autocast)
            for name, b in (
                ("general_loss", held_out.general_eval),
                ("domain_loss", held_out.domain_eval),
                ("validation_general_loss", validation),
            )
        }

    with model.disable_adapter():  # the base as loaded
        losses_before = held_out_losses(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(model, param_groups(model, h.learning_rate, None, HEAL_WEIGHT_DECAY), betas=HEAL_BETAS)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, loop.lr_lambda(h.steps, 0.05))
    stream = batches(blocks, h.batch_size, seed=0)
    losses = []
    for _ in range(h.steps):
        loss, _ = loop.train_step(model, opt, sched, [next(stream).to(device)], healer.autocast, trainable, 1.0)
        losses.append(loss.item())
    merged = model.merge_and_unload()
    merged.to(torch.bfloat16 if _saved_dtype(model_path) == "bfloat16" else torch.float32)
    losses_after = held_out_losses(merged)
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    provenance = {
        **models.provenance(model_path),
        "healed_from": model_path,
        "recipe": recipe,
        "heal": {**asdict(h), "data": h.data.path + (" (training documents only)" if heals_on_general(cfg) else "")},
        "heal_loss_first_last": [losses[0], losses[-1]] if losses else None,
        "heal_validation": {
            "general_loss": [losses_before["validation_general_loss"], losses_after["validation_general_loss"]],
            "tokens": int(validation.size),
        },
        "heal_held_out": {k: [losses_before[k], losses_after[k]] for k in ("general_loss", "domain_loss")},
    }
    (out / "provenance.json").write_text(json.dumps(provenance, indent=2))
    log(f"[heal] training loss {losses[0]:.3f} -> {losses[-1]:.3f}" if losses else "[heal] no steps")
    g0, g1 = losses_before["validation_general_loss"], losses_after["validation_general_loss"]
    log(
        f"[heal] general loss {g0:.4f} -> {g1:.4f} on the validation documents, {losses_before['general_loss']:.4f} "
        f"-> {losses_after['general_loss']:.4f} on the held-out (test) ones; domain loss "
        f"{losses_before['domain_loss']:.4f} -> {losses_after['domain_loss']:.4f}"
    )
    if g1 > g0:
        log(
            f"[heal] warning: healing raised the validation general loss by {g1 - g0:.4f}: it shifted the base toward "
            f"{h.data.path} instead of repairing it, and forgetting will be measured against that shifted base. "
            "Try fewer model.heal.steps, a lower model.heal.learning_rate or other model.heal.data."
        )


# AdamW as healing has always used it (torch's defaults), so a heal's recipe key still names the same heal.
HEAL_BETAS, HEAL_WEIGHT_DECAY = (0.9, 0.999), 0.01


def heal_settings(cfg: Config) -> tuple[Config, TrialParams]:
    """What the backend loads for healing, in the terms it loads a trial in: the base in float32 (LoRA merged into
    full-precision weights; autocast does the GPU math), from disk, LoRA of rank = alpha = model.heal.rank on the
    default targets, no dropout, no rsLoRA, the embeddings frozen, initialised from seed 0, no gradient
    checkpointing. Nothing else of the trials' settings (lora.*, train.*) reaches the heal, whose recipe key
    (``healed_base``) holds only model.heal, the base weights, the block length and the held-out split."""
    rank = cfg.model.heal.rank
    heal_cfg = replace(
        cfg,
        model=replace(cfg.model, dtype="float32", load_in_4bit=False, keep_loaded=False),
        lora=replace(
            cfg.lora,
            target_modules=list(DEFAULT_TARGETS),
            train_embeddings=False,
            dropout=0.0,
            use_rslora=False,
            alpha=float(rank),
            init_adapter=None,
        ),
        train=replace(cfg.train, seed=0, gradient_checkpointing=False, compile=False),
    )
    return heal_cfg, TrialParams(
        rank=rank,
        learning_rate=cfg.model.heal.learning_rate,
        embedding_lr_ratio=None,
        use_rslora=False,
        alpha=float(rank),
    )


def heals_on_general(cfg: Config) -> bool:
    return cfg.model.heal.data in cfg.data.general_sources()


def heal_documents(cfg: Config) -> list[str]:
    """The documents healing trains on: all of model.heal.data, or, when that is a data.general corpus, its
    training part (``data.split_general``): neither its held-out (test) documents, which measure forgetting, nor
    its validation documents, on which the heal is judged."""
    docs = data.read_documents(cfg.model.heal.data)
    if heals_on_general(cfg):
        docs, _, _ = data.split_general(docs, cfg.data.eval_fraction, cfg.data.seed)
    return docs


def _saved_dtype(model_path: str) -> str:
    config = Path(model_path) / "config.json"
    if not config.is_file():
        return ""
    saved = json.loads(config.read_text())
    return saved.get("dtype") or saved.get("torch_dtype", "")
