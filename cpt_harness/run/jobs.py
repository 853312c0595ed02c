"""One ``Job`` type for the three kinds of work the harness runs on a study: a sweep, an ablation and a confirmation.

A job knows its study's own config (an ablation's or a confirmation's, derived from the user's), the design stored
on the study, how many complete trials end it, the plan that claims its trials, and how a worker process is told
to join it. The CLI builds a job once; ``parallel`` and the ``pool`` pass it around, and a worker rebuilds it from
its ``Spec`` (the sweep file, the overrides and the kind), never through the CLI's private functions.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any, Literal

from cpt_harness.analysis import ablation as abl
from cpt_harness.analysis import confirm
from cpt_harness.config import Config
from cpt_harness.config.validate import load_config
from cpt_harness.errors import ConfigError
from cpt_harness.infra import urls
from cpt_harness.reporting import tables as report
from cpt_harness.run import sweep
from cpt_harness.search import study as storage

Kind = Literal["sweep", "ablation", "confirm"]


@dataclass(frozen=True)
class Spec:
    """What a worker needs to rebuild a job in its own process: plain values (a pool's job file holds them)."""

    kind: Kind
    config: str  # the sweep file's path
    overrides: list[str] = field(default_factory=list)  # --set key=value
    n_trials: int | None = None  # a sweep's target
    top: int = confirm.DEFAULT_TOP  # a confirmation's settings and new seeds
    seeds: int = confirm.DEFAULT_SEEDS

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "config": self.config,
            "overrides": list(self.overrides),
            "n_trials": self.n_trials,
            "top": self.top,
            "seeds": self.seeds,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        return cls(
            d["kind"],
            d["config"],
            list(d.get("overrides") or []),
            d.get("n_trials"),
            d.get("top", confirm.DEFAULT_TOP),
            d.get("seeds", confirm.DEFAULT_SEEDS),
        )

    def worker_flags(self, target: int) -> list[str]:
        """`cpt-harness worker CONFIG` flags that rebuild this job (the overrides follow as --set)."""
        kind = {
            "sweep": [],
            "ablation": ["--ablation"],
            "confirm": ["--confirm", "--top", str(self.top), "--seeds", str(self.seeds)],
        }[self.kind]
        return ["--n-trials", str(target), *kind]


@dataclass
class Job:
    spec: Spec
    source: Config  # the user's config, as loaded
    cfg: Config  # the study's own
    target: int  # complete trials that end it
    attrs: dict | None = None  # the design stored on the study (and in its fingerprint)
    plan: Any = None  # claims the trials (AblationPlan, ConfirmPlan); None: the sweep's own SweepPlan
    confirmation: confirm.Job | None = None

    @property
    def kind(self) -> Kind:
        return self.spec.kind

    @property
    def study_name(self) -> str:
        return self.cfg.study.name

    @property
    def flags(self) -> list[str]:
        return self.spec.worker_flags(self.target)


def build(spec: Spec, cfg: Config | None = None, log=print) -> Job:
    """The job ``spec`` names (``cfg``: the sweep file already loaded with the spec's overrides)."""
    if cfg is None:  # a worker: the storage URL comes through the environment, never a command line or job file
        storage_url = os.environ.get(urls.ENV_STORAGE)
        cfg = load_config(
            spec.config, [*spec.overrides, *([f"study.storage={json.dumps(storage_url)}"] if storage_url else [])]
        )
    if spec.kind == "sweep":
        return Job(spec, cfg, cfg, spec.n_trials or cfg.study.n_trials)
    if spec.kind == "ablation":
        acfg = abl.study_config(cfg)
        plan = abl.AblationPlan(acfg)
        return Job(spec, cfg, acfg, plan.target, abl.design(cfg), plan)
    sweep_study = storage.load_if_exists(storage.make_storage(cfg.study.storage), cfg.study.name)
    if sweep_study is None:
        raise ConfigError(
            [
                f"no study {cfg.study.name!r} in {urls.redact(cfg.study.storage)}; run "
                "`cpt-harness sweep` first: a confirmation re-runs a sweep's best settings"
            ],
            "confirm",
        )
    c = confirm.prepare(cfg, sweep_study, spec.top, spec.seeds, log)
    return Job(spec, cfg, c.cfg, c.plan.target, c.attrs, c.plan, c)


def setup(job: Job, log=print, worker: int = 0) -> sweep.Session:
    """The job's study opened (or created with its design), model and data ready; a confirmation checked against
    its sweep before any trial."""
    session = sweep.setup(job.cfg, log=log, worker=worker, study_attrs=job.attrs)
    if job.confirmation is not None:
        confirm.begin(session, job.confirmation)
    return session


def run(job: Job, log=print) -> sweep.Session:
    """One process: every trial of the job, then what it found (the table; the verdicts; the recommendation)."""
    session = setup(job, log)
    if job.kind == "sweep":
        sweep.work(session, job.target, log=log)
    else:
        sweep.work(session, log=log, plan=job.plan)
    log(report.table(session.study, session.base))
    if job.kind == "ablation":
        a = job.source.ablation
        log(report.effects_text(session.study, a.min_effect, a.match_levels))
    elif job.kind == "confirm":
        sweep_study = storage.load_if_exists(storage.make_storage(job.source.study.storage), job.source.study.name)
        log(confirm.summary_line(confirm.recommend(sweep_study, job.source.study.max_forgetting, session.study)))
    return session


def run_worker(job: Job, label: str | None, index: int) -> None:
    """`cpt-harness worker` (and a pool's worker): join (or create) the job's study and work until it is done."""
    session = setup(job, worker=index)
    label = label or socket.gethostname()
    if job.kind == "sweep":
        sweep.work(session, job.target, label=label)
    else:
        sweep.work(session, label=label, plan=job.plan)
