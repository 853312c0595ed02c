"""``train.gradient_checkpointing: auto``: checkpointing only when a trial would not fit the card without it.

Checkpointing recomputes activations in the backward pass: on an H200 it cost the 1B shape 24% of its tokens/s
(50,548 vs 66,401, issue 18) to save memory the card had. So ``auto`` turns it off whenever the trial's peak
memory *without* checkpointing fits the card, with headroom, as many times as trials are placed on it:

    off  iff  K x (1.2 x peak + 0.8 GiB)  <=  0.85 x the card's total memory

K is the number of trials placed on the card (``trials_on_card``: what `sweep --gpus` or `cpt-harness pool`
tells its workers, else ``parallel.trials_per_gpu``, 1 under ``auto``: see below); 1.2 x peak + 0.8 GiB and the 15% are the same
headroom ``parallel.auto_trials_per_gpu`` places trials by. ``peak`` is the largest peak_memory_gb measured in
this study by a complete trial that ran with checkpointing off, or else an estimate from the model's shape
(``estimate_peak_gb``: weights, trained embeddings with their Adam state, LoRA, activations and logits of one
micro-batch). On a CPU ``auto`` is off: there is no card to fit, and checkpointing only costs time.

With ``parallel.trials_per_gpu: auto`` the trials are placed by the peak the first trial measures: the first
trial runs alone (K = 1), so it runs without checkpointing whenever one trial fits, and the workers added after
it are as many as fit that checkpointing-off peak. Both settings therefore favour the faster trial over more
trials per card; ``gradient_checkpointing: true`` with ``trials_per_gpu: auto`` packs more, slower trials.

The objective resolves ``auto`` for every trial before the backend loads the model (``resolve``); a backend
handed an unresolved ``auto`` (a direct ``load_for_training`` in a test or benchmark) reads it as the peft backend
does, off, or as the unsloth backend does, on (a truthy value): resolve first.

It is a speed-only setting: it changes how a trial computes its gradients, not what it measures (tests/
test_checkpointing.py: identical losses on a CPU), so it is not part of the study's fingerprint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cpt_harness.config import Config

HEADROOM = 0.85  # share of the card trials may fill
PER_TRIAL_FACTOR, PER_TRIAL_GB = 1.2, 0.8  # the allocator's caching and fragmentation; the CUDA context


@dataclass(frozen=True)
class Choice:
    on: bool
    setting: str  # "auto", "true" or "false", as configured
    why: str

    def as_attrs(self) -> dict:
        return {
            "gradient_checkpointing": self.on,
            "gradient_checkpointing_setting": self.setting,
            "gradient_checkpointing_why": self.why,
        }


def per_trial_gb(peak_gb: float) -> float:
    """What one trial of this allocator peak takes of a card: parallel.auto_trials_per_gpu's measure too."""
    return PER_TRIAL_FACTOR * peak_gb + PER_TRIAL_GB


def fits(peak_gb: float, card_gb: float, trials: int) -> bool:
    return trials * per_trial_gb(peak_gb) <= HEADROOM * card_gb


ENV_TRIALS_ON_GPU = "CPT_HARNESS_TRIALS_ON_GPU"  # set for its workers by whoever places them (parallel, pool)


def trials_on_card(cfg: Config) -> int:
    """K: the trials placed on this worker's card. Workers started by `sweep --gpus` or `cpt-harness pool` are told
    (their config's parallel.* keys are the command's, not theirs); otherwise parallel.trials_per_gpu, where auto
    is 1: trials_per_gpu auto places the others by the first trial's peak, measured alone."""
    told = os.environ.get(ENV_TRIALS_ON_GPU, "")
    if told.isdigit() and int(told) >= 1:
        return int(told)
    k = cfg.parallel.trials_per_gpu
    return 1 if k == "auto" else int(k)


def decide(
    setting, device_type: str, card_gb: float | None, trials: int, measured_gb: float | None, estimated_gb: float | None
) -> Choice:
    """The rule, on plain numbers (what ``resolve`` measures on the machine and the study)."""
    if setting is True or setting is False:
        return Choice(setting, str(setting).lower(), "set in the config")
    if device_type != "cuda" or card_gb is None:
        return Choice(False, "auto", f"auto: off on {device_type} (no card to fit)")
    peak, source = (measured_gb, "measured") if measured_gb is not None else (estimated_gb, "estimated")
    if peak is None:
        return Choice(True, "auto", "auto: on (no measured peak and no estimate for this model)")
    on = not fits(peak, card_gb, trials)
    return Choice(
        on,
        "auto",
        f"auto: {'on' if on else 'off'}: {source} peak without checkpointing {peak:.1f} GiB, "
        f"{trials} trial(s) x {per_trial_gb(peak):.1f} GiB {'>' if on else '<='} "
        f"{HEADROOM:.0%} of {card_gb:.1f} GiB",
    )


def measured_peak(study) -> float | None:
    """The largest peak of the study's complete trials that ran without checkpointing (None: none yet)."""
    if study is None:
        return None
    peaks = [
        t.user_attrs["peak_memory_gb"]
        for t in study.get_trials(deepcopy=False)
        if t.state.name == "COMPLETE"
        and t.user_attrs.get("gradient_checkpointing") is False
        and "peak_memory_gb" in t.user_attrs
    ]
    return max(peaks) if peaks else None


def model_shape(model_path: str) -> dict | None:
    """The numbers ``estimate_peak_gb`` needs, from a HF folder's config.json (None if there is none)."""
    try:
        c = json.loads((Path(model_path) / "config.json").read_text())
        h = c["hidden_size"]
        heads = c.get("num_attention_heads", 1)
        return {
            "hidden_size": h,
            "intermediate_size": c.get("intermediate_size", 4 * h),
            "num_hidden_layers": c["num_hidden_layers"],
            "vocab_size": c["vocab_size"],
            "num_attention_heads": heads,
            "num_key_value_heads": c.get("num_key_value_heads", heads),
            "head_dim": c.get("head_dim") or h // heads,
            "tie_word_embeddings": bool(c.get("tie_word_embeddings", False)),
        }
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return None


def estimate_peak_gb(shape: dict, cfg: Config) -> float:
    """A checkpointing-off trial's peak GPU memory (GiB), bf16 compute, from the model's shape and the config.

    Two bf16 copies of the weights (the trial's, and the kept base or the start model general_kl compares
    against); the trained embeddings at 16 bytes a weight (fp32 master, gradient, two Adam moments); LoRA at the
    largest searched rank, also 16 bytes; per token of a micro-batch and layer 2 x (7 hidden + 2 intermediate)
    bytes of saved activations; fp32 logits. Against the H200 measurement of issue 18 (Llama-3.2-1B shape,
    8 x 2048, 25.9 GiB) it errs on the high side (tests/train/test_checkpointing.py)."""
    h, i, n_layers, v = (shape[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "vocab_size"))
    kv = shape["num_key_value_heads"] * shape["head_dim"]
    q = shape["num_attention_heads"] * shape["head_dim"]
    embed = v * h * (1 if shape["tie_word_embeddings"] else 2)
    layer = h * q + 2 * h * kv + q * h + 3 * h * i
    weights = 2 * 2 * (embed + n_layers * layer)
    trained_embed = 16 * embed if cfg.lora.train_embeddings else 0
    dims = {
        "q_proj": (h, q),
        "k_proj": (h, kv),
        "v_proj": (h, kv),
        "o_proj": (q, h),
        "gate_proj": (h, i),
        "up_proj": (h, i),
        "down_proj": (i, h),
    }
    rank = max(cfg.search.rank.choices)
    lora = 16 * n_layers * rank * sum(a + b for m, (a, b) in dims.items() if m in cfg.lora.target_modules)
    tokens = cfg.train.batch_size * cfg.model.max_seq_length
    activations = tokens * n_layers * 2 * (7 * h + 2 * i)
    logits = tokens * v * 4
    return (weights + trained_embed + lora + activations + logits) / 2**30


def resolve(cfg: Config, device, model_path: str, study=None) -> tuple[Config, Choice]:
    """The trial's config with gradient_checkpointing true or false, and why. ``auto`` reads the card's total
    memory, this study's measured peaks and the model's shape."""
    import copy

    setting = cfg.train.gradient_checkpointing
    device_type = getattr(device, "type", "cpu")
    card_gb = None
    if device_type == "cuda" and setting == "auto":
        import torch

        card_gb = torch.cuda.get_device_properties(device).total_memory / 2**30
    shape = model_shape(model_path) if card_gb is not None else None
    estimate = estimate_peak_gb(shape, cfg) if shape is not None else None
    choice = decide(
        setting,
        device_type,
        card_gb,
        trials_on_card(cfg),
        measured_peak(study) if card_gb is not None else None,
        estimate,
    )
    if setting == choice.on:
        return cfg, choice
    out = copy.deepcopy(cfg)
    out.train.gradient_checkpointing = choice.on
    return out, choice
