"""Complete trials per hour with K concurrent trials on one GPU, and on several GPUs at the best K.
Results: benchmarks/RESULTS.md.

    python -m benchmarks.parallel sweeps/gpu-legal.yaml --ks 1,2,4,8 --gpus 0,1 --out results.json \\
        --set model.name=/path/to/SmolLM2.gguf
    python -m benchmarks.parallel sweeps/demo.yaml --ks 1,2 --workers --steps 4    # CPU smoke run
    python -m benchmarks.parallel sweeps/gpu-legal.yaml --ks 8 --gpus 0,1,2,3 --pool   # each run on a warm pool

Every trial has the same size: the search space is collapsed to one point (rank --rank, LR --lr, embedding ratio
--ratio), each trial trains --steps steps of the sweep file's batch x sequence length and evaluates once at the
end, with the sweep file's W&B logging. For each K, a fresh study on the first GPU of --gpus runs K x --waves
trials through the same code path as ``cpt-harness sweep --gpus G --trials-per-gpu K``; then the best K runs on
all of --gpus with (number of GPUs x K x --waves) trials. With --workers, K worker processes on the CPU instead.
With --pool, each run's workers are a `cpt-harness pool` started for it and warm (imported) before the sweep is
handed over, so no run pays the workers' import, staggered over 30-45 s with Unsloth, inside its span.

Reported per run:
- trials/hour = complete trials / (last trial's end - first trial's start) x 3600, from the study's own
  timestamps: the sweep's steady rate, without the one-off setup (model conversion, base losses, worker start);
- wall_s: the whole run, setup and worker start included (what a user waits for this many trials);
- mean trial wall time, tokens/s summed over concurrent trials, and the largest per-trial peak GPU memory.
The setup of the first run also converts the model into the cache; later runs reuse it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common


def _fixed_size_overrides(args, tmp: Path) -> list[str]:
    return [
        f"study.storage=sqlite:///{tmp}/bench.db",
        f"study.output_dir={tmp}/runs",
        "study.keep_adapters=none",
        "study.sampler=random",
        f"train.max_steps={args.steps}",
        f"train.eval_every={args.steps}",
        f"search.rank.choices=[{args.rank}]",
        f"search.learning_rate.low={args.lr}",
        f"search.learning_rate.high={args.lr}",
        f"search.embedding_lr_ratio.low={args.ratio}",
        f"search.embedding_lr_ratio.high={args.ratio}",
    ]


def measure(config: str, overrides: list[str], label: str, k: int, gpus: list[int] | None, n_trials: int) -> dict:
    """One run: a fresh study named after ``label``, n_trials trials, K per GPU (or K CPU workers)."""
    import optuna

    from cpt_harness.config.validate import load_config
    from cpt_harness.run import jobs, parallel

    overrides = overrides + [f"study.name=bench-{label}", f"study.n_trials={n_trials}"]
    par = (
        [f"parallel.gpus=[{','.join(map(str, gpus))}]", f"parallel.trials_per_gpu={k}"]
        if gpus
        else [f"parallel.workers={k}"]
    )
    cfg = load_config(config, overrides + par)
    t0 = time.perf_counter()
    rc = parallel.run(jobs.build(jobs.Spec("sweep", config, overrides, n_trials), cfg))
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    row = {"label": label, "k": k, "gpus": gpus, "workers": k * len(gpus or [0]), "n_trials": n_trials}
    return {**row, **summarize(study), "rc": rc, "wall_s": round(wall, 1)}


def measure_pooled(
    config: str, overrides: list[str], label: str, k: int, gpus: list[int] | None, n_trials: int
) -> dict:
    """The same run handed to a warm pool (``--pool``): `cpt-harness pool` with these slots is started in a folder
    of its own and its workers import the backend before the clock starts; then `cpt-harness sweep` hands it the
    study, as a user with a running pool would. Its trials/hour has no workers' staggered start-up in it."""
    import optuna

    from cpt_harness.config.validate import load_config
    from cpt_harness.run import pool

    overrides = overrides + [f"study.name=bench-{label}", f"study.n_trials={n_trials}"]
    cfg = load_config(config, overrides)
    folder = Path(tempfile.mkdtemp(prefix="cpt-bench-pool-"))
    env = {**os.environ, pool.ENV_POOL: str(folder)}
    slots = ["--gpus", ",".join(map(str, gpus)), "--trials-per-gpu", str(k)] if gpus else ["--workers", str(k)]
    log = open(folder / "pool.out", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpt_harness", "pool", *slots, "--backend", cfg.backend],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    try:
        workers, started = k * len(gpus or [0]), time.perf_counter()
        while _imported(folder) < workers:
            if proc.poll() is not None or time.perf_counter() - started > 600:
                raise RuntimeError(
                    f"the pool did not start {workers} workers: {(folder / 'pool.out').read_text()[-2000:]}"
                )
            time.sleep(1.0)
        warm_s = time.perf_counter() - started
        t0 = time.perf_counter()
        rc = subprocess.run(
            [sys.executable, "-m", "cpt_harness", "sweep", config, *[x for o in overrides for x in ("--set", o)]],
            env=env,
        ).returncode
        wall = time.perf_counter() - t0
    finally:
        subprocess.run([sys.executable, "-m", "cpt_harness", "pool", "--stop"], env=env, capture_output=True)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
    study = optuna.load_study(study_name=cfg.study.name, storage=cfg.study.storage)
    row = {
        "label": label,
        "k": k,
        "gpus": gpus,
        "workers": workers,
        "n_trials": n_trials,
        "pool": True,
        "pool_warm_up_s": round(warm_s, 1),
    }
    return {**row, **summarize(study), "rc": rc, "wall_s": round(wall, 1)}


def _imported(folder: Path) -> int:
    """How many of the pool's workers have said they imported the backend (their logs' "imported in" lines)."""
    return sum(
        1
        for p in (folder / "logs").glob("*.log")
        for line in p.read_text().splitlines()
        if line.startswith("[pool]") and "imported in" in line
    )


def summarize(study) -> dict:
    """The measured figures of one benchmark study, from the study's own records."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    failed = [t for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"]
    row = {"complete": len(done), "failed": len(failed)}
    if done:
        start = min(t.datetime_start for t in done)
        end = max(t.datetime_complete for t in done)
        span = (end - start).total_seconds()
        tokens = sum(t.user_attrs["tokens_per_s"] * t.user_attrs["timings"]["train"] for t in done)
        row.update(
            span_s=round(span, 1),
            trials_per_hour=round(len(done) / span * 3600, 1),
            mean_trial_s=round(
                sum((t.datetime_complete - t.datetime_start).total_seconds() for t in done) / len(done), 1
            ),
            mean_trial_tokens_per_s=round(sum(t.user_attrs["tokens_per_s"] for t in done) / len(done)),
            total_tokens_per_s=round(tokens / span),
            peak_memory_gb=round(max(t.user_attrs.get("peak_memory_gb", 0.0) for t in done), 2),
            timings={
                key: round(sum(t.user_attrs["timings"].get(key, 0.0) for t in done) / len(done), 1)
                for key in done[0].user_attrs["timings"]
            },
        )
        # trials/hour above counts from the first trial's start, so workers that start late (16 processes
        # importing unsloth at once) weigh on a short run. Each worker's own rate, summed, leaves that one-off
        # start-up out: the rate a long sweep approaches. The stagger is how late the last worker started.
        by_worker: dict[str, list] = {}
        for t in done:
            by_worker.setdefault(t.user_attrs.get("worker", "?"), []).append(t)
        busy = [
            (len(ts), (max(t.datetime_complete for t in ts) - min(t.datetime_start for t in ts)).total_seconds())
            for ts in by_worker.values()
        ]
        firsts = sorted(min(t.datetime_start for t in ts) for ts in by_worker.values())
        row.update(
            steady_trials_per_hour=round(sum(n / s for n, s in busy if s > 0) * 3600, 1),
            start_stagger_s=round((firsts[-1] - firsts[0]).total_seconds(), 1),
        )
        # Workers keep the base loaded (model.keep_loaded): a worker's first trial loads it from disk, the others
        # copy it. Same run, same trials, so the two compare directly; their losses must agree too.
        by_load: dict[str, list] = {}
        for t in done:
            by_load.setdefault(t.user_attrs.get("base_load") or "?", []).append(t)
        row["by_base_load"] = {}
        for how, group in sorted(by_load.items()):
            row["by_base_load"][how] = {
                "trials": len(group),
                "mean_load_s": round(sum(t.user_attrs["timings"].get("load", 0.0) for t in group) / len(group), 1),
                "domain_loss": [
                    round(min(t.user_attrs["domain_loss"] for t in group), 4),
                    round(max(t.user_attrs["domain_loss"] for t in group), 4),
                ],
            }
    if failed:
        row["fail_reasons"] = sorted({str(t.user_attrs.get("fail_reason"))[:200] for t in failed})
    return row


def _environment() -> dict:
    import torch

    env = {"date": common.today(), "torch": torch.__version__, "cpu_count": os.cpu_count()}
    if common.cards():
        env["gpus"] = common.cards()
        env["gpu_memory_mib"] = [
            torch.cuda.get_device_properties(i).total_memory // 2**20 for i in range(torch.cuda.device_count())
        ]
    if "unsloth" in sys.modules:  # imported by the backend when it is the unsloth one
        env["unsloth"] = sys.modules["unsloth"].__version__
    return env


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--ks", default="1,2,4,8", help="trials per GPU to measure on one GPU")
    p.add_argument("--gpus", default="0", help="GPUs; K runs use the first, the final run all of them")
    p.add_argument("--workers", action="store_true", help="CPU: K worker processes instead of K per GPU")
    p.add_argument(
        "--pool",
        action="store_true",
        help="each run on a warm `cpt-harness pool` started for it (its "
        "workers import the backend before the clock starts), as a user with a running pool has it",
    )
    p.add_argument("--waves", type=int, default=2, help="trials per worker in each run")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rank", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--ratio", type=float, default=0.2)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="JSON results, rewritten after every run")
    p.add_argument(
        "--summarize",
        metavar="DB",
        help="print the figures of every study in a benchmark's database (its bench.db) instead of running anything",
    )
    args = p.parse_args(argv)
    if args.summarize:
        import optuna

        storage = f"sqlite:///{args.summarize}"
        for s in optuna.get_all_study_summaries(storage):
            print(
                json.dumps(
                    {"study": s.study_name, **summarize(optuna.load_study(study_name=s.study_name, storage=storage))}
                )
            )
        return 0

    from cpt_harness.config.validate import load_config
    from cpt_harness.model import backends

    backends.load(load_config(args.config, args.overrides).backend)  # unsloth before transformers
    gpus = None if args.workers else [int(g) for g in args.gpus.split(",")]
    ks = [int(k) for k in args.ks.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="cpt-bench-parallel-"))
    overrides = args.overrides + _fixed_size_overrides(args, tmp)
    results = {
        "environment": _environment(),
        "config": args.config,
        "steps": args.steps,
        "rank": args.rank,
        "lr": args.lr,
        "ratio": args.ratio,
        "waves": args.waves,
        "overrides": args.overrides,
        "runs": [],
    }

    def record(row: dict) -> None:
        results["runs"].append(row)
        print("[bench] " + json.dumps(row), flush=True)
        if args.out:
            common.write_json(args.out, results)

    one = None if gpus is None else gpus[:1]
    run = measure_pooled if args.pool else measure
    suffix = "-pool" if args.pool else ""
    for k in ks:
        record(run(args.config, overrides, f"k{k}-{'cpu' if gpus is None else 'gpu1'}{suffix}", k, one, k * args.waves))
    base = next((r for r in results["runs"] if r["k"] == 1 and r.get("trials_per_hour")), None)
    ok = [r for r in results["runs"] if r.get("trials_per_hour")]
    if not ok:
        return 1
    best = max(ok, key=lambda r: r["trials_per_hour"])
    if gpus and len(gpus) > 1:
        record(
            run(
                args.config,
                overrides,
                f"k{best['k']}-gpu{len(gpus)}{suffix}",
                best["k"],
                gpus,
                len(gpus) * best["k"] * args.waves,
            )
        )
    for r in results["runs"]:
        if base and r.get("trials_per_hour"):
            r["vs_k1_one_gpu"] = round(r["trials_per_hour"] / base["trials_per_hour"], 2)
    if gpus and len(gpus) > 1 and results["runs"][-1].get("trials_per_hour"):
        results["multi_gpu_speedup_at_best_k"] = round(
            results["runs"][-1]["trials_per_hour"] / best["trials_per_hour"], 2
        )
        if results["runs"][-1].get("steady_trials_per_hour") and best.get("steady_trials_per_hour"):
            results["multi_gpu_speedup_at_best_k_steady"] = round(
                results["runs"][-1]["steady_trials_per_hour"] / best["steady_trials_per_hour"], 2
            )
    results["best_k"] = best["k"]
    if args.out:
        common.write_json(args.out, results)
    print(json.dumps({k: v for k, v in results.items() if k != "runs"}, indent=2))
    for r in results["runs"]:
        print(
            f"{r['label']:>12}: {r.get('trials_per_hour', 'n/a')} trials/h, {r['complete']}/{r['n_trials']} "
            f"complete, wall {r['wall_s']} s, x{r.get('vs_k1_one_gpu', '?')} vs K=1"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
