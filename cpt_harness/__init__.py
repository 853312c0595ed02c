"""cpt-harness: sweeps for continued pretraining with LoRA (Optuna + Unsloth/PEFT + W&B)."""

__version__ = "0.1.0"
