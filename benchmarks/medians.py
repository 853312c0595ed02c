"""Medians over repeated throughput runs (issue 18: each ratio the median of >= 3 interleaved repeats).

    python -m benchmarks.medians results/throughput-1b-*.json

Each file is one ``benchmarks/throughput.py --out`` result (one repeat: every mode once, on one card). For each
shape and mode: the median tokens/s, MFU and peak memory over the files, and the median over repeats of the
per-repeat ratio to raw-unsloth (and to raw-unsloth-ckpt for *-ckpt modes) of the same file.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def medians(files: list[Path]) -> list[dict]:
    repeats = [json.loads(f.read_text()) for f in files]
    rows: dict[tuple[str, str], dict[str, list[float]]] = {}
    for rep in repeats:
        by = {(r["shape"], r["mode"]): r for r in rep["runs"] if "error" not in r}
        for (shape, mode), r in by.items():
            raw = by.get((shape, "raw-unsloth-ckpt" if mode.endswith("-ckpt") else "raw-unsloth"))
            row = rows.setdefault((shape, mode), {"tokens_per_s": [], "mfu": [], "peak_memory_gb": [], "vs_raw": []})
            row["tokens_per_s"].append(r["tokens_per_s"])
            row["peak_memory_gb"].append(r["peak_memory_gb"])
            if r.get("mfu") is not None:
                row["mfu"].append(r["mfu"])
            if raw is not None:
                row["vs_raw"].append(r["tokens_per_s"] / raw["tokens_per_s"])
    return [
        {
            "shape": s,
            "mode": m,
            "repeats": len(v["tokens_per_s"]),
            **{k: statistics.median(x) if x else None for k, x in v.items()},
        }
        for (s, m), v in sorted(rows.items())
    ]


def main() -> None:
    p = argparse.ArgumentParser(description="Medians over repeated throughput results (one file per repeat).")
    p.add_argument("files", nargs="+", type=Path, metavar="RESULT.json", help="benchmarks.throughput --out files")
    files = p.parse_args().files
    cards = {json.loads(f.read_text())["card"] for f in files}
    print(f"card(s): {', '.join(sorted(cards))}; {len(files)} repeats\n")
    print("| shape | mode | repeats | tokens/s | MFU | peak memory | vs raw (median of per-repeat ratios) |")
    print("|---|---|---|---|---|---|---|")
    for r in medians(files):
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "-"
        vs = f"{r['vs_raw']:.3f}x" if r["vs_raw"] is not None else "-"
        print(
            f"| {r['shape']} | {r['mode']} | {r['repeats']} | {r['tokens_per_s']:,.0f} | {mfu} | "
            f"{r['peak_memory_gb']:.1f} GiB | {vs} |"
        )


if __name__ == "__main__":
    main()
