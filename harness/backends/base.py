"""The backend interface: load a base model for evaluation, or a LoRA-wrapped one for a trial."""

from __future__ import annotations

from typing import Any


class BackendUnavailable(Exception):
    """The backend cannot run here; the message says what to install or change."""


class Backend:
    name: str = "base"

    @property
    def device(self):
        raise NotImplementedError

    def load_tokenizer(self, model_path: str) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_path)

    def load_base(self, model_path: str, model_cfg) -> Any:
        """The frozen base model, in eval mode, on ``self.device``."""
        raise NotImplementedError

    def load_for_training(self, model_path: str, cfg, params) -> Any:
        """A PEFT model in train mode: LoRA (rank, alpha, rsLoRA from ``params``) on ``cfg.lora.target_modules``,
        plus ``embed_tokens``/``lm_head`` trainable in full when ``cfg.lora.train_embeddings``; or, with
        ``cfg.lora.init_adapter``, that saved adapter loaded trainable."""
        raise NotImplementedError

    def autocast(self):
        """Context for forward passes (bf16 autocast on GPU where the backend wants it)."""
        import contextlib

        return contextlib.nullcontext()

    def describe(self) -> dict:
        import torch

        info = {"backend": self.name, "device": str(self.device), "torch": torch.__version__}
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info
