"""Data preparation at continued-pretraining scale, on a CPU: tokens/s, peak memory and disk of building the data
cache from a >= 1 GB text corpus, against the data path before issue 17; and the memory of 8 workers attached to
one 10^9-token packed file.

    python -m benchmarks.data_prepare [--gb 1.0] [--baseline-mb 100] [--workers 8] [--num-proc auto]
                                      [--tmp /tmp/cpt-data-bench] [--out benchmarks/results/cpu-DATE-data-prepare.json]

The corpus is built under --tmp (never in the repository) from the shipped corpora (legal, Brown, SOTU, Austen),
repeated until it reaches --gb. Each repetition r inserts the word ``r<r>x`` after every 10th word, so no 13-word
sequence repeats across copies: the held-out documents are then not near-copies of training text (the contamination
filter would drop them all), and the text stays almost all real English and legal prose. The model is the
converted SmolLM2 tokenizer (``builtin:smollm2-135m-instruct``, converted first and not timed).

Measured per build, each in a fresh process (a sampler thread reads /proc every 0.2 s): wall time, training
tokens / s, the peak RSS of the largest process of the build (the main one or a tokenizing worker) and the peak of
its anonymous part (heap; the rest is pages of memory-mapped files, which the kernel can drop), the peak
summed PSS of the whole process tree (what the build costs the machine), and the cache's disk use. The baseline is
cpt_harness/data.py as of commit d24f500 (before the streamed path), on the first --baseline-mb of the same corpus.
The attach test tiles the built training blocks to 10^9 tokens (4 GB), starts --workers processes that memory-map
it and read every block, and reads each one's RSS and PSS (/proc/PID/smaps_rollup) while all hold it.
"""

from __future__ import annotations

import argparse
import json
import lzma
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from benchmarks import common
from benchmarks.common import ROOT

BASELINE_COMMIT = "d24f500"


def build_corpus(path: Path, gb: float) -> int:
    """A blank-line-separated .txt of at least ``gb`` GB; its size in bytes."""
    if path.exists() and path.stat().st_size >= gb * 1e9:
        return path.stat().st_size
    docs = []
    for name in ("legal", "brown", "sotu", "austen"):
        with lzma.open(ROOT / "cpt_harness" / "corpora" / f"{name}.jsonl.xz", "rt") as fh:
            docs += [" ".join(json.loads(line)["text"].split()) for line in fh]
    size, r = 0, 0
    with open(path, "w") as out:
        while size < gb * 1e9:
            for doc in docs:
                words = doc.split(" ")
                text = " ".join(w if (i + 1) % 10 else f"{w} r{r}x" for i, w in enumerate(words)) + "\n\n"
                out.write(text)
                size += len(text.encode())
            r += 1
    return size


def head(src: Path, dst: Path, mb: float) -> None:
    """The first ``mb`` MB of a corpus, cut at a document boundary."""
    if dst.exists():
        return
    with open(src) as fh, open(dst, "w") as out:
        size = 0
        for line in fh:
            out.write(line)
            size += len(line.encode())
            if size >= mb * 1e6 and not line.strip():
                break


BUILD = """
import json, sys, time
{import_data}
from cpt_harness.config import DataConfig, DataSource
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({model!r})
cfg = DataConfig(domain=DataSource({corpus!r}), general=DataSource("builtin:brown"))
{num_proc}
t = time.perf_counter()
c = data.prepare(cfg, tok, 2048, 16384)
print({marker!r} + json.dumps({{"seconds": time.perf_counter() - t, "fingerprint": c.fingerprint, "stats": c.stats}}))
"""


def measure_build(corpus: Path, cache: Path, model: str, baseline: bool, num_proc: str) -> dict:
    """Build the data cache for ``corpus`` in a fresh process, sampling its process tree's memory."""
    if baseline:
        old = cache / "old_data.py"
        source = subprocess.check_output(
            ["git", "-C", str(ROOT), "show", f"{BASELINE_COMMIT}:harness/data.py"], text=True
        )
        # The package was named harness then: its imports point at today's cpt_harness, as they did at today's harness
        old.write_text(re.sub(r"^from harness([. ])", r"from cpt_harness\1", source, flags=re.MULTILINE))
        import_data = (
            f"import importlib.util; s = importlib.util.spec_from_file_location('old_data', {str(old)!r}); "
            "data = importlib.util.module_from_spec(s); sys.modules['old_data'] = data; "
            "s.loader.exec_module(data); from pathlib import Path; "
            f"data.CORPORA_DIR = Path({str(ROOT / 'cpt_harness' / 'corpora')!r})"
        )
        procs = ""
    else:
        import_data = "from cpt_harness import data"
        procs = "" if num_proc == "auto" else f"cfg.num_proc = {int(num_proc)}"
    script = BUILD.format(
        import_data=import_data, model=model, corpus=str(corpus), num_proc=procs, marker=common.MARKER
    )
    started = time.perf_counter()
    proc = common.start([sys.executable, "-c", script], common.worker_env(CPT_HARNESS_CACHE=str(cache)))
    peaks = {"max_process_rss": 0, "max_process_anon": 0, "tree_pss": 0, "tree_rss": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            tree = [proc.pid] + children(proc.pid)
            mem = [memory(p) for p in tree]
            mem = [m for m in mem if m]
            if mem:
                peaks["max_process_rss"] = max(peaks["max_process_rss"], max(m["rss"] for m in mem))
                peaks["max_process_anon"] = max(peaks["max_process_anon"], max(m["anon"] for m in mem))
                peaks["tree_pss"] = max(peaks["tree_pss"], sum(m["pss"] for m in mem))
                peaks["tree_rss"] = max(peaks["tree_rss"], sum(m["rss"] for m in mem))
            time.sleep(0.2)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result, out = common.finish(proc)
    done.set()
    thread.join()
    if result is None:
        raise SystemExit(f"build failed (exit status {proc.returncode}):\n{out[-3000:]}")
    folder = cache / "data" / result["fingerprint"]
    tokens = result["stats"]["domain_train"]["tokens"]
    return {
        "corpus": str(corpus),
        "corpus_bytes": corpus.stat().st_size,
        "wall_s": time.perf_counter() - started,
        "build_s": result["seconds"],
        "train_tokens": tokens,
        "tokens_per_s": tokens / result["seconds"],
        "peak_rss_gb_largest_process": peaks["max_process_rss"] / 2**30,
        "peak_anon_gb_largest_process": peaks["max_process_anon"] / 2**30,
        "peak_pss_gb_process_tree": peaks["tree_pss"] / 2**30,
        "peak_rss_gb_process_tree": peaks["tree_rss"] / 2**30,
        "disk_gb": sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**30,
        "stats": {k: result["stats"][k] for k in ("domain_train", "domain_eval", "contamination")},
        "folder": str(folder),
    }


def children(pid: int) -> list[int]:
    try:
        kids = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in children(k)]


def memory(pid: int) -> dict | None:
    """RSS, PSS and anonymous memory (heap, not file pages) of a process in bytes (smaps_rollup), or None once
    it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    values = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in text.splitlines()[1:] if line.endswith("kB")}
    return {"rss": values.get("Rss", 0), "pss": values.get("Pss", 0), "anon": values.get("Anonymous", 0)}


ATTACH = """
import sys, numpy as np
a = np.load(sys.argv[1], mmap_mode="r")
total = 0
for i in range(0, len(a), 4096):
    total += int(a[i : i + 4096, ::256].sum())  # touches every page of these rows (256 int32 = 1 KiB apart)
    total += int(a[i : i + 4096, -1].sum())
print("ready", flush=True)
sys.stdin.readline()
"""


def measure_attach(blocks: Path, big: Path, workers: int, tokens: int = 10**9) -> dict:
    """Tile ``blocks`` into a ``tokens``-token .npy, attach ``workers`` processes to it, read their RSS and PSS."""
    import numpy as np

    src = np.load(blocks, mmap_mode="r")
    n_blocks = tokens // src.shape[1] + (tokens % src.shape[1] > 0)
    if not big.exists() or np.load(big, mmap_mode="r").shape[0] != n_blocks:
        out = np.lib.format.open_memmap(big, mode="w+", dtype=np.int32, shape=(n_blocks, src.shape[1]))
        for i in range(0, n_blocks, len(src)):
            out[i : i + len(src)] = src[: n_blocks - i]
        out.flush()
        del out
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", ATTACH, str(big)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(workers)
    ]
    started = time.perf_counter()
    for p in procs:
        assert p.stdout.readline().strip() == "ready"
    mem = [memory(p.pid) for p in procs]
    for p in procs:
        p.stdin.write("\n")
        p.stdin.flush()
        p.wait()
    return {
        "file": str(big),
        "file_gb": big.stat().st_size / 2**30,
        "tokens": int(n_blocks * src.shape[1]),
        "workers": workers,
        "attach_and_read_s": time.perf_counter() - started,
        "rss_gb_per_worker": [m["rss"] / 2**30 for m in mem],
        "pss_gb_per_worker": [m["pss"] / 2**30 for m in mem],
        "pss_gb_sum": sum(m["pss"] for m in mem) / 2**30,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--baseline-mb", type=float, default=100.0)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--num-proc", default="auto")
    p.add_argument("--tmp", default="/tmp/cpt-data-bench")
    p.add_argument("--out", default=str(common.results_path("data-prepare.json", "cpu")))
    p.add_argument("--skip", default="", help="comma-separated parts to skip: baseline,small,large,attach")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(args.tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    from cpt_harness.model import resolve as models

    model = models.resolve("builtin:smollm2-135m-instruct")
    corpus = tmp / "corpus.txt"
    size = build_corpus(corpus, args.gb)
    small = tmp / f"corpus-{int(args.baseline_mb)}mb.txt"
    head(corpus, small, args.baseline_mb)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu": _cpu_name(),
            "memory_gb": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30,
        },
        "date": common.today(),
        "corpus_bytes": size,
        "builds": {},
    }
    runs = [("baseline", small, True), ("small", small, False), ("large", corpus, False)]
    for name, path, baseline in runs:
        if name in skip:
            continue
        cache = tmp / f"cache-{name}"
        subprocess.run(["rm", "-rf", str(cache)], check=True)
        cache.mkdir()
        print(f"[bench] {name}: building the data cache of {path} ({path.stat().st_size / 1e6:,.0f} MB)", flush=True)
        result["builds"][name] = measure_build(path, cache, model, baseline, args.num_proc)
        print(json.dumps(result["builds"][name], indent=1), flush=True)
    b = result["builds"]
    if "baseline" in b and "small" in b:
        result["speedup_small"] = b["small"]["tokens_per_s"] / b["baseline"]["tokens_per_s"]
    if "large" in b and "attach" not in skip:
        result["attach"] = measure_attach(
            Path(b["large"]["folder"]) / "domain_train.npy", tmp / "tokens-1e9.npy", args.workers
        )
        print(json.dumps(result["attach"], indent=1), flush=True)
    common.write_json(args.out, result)
    print(f"[bench] wrote {args.out}")
    return 0


def _cpu_name() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
