"""cpt-harness: a thin command line over harness.sweep / report / config.

    cpt-harness sweep [CONFIG] [--n-trials N] [--workers N | --gpus 0,1 --trials-per-gpu K|auto] [--set k=v ...]
    cpt-harness worker [CONFIG] [--n-trials N] [--label NAME] [--set key=value ...]
    cpt-harness validate [CONFIG] [--set key=value ...]
    cpt-harness report [CONFIG] [--set key=value ...]

CONFIG defaults to sweeps/demo.yaml. Exit codes: 0 ok, 1 the run failed, 2 bad input, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

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

    s = command("sweep", "Run trials until the study holds N complete ones (resumes an existing study).")
    s.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    s.add_argument("--workers", type=int, help="worker processes on a CPU machine (parallel.workers)")
    s.add_argument("--gpus", help="GPUs to run workers on, e.g. 0,1 (parallel.gpus)")
    s.add_argument("--trials-per-gpu", help="concurrent trials per GPU, or auto (parallel.trials_per_gpu)")
    w = command("worker", "Join (or create) the study in CONFIG and run trials until it holds N complete ones.")
    w.add_argument("--n-trials", type=int, help="complete trials wanted (default: study.n_trials)")
    w.add_argument("--label", help="this worker's name in progress and reports (default: the host name)")
    w.add_argument("--index", type=int, default=0, help="distinct per worker: seeds its sampler differently")
    command("validate", "Check a sweep file (prepares nothing): exit 0 with a summary, or 2 listing every problem.")
    command("report", "Print the study's trials and Pareto front from its database.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = _config_path(args.config)
    args.overrides += _parallel_overrides(args)
    try:
        cfg = load_config(path, args.overrides)
        if getattr(args, "n_trials", None) is not None and args.n_trials < 1:
            raise ConfigError([f"--n-trials: must be >= 1, got {args.n_trials}"], str(path))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
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

    try:
        if args.command == "sweep" and (cfg.parallel.gpus or cfg.parallel.workers > 1):
            from harness import parallel

            return parallel.run(cfg, str(_config_path(args.config)), _without_parallel(args.overrides), args.n_trials)
        if args.command == "sweep":
            from harness import sweep

            sweep.run(cfg, n_trials=args.n_trials)
        elif args.command == "worker":
            from harness import sweep

            session = sweep.setup(cfg, worker=args.index)
            sweep.work(session, args.n_trials or cfg.study.n_trials, label=args.label)
        elif args.command == "report":
            return _report(cfg)
    except (BackendUnavailable, DataError, ModelNotFound, StudyMismatch, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SweepAborted as e:
        print(f"error: sweep stopped: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: the study is intact and the running trial is marked FAIL (interrupted); "
              "run the same command again to resume", file=sys.stderr)
        return 130
    return 0


def _without_parallel(overrides: list[str]) -> list[str]:
    """Workers get the same overrides, minus the parallel ones (a worker is one process)."""
    return [o for o in overrides if not o.startswith("parallel.")]


def _report(cfg) -> int:
    import optuna

    from harness import report, storage

    try:
        study = optuna.load_study(study_name=cfg.study.name, storage=storage.make_storage(cfg.study.storage))
    except KeyError:
        print(f"error: no study {cfg.study.name!r} in {cfg.study.storage}; run `cpt-harness sweep` first",
              file=sys.stderr)
        return 2
    print(report.table(study, study.user_attrs.get("base")))
    print()
    print(report.timing_table(study))
    return 0


if __name__ == "__main__":
    sys.exit(main())
