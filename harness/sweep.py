"""The sweep: prepare model and data once, open (or resume) the study, run trials until it holds n_trials
complete ones. Failed trials are recorded with their reason and the sweep goes on, up to study.max_failures.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from harness import backends, data, models, report, search_space, storage
from harness.config import Config


class SweepAborted(Exception):
    pass


@dataclass
class Session:
    """What every trial of a study shares, built once per process."""

    cfg: Config
    backend: object
    model_path: str
    corpora: data.Corpora
    study: object
    base: dict


def setup_inputs(cfg: Config, backend) -> tuple[str, data.Corpora]:
    """The base model folder and the tokenized corpora, prepared (and cached) on first use."""
    _quiet_libraries()
    model_path = models.resolve(cfg.model.name)
    tokenizer = backend.load_tokenizer(model_path)
    return model_path, data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)


def setup(cfg: Config, backend=None, log=print) -> Session:
    backend = backend or backends.load(cfg.backend)  # first: unsloth must be imported before transformers
    t = time.perf_counter()
    model_path, corpora = setup_inputs(cfg, backend)
    log(f"[setup] {backend.name} on {backend.device}; model {model_path}; {corpora.describe()} "
        f"({time.perf_counter() - t:.0f} s)")
    fingerprints = {"model": models.fingerprint(model_path), "data": corpora.fingerprint,
                    "search_space": search_space.space_fingerprint(cfg)}
    study = storage.open_study(cfg, fingerprints)
    study.set_user_attr("model_provenance", models.provenance(model_path))
    base = storage.ensure_base_losses(study, lambda: measure_base(backend, model_path, cfg, corpora, log))
    log(f"[setup] base model: domain loss {base['domain_loss']:.4f}, general loss {base['general_loss']:.4f}")
    return Session(cfg, backend, model_path, corpora, study, base)


def measure_base(backend, model_path: str, cfg: Config, corpora: data.Corpora, log=print) -> dict:
    from harness.train import evaluate

    log("[setup] measuring the base model's held-out losses (once per study)")
    model = backend.load_base(model_path, cfg.model)
    out = {name: evaluate(model, blocks, cfg.eval.batch_size, backend.device, backend.autocast)
           for name, blocks in (("domain_loss", corpora.domain_eval), ("general_loss", corpora.general_eval))}
    del model
    return out


def run(cfg: Config, n_trials: int | None = None, log=print) -> Session:
    """Run until the study holds ``n_trials`` complete trials (resuming adds only what is missing)."""
    import optuna

    from harness.objective import Objective, TrialContext
    from harness.tracking import make_tracker

    target = n_trials or cfg.study.n_trials
    session = setup(cfg, log=log)
    study = session.study
    study_dir = Path(cfg.study.output_dir) / cfg.study.name
    tracker = make_tracker(cfg.tracking.wandb, cfg.study.name, study_dir)
    ctx = TrialContext(cfg, session.backend, session.model_path, session.corpora, session.base, tracker, study_dir,
                       progress=_progress_bar)
    objective = Objective(ctx)
    done = storage.count(study, optuna.trial.TrialState.COMPLETE)
    log(f"[sweep] study {cfg.study.name!r}: {done} of {target} trials complete")
    failures = 0
    while storage.count(study, optuna.trial.TrialState.COMPLETE) < target:
        if failures >= cfg.study.max_failures:
            raise SweepAborted(f"{failures} trials failed in this run (study.max_failures={cfg.study.max_failures}); "
                               f"see `cpt-harness report` for their reasons")
        study.optimize(objective, n_trials=1, catch=(Exception,), callbacks=[_after_trial(cfg, study_dir, log)])
        last = study.get_trials(deepcopy=False)[-1]
        failures += last.state == optuna.trial.TrialState.FAIL
    log(report.table(study, session.base))
    return session


def _after_trial(cfg: Config, study_dir: Path, log):
    def callback(study, trial) -> None:
        log(report.trial_line(trial))
        if cfg.study.keep_adapters == "pareto":
            prune_adapters(study, study_dir)

    return callback


def prune_adapters(study, study_dir: Path) -> None:
    """Keep the adapters of Pareto-front trials only; the rest are deleted to bound disk use."""
    front = {t.number for t in storage.pareto_front(study)}
    for t in study.get_trials(deepcopy=False):
        if t.number not in front:
            shutil.rmtree(study_dir / f"trial-{t.number:04d}" / "adapter", ignore_errors=True)


class _progress_bar:
    """A progress bar per trial (stderr), closed when the trial ends."""

    def __init__(self, number: int, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, desc=f"trial {number}", unit="step", leave=False, file=sys.stderr,
                        dynamic_ncols=True, mininterval=1.0)

    def __call__(self, step: int, loss: float) -> None:
        self.bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        self.bar.close()


def _quiet_libraries() -> None:
    import logging

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures get our own one-line report
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    logging.getLogger("peft").setLevel(logging.ERROR)
