"""Experiment trackers, picked by name: one W&B run per trial (group = study, job_type = trial).

With no API key, W&B runs are written offline under ``$WANDB_DIR`` (default: the study's output folder) and
``wandb sync DIR`` uploads them later; ``tracking.wandb.mode: disabled`` turns tracking off.

A trial's saved adapter is logged as a W&B artifact of type ``model`` (``adapter_artifact``), by reference: the
manifest holds each file's path, size and MD5, and no copy of the weights is made, offline or online.
"""

from __future__ import annotations

import netrc
import os
import re
from pathlib import Path
from typing import Any

from cpt_harness.config import WandbConfig
from cpt_harness.infra.urls import redact_tree


class Tracker:
    """No-op tracker; the interface every tracker implements."""

    run_dir: str | None = None

    run_id: str | None = None

    def start(
        self, name: str, config: dict[str, Any], tags: list[str], job_type: str = "trial", resume_id: str | None = None
    ) -> None: ...

    def log(self, metrics: dict[str, Any]) -> None: ...

    def log_audit(self, record: dict[str, Any]) -> None: ...

    def log_adapter(self, adapter_dir: Path, name: str, metadata: dict[str, Any], aliases: list[str] = ()) -> None:
        """The adapter folder as a ``model`` artifact ``name``, by reference (``adapter_artifact``)."""

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
        (offline, the retry writes a second folder with the same run id marked ``resume``, and ``wandb sync``
        replays the folders of one run id in order of start time, resuming it: README, "Weights & Biases")."""
        self.dir.mkdir(parents=True, exist_ok=True)
        config = redact_tree(config)  # a storage URL's password never reaches W&B
        kwargs = dict(
            project=self.cfg.project,
            entity=self.cfg.entity,
            group=self.group,
            job_type=job_type,
            name=name,
            config=config,
            tags=list(self.cfg.tags) + list(tags),
            dir=str(self.dir),
            mode=self.mode,
            settings=self._wandb.Settings(console="off", quiet=True, silent=True, x_disable_stats=True),
        )
        try:
            self.run = self._wandb.init(**kwargs, id=resume_id, resume="allow" if resume_id else None)
        except Exception as e:
            if resume_id is None:
                raise
            # A W&B service still holding the dead worker's run ("run ID is in use"): a new run, linked by config.
            self.run = self._wandb.init(
                **{**kwargs, "config": {**config, "resume_failed_for": resume_id, "resume_error": str(e)[:200]}}
            )
        self.run_id = self.run.id
        define_metrics(self.run)
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

    def log_adapter(self, adapter_dir, name, metadata, aliases=()):
        if self.run is not None and self.cfg.log_adapters:
            self.run.log_artifact(adapter_artifact(self._wandb, adapter_dir, name, metadata), aliases=list(aliases))

    def summary(self, metrics):
        if self.run is not None:
            self.run.summary.update(metrics)

    def finish(self, failed=False):
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run, self.run_id = None, None


# What each curve's summary keeps (the objectives' best and last values) and which way is better. wandb 0.31's
# define_metric has no ``goal`` any more, so the direction is written into every run's config (``objectives``)
# and the workspace (cpt_harness/workspace.py) sorts by it.
SUMMARIES = {"eval/domain_loss": "min,last", "eval/forgetting": "min,last", "eval/domain_gain": "max,last"}
GOALS = {"domain_loss": "minimize", "forgetting": "minimize", "domain_gain": "maximize"}


def define_metrics(run) -> None:
    """Curves against tokens seen (the x-axis that compares runs of different batch shapes); the objectives' curves
    keep their best and last values in the summary."""
    run.define_metric("tokens_seen")
    for prefix in ("train/*", "eval/*"):
        run.define_metric(prefix, step_metric="tokens_seen")
    for name, summary in SUMMARIES.items():
        run.define_metric(name, step_metric="tokens_seen", summary=summary)


def artifact_name(study: str, number: int) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.': one collection per trial, so that each trial's
    adapter can carry the aliases pareto / chosen / confirmed (an alias names one version of a collection)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"adapter-{study}-t{number:04d}")


def adapter_artifact(wandb, adapter_dir: Path, name: str, metadata: dict[str, Any]):
    """A ``model`` artifact referencing every file of ``adapter_dir`` (file:// URIs with their MD5): logging it
    copies nothing, and an adapter deleted later (``study.keep_adapters: pareto``) is still recorded by its digest.
    The same folder gives the same digest, so logging it again (with more aliases) names the same version."""
    art = wandb.Artifact(
        name,
        type="model",
        metadata=redact_tree(metadata),
        description=f"LoRA adapter of {metadata.get('study', '?')} trial {metadata.get('trial', '?')}",
    )
    art.add_reference(Path(adapter_dir).resolve().as_uri(), name="adapter")
    return art


def summary_run_id(study: str) -> str:
    """The id of a study's summary run: the same for every `cpt-harness report`, so a report updates that run (a
    resumed run) instead of adding one. Readable, and a hash of the exact name keeps two names that slug alike
    apart."""
    import hashlib

    slug = re.sub(r"[^A-Za-z0-9_-]", "-", study)[:40]
    return f"{slug}-summary-{hashlib.sha1(study.encode()).hexdigest()[:8]}"


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
