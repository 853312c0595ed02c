"""transformers + PEFT: the portable backend (CPU or GPU) and the baseline Unsloth is measured against.

A fair baseline on a GPU: bf16 weights, bf16 autocast, SDPA attention, the same gradient checkpointing setting.
"""

from __future__ import annotations

import contextlib

from cpt_harness.model.backends.base import Backend, embeddings_to_train, fp32_masters


class PeftBackend(Backend):
    name = "peft"

    def __init__(self):
        import torch

        self._device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")

    def dtype(self, model_cfg):
        import torch

        if model_cfg.dtype == "auto":
            return torch.bfloat16 if self._device.type == "cuda" else torch.float32
        return getattr(torch, model_cfg.dtype)

    def autocast(self):
        import torch

        if self._device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def load_base(self, model_path, model_cfg):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=self.dtype(model_cfg), attn_implementation="sdpa"
        )
        model.requires_grad_(False)
        return model.to(self._device).eval()

    def load_for_training(self, model_path, cfg, params):
        import torch
        from peft import PeftModel, get_peft_model

        model = self.training_base(
            (model_path, repr(cfg.model)), lambda: self.load_base(model_path, cfg.model), cfg.model.keep_loaded
        )
        if cfg.train.gradient_checkpointing is True:  # auto: resolved per trial (cpt_harness.checkpointing)
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        torch.manual_seed(cfg.train.seed)  # LoRA init: the same for every trial with the same seed and rank
        if cfg.lora.init_adapter:
            model = PeftModel.from_pretrained(model, cfg.lora.init_adapter, is_trainable=True)
        else:
            model = get_peft_model(model, lora_config(model, cfg.lora, params))
        return fp32_masters(model).train()


def lora_config(model, lora_cfg, params):
    """The PEFT LoraConfig for one trial. Embeddings are trained in full (modules_to_save); a tied embedding
    stays one matrix (``ensure_weight_tying``) instead of two copies that drift apart."""
    from peft import LoraConfig

    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    to_save = embeddings_to_train(model, lora_cfg)
    return LoraConfig(
        r=params.rank,
        lora_alpha=params.alpha,
        use_rslora=params.use_rslora,
        target_modules=list(lora_cfg.target_modules),
        lora_dropout=lora_cfg.dropout,
        bias="none",
        task_type="CAUSAL_LM",
        modules_to_save=to_save,
        ensure_weight_tying=bool(to_save) and tied,
    )
