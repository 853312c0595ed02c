"""`cpt-harness prepare`: the model conversion and the data cache, built without training, so that a login node
or a CPU box can prepare what a GPU job then finds in ``$CPT_HARNESS_CACHE``.

A heal (model.heal.steps > 0) trains, so it is left to the sweep; the data cache does not depend on it (healing
changes the weights, not the tokenizer).
"""

from __future__ import annotations

import time
from pathlib import Path

from cpt_harness import data
from cpt_harness.config import Config
from cpt_harness.model import resolve as models


def run(cfg: Config, log=print) -> data.Corpora:
    started = time.perf_counter()
    model_path = models.resolve(cfg.model.name)
    log(f"[prepare] model {cfg.model.name}: {model_path} ({time.perf_counter() - started:.0f} s)")
    from cpt_harness.run.sweep import model_loading

    with model_loading(cfg):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
    key = data.cache_key(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens)
    cached = data.cache_folder(key).exists()
    started = time.perf_counter()
    corpora = data.prepare(cfg.data, tokenizer, cfg.model.max_seq_length, cfg.eval.max_tokens, progress=True)
    seconds = time.perf_counter() - started
    log(summary(corpora, data.cache_folder(key), None if cached else seconds))
    if cfg.model.heal.steps > 0:
        log("[prepare] model.heal.steps > 0: the heal trains, so the sweep runs it (once, then cached)")
    return corpora


def summary(corpora: data.Corpora, folder: Path, seconds: float | None) -> str:
    """Documents, tokens and blocks per split, the time the build took and the disk it holds."""
    s = corpora.stats
    rows = [
        ("domain train", s["domain_train"]),
        ("domain held-out", s["domain_eval"]),
        *((f"general held-out: {name}", part) for name, part in s["general_corpora"].items()),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [
        f"{name:<{width}}  {part['documents']:>10,} documents  {part['tokens']:>13,} tokens  "
        f"{part['blocks']:>10,} blocks"
        for name, part in rows
    ]
    c = s["contamination"]
    disk = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    how = "already cached" if seconds is None else f"built in {seconds:.1f} s"
    return "\n".join(
        [
            f"[prepare] data {corpora.fingerprint}: {how}; {disk / 2**20:,.1f} MiB in {folder}",
            *lines,
            f"(held-out domain documents dropped as near-copies of training text: {c['dropped']} of "
            + (
                f"{c['held_out_documents']}"
                if c.get("checked", c["held_out_documents"]) >= c["held_out_documents"]
                else f"the first {c['checked']} of {c['held_out_documents']}, as many as can fill eval.max_tokens"
            )
            + "; held-out parts are packed up to eval.max_tokens each)",
        ]
    )
