"""Where a training step's time goes: the harness trial benchmarks.throughput times (``synthetic_trial``), with per-step wall times
and a torch.profiler table over a few steady-state steps. A diagnostic, not a benchmark of record.

    python -m benchmarks.profile_step --backend unsloth --shape smollm2-135m --batch 16 --seq 512
    python -m benchmarks.profile_step --backend peft --shape tiny --batch 4 --seq 64 --steps 12   # CPU smoke run
    python -m benchmarks.profile_step --backend raw-unsloth-fp32emb --shape llama-3.2-1b   # the raw loop (GPU)

``--backend raw-unsloth`` / ``raw-unsloth-fp32emb`` profile ``benchmarks.throughput``'s raw Unsloth loop (the
shape's own batch and sequence length; the second with the trained embedding in float32, as the harness holds
it): the same tables, to set beside the harness's (issue 18, item 2).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", default="unsloth")
    ap.add_argument("--shape", default="smollm2-135m")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--folder", help="existing model folder (else a random-init one is made)")
    ap.add_argument("--no-profile", action="store_true")
    a = ap.parse_args()
    if a.backend.startswith("raw-unsloth"):
        return _raw(a)
    from cpt_harness.model import backends

    backend = backends.load(a.backend)  # first: unsloth before transformers
    from benchmarks.throughput import make_model, synthetic_trial
    from cpt_harness.infra.tracking import Tracker
    from cpt_harness.train.loop import run_trial

    folder = a.folder or tempfile.mkdtemp()
    if not a.folder:
        make_model(a.shape, Path(folder))
    cfg, corpora, params = synthetic_trial(a.shape, folder, a.batch, a.seq, a.steps)
    stamps: list[float] = []
    prof = None if a.no_profile else _profiler(a.steps)

    class Progress:
        def __call__(self, step, loss):
            stamps.append(time.perf_counter())
            if prof is not None:
                prof.step()

        def close(self):
            pass

    if prof is not None:
        prof.start()
    t0 = time.perf_counter()
    result = run_trial(backend, folder, cfg, params, corpora, Tracker(), None, Progress())
    if prof is not None:
        prof.stop()
    gaps = [b - c for b, c in zip(stamps[1:], stamps[:-1])]
    print(
        f"backend {a.backend} shape {a.shape} batch {a.batch} x {a.seq}: first step {stamps[0] - t0:.1f} s after start "
        f"(load {result.timings['load']:.1f} s); steady step median {statistics.median(gaps[5:]) * 1e3:.1f} ms "
        f"-> {a.batch * a.seq / statistics.median(gaps[5:]):,.0f} tok/s; peak {result.metrics['peak_memory_gb']:.2f} GiB"
    )
    for name, g in result.audit["groups"].items():
        print(
            f"  group {name}: lr {g['lr']:g}, {g['parameters']:,} params, dtypes {g['dtypes']}, devices {g['devices']}"
        )
    if prof is not None:
        _tables(prof)


def _profiler(steps: int):
    import torch

    return torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA],
        schedule=torch.profiler.schedule(wait=steps - 8, warmup=2, active=5, repeat=1),
    )


def _tables(prof) -> None:
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=12, max_name_column_width=60))


def _raw(a) -> None:
    import os

    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import unsloth  # noqa: F401  (before transformers, which make_model imports)

    from benchmarks.throughput import make_model, run_raw_unsloth

    folder = a.folder or tempfile.mkdtemp()
    if not a.folder:
        make_model(a.shape, Path(folder))
    prof = None if a.no_profile else _profiler(a.steps)
    if prof is not None:
        prof.start()
    out = run_raw_unsloth(
        a.shape,
        folder,
        a.steps,
        5,
        fp32_embeddings=a.backend == "raw-unsloth-fp32emb",
        masters=a.backend == "raw-unsloth-masters",
        on_step=None if prof is None else prof.step,
    )
    if prof is not None:
        prof.stop()
    print(
        f"{out['mode']} shape {a.shape} batch {out['batch']} x {out['seq']}: {out['tokens_per_s']:,.0f} tok/s; "
        f"peak {out['peak_memory_gb']:.2f} GiB; trainable dtypes {out['trainable_dtypes']}"
    )
    if prof is not None:
        _tables(prof)


if __name__ == "__main__":
    main()
