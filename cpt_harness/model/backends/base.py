"""The backend interface: load a base model for evaluation, or a LoRA-wrapped one for a trial.

A worker runs many trials on one base model. Loading it from disk for every trial cost 10.9 s of a 37 s SmolLM2
trial on an H200, and up to 60 s with 16 workers loading at once on one host (benchmarks/RESULTS.md). So a
backend keeps one untouched copy of the base per process and starts each trial from a copy of it
(``model.keep_loaded``); only the first trial of a worker reads the disk.
"""

from __future__ import annotations

import copy
import sys
from typing import Any, Callable

from cpt_harness.model.modules import embedding_module_names


class Backend:
    name: str = "base"
    _kept: tuple[Any, Any] | None = None  # (key, the untouched base model) while model.keep_loaded
    _copy_failed: bool = False
    last_load: str = ""  # how the latest trial got its base: "disk" or "copy"

    _device: Any = None  # the torch.device a backend's __init__ picks

    @property
    def device(self):
        return self._device

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

    def healer(self) -> "Backend":
        """The backend that heals the base (cpt_harness.heal): loads it with ``load_for_training`` in the settings
        ``heal.heal_settings`` gives, on this backend's device. This one, unless a backend says otherwise."""
        return self

    def training_base(self, key: Any, load: Callable[[], Any], keep: bool) -> Any:
        """A base model of this process's own for one trial to wrap in LoRA. With ``keep``, a copy of the one
        this process keeps loaded (loaded by ``load`` on first use, or when ``key`` changes); else ``load()``."""
        if keep and not self._copy_failed:
            fresh = self._kept is None or self._kept[0] != key
            if fresh:
                self._kept = None  # the old one is freed before the new one loads
                self._kept = (key, load())
            try:
                model = copy_model(self._kept[1])
                self.last_load = "disk" if fresh else "copy"
                return model
            except Exception as e:  # noqa: BLE001 - a model the copy cannot handle still trains, from disk
                print(
                    f"[backend] warning: copying the loaded base model failed ({type(e).__name__}: {e}); every "
                    "trial of this worker loads it from disk instead (set model.keep_loaded: false to skip the "
                    "attempt)",
                    file=sys.stderr,
                )
                self._copy_failed = True
        self._kept = None
        self.last_load = "disk"
        return load()

    def start_model(self, model_path: str, model_cfg) -> tuple[Any, bool]:
        """The untouched model at ``model_path`` that every trial starts from (the healed base, where healing is
        on), to compare a trained model against (general_kl). ``(model, loaded)``: the copy this process keeps
        loaded when there is one (model.keep_loaded), else one loaded now, which the caller frees (loaded=True).
        Never ``disable_adapter()``: the embeddings train in full, so the adapter-free model is not the start."""
        if self._kept is not None and self._kept[0][0] == model_path:
            return self._kept[1], False
        return self.load_base(model_path, model_cfg), True

    def autocast(self):
        """Context for forward passes (bf16 autocast on GPU where the backend wants it)."""
        import contextlib

        return contextlib.nullcontext()

    def device_problems(self, cfg) -> list[str]:
        """Settings that cannot run on this device, each naming its key. Checked before anything is prepared:
        every trial would fail the same way."""
        if self.device.type != "cuda" and cfg.model.dtype in ("bfloat16", "float16"):
            return [
                f"model.dtype: {cfg.model.dtype} needs a CUDA GPU, and backend {self.name} runs on the "
                f"{self.device.type} here (no CUDA); use auto (float32 on a CPU) or float32"
            ]
        return []

    def model_problems(self, cfg, model_path: str) -> list[str]:
        """Settings that do not fit the model, each naming its key: LoRA targets it does not have. The model is
        built without weights (meta device), so this costs no memory."""
        if cfg.lora.init_adapter:
            return []  # the saved adapter's targets, already checked against the config
        lora_able = lora_module_names(model_path)
        if lora_able is None:
            return []  # cannot tell without loading it; the first trial will
        missing = [t for t in cfg.lora.target_modules if not any(n == t or n.endswith("." + t) for n in lora_able)]
        if not missing:
            return []
        short = sorted({n.rsplit(".", 1)[-1] for n in lora_able} - {"embed_tokens", "lm_head"})
        return [
            f"lora.target_modules: {missing} match no module of the model {model_path}; its linear modules are {short}"
        ]

    def describe(self) -> dict:
        import torch

        info = {"backend": self.name, "device": str(self.device), "torch": torch.__version__}
        if self.device.type == "cuda":
            info["gpu"] = torch.cuda.get_device_name(self.device)
        return info


def embeddings_to_train(model, lora_cfg) -> list[str] | None:
    """The modules a trial trains in full (PEFT's ``modules_to_save``): the input embedding and output head when
    ``lora.train_embeddings``, else none."""
    return list(embedding_module_names(model)) if lora_cfg.train_embeddings else None


def fp32_masters(model) -> Any:
    """Trainable weights in float32 (a 1e-5 step vanishes in bf16 weights); autocast does the bf16 math. The peft
    backend holds them so; the unsloth backend keeps its embedding in bf16 and the optimizer an fp32 master of it
    (train.MasterAdamW). Returns ``model``."""
    import torch

    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    return model


def copy_model(model) -> Any:
    """A deep copy of a model: its own parameters and buffers (on the same device), its own config and hooks.
    Tokenizers a loader attached to the model are shared, not copied (they are never trained)."""
    memo = {id(v): v for v in vars(model).values() if "Tokenizer" in type(v).__name__}
    return copy.deepcopy(model, memo)


def lora_module_names(model_path: str) -> list[str] | None:
    """Full names of the modules LoRA can wrap (linear, conv, embedding) in the model at ``model_path``, built on
    the meta device from its config alone; None where it cannot be built that way."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    kinds = (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, Conv1D)
    try:
        config = AutoConfig.from_pretrained(model_path)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - no answer is the answer
        return None
    return [name for name, module in model.named_modules() if isinstance(module, kinds)]
