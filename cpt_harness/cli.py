"""cpt-harness: a thin command line over cpt_harness.sweep / report / config.

    cpt-harness sweep [CONFIG] [--n-trials N] [--workers N | --gpus 0,1 --trials-per-gpu K|auto] [--set k=v ...]
    cpt-harness worker [CONFIG] [--n-trials N] [--label NAME] [--set key=value ...]
    cpt-harness validate [CONFIG] [--set key=value ...]
    cpt-harness prepare [CONFIG] [--set key=value ...]
    cpt-harness ablate [CONFIG] [--from-study CONFIG [--trial N]] [--workers N | --gpus ...] [--set key=value ...]
    cpt-harness confirm [CONFIG] [--top K] [--seeds S] [--workers N | --gpus ...] [--set key=value ...]
    cpt-harness pool [--gpus 0,1 --trials-per-gpu K | --workers N] [--backend NAME] | --stop
    cpt-harness report [CONFIG] [--out DIR] [--ablation] [--set key=value ...]
    cpt-harness dashboard [CONFIG] [--port N] [--reports DIR] | --wandb [--out FILE] [--set key=value ...]
    cpt-harness export CONFIG OUT [--trial N | --chosen] [--merge] [--base-id NAME] [--set key=value ...]
    cpt-harness init NAME [--from demo|gpu-legal|gpu-ablation]
    cpt-harness explain [KEY]
    cpt-harness env
    cpt-harness --version

CONFIG defaults to sweeps/demo.yaml (here, else the one packaged with cpt-harness). Exit codes: 0 ok, 1 the run stopped (cpt_harness.errors.RunAborted), 2 bad input
(cpt_harness.errors.UserError), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from cpt_harness import __version__
from cpt_harness.config import sweep_files
from cpt_harness.config.validate import load_config, summary
from cpt_harness.errors import ConfigError, HarnessError, SweepAborted
from cpt_harness.infra import urls

DEFAULT_CONFIG = "sweeps/demo.yaml"
_config_path = sweep_files.config_path


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpt-harness", description="Sweeps for continued pretraining with LoRA.")
    p.add_argument("--version", action="version", version=f"cpt-harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("config", nargs="?", help=f"sweep file (default: {DEFAULT_CONFIG})")
        c.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config value (YAML), e.g. --set search.rank.choices=[64,128]; repeatable",
        )
        return c

    def parallel_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("--workers", type=int, help="worker processes on a CPU machine (parallel.workers)")
        c.add_argument("--gpus", help="GPUs to run workers on, e.g. 0,1 (parallel.gpus)")
        c.add_argument("--trials-per-gpu", help="concurrent trials per GPU, or auto (parallel.trials_per_gpu)")
        c.add_argument(
            "--no-pool",
            action="store_true",
            help="start this command's own workers even while a `cpt-harness pool` runs on this host",
        )

    def confirm_flags(c: argparse.ArgumentParser) -> None:
        from cpt_harness.analysis.confirm import DEFAULT_SEEDS, DEFAULT_TOP

        c.add_argument(
            "--top",
            type=int,
            default=DEFAULT_TOP,
            help=f"settings to confirm: the sweep's best feasible ones (default {DEFAULT_TOP})",
        )
        c.add_argument(
            "--seeds",
            type=int,
            default=DEFAULT_SEEDS,
            help=f"new train.seed values per setting, not used by the sweep (default {DEFAULT_SEEDS})",
        )

    s = command("sweep", "Run trials until the study holds N complete ones (resumes an existing study).")
    s.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    parallel_flags(s)
    a = command("ablate", "Run the factorial ablation in CONFIG (ablation.*), every arm with every seed.")
    a.add_argument("--from-study", metavar="CONFIG", help="take rank, LR and ratio from this sweep's chosen trial")
    a.add_argument("--trial", type=int, help="with --from-study: this trial instead of the chosen one")
    parallel_flags(a)
    c = command(
        "confirm",
        "Re-run the sweep's best K settings with S new seeds (study <name>-confirm); the report's "
        "recommendation then carries a mean and 95% interval over those seeds.",
    )
    confirm_flags(c)
    parallel_flags(c)
    w = command("worker", "Join (or create) the study in CONFIG and run trials until it holds N complete ones.")
    w.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    w.add_argument("--label", help="this worker's name in progress and reports (default: the host name)")
    w.add_argument("--index", type=int, default=0, help="distinct per worker: seeds its sampler differently")
    w.add_argument("--ablation", action="store_true", help="work on CONFIG's ablation study instead of its sweep")
    w.add_argument("--confirm", action="store_true", help="work on CONFIG's confirmation study (with --top, --seeds)")
    confirm_flags(w)
    pl = sub.add_parser(
        "pool",
        help="Start warm workers that serve the studies of `sweep`, `ablate` and `confirm` "
        "on this host until Ctrl-C (each imports the training backend once).",
    )
    pl.add_argument("--gpus", help="GPUs to run workers on, e.g. 0,1 (default: CPU workers)")
    pl.add_argument("--trials-per-gpu", type=int, default=1, help="workers (concurrent trials) per GPU (default 1)")
    pl.add_argument("--workers", type=int, default=1, help="worker processes without --gpus (default 1)")
    pl.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "peft", "unsloth"],
        help="the backend the workers import once (default auto); studies with another one do not use the pool",
    )
    pl.add_argument("--stop", action="store_true", help="stop the running pool")
    command("validate", "Check a sweep file (prepares nothing): exit 0 with a summary, or 2 listing every problem.")
    command(
        "prepare",
        "Build the model conversion and the data cache (tokenized, packed blocks) without training, "
        "with progress and a summary: a login node or CPU box prepares what the GPU job then finds cached.",
    )
    r = command("report", "Write the study's report (report.md, report.html, figures) and print its table.")
    r.add_argument("--out", help="folder for the report (default: reports/<study>)")
    r.add_argument("--ablation", action="store_true", help="report CONFIG's ablation study instead of its sweep")
    d = command(
        "dashboard",
        "optuna-dashboard on 127.0.0.1 over the study, its confirmation and its ablation (the "
        "reports as notes, the figures as artifacts); with --wandb, the study's W&B workspace instead.",
    )
    d.add_argument("--port", type=int, default=8080, help="port of optuna-dashboard (default 8080; 0: any free one)")
    d.add_argument(
        "--reports", default="reports", help="where `cpt-harness report` wrote reports/<study>/ (default: reports)"
    )
    d.add_argument(
        "--wandb",
        action="store_true",
        help="build the W&B workspace: saved to W&B when online, else "
        "written as a spec file with the command that saves it later",
    )
    d.add_argument(
        "--out", help="with --wandb offline: the spec file (default: <reports>/<study>/wandb-workspace.json)"
    )
    x = sub.add_parser(
        "export",
        help="Copy the recommended trial's adapter (or trial N's) to OUT with the sweep "
        "file that trains it again; --merge: a standalone model folder that transformers loads.",
    )
    x.add_argument("config", metavar="CONFIG", help="the sweep's file")
    x.add_argument("out", metavar="OUT", help="a new (or empty) folder")
    which = x.add_mutually_exclusive_group()
    which.add_argument("--trial", type=int, help="this complete trial of the sweep")
    which.add_argument("--chosen", action="store_true", help="the report's recommendation (the default)")
    x.add_argument("--merge", action="store_true", help="merge the adapter into the base model")
    x.add_argument(
        "--base-id",
        metavar="NAME",
        help="the base's Hugging Face id, written as the adapter's "
        "base_model_name_or_path and the model card's base_model (default: a builtin: model's hub id; "
        "a local folder's path)",
    )
    x.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, as for the other commands",
    )
    i = sub.add_parser("init", help="Start a sweep file: write ./NAME.yaml from a packaged one, its study named NAME.")
    i.add_argument("name", metavar="NAME", help="the new file's (and study's) name")
    i.add_argument(
        "--from",
        dest="source",
        default=sweep_files.DEFAULT,
        metavar="SWEEP",
        help=f"the packaged file to start from: {', '.join(sweep_files.INIT_SOURCES)} (default {sweep_files.DEFAULT})",
    )
    e = sub.add_parser("explain", help="Every config key (or KEY, or a section) with its type, default and help.")
    e.add_argument("key", nargs="?", metavar="KEY", help="e.g. study.n_trials, or a section such as search")
    sub.add_parser("env", help="What results depend on here: package versions, CUDA, GPUs, Unsloth.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Parsed: from here on, whatever reads this process's arguments (W&B records them with every run) sees
    # them with passwords redacted.
    sys.argv[:] = [urls.redact(a) for a in sys.argv]
    try:
        return _command(args)
    except HarnessError as e:  # bad input exits 2, a run that stopped 1 (cpt_harness/errors.py)
        _error(e, "sweep stopped: " if isinstance(e, SweepAborted) else "")
        return e.exit_code
    except ImportError as e:  # an optional package a setting needs (the message names it)
        _error(e)
        return 2
    except KeyboardInterrupt:
        print(
            "\ninterrupted: the study is intact and the running trial is marked FAIL (interrupted); "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def _command(args) -> int:
    if args.command == "pool":
        return _pool(args)
    if args.command in ("init", "explain", "env"):  # no sweep file to read
        return _no_config_command(args)
    path = _config_path(args.config)
    args.overrides += _parallel_overrides(args)
    if os.environ.get(urls.ENV_STORAGE):  # the storage URL, kept off command lines (parallel workers get it so)
        args.overrides.append(f"study.storage={json.dumps(os.environ[urls.ENV_STORAGE])}")
    if getattr(args, "from_study", None):
        args.overrides += _from_study(args.from_study, args.trial)
    cfg = load_config(path, args.overrides)
    _check_counts(args, path)
    if args.command == "validate":
        print(f"ok: {path}: {summary(cfg)}")
        return 0
    return _run(args, cfg)


def _check_counts(args, path: Path) -> None:
    if getattr(args, "n_trials", None) is not None and args.n_trials < 1:
        raise ConfigError([f"--n-trials: must be >= 1, got {args.n_trials}"], str(path))
    if getattr(args, "top", 1) < 1 or getattr(args, "seeds", 2) < 2:
        raise ConfigError(
            [
                f"--top: must be >= 1, got {args.top}"
                if args.top < 1
                else f"--seeds: a 95% interval needs at least 2 seeds (3 or more advised), got {args.seeds}"
            ],
            str(path),
        )


def _no_config_command(args) -> int:
    if args.command == "init":
        out = sweep_files.init(args.name, args.source)
        print(
            f"wrote {out} (from the packaged {args.source}.yaml); check it with `cpt-harness validate {out}`, "
            f"run it with `cpt-harness sweep {out}`; `cpt-harness explain` describes every key"
        )
    elif args.command == "explain":
        from cpt_harness.config import explain

        print(explain.text(explain.select(args.key)))
    else:
        from cpt_harness.infra import environment

        print(environment.text())
    return 0


def _parallel_overrides(args) -> list[str]:
    """--workers / --gpus / --trials-per-gpu are shorthands for the parallel.* keys."""
    out = []
    if getattr(args, "workers", None) is not None:
        out.append(f"parallel.workers={args.workers}")
    if getattr(args, "gpus", None):
        out.append(f"parallel.gpus=[{args.gpus}]")
    if getattr(args, "trials_per_gpu", None):
        out.append(f"parallel.trials_per_gpu={args.trials_per_gpu}")
    return out


def _pool(args) -> int:
    from cpt_harness.run import pool

    if args.stop:
        return pool.stop()
    gpus = None
    if args.gpus:
        try:
            gpus = [int(g) for g in args.gpus.split(",")]
        except ValueError:
            raise ConfigError(
                [f"--gpus: a comma-separated list of GPU numbers, e.g. 0,1; got {args.gpus!r}"], "pool"
            ) from None
    return pool.serve(gpus, args.trials_per_gpu, args.workers, args.backend)


KINDS = {"sweep": "sweep", "ablate": "ablation", "confirm": "confirm"}


def _job(args, cfg, kind: str):
    """The job a command runs (``run.jobs``): what the workers are told is the sweep file and the overrides less the
    parallel settings, which are the launcher's."""
    from cpt_harness.run import jobs

    spec = jobs.Spec(
        kind,
        str(_config_path(args.config)),
        _without_parallel(args.overrides),
        getattr(args, "n_trials", None),
        getattr(args, "top", None) or jobs.confirm.DEFAULT_TOP,
        getattr(args, "seeds", None) or jobs.confirm.DEFAULT_SEEDS,
    )
    return jobs.build(spec, cfg)


def _run(args, cfg) -> int:
    if args.command in KINDS:
        from cpt_harness.run import jobs, pool, pool_submit

        job = _job(args, cfg, KINDS[args.command])
        if not args.no_pool and pool_submit.usable(running := pool.discover(), cfg):
            return pool_submit.submit_command(running, job)
        if cfg.parallel.gpus or cfg.parallel.workers > 1:
            from cpt_harness.run import parallel

            return parallel.run(job)
        jobs.run(job)
    elif args.command == "prepare":
        from cpt_harness.run import prepare

        prepare.run(cfg)
    elif args.command == "worker":
        from cpt_harness.run import jobs

        kind = "ablation" if args.ablation else "confirm" if args.confirm else "sweep"
        jobs.run_worker(_job(args, cfg, kind), args.label, args.index)
    elif args.command == "report":
        return _report(cfg, args.out, args.ablation)
    elif args.command == "export":
        from cpt_harness.reporting import export

        export.export(
            cfg, load_study(cfg, cfg.study.name), Path(args.out), args.trial, args.merge, base_id=args.base_id
        )
    elif args.command == "dashboard":
        return _dashboard(cfg, args)
    return 0


def _dashboard(cfg, args) -> int:
    """optuna-dashboard until Ctrl-C, or (--wandb) the W&B workspace saved or written."""
    if not 0 <= args.port <= 65535:
        raise ConfigError([f"--port: must be 0-65535, got {args.port}"], "dashboard")
    studies = _dashboard_studies(cfg)
    if args.wandb:
        return _workspace(cfg, args, studies)
    from cpt_harness.reporting import dashboard

    try:
        dashboard.run(cfg, args.port, Path(args.reports))
    except KeyboardInterrupt:
        print("\n[dashboard] stopped")
    except OSError as e:  # the port is taken, or not ours to bind
        raise ConfigError(
            [
                f"--port {args.port}: cannot listen on 127.0.0.1:{args.port} ({e.strerror or e}); "
                "choose another port, or --port 0 for any free one"
            ],
            "dashboard",
        ) from None
    return 0


def _dashboard_studies(cfg) -> list[str]:
    """The names of CONFIG's studies that exist (sweep, confirmation, ablation); none is an error."""
    from cpt_harness.analysis import ablation, confirm

    names = []
    for name in dict.fromkeys([cfg.study.name, confirm.study_name(cfg), ablation.study_name(cfg)]):
        try:
            load_study(cfg, name)
            names.append(name)
        except ConfigError as e:
            if "no study database" in e.problems[0] or "study.storage:" in e.problems[0]:
                raise
    if not names:
        raise ConfigError(
            [
                f"no study {cfg.study.name!r} (nor its confirmation or ablation) in "
                f"{urls.redact(cfg.study.storage)}; run `cpt-harness sweep` (or `ablate`) first"
            ],
            "study",
        )
    return names


def _workspace(cfg, args, studies: list[str]) -> int:
    from cpt_harness.analysis import ablation
    from cpt_harness.infra.tracking import resolve_mode
    from cpt_harness.reporting import workspace

    spec = workspace.spec(cfg, studies, arms=studies == [ablation.study_name(cfg)])
    if resolve_mode(cfg.tracking.wandb.mode) == "online":
        print(f"[dashboard] W&B workspace saved: {workspace.save(spec)}")
        return 0
    path = workspace.write_spec(
        spec, Path(args.out) if args.out else Path(args.reports) / studies[0] / "wandb-workspace.json"
    )
    entity = spec["entity"] or "the default entity of the W&B user who saves it (tracking.wandb.entity sets one)"
    print(
        f"[dashboard] offline: W&B workspace spec written to {path} ({sum(len(s['panels']) for s in spec['sections'])}"
        f" panels over W&B groups {', '.join(studies)}; entity: {entity}).\n"
        f"Once logged in (wandb login), after `wandb sync` of the runs: python -m cpt_harness.reporting.workspace {path}"
    )
    return 0


def _error(e: Exception, prefix: str = "") -> None:
    print(f"error: {prefix}{urls.redact(str(e))}", file=sys.stderr)


def _without_parallel(overrides: list[str]) -> list[str]:
    """Workers get the same overrides, minus the parallel ones (a worker is one process) and the storage URL,
    which they get through their environment: a command line is visible to every user of the host."""
    return [o for o in overrides if not o.startswith(("parallel.", "study.storage="))]


def _from_study(config: str, number: int | None) -> list[str]:
    """--from-study: the sweep's chosen trial (or trial ``number``) as ablation.* overrides."""
    from cpt_harness.reporting import sweep_report

    sweep_cfg = load_config(config)
    study = load_study(sweep_cfg, sweep_cfg.study.name)
    if number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == number and t.state.name == "COMPLETE"]
        if not trials:
            raise ConfigError([f"--trial {number}: no complete trial {number} in study {study.study_name!r}"], config)
        trial = trials[0]
    else:
        trial = sweep_report.choose_trial(study, sweep_cfg.study.max_forgetting)
        if trial is None:
            raise ConfigError([f"--from-study: study {study.study_name!r} has no complete trial yet"], config)
    print(f"[ablate] hyperparameters from trial {trial.number} of study {study.study_name!r}: {trial.params}")
    out = [f"ablation.rank={trial.params['rank']}", f"ablation.learning_rate={trial.params['learning_rate']}"]
    if "embedding_lr_ratio" in trial.params:
        out.append(f"ablation.embedding_lr_ratio={trial.params['embedding_lr_ratio']}")
    return out


def load_study(cfg, name: str):
    import optuna

    from cpt_harness.search import study as storage

    path = urls.sqlite_path(cfg.study.storage)
    if path is not None:  # reading a study never creates or writes a database
        if not path.is_file() or path.stat().st_size == 0:
            raise ConfigError(
                [f"no study database at {path} (study.storage); run `cpt-harness sweep` (or `ablate`) first"], "study"
            )
        if (problem := urls.not_a_study_database(path)) is not None:
            raise ConfigError([f"study.storage: {problem}"], "study")
    try:
        return optuna.load_study(study_name=name, storage=storage.make_storage(cfg.study.storage))
    except KeyError:
        raise ConfigError(
            [f"no study {name!r} in {urls.redact(cfg.study.storage)}; run `cpt-harness sweep` (or `ablate`) first"],
            "study",
        ) from None


def _report(cfg, out: str | None, ablation: bool) -> int:
    from cpt_harness.analysis import ablation as ablation_mod
    from cpt_harness.reporting import report_files
    from cpt_harness.reporting import tables as report

    name = ablation_mod.study_name(cfg) if ablation else cfg.study.name
    study = load_study(cfg, name)
    print(report.table(study, study.user_attrs.get("base"), None if ablation else cfg.study.max_forgetting))
    print()
    print(
        report.effects_text(study, cfg.ablation.min_effect, cfg.ablation.match_levels)
        if ablation
        else report.timing_table(study)
    )
    if not ablation and study.user_attrs.get("kind") != "ablation":
        from cpt_harness.analysis import confirm

        print("\n" + confirm.summary_line(confirm.recommend(study, cfg.study.max_forgetting, confirm.load_study(cfg))))
    shared = (study.user_attrs.get("design") or {}).get("design") == "shared"
    if shared:  # every claim over a grid of match levels
        from cpt_harness.reporting import levels_report
    path = report_files.write(
        study, cfg, Path(out) if out else Path("reports") / name, levels_report.sections if shared else None
    )
    print(f"\nreport: {path} (and report.html, figures)")
    report_files.log_summary_run(study, cfg, path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
