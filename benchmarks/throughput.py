"""Training throughput: the harness's peft and unsloth backends and a raw Unsloth loop (no harness), on the same
model shape, batch and sequence length, on one GPU. Results: benchmarks/RESULTS.md.

    python -m benchmarks.throughput --out results.json            # both shapes, all three modes
    python -m benchmarks.throughput --shapes smollm2-135m --steps 20
    python -m benchmarks.throughput --shapes tiny --modes harness-peft --steps 6 --warmup 2   # CPU smoke run

Each measurement runs in its own process (Unsloth must be imported before transformers, and must not patch the
PEFT baseline). Models are random-init Llama shapes in bf16, so no weights are needed.

What is measured, per mode and shape:
- tokens/s over the steps after ``--warmup`` (compilation and allocator warm-up excluded), host-synced per step;
- MFU = tokens/s x model FLOPs per token / peak bf16 FLOP/s of the card, with model FLOPs per token
  = 6 * N_matmul + 12 * n_layers * d_model * seq_len (PaLM, appendix B; N_matmul counts every linear layer
  including lm_head; LoRA's own matmuls and the recompute of gradient checkpointing are not counted, as is the
  convention for *model* FLOPs utilisation);
- peak GPU memory (torch.cuda.max_memory_allocated);
- for harness modes, the trial's wall time split into model load, data, training, eval, logging and save.
The PEFT baseline is a fair one: bf16 weights, bf16 autocast, SDPA attention and the same gradient checkpointing.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benchmarks import common
from cpt_harness.config import DEFAULT_TARGETS  # light: no transformers, so unsloth can still go first

SHAPES = {
    # name: (LlamaConfig kwargs, batch, seq)
    "smollm2-135m": (
        dict(
            hidden_size=576,
            intermediate_size=1536,
            num_hidden_layers=30,
            num_attention_heads=9,
            num_key_value_heads=3,
            vocab_size=49152,
            tie_word_embeddings=True,
            rope_theta=100000.0,
        ),
        16,
        2048,
    ),
    "llama-3.2-1b": (
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            tie_word_embeddings=True,
            rope_theta=500000.0,
        ),
        8,
        2048,
    ),
    # a smoke-test shape for CPUs
    "tiny": (
        dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=512,
            tie_word_embeddings=True,
        ),
        4,
        64,
    ),
}
RANK, ALPHA, LR, RATIO = 64, 64.0, 1e-4, 0.2
MODES = ("harness-peft", "harness-unsloth", "raw-unsloth", "raw-unsloth-fp32emb", "raw-unsloth-masters")
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12}  # dense bf16, SXM parts


def bench_checkpointing(cfg, folder: str) -> bool:
    """Gradient checkpointing of a harness mode: CPT_BENCH_CHECKPOINTING=on|off forces it (modes named *-ckpt when
    on); unset, the harness's default, train.gradient_checkpointing: auto, decides for this card (issue 18)."""
    forced = os.environ.get("CPT_BENCH_CHECKPOINTING", "auto")
    if forced in ("on", "off"):
        return forced == "on"
    import torch

    from cpt_harness.train import checkpointing

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg.search.rank.choices = [RANK]
    return checkpointing.resolve(cfg, device, folder)[1].on


def raw_checkpointing():
    """Raw Unsloth at its fastest setting that fits: checkpointing off, unless CPT_BENCH_CHECKPOINTING=on."""
    return "unsloth" if os.environ.get("CPT_BENCH_CHECKPOINTING") == "on" else False


def ckpt_suffix() -> str:
    return "-ckpt" if os.environ.get("CPT_BENCH_CHECKPOINTING") == "on" else ""


def flops_per_token(shape: dict, seq: int) -> float:
    d, i, L, V = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"], shape["vocab_size"]
    kv = d // shape["num_attention_heads"] * shape["num_key_value_heads"]
    n_matmul = L * (2 * d * d + 2 * d * kv + 3 * d * i) + d * V
    return 6 * n_matmul + 12 * L * d * seq


def peak_flops(gpu_name: str) -> float | None:
    if "PCIe" in gpu_name and "H100" in gpu_name:
        return 756e12
    return next((v for k, v in PEAK_BF16.items() if k in gpu_name), None)


# ------------------------------------------------------------------------------------------ model folders


def make_model(name: str, folder: Path) -> None:
    """A random-init Llama of the given shape, bf16, plus a word-level tokenizer of exactly its vocabulary."""
    import torch
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    shape, _, _ = SHAPES[name]
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(folder)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, shape["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    ).save_pretrained(folder)


# ------------------------------------------------------------------------------------------ workers


def synthetic_blocks(vocab: int, n: int, seq: int, seed: int):
    import numpy as np

    return np.random.default_rng(seed).integers(3, vocab, size=(n, seq), dtype=np.int32)


def synthetic_trial(name: str, folder: str, batch: int, seq: int, steps: int):
    """(config, corpora, params) of one harness trial on the model in ``folder`` (of shape ``name``): ``steps``
    steps of ``batch`` x ``seq`` random tokens, one eval at the end, gradient checkpointing, no warm-up, rank
    RANK, LR, embedding ratio RATIO. Import the backend first: this imports cpt_harness.data."""
    from cpt_harness.config import Config
    from cpt_harness.data import Corpora
    from cpt_harness.search.space import derive

    cfg = Config()
    cfg.model.name, cfg.model.max_seq_length = folder, seq
    cfg.train.max_steps, cfg.train.batch_size, cfg.train.eval_every = steps, batch, steps
    cfg.train.gradient_checkpointing, cfg.train.warmup_ratio = bench_checkpointing(cfg, folder), 0.0
    cfg.train.compile = os.environ.get("UNSLOTH_BLOCK_COMPILE", "1") != "0"  # Unsloth's own default: on
    cfg.eval.max_tokens, cfg.eval.batch_size = batch * seq, batch
    cfg.lora.alpha = ALPHA
    cfg.tracking.wandb.mode = "offline"
    V = SHAPES[name][0]["vocab_size"]
    corpora = Corpora(
        domain_train=synthetic_blocks(V, batch * steps, seq, 0),
        domain_eval=synthetic_blocks(V, batch, seq, 1),
        general_eval=synthetic_blocks(V, batch, seq, 2),
        fingerprint="synthetic",
        stats={},
    )
    return cfg, corpora, derive(RANK, LR, RATIO, cfg)


def run_harness(mode: str, name: str, folder: str, steps: int, warmup: int) -> dict:
    from cpt_harness.model import backends

    backend = backends.load(mode)  # first: unsloth before transformers
    from cpt_harness.infra.tracking import make_tracker
    from cpt_harness.train.loop import run_trial

    _, batch, seq = SHAPES[name]
    cfg, corpora, params = synthetic_trial(name, folder, batch, seq, steps)
    stamps: list[float] = []

    class Progress:
        def __call__(self, step, loss):
            stamps.append(time.perf_counter())

        def close(self):
            pass

    t0 = time.perf_counter()
    tracker = make_tracker(cfg.tracking.wandb, f"bench-{name}", Path(tempfile.mkdtemp()))
    tracker.start(name=f"{mode}-{name}", config=cfg.to_dict(), tags=["benchmark"])
    tracker_s = time.perf_counter() - t0
    result = run_trial(backend, folder, cfg, params, corpora, tracker, Path(tempfile.mkdtemp()) / "adapter", Progress())
    t1 = time.perf_counter()
    tracker.finish()
    result.timings["log"] += tracker_s + time.perf_counter() - t1
    wall = time.perf_counter() - t0
    tokens = batch * seq
    return {
        "mode": f"harness-{mode}{ckpt_suffix()}",
        "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "shape": name,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "warmup": warmup,
        "tokens_per_s": tokens * (steps - warmup) / (stamps[-1] - stamps[warmup - 1]),
        "peak_memory_gb": result.metrics["peak_memory_gb"],
        "trial_wall_s": wall,
        "timings": result.timings,
        "audit": result.audit,
    }


def run_raw_unsloth(
    name: str, folder: str, steps: int, warmup: int, fp32_embeddings: bool = False, on_step=None, masters: bool = False
) -> dict:
    """The plain Unsloth recipe with a hand loop: no harness code on the training path (only the list of LoRA
    targets, the same for every mode). ``fp32_embeddings`` (mode ``raw-unsloth-fp32emb``): the trained embedding
    held in float32 as the harness holds it (``backends.base.fp32_masters``), everything else raw, which prices
    the fp32 masters alone (issue 18, item 2). ``masters`` (mode ``raw-unsloth-masters``): the candidate scheme,
    standard mixed precision for the embedding group: the model computes with raw Unsloth's bf16 embedding, the
    optimizer steps fp32 master copies (their gradient the bf16 one upcast, their fp32 Adam moments) and the
    updated masters are copied back into the bf16 weights; the update is as exact as the fp32 path's, the forward
    and backward are raw Unsloth's. ``on_step()`` is called after every step (a profiler's)."""
    os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")
    import torch
    import unsloth  # noqa: F401
    from unsloth import FastLanguageModel

    shape, batch, seq = SHAPES[name]
    model, _ = FastLanguageModel.from_pretrained(
        model_name=folder,
        max_seq_length=seq,
        dtype=None,
        load_in_4bit=False,
        load_in_16bit=True,
        use_gradient_checkpointing=raw_checkpointing(),
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=RANK,
        lora_alpha=ALPHA,
        target_modules=list(DEFAULT_TARGETS),
        modules_to_save=["embed_tokens", "lm_head"],
        use_rslora=False,
        use_gradient_checkpointing=raw_checkpointing(),
        random_state=0,
    )
    emb = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n]
    if fp32_embeddings:
        for p in emb:
            p.data = p.data.float()
    lora = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" not in n]
    master = [p.detach().float() for p in emb] if masters else emb
    opt = torch.optim.AdamW([{"params": lora, "lr": LR}, {"params": master, "lr": LR * RATIO}], fused=True)
    data = torch.from_numpy(synthetic_blocks(shape["vocab_size"], batch * steps, seq, 0)).long()
    torch.cuda.reset_peak_memory_stats()
    stamps = []
    model.train()
    for step in range(steps):
        x = data[step * batch : (step + 1) * batch].cuda(non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        if masters:
            for p, m in zip(emb, master):
                m.grad, p.grad = (None if p.grad is None else p.grad.float()), None
        torch.nn.utils.clip_grad_norm_(lora + master, 1.0)
        opt.step()
        if masters:
            with torch.no_grad():
                torch._foreach_copy_(emb, master)
        opt.zero_grad(set_to_none=True)
        loss.item()
        stamps.append(time.perf_counter())
        if on_step is not None:
            on_step()
    dtypes = sorted({str(p.dtype) for p in lora + master})
    variant = "-fp32emb" if fp32_embeddings else "-masters" if masters else ""
    return {
        "mode": f"raw-unsloth{variant}{ckpt_suffix()}",
        "model_embedding_dtypes": sorted({str(p.dtype) for p in emb}),
        "gradient_checkpointing": bool(raw_checkpointing()),
        "shape": name,
        "batch": batch,
        "seq": seq,
        "steps": steps,
        "warmup": warmup,
        "tokens_per_s": batch * seq * (steps - warmup) / (stamps[-1] - stamps[warmup - 1]),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30,
        "trainable_dtypes": dtypes,
        "trainable": {"lora": sum(p.numel() for p in lora), "embedding": sum(p.numel() for p in emb)},
    }


# ------------------------------------------------------------------------------------------ orchestration


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="smollm2-135m,llama-3.2-1b")
    ap.add_argument(
        "--modes", default="harness-peft,harness-unsloth,raw-unsloth", help=f"comma-separated, of {', '.join(MODES)}"
    )
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--out", default="benchmark.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shape", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if unknown := [m for m in args.modes.split(",") if m not in MODES]:
        ap.error(f"--modes: unknown {', '.join(unknown)}; choose from {', '.join(MODES)}")
    if args.worker:
        fn = (
            (
                lambda *a: run_raw_unsloth(
                    *a,
                    fp32_embeddings=args.worker == "raw-unsloth-fp32emb",
                    masters=args.worker == "raw-unsloth-masters",
                )
            )
            if args.worker.startswith("raw-unsloth")
            else (lambda *a: run_harness(args.worker.removeprefix("harness-"), *a))
        )
        common.emit(fn(args.shape, args.folder, args.steps, args.warmup))
        return
    import torch

    results = {"card": common.card(), "date": common.today(), "torch": torch.__version__, "runs": []}
    for name in args.shapes.split(","):
        with tempfile.TemporaryDirectory() as folder:
            make_model(name, Path(folder))
            for mode in args.modes.split(","):
                results["runs"].append(_spawn(mode, name, folder, args))
                common.write_json(args.out, results)
    _summarise(results)
    common.write_json(args.out, results)
    print(markdown(results))


def _spawn(mode: str, name: str, folder: str, args) -> dict:
    cmd = common.command(
        "benchmarks.throughput",
        "--worker",
        mode,
        "--shape",
        name,
        "--folder",
        folder,
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
    )
    t = time.perf_counter()
    out = common.run(cmd)
    if "error" in out:
        return {"mode": mode, "shape": name, **out}
    out["process_wall_s"] = time.perf_counter() - t
    print(f"{mode:>16} {name:>14}: {out['tokens_per_s']:>9,.0f} tok/s, {out['peak_memory_gb']:.1f} GiB", flush=True)
    return out


def _summarise(results: dict) -> None:
    peak = peak_flops(results["card"])
    for r in results["runs"]:
        if "error" in r:
            continue
        shape, _, seq = SHAPES[r["shape"]]
        r["model_flops_per_token"] = flops_per_token(shape, seq)
        r["mfu"] = r["tokens_per_s"] * r["model_flops_per_token"] / peak if peak else None


def markdown(results: dict) -> str:
    rows = [
        f"Card: {results['card']}; date: {results['date']}; torch {results['torch']}",
        "",
        "| shape | mode | batch x seq | tokens/s | MFU | peak memory | vs peft | vs raw unsloth |",
        "|---|---|---|---|---|---|---|---|",
    ]
    by = {(r["shape"], r["mode"]): r for r in results["runs"] if "error" not in r}
    for r in results["runs"]:
        if "error" in r:
            rows.append(f"| {r['shape']} | {r['mode']} | failed: {r['error'][:80]} | | | | | |")
            continue
        peft = by.get((r["shape"], "harness-peft"))
        raw = by.get((r["shape"], "raw-unsloth"))
        rel = lambda base: f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"  # noqa: E731
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        rows.append(
            f"| {r['shape']} | {r['mode']} | {r['batch']} x {r['seq']} | {r['tokens_per_s']:,.0f} | {mfu} | "
            f"{r['peak_memory_gb']:.1f} GiB | {rel(peft)} | {rel(raw)} |"
        )
    rows += [
        "",
        "Harness trial wall time split (s):",
        "",
        "| shape | mode | load | data | train | eval | log | save | total |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["runs"]:
        if "timings" in r:
            t = r["timings"]
            rows.append(
                f"| {r['shape']} | {r['mode']} | "
                + " | ".join(f"{t.get(k, 0):.1f}" for k in ("load", "data", "train", "eval", "log", "save"))
                + f" | {r['trial_wall_s']:.1f} |"
            )
    return "\n".join(rows)


if __name__ == "__main__":
    main()
