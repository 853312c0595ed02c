"""The base model's held-out loss on corpora, with their held-out text chosen the way a sweep chooses it
(data.eval_fraction 0.1, data.seed 0, split by document, near-copies of training documents dropped, the first
--max-tokens tokens of the packed held-out documents in blocks of 512), and each corpus's size in the model's
tokens. Loss per token is what a sweep reports, but it does not compare across languages: a tokenizer made for
English cuts French into more, shorter tokens, each easier to guess. Bits per character of the same evaluated
text (the blocks decoded) do compare. A developer tool: it loads the real model (downloaded and converted once,
like any run).

    python scripts/base_losses.py                                   # french-bible, legal, brown, sotu
    python scripts/base_losses.py --max-tokens 65536 builtin:legal my_corpus.txt
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cpt_harness import data  # noqa: E402
from cpt_harness.config import DataSource, ModelConfig  # noqa: E402
from cpt_harness.evaluate.evaluation import evaluate  # noqa: E402
from cpt_harness.model import resolve as models
from cpt_harness.model.backends.peft_backend import PeftBackend  # noqa: E402

DEFAULT = ["builtin:french-bible", "builtin:legal", "builtin:brown", "builtin:sotu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpora", nargs="*", default=DEFAULT)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--max-tokens", type=int, default=16384, help="held-out tokens per corpus (eval.max_tokens)")
    ap.add_argument("--block", type=int, default=512, help="model.max_seq_length")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    import torch

    path = models.resolve(args.model)
    backend = PeftBackend()
    tokenizer = backend.load_tokenizer(path)
    model = backend.load_base(path, ModelConfig(name=args.model, max_seq_length=args.block))
    device = backend.device
    cpu = platform.processor() or platform.machine()
    print(
        f"{args.model} on {device.type} ({torch.get_num_threads()} threads, {cpu}), {date.today()}, held-out "
        f"tokens per corpus <= {args.max_tokens} in blocks of {args.block}\n"
    )
    print(
        "| corpus | documents | words | tokens | tokens/word | held-out docs (dropped) | tokens evaluated | "
        "chars evaluated | base loss (nats/token) | perplexity | bits/char | eval s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.corpora:
        docs = data.read_documents(DataSource(name))
        words = sum(len(d.split()) for d in docs)
        tokens = sum(
            len(ids)
            for start in range(0, len(docs), 256)
            for ids in tokenizer(docs[start : start + 256], add_special_tokens=False)["input_ids"]
        )
        train, held = data.split_documents(docs, 0.1, seed=0)
        held, dropped = data.drop_contaminated(held, train)
        blocks = data.pack(held, tokenizer, args.block, args.max_tokens)
        t = time.perf_counter()
        loss = evaluate(model, blocks, args.batch_size, device, backend.autocast)
        seconds = time.perf_counter() - t
        chars = sum(len(tokenizer.decode(b.tolist(), skip_special_tokens=True)) for b in blocks)
        bits_per_char = loss * blocks.size / chars / math.log(2)
        print(
            f"| {name} | {len(docs)} | {words:,} | {tokens:,} | {tokens / words:.2f} | {len(held)} ({dropped}) | "
            f"{blocks.size:,} | {chars:,} | {loss:.3f} | {math.exp(loss):.1f} | {bits_per_char:.3f} | "
            f"{seconds:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
