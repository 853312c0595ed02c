"""Which heal makes forgetting measurable? Heals the base with several settings at once (one process per
candidate, spread over --gpus) and records each one's general loss before and after on data.general's
validation documents and on its held-out (test) documents, and the held-out domain loss.

    python -m benchmarks.heal_check sweeps/gpu-ablation.yaml --gpus 0,1 --out heal.json --args-out chosen.txt \\
        --candidate builtin:austen,100,1e-4 --candidate builtin:brown,100,1e-4 --set model.name=/path/to/model.gguf

A candidate is DATA,STEPS,LR; rank and batch size are the config's model.heal ones. When DATA is the config's
data.general, healing reads only its training documents (cpt_harness.heal). The heals land in the harness cache, so
an ablation run afterwards with the chosen settings reuses the healed base instead of healing again.

The chosen candidate is the one that lowered the general loss on the *validation* documents most: the heal that
best repairs general text. Validation documents are split off data.general's training documents
(cpt_harness.data.split_general), disjoint from the held-out documents forgetting is measured on, and never healed on,
so the choice does not fit the base to the test text. The test change is recorded beside it, for the report.
--args-out gets the chosen candidate's --set overrides.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks import common

MARKER = "[heal-check] "


def heal_sets(candidate: str) -> list[str]:
    data, steps, lr = candidate.split(",")
    return [f"model.heal.data={data}", f"model.heal.steps={int(steps)}", f"model.heal.learning_rate={float(lr)}"]


def heal_one(config: str, overrides: list[str]) -> dict:
    """In this process: heal with the config's settings (cached) and return what the heal measured."""
    from cpt_harness.config.validate import load_config
    from cpt_harness.model import backends
    from cpt_harness.model import resolve as models
    from cpt_harness.train import heal

    cfg = load_config(config, overrides + ["backend=peft"])  # healing is transformers + PEFT either way (heal.py)
    backend = backends.load(cfg.backend)
    started = time.perf_counter()
    path = heal.healed_base(models.resolve(cfg.model.name), cfg, backend)
    prov = json.loads((Path(path) / "provenance.json").read_text())
    return {
        "path": path,
        "seconds": round(time.perf_counter() - started, 1),
        "heal": prov["heal"],
        "validation": prov["heal_validation"],
        "held_out": prov["heal_held_out"],
        "train_loss_first_last": prov["heal_loss_first_last"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--candidate", action="append", default=[], metavar="DATA,STEPS,LR")
    p.add_argument("--gpus", default="", help="GPUs to spread the candidates over (round robin); none: CPU")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", help="JSON results")
    p.add_argument("--args-out", help="the chosen candidate's --set overrides, one per line")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: heal one candidate in this process
    args = p.parse_args(argv)
    if args.one:
        common.emit(heal_one(args.config, args.overrides + heal_sets(args.one)), MARKER)
        return 0
    if not args.candidate:
        p.error("name at least one --candidate DATA,STEPS,LR")
    for c in args.candidate:
        try:
            heal_sets(c)
        except ValueError:
            p.error(f"--candidate {c!r}: expected DATA,STEPS,LR, e.g. builtin:austen,100,1e-4")
    gpus = [g for g in args.gpus.split(",") if g]
    procs = []
    for i, c in enumerate(args.candidate):
        env = common.worker_env(**({"CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} if gpus else {}))
        cmd = common.command(
            "benchmarks.heal_check", args.config, "--one", c, *[x for o in args.overrides for x in ("--set", o)]
        )
        procs.append((c, common.start(cmd, env)))
    rows = []
    for c, proc in procs:
        result, out = common.finish(proc, MARKER)
        if result is None:
            rows.append({"candidate": c, "error": out[-2000:]})
            print(f"[heal-check] {c}: failed (rc={proc.returncode})\n{out[-2000:]}", file=sys.stderr)
            continue
        row = {"candidate": c, **result}
        v0, v1 = row["validation"]["general_loss"]
        (g0, g1), (d0, d1) = row["held_out"]["general_loss"], row["held_out"]["domain_loss"]
        row["validation_change"] = round(v1 - v0, 4)
        row["test_change"], row["domain_change"] = round(g1 - g0, 4), round(d1 - d0, 4)
        rows.append(row)
        print(
            f"[heal-check] {c}: general {v0:.4f} -> {v1:.4f} ({v1 - v0:+.4f}) on validation, {g0:.4f} -> {g1:.4f} "
            f"({g1 - g0:+.4f}) on test; domain {d0:.4f} -> {d1:.4f} ({d1 - d0:+.4f}), {row['seconds']} s",
            flush=True,
        )
    ok = [r for r in rows if "error" not in r]
    chosen = min(ok, key=lambda r: r["validation_change"]) if ok else None
    results = {
        "date": common.today(),
        "config": args.config,
        "overrides": args.overrides,
        "rule": "the candidate that lowered the general loss on the validation documents most (test "
        "documents recorded, not chosen on)",
        "candidates": rows,
        "chosen": chosen["candidate"] if chosen else None,
    }
    if common.cards():
        results["gpus"] = common.cards()
    if args.out:
        common.write_json(args.out, results)
    if chosen is None:
        return 1
    print(f"[heal-check] chosen: {chosen['candidate']}")
    if args.args_out:
        Path(args.args_out).write_text("\n".join(heal_sets(chosen["candidate"])) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
