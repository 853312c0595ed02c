"""A sweep's start-up with and without a warm pool: seconds from the command to its first trial's first step, and
to its last trial's end (issue 18). Results: benchmarks/RESULTS.md.

    # warm: a pool already running on this host, its workers imported (its logs say "imported in")
    cpt-harness pool --gpus 0 --trials-per-gpu 8 &
    python -m benchmarks.pool_startup sweeps/gpu-legal.yaml --warm --out warm.json --set study.name=bench-warm
    # cold: the command starts its own workers (each imports the backend), as without a pool
    python -m benchmarks.pool_startup sweeps/gpu-legal.yaml --cold --gpus 0 --trials-per-gpu 8 --out cold.json \\
        --set study.name=bench-cold

Use a new study.name per run (a resumed study has trials already). The first step is taken as the first trial's
start plus its "load" phase (model, LoRA, optimizer, audit: what precedes step 1 in cpt_harness.train.run_trial);
the end as the last trial's completion, both from the study database, against the wall clock when the command
started.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import time
from pathlib import Path


def measure(config: str, warm: bool, overrides: list[str], gpus: str | None, per_gpu: str | None) -> dict:
    from cpt_harness.cli import load_study
    from cpt_harness.config.validate import load_config
    from cpt_harness.run import pool

    running = pool.discover()
    if warm and running is None:
        print(
            f"error: --warm: no pool is running on this host ({pool.pool_dir()}); start `cpt-harness pool` first, "
            "or measure --cold",
            file=sys.stderr,
        )
        sys.exit(2)
    cmd = [sys.executable, "-m", "cpt_harness", "sweep", config] + [x for o in overrides for x in ("--set", o)]
    if not warm:
        cmd += ["--no-pool"] + (["--gpus", gpus] if gpus else []) + (["--trials-per-gpu", per_gpu] if per_gpu else [])
    t0 = time.time()
    rc = subprocess.run(cmd).returncode
    wall = time.time() - t0
    cfg = load_config(config, overrides)
    study = load_study(cfg, cfg.study.name)
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    first_step = min(t.datetime_start.timestamp() + t.user_attrs.get("timings", {}).get("load", 0.0) for t in done)
    last_end = max(t.datetime_complete.timestamp() for t in done)
    return {
        "mode": "warm-pool" if warm else "cold",
        "config": config,
        "overrides": overrides,
        "rc": rc,
        "workers": len(running.slots) if warm else None,
        "gpus": gpus,
        "trials_per_gpu": per_gpu,
        "complete_trials": len(done),
        "first_step_s": first_step - t0,
        "last_end_s": last_end - t0,
        "command_wall_s": wall,
        "date": datetime.date.today().isoformat(),
        "card": _card(),
    }


def _card() -> str:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("config")
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--warm", action="store_true", help="hand the sweep to the running pool")
    mode.add_argument("--cold", action="store_true", help="the sweep starts its own workers (--no-pool)")
    ap.add_argument("--gpus", help="--cold: the sweep's --gpus")
    ap.add_argument("--trials-per-gpu", help="--cold: the sweep's --trials-per-gpu")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", type=Path, help="append the result to this JSON file (a list of runs)")
    args = ap.parse_args()
    result = measure(args.config, args.warm, args.overrides, args.gpus, args.trials_per_gpu)
    print(json.dumps(result, indent=2))
    if args.out:
        runs = json.loads(args.out.read_text()) if args.out.exists() else []
        args.out.write_text(json.dumps(runs + [result], indent=2))


if __name__ == "__main__":
    main()
