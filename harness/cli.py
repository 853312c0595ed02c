"""cpt-harness: a thin command line over harness.sweep / report / config.

    cpt-harness sweep [CONFIG] [--n-trials N] [--workers N | --gpus 0,1 --trials-per-gpu K|auto] [--set k=v ...]
    cpt-harness worker [CONFIG] [--n-trials N] [--label NAME] [--set key=value ...]
    cpt-harness validate [CONFIG] [--set key=value ...]
    cpt-harness prepare [CONFIG] [--set key=value ...]
    cpt-harness ablate [CONFIG] [--from-study CONFIG [--trial N]] [--workers N | --gpus ...] [--set key=value ...]
    cpt-harness confirm [CONFIG] [--top K] [--seeds S] [--workers N | --gpus ...] [--set key=value ...]
    cpt-harness report [CONFIG] [--out DIR] [--ablation] [--set key=value ...]

CONFIG defaults to sweeps/demo.yaml. Exit codes: 0 ok, 1 the run failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from harness import urls
from harness.config import ConfigError, load_config, summary

DEFAULT_CONFIG = "sweeps/demo.yaml"


def _config_path(arg: str | None) -> Path:
    """A path as given; else sweeps/demo.yaml here or in the source checkout the package runs from."""
    if arg:
        path = Path(arg)
        if not path.exists() and not path.suffix and (Path("sweeps") / f"{arg}.yaml").exists():
            return Path("sweeps") / f"{arg}.yaml"  # `cpt-harness sweep demo`
        return path
    here = Path(DEFAULT_CONFIG)
    return here if here.exists() else Path(__file__).resolve().parent.parent / DEFAULT_CONFIG


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="cpt-harness", description="Sweeps for continued pretraining with LoRA.")
    sub = p.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("config", nargs="?", help=f"sweep file (default: {DEFAULT_CONFIG})")
        c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (YAML), e.g. --set search.rank.choices=[64,128]; repeatable")
        return c

    def parallel_flags(c: argparse.ArgumentParser) -> None:
        c.add_argument("--workers", type=int, help="worker processes on a CPU machine (parallel.workers)")
        c.add_argument("--gpus", help="GPUs to run workers on, e.g. 0,1 (parallel.gpus)")
        c.add_argument("--trials-per-gpu", help="concurrent trials per GPU, or auto (parallel.trials_per_gpu)")

    def confirm_flags(c: argparse.ArgumentParser) -> None:
        from harness.confirm import DEFAULT_SEEDS, DEFAULT_TOP

        c.add_argument("--top", type=int, default=DEFAULT_TOP,
                       help=f"settings to confirm: the sweep's best feasible ones (default {DEFAULT_TOP})")
        c.add_argument("--seeds", type=int, default=DEFAULT_SEEDS,
                       help=f"new train.seed values per setting, not used by the sweep (default {DEFAULT_SEEDS})")

    s = command("sweep", "Run trials until the study holds N complete ones (resumes an existing study).")
    s.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    parallel_flags(s)
    a = command("ablate", "Run the factorial ablation in CONFIG (ablation.*), every arm with every seed.")
    a.add_argument("--from-study", metavar="CONFIG", help="take rank, LR and ratio from this sweep's chosen trial")
    a.add_argument("--trial", type=int, help="with --from-study: this trial instead of the chosen one")
    parallel_flags(a)
    c = command("confirm", "Re-run the sweep's best K settings with S new seeds (study <name>-confirm); the report's "
                "recommendation then carries a mean and 95% interval over those seeds.")
    confirm_flags(c)
    parallel_flags(c)
    w = command("worker", "Join (or create) the study in CONFIG and run trials until it holds N complete ones.")
    w.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    w.add_argument("--label", help="this worker's name in progress and reports (default: the host name)")
    w.add_argument("--index", type=int, default=0, help="distinct per worker: seeds its sampler differently")
    w.add_argument("--ablation", action="store_true", help="work on CONFIG's ablation study instead of its sweep")
    w.add_argument("--confirm", action="store_true", help="work on CONFIG's confirmation study (with --top, --seeds)")
    confirm_flags(w)
    command("validate", "Check a sweep file (prepares nothing): exit 0 with a summary, or 2 listing every problem.")
    command("prepare", "Build the model conversion and the data cache (tokenized, packed blocks) without training, "
            "with progress and a summary: a login node or CPU box prepares what the GPU job then finds cached.")
    r = command("report", "Write the study's report (report.md, report.html, figures) and print its table.")
    r.add_argument("--out", help="folder for the report (default: reports/<study>)")
    r.add_argument("--ablation", action="store_true", help="report CONFIG's ablation study instead of its sweep")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Parsed: from here on, whatever reads this process's arguments (W&B records them with every run) sees
    # them with passwords redacted.
    sys.argv[:] = [urls.redact(a) for a in sys.argv]
    path = _config_path(args.config)
    args.overrides += _parallel_overrides(args)
    if os.environ.get(urls.ENV_STORAGE):  # the storage URL, kept off command lines (parallel workers get it so)
        args.overrides.append(f"study.storage={json.dumps(os.environ[urls.ENV_STORAGE])}")
    try:
        if getattr(args, "from_study", None):
            args.overrides += _from_study(args.from_study, args.trial)
        cfg = load_config(path, args.overrides)
        if getattr(args, "n_trials", None) is not None and args.n_trials < 1:
            raise ConfigError([f"--n-trials: must be >= 1, got {args.n_trials}"], str(path))
        if getattr(args, "top", 1) < 1 or getattr(args, "seeds", 2) < 2:
            raise ConfigError([f"--top: must be >= 1, got {args.top}" if args.top < 1 else
                               f"--seeds: a 95% interval needs at least 2 seeds (3 or more advised), got {args.seeds}"],
                              str(path))
    except ConfigError as e:
        _error(e)
        return 2
    if args.command == "validate":
        print(f"ok: {path}: {summary(cfg)}")
        return 0
    return _run(args, cfg)


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


def _run(args, cfg) -> int:
    from harness.backends import BackendUnavailable
    from harness.data import DataError
    from harness.models import ModelNotFound
    from harness.storage import StudyMismatch
    from harness.sweep import SweepAborted
    from harness.urls import StorageError

    try:
        if args.command in ("sweep", "ablate", "confirm") and (cfg.parallel.gpus or cfg.parallel.workers > 1):
            from harness import parallel

            return parallel.run(cfg, str(_config_path(args.config)), _without_parallel(args.overrides),
                                getattr(args, "n_trials", None), ablation=args.command == "ablate",
                                confirm=_confirm_job(cfg, args) if args.command == "confirm" else None)
        if args.command == "prepare":
            from harness import prepare

            prepare.run(cfg)
        elif args.command == "sweep":
            from harness import sweep

            sweep.run(cfg, n_trials=args.n_trials)
        elif args.command == "ablate":
            from harness import sweep

            sweep.run_ablation(cfg)
        elif args.command == "confirm":
            from harness import confirm

            confirm.run(cfg, load_study(cfg, cfg.study.name), args.top, args.seeds)
        elif args.command == "worker" and args.confirm:
            import socket

            from harness import confirm

            confirm.run_worker(cfg, load_study(cfg, cfg.study.name), args.label or socket.gethostname(), args.index,
                               args.top, args.seeds)
        elif args.command == "worker":
            from harness import sweep

            sweep.run_worker(cfg, args.n_trials, args.label, args.index, ablation=args.ablation)
        elif args.command == "report":
            return _report(cfg, args.out, args.ablation)
    except (BackendUnavailable, ConfigError, DataError, ModelNotFound, StudyMismatch, StorageError, ImportError) as e:
        _error(e)
        return 2
    except SweepAborted as e:
        _error(e, "sweep stopped: ")
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the study is intact and the running trial is marked FAIL (interrupted); "
              "run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _confirm_job(cfg, args):
    from harness import confirm

    return confirm.prepare(cfg, load_study(cfg, cfg.study.name), args.top, args.seeds)


def _error(e: Exception, prefix: str = "") -> None:
    print(f"error: {prefix}{urls.redact(str(e))}", file=sys.stderr)


def _without_parallel(overrides: list[str]) -> list[str]:
    """Workers get the same overrides, minus the parallel ones (a worker is one process) and the storage URL,
    which they get through their environment: a command line is visible to every user of the host."""
    return [o for o in overrides if not o.startswith(("parallel.", "study.storage="))]


def _from_study(config: str, number: int | None) -> list[str]:
    """--from-study: the sweep's chosen trial (or trial ``number``) as ablation.* overrides."""
    from harness import report_files

    sweep_cfg = load_config(config)
    study = load_study(sweep_cfg, sweep_cfg.study.name)
    if number is not None:
        trials = [t for t in study.get_trials(deepcopy=False) if t.number == number and t.state.name == "COMPLETE"]
        if not trials:
            raise ConfigError([f"--trial {number}: no complete trial {number} in study {study.study_name!r}"], config)
        trial = trials[0]
    else:
        trial = report_files.choose_trial(study, sweep_cfg.study.max_forgetting)
        if trial is None:
            raise ConfigError([f"--from-study: study {study.study_name!r} has no complete trial yet"], config)
    print(f"[ablate] hyperparameters from trial {trial.number} of study {study.study_name!r}: {trial.params}")
    out = [f"ablation.rank={trial.params['rank']}", f"ablation.learning_rate={trial.params['learning_rate']}"]
    if "embedding_lr_ratio" in trial.params:
        out.append(f"ablation.embedding_lr_ratio={trial.params['embedding_lr_ratio']}")
    return out


def load_study(cfg, name: str):
    import optuna

    from harness import storage

    path = urls.sqlite_path(cfg.study.storage)
    if path is not None:  # reading a study never creates or writes a database
        if not path.is_file() or path.stat().st_size == 0:
            raise ConfigError([f"no study database at {path} (study.storage); run `cpt-harness sweep` "
                               "(or `ablate`) first"], "study")
        if (problem := urls.not_a_study_database(path)) is not None:
            raise ConfigError([f"study.storage: {problem}"], "study")
    try:
        return optuna.load_study(study_name=name, storage=storage.make_storage(cfg.study.storage))
    except KeyError:
        raise ConfigError([f"no study {name!r} in {urls.redact(cfg.study.storage)}; run `cpt-harness sweep` "
                           "(or `ablate`) first"], "study") from None


def _report(cfg, out: str | None, ablation: bool) -> int:
    from harness import ablation as ablation_mod
    from harness import report, report_files

    name = ablation_mod.study_name(cfg) if ablation else cfg.study.name
    try:
        study = load_study(cfg, name)
    except ConfigError as e:
        print(f"error: {urls.redact(e.problems[0])}", file=sys.stderr)
        return 2
    print(report.table(study, study.user_attrs.get("base"), None if ablation else cfg.study.max_forgetting))
    print()
    print(report.effects_text(study, cfg.ablation.min_effect) if ablation else report.timing_table(study))
    if not ablation and study.user_attrs.get("kind") != "ablation":
        from harness import confirm

        print("\n" + confirm.summary_line(confirm.recommend(study, cfg.study.max_forgetting, confirm.load_study(cfg))))
    path = report_files.write(study, cfg, Path(out) if out else Path("reports") / name)
    print(f"\nreport: {path} (and report.html, figures)")
    report_files.log_summary_run(study, cfg, path.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
