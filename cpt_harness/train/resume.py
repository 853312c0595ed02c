"""Long trials survive (``train.checkpoint_every``): every N steps a trial saves the state it needs to go on:
the trainable weights, the optimizer's and scheduler's state, the batch stream's position (replay mixing
included), the RNG states, and what it has measured so far (the eval curve, the per-document evals, the step and
tokens seen). A trial retried after its worker died (``retry_of``) loads it and trains on from there; the steps
after the save are trained again exactly as the first time, so it ends with the result an uninterrupted run has.

The state lives in the folder of the first trial of a retry chain, ``trial-NNNN/resume/`` (every retry of it
reads and writes the same place), and goes once the trial has ended with an outcome (complete, pruned, or a
failure of its own); a worker killed mid-trial leaves it for the retry.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

FOLDER = "resume"
STATE = "state.pt"


@dataclass
class TrainState:
    """Where a trial's training loop is after ``step`` steps, and what it measured to get there."""

    step: int
    tokens_seen: int
    first_loss: float
    curve: list[dict]
    checkpoints: list  # Evaluation.checkpoints: (step, tokens_seen, domain DocLosses, general DocLosses)
    elapsed_s: float  # training time so far (train.time_limit_s counts it)
    timings: dict[str, float] = field(default_factory=dict)
    trainable: dict[str, torch.Tensor] = field(default_factory=dict)
    optimizer: dict = field(default_factory=dict)
    scheduler: dict = field(default_factory=dict)
    stream: dict = field(default_factory=dict)
    rng: dict = field(default_factory=dict)


class Saver:
    """Saves a trial's state every ``every`` steps into ``folder`` and loads it back. ``identity``: what the state
    belongs to (the trial's parameters, protocol, data and model); a saved state of anything else is not resumed."""

    def __init__(self, folder: Path, every: int | None, identity: dict[str, Any]):
        self.folder, self.every = Path(folder), every
        self.identity = json.loads(json.dumps(identity, sort_keys=True, default=str))
        self.skipped: str | None = None  # why a state found there was not resumed

    @property
    def path(self) -> Path:
        return self.folder / STATE

    def due(self, step: int, max_steps: int) -> bool:
        return bool(self.every and step % self.every == 0 and step < max_steps)

    def save(self, state: TrainState) -> None:
        """Atomically: a worker killed while saving leaves the previous state whole."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{STATE}.{os.getpid()}.tmp"
        torch.save({"identity": self.identity, "state": state.__dict__}, tmp)
        os.replace(tmp, self.path)

    def load(self) -> TrainState | None:
        """The saved state, or None (none there, or one of another trial setting: ``skipped`` says which)."""
        if not self.path.is_file():
            return None
        try:
            saved = torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - a torn or foreign file: train from the start rather than fail
            self.skipped = f"{self.path} could not be read ({type(e).__name__}: {e}); training from step 0"
            return None
        if saved.get("identity") != self.identity:
            self.skipped = f"{self.path} was saved by another trial setting; training from step 0"
            return None
        return TrainState(**saved["state"])

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


def load_trainable(model, saved: dict[str, torch.Tensor]) -> None:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(saved):
        missing, extra = sorted(set(params) - set(saved)), sorted(set(saved) - set(params))
        raise ValueError(
            f"the saved trainable weights do not match the model's (missing {missing[:3]}, unexpected {extra[:3]})"
        )
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(saved[n])


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
