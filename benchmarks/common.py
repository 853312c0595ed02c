"""What every benchmark does the same way: run a worker in a process of its own and read its result from the
last line of its output that starts with a marker; stamp results with the date and the card they ran on; write
them as JSON; name result files ``benchmarks/results/<machine>-<date>-<name>``.

The benchmarks are modules of the package ``benchmarks``, run from the repository root (``python -m
benchmarks.throughput ...``), and so are their workers (``command``). Nothing here imports torch at import time:
a worker must be able to import Unsloth before transformers.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
MARKER = "RESULT "


def command(module: str, *args: str) -> list[str]:
    """``python -m MODULE ARGS`` with this interpreter: a worker, or a benchmark started by another."""
    return [sys.executable, "-m", module, *args]


def worker_env(**extra: str) -> dict[str, str]:
    """This process's environment with the repository first on PYTHONPATH (so ``-m benchmarks.x`` and
    ``cpt_harness`` resolve whatever the folder), plus ``extra``."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, **extra}


def emit(result: dict, marker: str = MARKER) -> None:
    """A worker's result: one line, ``marker`` then JSON, flushed."""
    print(marker + json.dumps(result), flush=True)


def parse(output: str, marker: str = MARKER) -> dict | None:
    """The result a worker emitted: its last line starting with ``marker``, as JSON; None if there is none."""
    lines = [ln for ln in output.splitlines() if ln.startswith(marker)]
    return json.loads(lines[-1].removeprefix(marker)) if lines else None


def run(cmd: list[str], marker: str = MARKER, env: dict[str, str] | None = None) -> dict:
    """Run one worker to its end and return its result; on failure (no result line, or a non-zero exit) the tails
    of its output go to stderr and ``{"error": its last stderr line}`` comes back instead."""
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env or worker_env())
    result = parse(proc.stdout, marker)
    if result is not None and proc.returncode == 0:
        return result
    print(proc.stdout[-3000:], proc.stderr[-6000:], file=sys.stderr)
    last = proc.stderr.strip().splitlines()
    return {"error": last[-1] if last else f"no result (exit status {proc.returncode})"}


def start(cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
    """Start a worker that runs beside others (stdout and stderr together); ``finish`` collects it."""
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or worker_env())


def finish(proc: subprocess.Popen, marker: str = MARKER) -> tuple[dict | None, str]:
    """Wait for a started worker: (its result, or None when it failed or emitted none; all its output)."""
    out, _ = proc.communicate()
    result = parse(out, marker)
    return (result if proc.returncode == 0 else None), out


def today() -> str:
    return datetime.date.today().isoformat()


def cards() -> list[str]:
    """The names of the visible CUDA devices ([] without CUDA or torch)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]


def card() -> str:
    """The first CUDA device's name, or "cpu"."""
    return (cards() or ["cpu"])[0]


def machine() -> str:
    """A short name of this machine for result files: "cpu", or the card's model and count ("h200", "h200x2")."""
    names = cards()
    if not names:
        return "cpu"
    model = next((w for w in names[0].replace("-", " ").split() if any(c.isdigit() for c in w)), names[0])
    return model.lower() + (f"x{len(names)}" if len(names) > 1 else "")


def results_path(name: str, machine_name: str | None = None) -> Path:
    """``benchmarks/results/<machine>-<date>-<name>``, where the committed results live."""
    return RESULTS / f"{machine_name or machine()}-{today()}-{name}"


def write_json(path: str | Path, obj) -> None:
    """Write ``obj`` as indented JSON (the folder made if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")
