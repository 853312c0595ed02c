"""The table of issue 18's performance goals in docs/gpu.md, rebuilt from the committed GPU results (never typed).

    python scripts/readme_perf_table.py           # rewrite the table between the markers in docs/gpu.md
    python scripts/readme_perf_table.py --check   # exit 1 if the page's table differs from the results

One row per goal of issue 18, and "reported" rows for context (the harness before its fp32 masters, a cold start,
scaling without a pool); every figure computed from the JSON files in benchmarks/results/ (the throughput medians
by benchmarks.medians, as `python -m benchmarks.medians` prints them); only the file names and the goals'
thresholds are written here.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import readme_block  # noqa: E402

from benchmarks.medians import medians  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
PAGE = ROOT / "docs" / "gpu.md"  # the README keeps a one-line summary and a link to it
BEGIN, END = "<!-- perf-table:begin (scripts/readme_perf_table.py) -->", "<!-- perf-table:end -->"

THROUGHPUT = "h200-2026-11-28-throughput-1b-masters-r*.json"  # the harness with train.optim.MasterAdamW
THROUGHPUT_BEFORE = "h200-2026-11-28-throughput-1b-emb-r*.json"  # before it: the embedding held in fp32 in the model
WARM, COLD = "h200-2026-11-28-pool-startup-warm.json", "h200-2026-11-28-pool-startup-cold.json"
K_TABLE = [
    "h200-2026-11-28-parallel-pool-k1-8.json",
    "h200-2026-11-28-parallel-pool-k2-7.json",
    "h200-2026-11-28-parallel-pool-k3-6.json",
    "h200-2026-11-28-parallel-pool-k4-5.json",
]
SCALING = "h200x4-2026-11-28-scaling-pool.json"  # warm pools: each run's workers imported before its clock
SCALING_2 = "h200x2-2026-11-28-scaling-pool.json"
SCALING_COLD = "h200x4-2026-11-28-scaling.json"  # no pool: the workers' imports inside the clock
POOL = "-pool"  # the label suffix of a run on a warm pool (benchmarks.parallel --pool)

SHAPE, BATCH, SEQ = "llama-3.2-1b", 8, 2048
VS_RAW_GOAL = 0.98  # harness tokens/s >= 0.98 x raw Unsloth's
FIRST_STEP_GOAL_S = 20.0  # warm pool: command -> first trial's first step
POOL_WORKERS, POOL_TRIALS = 8, 12
K_GOAL = 3.0  # best K trials per GPU vs K = 1, trials/hour
SCALING_GPUS, SCALING_GOAL = 4, 3.8  # 4 GPUs vs one, trials/hour at the best K


class MissingResult(Exception):
    pass


def _rel(path: Path) -> Path:
    return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path


def _files(pattern: str) -> list[Path]:
    found = sorted(RESULTS.glob(pattern))
    if not found:
        raise MissingResult(f"no result file {_rel(RESULTS)}/{pattern}")
    return found


def _load(path: Path):
    return json.loads(path.read_text())


def _where(paths: list[Path]) -> str:
    return "<br>".join(f"`{_rel(p)}`" for p in paths)


def _one(values, what: str) -> str:
    values = set(values)
    if len(values) != 1:
        raise ValueError(f"{what}: the files disagree ({sorted(values)})")
    return values.pop()


def _met(ok: bool, measured: str, goal: str) -> str:
    return f"**met** ({measured} {'≥' if ok else '<'} {goal})" if ok else f"**not met** ({measured} < {goal})"


def _throughput(pattern: str, modes: tuple[str, ...]) -> tuple[list[Path], dict, str]:
    """The 1B runs of one set of repeat files: their files, benchmarks.medians' rows by mode, and 'card, date'."""
    files = _files(pattern)
    reps = [_load(f) for f in files]
    for f, rep in zip(files, reps):
        for r in rep["runs"]:
            if "error" in r or (r["shape"], r["batch"], r["seq"]) != (SHAPE, BATCH, SEQ):
                raise ValueError(f"{f.name}: run {r['mode']} is not a complete {SHAPE} {BATCH} x {SEQ} run")
    by = {r["mode"]: r for r in medians(files) if r["shape"] == SHAPE}
    for mode in modes:
        if by.get(mode, {}).get("repeats") != len(files):
            raise ValueError(f"{pattern}: mode {mode} is not in every file")
    return files, by, f"{_one((r['card'] for r in reps), 'card')}, {_one((r['date'] for r in reps), 'date')}"


def throughput_rows() -> list[str]:
    files, by, card = _throughput(THROUGHPUT, ("harness-unsloth", "raw-unsloth"))
    h, raw, n = by["harness-unsloth"], by["raw-unsloth"], len(files)
    harness = (
        f"harness {h['tokens_per_s']:,.0f} tokens/s, {100 * h['mfu']:.1f}% MFU; raw Unsloth "
        f"{raw['tokens_per_s']:,.0f}, {100 * raw['mfu']:.1f}% MFU; ratio {h['vs_raw']:.3f}× (median of {n} "
        f"per-repeat ratios); peak memory {h['peak_memory_gb']:.1f} GiB vs raw {raw['peak_memory_gb']:.1f} GiB "
        f"(medians of {n} repeats)"
    )
    ok, ratio = round(h["vs_raw"], 3) >= VS_RAW_GOAL, f"{h['vs_raw']:.3f}×"
    bfiles, bby, bcard = _throughput(THROUGHPUT_BEFORE, ("harness-unsloth", "raw-unsloth"))
    before = bby["harness-unsloth"]
    was = (
        f"{before['tokens_per_s']:,.0f} tokens/s, {100 * before['mfu']:.1f}% MFU, {before['vs_raw']:.3f}× raw "
        f"Unsloth (median of {len(bfiles)} per-repeat ratios); peak memory {before['peak_memory_gb']:.1f} GiB"
    )
    return [
        f"| harness ≥ {VS_RAW_GOAL}× raw Unsloth tokens/s, 1B shape ({SHAPE}, {BATCH} × {SEQ}), harness at its "
        f"defaults (`train.optim.MasterAdamW`: bf16 model, fp32 embedding masters in the optimizer) | {harness} | "
        f"{_met(ok, ratio, f'{VS_RAW_GOAL}×')} | {card} | {_where(files)} |",
        f"| before `train.optim.MasterAdamW` (the trained embedding held in fp32 in the model): reported | {was} | "
        f"reported | {bcard} | {_where(bfiles)} |",
    ]


def _pool(name: str) -> tuple[Path, list[dict], str, float, float]:
    path = _files(name)[0]
    runs = _load(path)
    for r in runs:
        if r["rc"] != 0 or r["complete_trials"] != POOL_TRIALS:
            raise ValueError(f"{name}: a run with rc {r['rc']} and {r['complete_trials']} of {POOL_TRIALS} trials")
    card = f"{_one((r['card'] for r in runs), 'card')}, {_one((r['date'] for r in runs), 'date')}"
    return (
        path,
        runs,
        card,
        statistics.median(r["first_step_s"] for r in runs),
        statistics.median(r["last_end_s"] for r in runs),
    )


def pool_rows() -> list[str]:
    wpath, wruns, wcard, wfirst, wend = _pool(WARM)
    cpath, cruns, ccard, cfirst, cend = _pool(COLD)
    if any(r["workers"] != POOL_WORKERS for r in wruns):
        raise ValueError(f"{WARM}: not {POOL_WORKERS} pool workers")
    of = lambda runs: "" if len(runs) == 1 else f" (median of {len(runs)} runs)"  # noqa: E731
    ok = round(wfirst, 1) <= FIRST_STEP_GOAL_S
    sign = "≤" if ok else ">"
    per_gpu = _one((r["trials_per_gpu"] for r in cruns), "trials_per_gpu")
    gpus = _one((r["gpus"] for r in cruns), "gpus")
    return [
        f"| warm pool: command → first trial's first step ≤ {FIRST_STEP_GOAL_S:g} s ({POOL_WORKERS} workers, "
        f"sweeps/gpu-legal.yaml, {POOL_TRIALS} trials) | first step {wfirst:.1f} s; last of {POOL_TRIALS} trials "
        f"done {wend:.1f} s{of(wruns)} | {'**met**' if ok else '**not met**'} ({wfirst:.1f} s {sign} "
        f"{FIRST_STEP_GOAL_S:g} s) | {wcard} | {_where([wpath])} |",
        f"| cold start, no pool (the command starts its own workers, --gpus {gpus} --trials-per-gpu {per_gpu}, each "
        f"importing the backend): reported | first step {cfirst:.1f} s; last of {POOL_TRIALS} trials done {cend:.1f} s"
        f"{of(cruns)} | reported (the warm pool's first step is {cfirst / wfirst:.1f}× sooner) | {ccard} | "
        f"{_where([cpath])} |",
    ]


def _card(env: dict, used: int) -> str:
    gpus = env["gpus"]
    name = _one(gpus, "gpus")
    if used > len(gpus):
        raise ValueError(f"{used} GPUs used but the host lists {len(gpus)}")
    if used == 1:
        host = f" (1 of the host's {len(gpus)})" if len(gpus) > 1 else ""
        return f"{name}{host}, {env['date']}"
    host = f" (of the host's {len(gpus)})" if used < len(gpus) else ""
    return f"{used} × {name}{host}, {env['date']}"


def _runs_by_label(path: Path) -> tuple[dict, dict[str, dict]]:
    doc = _load(path)
    by = {r["label"]: r for r in doc["runs"]}
    bad = [label for label, r in by.items() if r["complete"] != r["n_trials"]]
    if bad:
        raise ValueError(f"{path.name}: runs with failed trials: {bad}")
    return doc, by


def k_row() -> str:
    paths = [_files(name)[0] for name in K_TABLE]
    docs, runs = [], []
    for path in paths:
        doc, by = _runs_by_label(path)
        docs.append(doc)
        runs += by.values()
    runs.sort(key=lambda r: r["k"])
    if [r["k"] for r in runs] != list(range(1, len(runs) + 1)) or any(
        r["label"] != f"k{r['k']}-gpu1{POOL}" for r in runs
    ):
        raise ValueError(f"{K_TABLE}: not one one-GPU warm-pool run for each K = 1..N")
    cards = {_card(d["environment"], 1) for d in docs}
    if len(cards) != 1:
        raise ValueError(f"{K_TABLE}: the files disagree on the card or date ({sorted(cards)})")
    k1, best = runs[0], max(runs, key=lambda r: r["trials_per_hour"])
    ratio, steady = (
        best["trials_per_hour"] / k1["trials_per_hour"],
        best["steady_trials_per_hour"] / k1["steady_trials_per_hour"],
    )
    per_k = ", ".join(f"{'K=' if r is k1 else ''}{r['k']} {r['trials_per_hour']:.1f}" for r in runs)
    measured = (
        f"{per_k} trials/h; best K = {best['k']}: {ratio:.2f}× K = 1 (steady rate, without the one-off "
        f"set-up: {steady:.2f}×)"
    )
    ok, shown = round(ratio, 2) >= K_GOAL, f"{ratio:.2f}×"
    return (
        f"| K trials per GPU on a warm pool: best K vs K = 1, trials/hour (goal in the issue's first text: "
        f"≥ {K_GOAL:g}×) | {measured} | {_met(ok, shown, f'{K_GOAL:g}×')} | {cards.pop()} | {_where(paths)} |"
    )


def _scaling(name: str, gpus: int, suffix: str) -> tuple[Path, dict, dict, dict, float, float]:
    """One scaling file's 1-GPU and GPUS-GPU runs at its best K, with their ratios (trials/hour, steady rate)."""
    path = _files(name)[0]
    doc, by = _runs_by_label(path)
    k = doc["best_k"]
    one, many = by.get(f"k{k}-gpu1{suffix}"), by.get(f"k{k}-gpu{gpus}{suffix}")
    if one is None or many is None:
        raise ValueError(f"{name}: no runs k{k}-gpu1{suffix} and k{k}-gpu{gpus}{suffix}")
    span = many["trials_per_hour"] / one["trials_per_hour"]
    steady = many["steady_trials_per_hour"] / one["steady_trials_per_hour"]
    for key, mine in (("multi_gpu_speedup_at_best_k", span), ("multi_gpu_speedup_at_best_k_steady", steady)):
        if key in doc and abs(doc[key] - mine) > 0.006:
            raise ValueError(f"{name}: {key} = {doc[key]} but its runs give {mine:.3f}")
    return path, doc, one, many, span, steady


def _scaling_measured(k: int, gpus: int, one: dict, many: dict, span: float, steady: float) -> str:
    return (
        f"K = {k}: 1 GPU {one['trials_per_hour']:.1f}, {gpus} GPUs {many['trials_per_hour']:.1f} trials/h "
        f"({span:.2f}×); steady rate {one['steady_trials_per_hour']:.1f} → {many['steady_trials_per_hour']:.1f} "
        f"({steady:.2f}×); start stagger {one['start_stagger_s']:.1f} → {many['start_stagger_s']:.1f} s"
    )


def scaling_rows() -> list[str]:
    verdict = lambda x: "met" if round(x, 2) >= SCALING_GOAL else "not met"  # noqa: E731
    path, doc, one, many, span, steady = _scaling(SCALING, SCALING_GPUS, POOL)
    met = f"{verdict(span)} ({span:.2f}×) by trials/hour; {verdict(steady)} by steady rate ({steady:.2f}×)"
    out = [
        f"| {SCALING_GPUS} GPUs ≥ {SCALING_GOAL}× one GPU, trials/hour at the best K, warm pools | "
        f"{_scaling_measured(doc['best_k'], SCALING_GPUS, one, many, span, steady)} | **{met}** | "
        f"{_card(doc['environment'], SCALING_GPUS)} | {_where([path])} |"
    ]
    path, doc, one, many, span, steady = _scaling(SCALING_2, 2, POOL)
    out.append(
        f"| 2 GPUs vs one, warm pools: reported | {_scaling_measured(doc['best_k'], 2, one, many, span, steady)}"
        f" | reported ({span / 2:.0%} of linear) | {_card(doc['environment'], 2)} | {_where([path])} |"
    )
    path, doc, one, many, span, steady = _scaling(SCALING_COLD, SCALING_GPUS, "")
    out.append(
        f"| {SCALING_GPUS} GPUs vs one without a pool (each worker imports the backend inside the clock): "
        f"reported | {_scaling_measured(doc['best_k'], SCALING_GPUS, one, many, span, steady)} | "
        f"reported ({verdict(span)} by trials/hour) | {_card(doc['environment'], SCALING_GPUS)} | "
        f"{_where([path])} |"
    )
    return out


def rows() -> list[str]:
    return [
        "| goal | measured | met? | card, date | result file(s) |",
        "|---|---|---|---|---|",
        *throughput_rows(),
        *pool_rows(),
        k_row(),
        *scaling_rows(),
    ]


def table() -> str:
    return "\n".join([BEGIN, *rows(), END])


def main(argv: list[str] | None = None) -> int:
    return readme_block.main(
        argv,
        page=PAGE,
        description=__doc__.split("\n")[0],
        begin=BEGIN,
        end=END,
        block=table,
        source="benchmarks/results/",
        script="scripts/readme_perf_table.py",
        errors=(MissingResult, ValueError, KeyError),
    )


if __name__ == "__main__":
    sys.exit(main())
