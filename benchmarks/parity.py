"""Backend parity: one trial config, trained once with the peft backend and once with unsloth, on the same GPU.

    python -m benchmarks.parity sweeps/gpu-legal.yaml [--set key=value ...] [--rank 64 --lr 2e-4 --ratio 0.2]

Each backend runs in its own process (Unsloth must be imported before transformers and must not patch the
PEFT run). Both measure the base model's held-out losses (must agree within 1%) and then train the same trial
(same data order, same LoRA init seed), logging eval curves against tokens seen. Writes parity.json and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import time

from benchmarks import common


def worker(backend_name: str, config: str, overrides: list[str], rank: int, lr: float, ratio: float) -> dict:
    from cpt_harness.model import backends

    backend = backends.load(backend_name)  # first: unsloth before transformers
    from cpt_harness.config.validate import load_config
    from cpt_harness.infra.tracking import Tracker
    from cpt_harness.run.sweep import measure_base, setup_inputs
    from cpt_harness.search.space import derive
    from cpt_harness.train.loop import run_trial

    cfg = load_config(config, overrides)
    model_path, corpora = setup_inputs(cfg, backend)
    t = time.perf_counter()
    base = measure_base(backend, model_path, cfg, corpora, log=lambda *a: None)
    base_s = time.perf_counter() - t
    result = run_trial(backend, model_path, cfg, derive(rank, lr, ratio, cfg), corpora, Tracker(), None)
    return {
        "backend": backend_name,
        "base": base,
        "base_eval_s": base_s,
        "curve": result.curve,
        "metrics": result.metrics,
        "timings": result.timings,
        "groups": {k: {"lr": v["lr"], "parameters": v["parameters"]} for k, v in result.audit["groups"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--ratio", type=float, default=0.2)
    ap.add_argument("--out", default="parity.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        common.emit(worker(a.worker, a.config, a.overrides, a.rank, a.lr, a.ratio))
        return
    runs = {}
    for name in ("peft", "unsloth"):
        runs[name] = common.run(
            common.command(
                "benchmarks.parity",
                a.config,
                "--worker",
                name,
                "--rank",
                str(a.rank),
                "--lr",
                str(a.lr),
                "--ratio",
                str(a.ratio),
                *[x for o in a.overrides for x in ("--set", o)],
            )
        )
    out = {
        "config": a.config,
        "overrides": a.overrides,
        "rank": a.rank,
        "lr": a.lr,
        "ratio": a.ratio,
        "date": common.today(),
        "card": common.card(),
        "runs": runs,
    }
    common.write_json(a.out, out)
    print(markdown(out))


def markdown(out: dict) -> str:
    p, u = out["runs"].get("peft", {}), out["runs"].get("unsloth", {})
    if "error" in p or "error" in u:
        return f"parity run failed: peft={p.get('error')}, unsloth={u.get('error')}"
    lines = [
        f"rank {out['rank']}, lr {out['lr']:g}, embedding ratio {out['ratio']}",
        "",
        "| | peft | unsloth | rel. diff |",
        "|---|---|---|---|",
    ]
    for key in ("domain_loss", "general_loss"):
        a, b = p["base"][key], u["base"][key]
        lines.append(f"| base {key} | {a:.4f} | {b:.4f} | {100 * (b - a) / a:+.2f}% |")
    lines += [
        "",
        "| tokens seen | peft domain | unsloth domain | peft general | unsloth general |",
        "|---|---|---|---|---|",
    ]
    for cp, cu in zip(p["curve"], u["curve"]):
        lines.append(
            f"| {cp['tokens_seen']:,} | {cp['domain_loss']:.4f} | {cu['domain_loss']:.4f} | "
            f"{cp['general_loss']:.4f} | {cu['general_loss']:.4f} |"
        )
    lines.append("")
    lines.append(
        f"tokens/s: peft {p['metrics']['tokens_per_s']:,.0f}, unsloth {u['metrics']['tokens_per_s']:,.0f}; "
        f"peak memory: peft {p['metrics']['peak_memory_gb']:.1f} GiB, unsloth {u['metrics']['peak_memory_gb']:.1f} GiB"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
