"""Unsloth: the fast GPU backend. FastLanguageModel loads the base (16-bit LoRA by default, 4-bit optional) and
adds LoRA with Unsloth's kernels and its offloaded gradient checkpointing.

``import unsloth`` has to run before transformers, peft or trl are imported, or Unsloth cannot patch them and
trains slower. This module imports it at the top and refuses to load in a process that already imported
transformers: run training through ``cpt-harness sweep`` / ``worker``, whose first step is ``backends.load``.
"""

from __future__ import annotations

import os
import sys

from cpt_harness.errors import BackendUnavailable
from cpt_harness.model.backends.base import Backend, embeddings_to_train
from cpt_harness.model.backends.offload import private_offload_folder

if "unsloth" not in sys.modules and any(m in sys.modules for m in ("transformers", "peft", "trl")):
    raise BackendUnavailable(
        "the unsloth backend must be loaded before transformers/peft/trl are imported in this process; "
        "call cpt_harness.backends.load('unsloth') first (cpt-harness sweep and worker do)"
    )
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
try:
    import unsloth  # noqa: F401  (must precede transformers)
    from unsloth import FastLanguageModel
except ImportError as e:
    raise BackendUnavailable(
        f"backend unsloth needs the GPU extra: pip install -e '.[gpu]' (unsloth 2026.10.9); import failed: {e}"
    ) from None
except Exception as e:  # noqa: BLE001 - unsloth raises NotImplementedError & co. where it cannot run
    raise BackendUnavailable(f"unsloth cannot run here ({type(e).__name__}: {e}); use backend: peft") from None


class UnslothBackend(Backend):
    name = "unsloth"

    def __init__(self):
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("backend unsloth needs a CUDA GPU; use backend: peft (or auto) on a CPU")
        self._device = torch.device("cuda")

    def autocast(self):
        import torch

        return torch.autocast("cuda", dtype=torch.bfloat16)

    def healer(self) -> Backend:
        """The peft backend on this GPU. A heal merges LoRA into a float32 base (bf16 autocast does the math), as
        every committed heal was made, so a heal's recipe key keeps naming one procedure; Unsloth loads the 16-bit
        and 4-bit bases trials train on, and its float32 loading is neither used nor measured here."""
        from cpt_harness.model.backends.peft_backend import PeftBackend

        return PeftBackend()

    def _from_pretrained(self, model_path, model_cfg, gradient_checkpointing, compile_blocks=False):
        import torch

        # Read by Unsloth when it patches the model; per load, so one process can run both settings.
        os.environ["UNSLOTH_BLOCK_COMPILE"] = "1" if compile_blocks else "0"

        dtype = None if model_cfg.dtype == "auto" else getattr(torch, model_cfg.dtype)
        model, _ = FastLanguageModel.from_pretrained(
            model_name=model_path,
            max_seq_length=model_cfg.max_seq_length,
            dtype=dtype,
            load_in_4bit=model_cfg.load_in_4bit,
            load_in_16bit=not model_cfg.load_in_4bit,
            use_gradient_checkpointing=gradient_checkpointing,
            random_state=0,
        )
        return model

    def load_base(self, model_path, model_cfg):
        model = self._from_pretrained(model_path, model_cfg, False)
        model.requires_grad_(False)
        return model.eval()

    def load_for_training(self, model_path, cfg, params):
        checkpointing = "unsloth" if cfg.train.gradient_checkpointing else False
        key = (model_path, repr(cfg.model), checkpointing, cfg.train.compile)
        model = self.training_base(
            key,
            lambda: self._from_pretrained(model_path, cfg.model, checkpointing, cfg.train.compile),
            cfg.model.keep_loaded,
        )
        if cfg.lora.init_adapter:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, cfg.lora.init_adapter, is_trainable=True)
            model = FastLanguageModel.patch_peft_model(model, use_gradient_checkpointing=checkpointing)
        else:
            with private_offload_folder(model) as folder:
                model = FastLanguageModel.get_peft_model(
                    model,
                    r=params.rank,
                    lora_alpha=params.alpha,
                    use_rslora=params.use_rslora,
                    target_modules=list(cfg.lora.target_modules),
                    lora_dropout=cfg.lora.dropout,
                    bias="none",
                    modules_to_save=embeddings_to_train(model, cfg.lora),
                    use_gradient_checkpointing=checkpointing,
                    random_state=cfg.train.seed,
                    temporary_location=folder,
                )
        # The embedding it trains stays bf16, as Unsloth keeps it: the optimizer steps an fp32 master of it
        # (train.MasterAdamW), and the model's forward and backward run at raw Unsloth's speed (issue 18).
        FastLanguageModel.for_training(model)
        return model
