"""The objective: one Optuna trial in, (domain_loss, forgetting) out (domain_loss alone in a constrained study).
It never builds a study, so tests can call it with ``optuna.trial.FixedTrial``.

Every per-trial metric is stored on the trial as a user attribute as well as in W&B, so the study database
alone holds the results. A failure of any kind records its reason on the trial before Optuna marks it FAIL.
"""

from __future__ import annotations

import gc
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from optuna import TrialPruned

from cpt_harness.config import Config
from cpt_harness.data import Corpora
from cpt_harness.errors import Diverged
from cpt_harness.evaluate import evals
from cpt_harness.evaluate.metrics import with_forgetting
from cpt_harness.infra.tracking import artifact_name
from cpt_harness.infra.urls import redact, redact_tree
from cpt_harness.search import pruning
from cpt_harness.search import space as search_space
from cpt_harness.train import checkpointing


@dataclass
class TrialContext:
    """Everything a trial needs that is the same for the whole study (built once by the sweep)."""

    cfg: Config
    backend: Any
    model_path: str
    corpora: Corpora
    base: dict[str, float]
    tracker: Any
    study_dir: Path
    progress: Callable[[int, int], Any] | None = None  # (trial number, max_steps) -> callback(step, loss)
    worker: str = ""  # which worker ran the trial (host, GPU, slot), for progress and reports
    job_type: str = "trial"  # W&B job_type: trial (sweeps) or ablation
    config_for: Callable[[Any], Config] | None = None  # a trial's own config (an ablation arm's); default: cfg


class Objective:
    def __init__(self, ctx: TrialContext):
        self.ctx = ctx

    def __call__(self, trial) -> float | tuple[float, float]:
        ctx = self.ctx
        trial_dir = ctx.study_dir / f"trial-{trial.number:04d}"
        try:  # suggesting is inside: a trial whose parameters cannot be drawn says why too
            cfg, params = self._params(trial)
            return self._train(trial, cfg, params, trial_dir)
        except TrialPruned:  # not a failure: its metrics so far are recorded, its W&B run finished cleanly
            raise
        except BaseException as e:  # whatever failed, the trial says why, and so does its W&B run
            reason = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else _reason(e)
            trial.set_user_attr("fail_reason", reason)
            if isinstance(e, Diverged):
                trial.set_user_attr("diverged", True)
            _write_error(trial_dir, e)
            ctx.tracker.summary({"fail_reason": reason})
            ctx.tracker.finish(failed=True)
            raise
        finally:
            _free_memory()

    def _params(self, trial):
        """The trial's config (an ablation arm's, a confirmation's) and its parameters, recorded on the trial."""
        ctx = self.ctx
        cfg = ctx.config_for(trial) if ctx.config_for else ctx.cfg
        params = search_space.suggest(trial, cfg)
        for key, value in params.as_dict().items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("worker", ctx.worker)
        if outside := search_space.outside(params, cfg):  # an enqueued point beyond the ranges runs as given
            trial.set_user_attr("outside_search_space", outside)
        return cfg, params

    def _train(self, trial, cfg: Config, params, trial_dir: Path) -> float | tuple[float, float]:
        from cpt_harness.train import loop as train

        ctx = self.ctx
        resume_id = None
        if trial.user_attrs.get("retry_of") is not None:  # set by cpt_harness.trials.run on a dead worker's retry
            resume_id = trial.user_attrs.get("wandb_run_id")  # the dead worker's run: resume it, not a new one
        started = time.perf_counter()
        arm = trial.user_attrs.get("arm")
        # train.gradient_checkpointing: auto becomes true or false here, per trial, recorded on it and in W&B
        cfg, choice = checkpointing.resolve(
            cfg, getattr(ctx.backend, "device", None), ctx.model_path, getattr(trial, "study", None)
        )
        for key, value in choice.as_attrs().items():
            trial.set_user_attr(key, value)
        config = {**trial_config(ctx, cfg, trial, params), "gradient_checkpointing": choice.as_attrs()}
        ctx.tracker.start(
            name=f"{cfg.study.name}-t{trial.number:03d}" + (f" {arm}" if arm else ""),
            config=config,
            tags=_tags(params, trial.user_attrs),
            resume_id=resume_id,
            job_type=ctx.job_type,
        )
        trial.set_user_attr("wandb_run_id", ctx.tracker.run_id)
        tracker_s = time.perf_counter() - started
        adapter_dir = trial_dir / "adapter" if cfg.study.keep_adapters != "none" else None
        progress = ctx.progress(trial.number, cfg.train.max_steps) if ctx.progress else None
        saver = self._saver(trial, cfg, params)
        try:
            result = train.run_trial(
                ctx.backend,
                ctx.model_path,
                cfg,
                params,
                ctx.corpora,
                ctx.tracker,
                adapter_dir,
                progress,
                checkpoint=pruning.Checkpoint(trial, cfg, ctx.base),
                base=ctx.base,
                saver=saver,
            )
        finally:
            if progress is not None:
                progress.close()
        if saver is not None and saver.skipped:
            trial.set_user_attr("resume_skipped", saver.skipped)
        if result.resumed_step is not None:
            trial.set_user_attr("resumed_from", {"trial": trial.user_attrs["retry_of"], "step": result.resumed_step})
        metrics = with_forgetting(result.metrics, ctx.base)
        if result.evals is not None:  # per-document arrays go to a file; the database holds its path
            trial.set_user_attr("evals_file", evals.write_trial(ctx.study_dir, trial.number, result.evals))
        started = time.perf_counter()
        pruned = (
            {} if result.stopped is None else {"prune_reason": result.stopped, "pruned_step": result.curve[-1]["step"]}
        )
        ctx.tracker.summary(
            {
                **metrics,
                **params.as_dict(),
                "rule_violations": ", ".join(params.rule_violations),
                **pruned,
                "state": "PRUNED" if pruned else "COMPLETE",
            }
        )
        if result.adapter_dir is not None:
            adapter = Path(result.adapter_dir)
            write_trial_config(adapter, config)
            ctx.tracker.log_adapter(
                adapter,
                artifact_name(cfg.study.name, trial.number),
                adapter_metadata(config, metrics, _provenance(ctx.model_path)),
            )
        ctx.tracker.finish()
        result.timings["log"] = result.timings.get("log", 0.0) + tracker_s + time.perf_counter() - started
        for key, value in metrics.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("curve", result.curve)
        trial.set_user_attr("audit", result.audit)
        trial.set_user_attr("timings", result.timings)
        trial.set_user_attr("base_load", result.base_load)
        trial.set_user_attr("adapter_dir", result.adapter_dir)
        trial.set_user_attr("fail_reason", None)  # set by trials.mark_running in case the worker died
        for key, value in pruned.items():
            trial.set_user_attr(key, value)
        pruning.record_constraint(trial, metrics["forgetting"], cfg.study.max_forgetting)
        if pruned:
            raise TrialPruned(result.stopped)
        return pruning.objective_values(cfg, metrics)

    def _saver(self, trial, cfg: Config, params):
        """train.checkpoint_every: where the trial's training state is saved, the folder of the first trial of its
        retry chain (a retry after a dead worker resumes what that worker saved). A trial that is no retry
        starts clean."""
        from cpt_harness.train import resume

        if not cfg.train.checkpoint_every:
            return None
        retry_of = trial.user_attrs.get("retry_of")
        chain = trial.number if retry_of is None else retry_of
        identity = {
            "params": params.as_dict(),
            "protocol": search_space.space_payload(cfg),
            "data": self.ctx.corpora.fingerprint,
            "model": self.ctx.model_path,
        }
        saver = resume.Saver(
            self.ctx.study_dir / f"trial-{chain:04d}" / resume.FOLDER, cfg.train.checkpoint_every, identity
        )
        if retry_of is None:
            saver.clear()
        return saver


def trial_config(ctx: TrialContext, cfg: Config, trial, params) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {
        **cfg.to_dict(),
        "trial": {"number": trial.number, **params.as_dict()},
        **(
            {
                "arm": attrs["arm"],
                "seed": attrs.get("seed"),
                "levels": {k.removeprefix("level:"): v for k, v in attrs.items() if k.startswith("level:")},
            }
            if "arm" in attrs
            else {}
        ),
        "optuna_params": dict(trial.params),
        **({"baseline": attrs["baseline"]} if "baseline" in attrs else {}),
        "base": ctx.base,
        "runtime": ctx.backend.describe(),
        "data_stats": ctx.corpora.stats,
    }


TRIAL_CONFIG = "trial_config.yaml"  # beside the adapter's weights: an adapter found on disk says how it was trained


def write_trial_config(adapter_dir: Path, config: dict[str, Any]) -> Path:
    """The trial's resolved config (what its W&B run records), passwords redacted, inside its adapter folder."""
    import yaml

    path = adapter_dir / TRIAL_CONFIG
    path.write_text(
        "# The resolved config of the trial that trained this adapter (written by cpt-harness).\n"
        + yaml.safe_dump(redact_tree(config), sort_keys=False)
    )
    return path


def _provenance(model_path: str) -> dict[str, Any]:
    from cpt_harness.model import resolve as models

    return models.provenance(model_path)


def adapter_metadata(config: dict[str, Any], metrics: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """What a W&B adapter artifact says of itself: the trial, its parameters and results, and the base model it
    adapts (its name, and the provenance the harness recorded when it prepared it)."""
    keys = (
        "domain_loss",
        "forgetting",
        "domain_gain",
        "general_loss",
        "general_kl",
        "test_domain_loss",
        "test_forgetting",
        "test_domain_gain",
        "tokens_seen",
    )
    return {
        "study": config["study"]["name"],
        "trial": config["trial"]["number"],
        "params": config["trial"],
        "metrics": {k: metrics[k] for k in keys if k in metrics},
        **({"arm": config["arm"], "seed": config.get("seed")} if "arm" in config else {}),
        "base_model": {"name": config["model"]["name"], "provenance": provenance},
        "config": config,
    }


def _tags(params, attrs: dict) -> list[str]:
    tags = [
        f"r{params.rank}",
        "rslora" if params.use_rslora else "lora",
        "embeddings" if params.embedding_lr_ratio is not None else "no-embeddings",
    ]
    tags += [f"{k.removeprefix('level:')}={v}" for k, v in attrs.items() if k.startswith("level:")]
    if params.rule_violations:
        tags.append("breaks-rule")
    if "baseline" in attrs:  # a point of study.enqueue
        tags += ["baseline", f"baseline={attrs['baseline']}"]
    return tags


def _reason(e: BaseException) -> str:
    from cpt_harness.train.loop import TrialFailed

    if isinstance(e, TrialFailed):
        return redact(str(e))
    name = type(e).__name__
    if "OutOfMemory" in name:
        return f"out of memory: {e}".split("\n")[0][:300] + " (lower train.batch_size or model.max_seq_length)"
    return redact(f"{name}: {e}".split("\n")[0][:500])


def _write_error(trial_dir: Path, e: BaseException) -> None:
    trial_dir.mkdir(parents=True, exist_ok=True)
    (trial_dir / "error.log").write_text(redact("".join(traceback.format_exception(e))))


def _free_memory() -> None:
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
