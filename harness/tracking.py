"""Experiment trackers, picked by name: one W&B run per trial (group = study, job_type = trial).

With no API key, W&B runs are written offline under ``$WANDB_DIR`` (default: the study's output folder) and
``wandb sync DIR`` uploads them later; ``tracking.wandb.mode: disabled`` turns tracking off.
"""

from __future__ import annotations

import netrc
import os
from pathlib import Path
from typing import Any

from harness.config import WandbConfig
from harness.urls import redact_tree


class Tracker:
    """No-op tracker; the interface every tracker implements."""

    run_dir: str | None = None

    run_id: str | None = None

    def start(self, name: str, config: dict[str, Any], tags: list[str], job_type: str = "trial",
              resume_id: str | None = None) -> None: ...

    def log(self, metrics: dict[str, Any]) -> None: ...

    def log_audit(self, record: dict[str, Any]) -> None: ...

    def summary(self, metrics: dict[str, Any]) -> None: ...

    def finish(self, failed: bool = False) -> None: ...


class WandbTracker(Tracker):
    def __init__(self, cfg: WandbConfig, group: str, default_dir: Path):
        try:
            import wandb
        except ImportError:
            raise ImportError("tracking.wandb needs the wandb package: pip install 'wandb>=0.31,<0.32'") from None
        self._wandb = wandb
        self.cfg = cfg
        self.group = group
        self.mode = resolve_mode(cfg.mode)
        self.dir = Path(os.environ.get("WANDB_DIR") or default_dir)
        self.run = None

    def start(self, name, config, tags, job_type="trial", resume_id=None):
        """``resume_id``: the run of a trial whose worker died; the retry resumes it instead of leaving it open
        (offline, the retry writes a second folder with the same run id, and ``wandb sync`` joins them)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = redact_tree(config)  # a storage URL's password never reaches W&B
        kwargs = dict(project=self.cfg.project, entity=self.cfg.entity, group=self.group, job_type=job_type, name=name,
                      config=config, tags=list(self.cfg.tags) + list(tags), dir=str(self.dir), mode=self.mode,
                      settings=self._wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True))
        try:
            self.run = self._wandb.init(**kwargs, id=resume_id, resume="allow" if resume_id else None)
        except Exception as e:
            if resume_id is None:
                raise
            # A W&B service still holding the dead worker's run ("run ID is in use"): a new run, linked by config.
            self.run = self._wandb.init(**{**kwargs, "config": {**config, "resume_failed_for": resume_id,
                                                                 "resume_error": str(e)[:200]}})
        self.run_id = self.run.id
        # Curves are plotted against tokens seen, the x-axis that compares runs of different batch shapes.
        self.run.define_metric("tokens_seen")
        for prefix in ("train/*", "eval/*"):
            self.run.define_metric(prefix, step_metric="tokens_seen")
        self.run_dir = getattr(self.run, "dir", None)

    def log(self, metrics):
        if self.run is not None:
            self.run.log(metrics)

    def log_audit(self, record):
        if self.run is None:
            return
        flat = {"audit/total_parameters": record.get("total_parameters")}
        for group, info in record.get("groups", {}).items():
            for k, v in info.items():
                flat[f"audit/{group}/{k}"] = v
        self.run.config.update({"audit": record}, allow_val_change=True)
        self.run.summary.update(flat)

    def summary(self, metrics):
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self, failed=False):
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run, self.run_id = None, None


def resolve_mode(mode: str) -> str:
    """auto -> $WANDB_MODE if set, online with an API key, else offline."""
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if has_api_key() else "offline"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def make_tracker(cfg: WandbConfig, group: str, default_dir: Path) -> Tracker:
    if resolve_mode(cfg.mode) == "disabled":
        return Tracker()
    return WandbTracker(cfg, group, default_dir)
