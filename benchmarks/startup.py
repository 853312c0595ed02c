"""Worker start-up: how long N processes started at once take to import a training backend (the first thing a
`cpt-harness worker` does). Results: benchmarks/RESULTS.md.

    python -m benchmarks.startup --backend unsloth --n 1,8,16 --out startup.json
    python -m benchmarks.startup --backend unsloth --n 16 --own-compile-dir --profile prof.txt
    python -m benchmarks.startup --backend peft --n 1,2          # CPU smoke run

For each N, N copies of ``python -c 'cpt_harness.model.backends.load(BACKEND)'`` start together in the current directory
(where Unsloth keeps its generated-module cache, ``unsloth_compiled_cache/``, shared by every worker of a sweep).
Reported: each process's import time (measured inside it) and the spread between the first and the last.
--own-compile-dir gives each process its own UNSLOTH_COMPILE_LOCATION instead, to test whether the shared cache
(written and imported under file locks) is what makes start-up slow when many workers start at once.
--profile: cProfile of process 0 of the largest N, top functions by cumulative time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import common

MARKER = "STARTUP "
CHILD = """
import json, time
t = time.perf_counter()
from cpt_harness.model import backends
backends.load({backend!r})
print({marker!r} + json.dumps({{"import_s": time.perf_counter() - t}}), flush=True)
"""


def run_batch(backend: str, n: int, own_dir: bool, tmp: Path, profile: Path | None) -> dict:
    script = tmp / "child.py"
    script.write_text(CHILD.format(backend=backend, marker=MARKER))
    procs = []
    t0 = time.perf_counter()
    for i in range(n):
        env = common.worker_env(OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // n)))  # as cpt_harness.parallel
        if own_dir:
            env["UNSLOTH_COMPILE_LOCATION"] = str(tmp / f"compile-{n}-{i}")
        cmd = [sys.executable]
        if profile is not None and i == 0:
            cmd += ["-m", "cProfile", "-o", str(profile)]
        cmd += [str(script)]
        procs.append(common.start(cmd, env))
    rows = []
    for i, p in enumerate(procs):
        result, out = common.finish(p, MARKER)
        exited = time.perf_counter() - t0
        row = {"process": i, "rc": p.returncode, "exited_after_s": round(exited, 2)}
        if result is not None:
            row["import_s"] = round(result["import_s"], 2)
        else:
            row["tail"] = out[-2000:]
        rows.append(row)
    times = sorted(r["import_s"] for r in rows if "import_s" in r)
    summary = {"n": n, "own_compile_dir": own_dir, "ok": len(times), "wall_s": round(time.perf_counter() - t0, 2)}
    if times:
        summary.update(min_import_s=times[0], median_import_s=times[len(times) // 2], max_import_s=times[-1])
    return {**summary, "processes": rows}


def top_functions(profile: Path, limit: int = 30) -> str:
    import io
    import pstats

    buf = io.StringIO()
    pstats.Stats(str(profile), stream=buf).sort_stats("cumulative").print_stats(limit)
    return buf.getvalue()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", default="unsloth")
    ap.add_argument("--n", default="1,8,16", help="comma-separated numbers of processes started at once")
    ap.add_argument("--own-compile-dir", action="store_true", help="one UNSLOTH_COMPILE_LOCATION per process")
    ap.add_argument("--profile", type=Path, help="write the cProfile top functions of one process here")
    ap.add_argument("--out", type=Path, help="append the results to this JSON file (a list of runs)")
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.n.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="cpt-startup-") as tmp:
        for n in ns:
            prof = Path(tmp) / "prof.out" if args.profile and n == max(ns) else None
            res = run_batch(args.backend, n, args.own_compile_dir, Path(tmp), prof)
            print(json.dumps({k: v for k, v in res.items() if k != "processes"}), flush=True)
            bad = [r for r in res["processes"] if "import_s" not in r]
            if bad:
                print(
                    f"[startup] {len(bad)} of {n} processes failed; first: rc={bad[0]['rc']}\n{bad[0]['tail']}",
                    file=sys.stderr,
                )
            results.append(res)
            if prof is not None and prof.exists():
                args.profile.write_text(top_functions(prof))
    if args.out:
        old = json.loads(args.out.read_text()) if args.out.exists() else []
        stamp = {"date": common.today(), "device": common.card(), "cpus": os.cpu_count(), "backend": args.backend}
        common.write_json(args.out, old + [{**stamp, **r} for r in results])
    return 0 if all(r["ok"] == r["n"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
