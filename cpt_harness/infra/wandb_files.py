"""Read W&B's offline run files (``run-*.wandb``) back without syncing them: what a sweep really logged.

The file is a LevelDB-style log (32 KiB blocks of CRC-framed chunks) after a 7-byte ``:W&B`` header; each
record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

BLOCK = 32768
HEADER = 7


def _records(path: Path):
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too small for a chunk header: skip to the next block
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += BLOCK - pos % BLOCK
            continue
        chunk, pos = data[pos : pos + length], pos + length
        if kind == 1:  # FULL
            yield chunk
        elif kind == 2:  # FIRST
            pending = chunk
        elif kind == 3:  # MIDDLE
            pending += chunk
        elif kind == 4:  # LAST
            yield pending + chunk
            pending = b""


@dataclass
class OfflineRun:
    path: Path
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    exit_code: int | None = None
    run_id: str = ""
    resume: bool = False  # wandb.init(resume=...) was set: `wandb sync` resumes the run this file continues
    metrics: dict = field(default_factory=dict)  # define_metric: name -> {step_metric, summary: [min, last, ...]}
    artifacts: list[dict] = field(default_factory=list)  # log_artifact: name, type, aliases, metadata, manifest


def _artifact(rec) -> dict:
    return {
        "name": rec.name,
        "type": rec.type,
        "aliases": list(rec.aliases),
        "digest": rec.digest,
        "metadata": json.loads(rec.metadata) if rec.metadata else {},
        "manifest": [
            {"path": e.path, "ref": e.ref, "size": e.size, "digest": e.digest, "local_path": e.local_path}
            for e in rec.manifest.contents
        ],
    }


def _metric(rec) -> dict:
    summary = [f.name for f, v in rec.summary.ListFields() if v is True]
    return {"step_metric": rec.step_metric, "summary": summary}


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def read_run(path: Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    run = OfflineRun(path)
    for raw in _records(path):
        rec = pb.Record()
        rec.ParseFromString(raw)
        kind = rec.WhichOneof("record_type")
        if kind == "run":
            run.name, run.group, run.job_type = rec.run.display_name, rec.run.run_group, rec.run.job_type
            run.tags, run.run_id, run.resume = list(rec.run.tags), rec.run.run_id, rec.run.resume
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in rec.config.update})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in rec.summary.update if _key(i)})
        elif kind == "metric" and rec.metric.name:
            run.metrics[rec.metric.name] = _metric(rec.metric)
        elif kind == "artifact":
            run.artifacts.append(_artifact(rec.artifact))
        elif kind == "exit":
            run.exit_code = rec.exit.exit_code
    return run


def read_runs(wandb_dir: Path) -> list[OfflineRun]:
    return [read_run(p) for p in sorted(Path(wandb_dir).rglob("offline-run-*/run-*.wandb"))]


# --brief: the final results only (the study database holds the curves and the audit)
BRIEF = (
    "domain_loss",
    "general_loss",
    "general_kl",
    "forgetting",
    "train_loss",
    "tokens_per_s",
    "tokens_seen",
    "train_time_s",
    "peak_memory_gb",
)


def summaries(wandb_dir: Path, brief: bool = False) -> list[dict]:
    """Per run: name, group, job type, exit code, Optuna params, summary and eval curve (for reports/); ``brief``:
    without the curve, and the summary's final results only (BRIEF and their per-corpus forms)."""
    out = []
    for run in read_runs(wandb_dir):
        curve = [
            {k: v for k, v in row.items() if k == "tokens_seen" or k.startswith("eval/")}
            for row in run.history
            if any(k.startswith("eval/") for k in row)
        ]
        summary = {
            k: v for k, v in run.summary.items() if not k.startswith("_") and (not brief or k.split("/")[0] in BRIEF)
        }
        out.append(
            {
                "run": run.name,
                "group": run.group,
                "job_type": run.job_type,
                "tags": run.tags,
                "exit_code": run.exit_code,
                "optuna_params": run.config.get("optuna_params"),
                "arm": run.config.get("arm"),
                "seed": run.config.get("seed"),
                "summary": summary,
                **({} if brief else {"eval_curve": curve}),
                "artifacts": [{k: a[k] for k in ("name", "type", "aliases", "digest")} for a in run.artifacts],
            }
        )
    return out


if __name__ == "__main__":  # python -m cpt_harness.infra.wandb_files WANDB_DIR [--brief] > summaries.json
    import sys

    args = [a for a in sys.argv[1:] if a != "--brief"]
    if len(args) != 1 or not Path(args[0]).is_dir():
        sys.exit(
            "usage: python -m cpt_harness.infra.wandb_files WANDB_DIR [--brief]  (a study's W&B folder, e.g. "
            "runs/<study>/wandb)"
        )
    brief = "--brief" in sys.argv
    print(json.dumps(summaries(Path(args[0]), brief), indent=None if brief else 1, default=str))
