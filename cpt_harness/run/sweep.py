"""The sweep engine: prepare model and data once per process, open (or join) the study, and run trials until
it holds n_trials complete ones. One process or many (cpt_harness.parallel starts workers that each run ``work``
against the same study database); the loop and its failure handling are the same.

Failed trials are recorded with their reason and the sweep goes on, up to study.max_failures per process. A
running trial beats a heartbeat into the database; a trial whose worker died is failed and re-queued by
whichever worker looks next.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from cpt_harness import data
from cpt_harness.config import Config, ConfigError
from cpt_harness.errors import SweepAborted
from cpt_harness.evaluate import evals
from cpt_harness.model import backends
from cpt_harness.model import resolve as models
from cpt_harness.reporting import tables as report
from cpt_harness.search import space as search_space
from cpt_harness.search import study as storage
from cpt_harness.search import trials


@dataclass
class Session:
    """What every trial of a study shares, built once per process."""

    cfg: Config
    backend: object
    model_path: str
    corpora: data.Corpora
    study: object
    base: dict
    db: object  # the study's storage (optuna.storages.RDBStorage), which its trials' heartbeats go to


def setup_inputs(cfg: Config, backend) -> tuple[str, data.Corpora]:
    """The base model folder and the tokenized corpora, prepared (and cached) on first use."""
    _quiet_libraries()
    model_path = models.resolve(cfg.model.name)
    if cfg.model.heal.steps > 0:
        from cpt_harness.train import heal

        model_path = heal.healed_base(model_path, cfg, backend)
    with model_loading(cfg):
        tokenizer = backend.load_tokenizer(model_path)
    return model_path, data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)


def setup(cfg: Config, backend=None, log=print, worker: int = 0, study_attrs: dict | None = None) -> Session:
    """Prepare model, data, study and base losses. ``study_attrs``: extra study attributes that must match on
    resume too (an ablation's design)."""
    t = time.perf_counter()
    backend = backend or backends.load(cfg.backend)  # first: unsloth must be imported before transformers
    imported = time.perf_counter() - t
    _refuse(backend.device_problems(cfg))
    t = time.perf_counter()
    model_path, corpora = setup_inputs(cfg, backend)
    _refuse(backend.model_problems(cfg, model_path))
    log(
        f"[setup] {backend.name} on {backend.device} (imported in {imported:.1f} s); model {model_path}; "
        f"{corpora.describe()} ({time.perf_counter() - t:.0f} s)"
    )
    fingerprints = {
        "model": models.fingerprint(model_path),
        "data": corpora.fingerprint,
        "search_space": search_space.space_fingerprint(cfg, extra=study_attrs),
    }
    db = storage.storage_for(cfg)
    study = storage.open_study(
        cfg,
        fingerprints,
        worker=worker,
        storage=db,
        provenance=models.provenance(model_path),
        inputs={"search_space": search_space.space_payload(cfg, extra=study_attrs)},
        accepted={"search_space": search_space.accepted_fingerprints(cfg, extra=study_attrs)},
    )
    if rebuilt := [r for r in study.user_attrs.get("rebuilt_heals", []) if r["model"] == fingerprints["model"]]:
        log(
            f"[setup] the healed base was rebuilt on this machine (GPU training is not bitwise reproducible): its "
            f"general loss is within {rebuilt[0]['general_loss_delta']:.5f} nats of the study's "
            f"(tolerance {storage.HEAL_TOLERANCE}); resuming"
        )
    for key, value in (study_attrs or {}).items():
        if key not in study.user_attrs:
            study.set_user_attr(key, value)
    if "model_provenance" not in study.user_attrs:
        study.set_user_attr("model_provenance", models.provenance(model_path))
    if "data_stats" not in study.user_attrs:  # document counts, contamination: for the report's header
        study.set_user_attr("data_stats", corpora.stats)
    record_split(study, cfg, corpora)

    def measure() -> dict:
        study_dir = Path(cfg.study.output_dir) / cfg.study.name
        out = measure_base(backend, model_path, cfg, corpora, log, evals_dir=study_dir)
        study.set_user_attr("base_evals_file", evals.BASE_FILE)
        return out

    base = storage.ensure_base_losses(study, cfg.study.storage, measure)
    log(f"[setup] base model: domain loss {base['domain_loss']:.4f}, general loss {base['general_loss']:.4f}")
    return Session(cfg, backend, model_path, corpora, study, base, db)


def record_split(study, cfg: Config, corpora: data.Corpora) -> None:
    """The held-out documents' selection/test split, checked before any trial (too few documents to split is
    bad input) and stored on the study for its report."""
    from cpt_harness.evaluate import metrics

    general = corpora.general_set()
    split = metrics.EvalSplit.of(corpora.domain_set(), general, cfg.eval.test_fraction, cfg.data.seed)
    if split is not None and "eval_split" not in study.user_attrs:
        study.set_user_attr(
            "eval_split", {"test_fraction": cfg.eval.test_fraction, "seed": cfg.data.seed, **split.describe(general)}
        )


@contextlib.contextmanager
def model_loading(cfg: Config):
    """A model that does not load is bad input: one line naming model.name (exit 2), not a traceback."""
    try:
        yield
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().split("\n")[0][:300]
        raise models.ModelNotFound(f"model.name: {cfg.model.name} does not load ({type(e).__name__}: {first})") from e


def _refuse(problems: list[str]) -> None:
    """Settings that only the device or the loaded model show to be wrong: exit 2 before any trial runs."""
    if problems:
        raise ConfigError(problems, "config (checked against this machine and model)")


def measure_base(
    backend, model_path: str, cfg: Config, corpora: data.Corpora, log=print, evals_dir: Path | None = None
) -> dict:
    """The base model's held-out losses (each general corpus's too; with eval.test_fraction, the selection part's
    under the usual names and the test part's as test_*); with ``evals_dir`` (the study folder), its
    per-document results are written there as base_evals.npz. A study calls it once (storage.ensure_base_losses)."""
    from cpt_harness.evaluate import metrics

    log("[setup] measuring the base model's held-out losses (once per study)")
    with model_loading(cfg):
        model = backend.load_base(model_path, cfg.model)
    domain_set, general_set = corpora.domain_set(), corpora.general_set()
    b, device = cfg.eval.batch_size, backend.device
    domain = metrics.doc_losses(model, domain_set, b, device, backend.autocast)
    general = metrics.doc_losses(model, general_set, b, device, backend.autocast)
    del model
    if evals_dir is not None:
        evals.write(
            evals_dir / evals.BASE_FILE,
            evals.Evals.from_checkpoints(
                [(0, 0, domain, general)], general_set.corpus, general_set.names, domain_set.corpus
            ),
        )
    split = metrics.EvalSplit.of(domain_set, general_set, cfg.eval.test_fraction, cfg.data.seed)
    replayed = data.replayed_corpora(cfg.data) if cfg.data.replay is not None else None
    return metrics.held_out_metrics(
        domain, general, general_set, split, replayed, domain_set
    )  # with a split: both parts


def run(cfg: Config, n_trials: int | None = None, log=print) -> Session:
    """One process: run until the study holds ``n_trials`` complete trials, then print the table."""
    session = setup(cfg, log=log)
    work(session, n_trials or cfg.study.n_trials, log=log)
    log(report.table(session.study, session.base))
    return session


class SweepPlan:
    """A sweep: Optuna samples each trial (enqueued points first); done when the study holds ``target`` complete
    trials. Pruned trials do not count, but bound the sweep: it also stops once the study holds
    storage.PRUNED_CAP x target complete and pruned trials together, so that a strict budget or pruner cannot
    keep it running forever."""

    job_type = "trial"

    def __init__(self, cfg: Config, target: int):
        self.cfg, self.target = cfg, target

    def claim(self, study) -> trials.Claim:
        """Under the study's lock: the next trial to run, None to wait for others' running trials, or DONE."""
        from optuna.trial import TrialState

        # One snapshot: counted in two reads, a trial finishing in between (tell is outside the lock) would be
        # missed by both counts, and one trial too many would start.
        states = [t.state for t in study.get_trials(deepcopy=False)]
        complete, running = states.count(TrialState.COMPLETE), states.count(TrialState.RUNNING)
        finished = complete + states.count(TrialState.PRUNED)
        cap = storage.PRUNED_CAP * self.target
        if complete >= self.target or finished >= cap:
            return trials.DONE
        return trials.ask(study) if self.target - complete - running > 0 and finished + running < cap else None

    def config_for(self, trial) -> Config:
        return self.cfg


def work(
    session: Session,
    target: int | None = None,
    log=print,
    label: str | None = None,
    poll_s: float = 2.0,
    plan: trials.Plan | None = None,
) -> None:
    """Claim and run trials until the plan is done (by default: the study holds ``target`` complete trials).

    The claim happens under the study's lock, so several workers never start more trials than are missing. A
    worker with nothing to claim waits while others' trials run: one of them may fail and need a rerun. (The
    protocol itself, claim -> run with a heartbeat -> tell, is cpt_harness.trials.)
    """
    import optuna
    from optuna.trial import TrialState

    from cpt_harness.infra.tracking import make_tracker
    from cpt_harness.search.objective import Objective, TrialContext

    cfg, study = session.cfg, session.study
    plan = plan or SweepPlan(cfg, target or cfg.study.n_trials)
    worker = label is not None  # one of several workers (cpt-harness worker), not a one-process sweep
    label = label or f"{socket.gethostname()}"
    study_dir = Path(cfg.study.output_dir) / cfg.study.name
    tracker = make_tracker(cfg.tracking.wandb, cfg.study.name, study_dir)
    ctx = TrialContext(
        cfg,
        session.backend,
        session.model_path,
        session.corpora,
        session.base,
        tracker,
        study_dir,
        progress=_progress_bar,
        worker=label,
        job_type=plan.job_type,
        config_for=plan.config_for,
    )
    objective = Objective(ctx)
    log(
        f"[sweep] study {cfg.study.name!r}: {storage.count(study, TrialState.COMPLETE)} of {plan.target} "
        "trials complete"
    )
    failures, waiting_said, first = 0, False, True
    while True:
        asked = time.perf_counter()
        trial = trials.claim(study, plan, cfg.study.storage)
        if first and worker and isinstance(trial, optuna.trial.Trial):
            # Where a worker's start-up goes (workers that start late cost a short sweep; benchmarks/RESULTS.md)
            age = process_age()
            log(
                f"[sweep] {label}: first trial {trial.number} claimed"
                + (f" {age:.1f} s after this process started" if age is not None else "")
                + f" (claim {time.perf_counter() - asked:.1f} s)"
            )
            first = False
        if trial is trials.DONE:
            if plan.job_type == "trial" and (why := pruned_out(study, plan.target)):
                log(f"[sweep] {label}: {why}")
            return
        if trial is None:
            if not waiting_said:
                log(f"[sweep] {label}: waiting for the running trials of other workers")
                waiting_said = True
            time.sleep(poll_s)
            continue
        waiting_said = False
        trials.mark_running(trial, cfg)
        finished = trials.run(study, session.db, objective, trial)
        log(report.trial_line(finished))
        if cfg.study.keep_adapters == "pareto" and plan.job_type == "trial":
            prune_adapters(study, study_dir)
        if finished.state == TrialState.FAIL and not (
            plan.job_type == "ablation" and finished.user_attrs.get("diverged")
        ):
            failures += 1
            if failures >= cfg.study.max_failures:
                raise SweepAborted(
                    f"{failures} trials failed in this run (study.max_failures="
                    f"{cfg.study.max_failures}); see `cpt-harness report` for their reasons"
                )


def pruned_out(study, target: int) -> str | None:
    """Why a sweep stopped short of ``target`` complete trials: too many were pruned (storage.PRUNED_CAP)."""
    from optuna.trial import TrialState

    complete = storage.count(study, TrialState.COMPLETE)
    pruned = storage.count(study, TrialState.PRUNED)
    if complete >= target or complete + pruned < storage.PRUNED_CAP * target:
        return None
    return (
        f"stopped with {complete} of {target} trials complete: {pruned} were pruned, and the study holds "
        f"{storage.PRUNED_CAP} x {target} complete and pruned trials; loosen study.max_forgetting, "
        "study.prune_margin or the pruner, or ask for more trials"
    )


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None where that is not known."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def prune_adapters(study, study_dir: Path) -> None:
    """Keep the adapters of Pareto-front trials only (a constrained study's best trial); the rest are deleted to
    bound disk use. (Pruned trials save none.)"""
    front = {t.number for t in storage.pareto_front(study)}
    for t in study.get_trials(deepcopy=False):
        if t.number not in front and t.state.name != "RUNNING":
            shutil.rmtree(study_dir / f"trial-{t.number:04d}" / "adapter", ignore_errors=True)


class _progress_bar:
    """A progress bar per trial (stderr), closed when the trial ends."""

    def __init__(self, number: int, total: int):
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            desc=f"trial {number}",
            unit="step",
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=1.0,
        )

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
