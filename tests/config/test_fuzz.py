"""Every bad input is a clear error: exit 2, no traceback, and a message naming the key or the file.

Each row of CASES is one bad input run through the real CLI: `validate` where the problem can be seen without
preparing anything, `sweep` on the tiny model where it shows only at run time. To add a row: a Case with an id,
its `--set` overrides (and/or a sweep file, files built in tmp_path, environment), and the words the message
must contain.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from cpt_harness.cli import main
from tests.conftest import ROOT, builtin_docs

DEMO = str(ROOT / "sweeps" / "demo.yaml")


@dataclass(frozen=True)
class Case:
    id: str
    sets: tuple[str, ...] = ()  # --set overrides; {tmp} (tmp_path) and {model} (the tiny model) are filled in
    expect: tuple[str, ...] = ()  # the message contains each (the key as the user writes it, the file)
    yaml: str | bytes | None = None  # the sweep file (default: sweeps/demo.yaml)
    make: Callable[[Path, Path], None] | None = None  # builds files in tmp_path: make(tmp_path, tiny_model)
    command: str = "validate"  # sweep: on the tiny model (tiny_overrides first), for run-time problems
    env: dict = field(default_factory=dict)
    config: str | None = None  # the CONFIG argument, when it is not the sweep file above


def _noise(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def _write(name: str, content: bytes | str) -> Callable[[Path, Path], None]:
    def make(tmp: Path, model: Path) -> None:
        (tmp / name).write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def _model_copy(change: Callable[[Path], None]) -> Callable[[Path, Path], None]:
    """The tiny model's folder, copied to tmp/model and broken by ``change``."""

    def make(tmp: Path, model: Path) -> None:
        shutil.copytree(model, tmp / "model")
        change(tmp / "model")

    return make


def _truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])


def _adapter(tmp: Path, model: Path) -> None:
    (tmp / "adapter").mkdir()
    (tmp / "adapter" / "adapter_config.json").write_text('{"r": 16, "lora_alpha": ')


def _docs(n: int, words: int = 5) -> str:
    return "\n\n".join(" ".join(f"word{i}x{j}" for j in range(words)) for i in range(n))


def _late(bad_line: bytes, suffix: str) -> Callable[[Path, Path], None]:
    """A corpus whose first 64 KiB (all that validate reads) are fine, with ``bad_line`` after them."""

    def make(tmp: Path, model: Path) -> None:
        docs = builtin_docs("legal", 60)
        if suffix == ".jsonl":
            good = "".join(json.dumps({"text": d}) + "\n" for d in docs).encode()
        else:
            good = "\n\n".join(docs).encode() + b"\n\n"
        assert len(good) > 70_000
        (tmp / f"late{suffix}").write_bytes(good + bad_line + b"\n")

    return make


TWO_TYPES_AND_THREE_NUMBERS = """\
# one value of the wrong type, and three bad numbers: all four must be listed
study:
  heartbeat_interval: often
  max_failures: 0
train:
  warmup_ratio: 1.5
lora:
  dropout: -0.1
"""

CASES = [
    # ---- the sweep file itself
    Case("config-binary", yaml=b"\x00\x01PK\x03\x04" + _noise(200), expect=("bad.yaml", "binary")),
    Case(
        "config-latin1",
        yaml="# caf\xe9\nstudy:\n  name: x\n".encode("latin-1"),
        expect=("bad.yaml", "not UTF-8", "line 1"),
    ),
    Case(
        "config-duplicate-section",
        yaml="train:\n  max_steps: 5\ntrain:\n  batch_size: 2\n",
        expect=("train: given twice (lines 1 and 3)",),
    ),
    Case(
        "config-duplicate-key",
        yaml="study:\n  name: a\n  seed: 1\n  name: b\n",
        expect=("study.name: given twice (lines 2 and 4)",),
    ),
    Case("config-is-a-folder", config="{tmp}", expect=("is a folder, not a sweep file",)),
    Case("config-missing", config="{tmp}/none.yaml", expect=("config file not found", "none.yaml")),
    Case("config-not-yaml", yaml="study: [unclosed\n", expect=("bad.yaml", "not valid YAML")),
    Case("config-a-list", yaml="- study\n- train\n", expect=("top level must be a mapping",)),
    Case("section-is-a-list", yaml="study: [1, 2]\n", expect=("study: expected a mapping",)),
    Case("unknown-section", yaml="trian:\n  max_steps: 3\n", expect=("trian: unknown key (did you mean train?)",)),
    Case("unknown-key", sets=("train.max_step=3",), expect=("train.max_step: unknown key",)),
    Case("set-without-equals", sets=("train.max_steps",), expect=("--set 'train.max_steps'",)),
    Case("set-through-a-list", sets=("search.rank.choices.x=1",), expect=("--set search.rank.choices.x",)),
    Case("set-duplicate-key", sets=("study={name: a, name: b}",), expect=("--set study", "name: given twice")),
    Case(
        "one-type-hides-nothing",
        yaml=TWO_TYPES_AND_THREE_NUMBERS,
        expect=(
            "study.heartbeat_interval: expected an integer",
            "study.max_failures: must be >= 1",
            "train.warmup_ratio: must be in [0, 1)",
            "lora.dropout: must be in [0, 1)",
        ),
    ),
    # ---- numbers: not finite
    Case("lr-low-nan", sets=("search.learning_rate.low=.nan",), expect=("search.learning_rate.low: must be a finite",)),
    Case(
        "lr-high-inf", sets=("search.learning_rate.high=.inf",), expect=("search.learning_rate.high: must be a finite",)
    ),
    Case(
        "ratio-low-nan-string",
        sets=("search.embedding_lr_ratio.low=nan",),
        expect=("search.embedding_lr_ratio.low: must be a finite",),
    ),
    Case(
        "ratio-high-minus-inf",
        sets=("search.embedding_lr_ratio.high=-.inf",),
        expect=("search.embedding_lr_ratio.high: must be a finite",),
    ),
    Case("alpha-nan", sets=("lora.alpha=.nan",), expect=("lora.alpha: must be a finite",)),
    Case("dropout-inf", sets=("lora.dropout=.inf",), expect=("lora.dropout: must be a finite",)),
    Case(
        "divergence-nan", sets=("train.divergence_factor=.nan",), expect=("train.divergence_factor: must be a finite",)
    ),
    Case("warmup-nan", sets=("train.warmup_ratio=.NaN",), expect=("train.warmup_ratio: must be a finite",)),
    Case("time-limit-inf", sets=("train.time_limit_s=.inf",), expect=("train.time_limit_s: must be a finite",)),
    Case("max-forgetting-nan", sets=("study.max_forgetting=.nan",), expect=("study.max_forgetting: must be a finite",)),
    Case("eval-fraction-nan", sets=("data.eval_fraction=.nan",), expect=("data.eval_fraction: must be a finite",)),
    Case(
        "heal-lr-inf", sets=("model.heal.learning_rate=.inf",), expect=("model.heal.learning_rate: must be a finite",)
    ),
    Case(
        "ablation-lr-nan", sets=("ablation.learning_rate=.nan",), expect=("ablation.learning_rate: must be a finite",)
    ),
    Case(
        "ablation-ratio-inf",
        sets=("ablation.embedding_lr_ratio=1e999",),
        expect=("ablation.embedding_lr_ratio: must be a finite",),
    ),
    # ---- numbers: out of range
    Case("max-steps-zero", sets=("train.max_steps=0",), expect=("train.max_steps: must be > 0, got 0",)),
    Case("batch-size-negative", sets=("train.batch_size=-4",), expect=("train.batch_size: must be > 0",)),
    Case("dropout-one", sets=("lora.dropout=1.0",), expect=("lora.dropout: must be in [0, 1)",)),
    Case("eval-fraction-zero", sets=("data.eval_fraction=0",), expect=("data.eval_fraction: must be in (0, 1)",)),
    Case("heartbeat-zero", sets=("study.heartbeat_interval=0",), expect=("study.heartbeat_interval: must be >= 1",)),
    Case("grace-below-heartbeat", sets=("study.grace_period=10",), expect=("study.grace_period: must exceed",)),
    Case("retries-negative", sets=("study.max_retries=-1",), expect=("study.max_retries: must be >= 0",)),
    Case("grad-norm-negative", sets=("train.max_grad_norm=-1",), expect=("train.max_grad_norm: must be >= 0",)),
    Case("workers-zero", sets=("parallel.workers=0",), expect=("parallel.workers: must be >= 1",)),
    Case("gpus-empty", sets=("parallel.gpus=[]",), expect=("parallel.gpus: a non-empty list",)),
    Case("heal-rank-zero", sets=("model.heal.rank=0",), expect=("model.heal.rank: must be >= 1",)),
    Case("ablation-seeds-one", sets=("ablation.seeds=1",), expect=("ablation.seeds: a paired t-interval",)),
    Case("ranks-empty", sets=("search.rank.choices=[]",), expect=("search.rank.choices: must not be empty",)),
    Case("ranks-duplicate", sets=("search.rank.choices=[16, 16]",), expect=("search.rank.choices: duplicate",)),
    Case("rank-zero", sets=("search.rank.choices=[0]",), expect=("search.rank.choices: ranks must be > 0",)),
    Case("lr-low-above-high", sets=("search.learning_rate.low=1",), expect=("search.learning_rate: low <= high",)),
    # ---- types and literals
    Case("int-is-a-word", sets=("train.max_steps=ten",), expect=("train.max_steps: expected an integer",)),
    Case("int-is-a-float", sets=("train.eval_every=2.5",), expect=("train.eval_every: expected an integer",)),
    Case("bool-is-a-word", sets=("lora.train_embeddings=maybe",), expect=("lora.train_embeddings: expected true",)),
    Case("backend-literal", sets=("backend=gpu",), expect=("backend: must be one of auto, peft, unsloth",)),
    Case("dtype-literal", sets=("model.dtype=fp8",), expect=("model.dtype: must be one of",)),
    Case("per-gpu-word", sets=("parallel.trials_per_gpu=many",), expect=("parallel.trials_per_gpu: expected",)),
    Case("targets-not-a-list", sets=("lora.target_modules=q_proj",), expect=("lora.target_modules: expected a list",)),
    Case("targets-empty", sets=("lora.target_modules=[]",), expect=("lora.target_modules: must not be empty",)),
    Case(
        "range-is-a-list", sets=("search.learning_rate=[1, 2]",), expect=("search.learning_rate: expected a mapping",)
    ),
    Case(
        "range-missing-low", sets=("search.learning_rate={high: 0.1}",), expect=("search.learning_rate.low: required",)
    ),
    Case(
        "data-is-a-number",
        sets=("data.domain=3",),
        expect=("data.domain: expected a source (PATH or {path: PATH, ...}) or a list of sources, got 3",),
    ),
    Case("ablation-factor", sets=("ablation.factors=[nope]",), expect=("ablation.factors: unknown factor 'nope'",)),
    # ---- names that become folders
    Case("study-name-escapes", sets=("study.name=../escape",), expect=("study.name: '../escape' is not a safe name",)),
    Case("study-name-absolute", sets=("study.name=/etc/cpt",), expect=("study.name:", "e.g. 'etc-cpt'")),
    Case("study-name-empty", sets=("study.name=''",), expect=("study.name: must not be empty",)),
    Case("ablation-name-path", sets=("ablation.study_name=a/b",), expect=("ablation.study_name: 'a/b' is not a safe",)),
    # ---- output folder
    Case(
        "output-dir-is-a-file",
        make=_write("afile", "x"),
        sets=("study.output_dir={tmp}/afile",),
        expect=("study.output_dir:", "afile is a file"),
    ),
    Case(
        "output-dir-under-a-file",
        make=_write("afile", "x"),
        sets=("study.output_dir={tmp}/afile/runs",),
        expect=("study.output_dir:", "afile is a file"),
    ),
    # ---- models
    Case("model-builtin-unknown", sets=("model.name=builtin:nope",), expect=("model.name: unknown built-in model",)),
    Case("model-missing", sets=("model.name=/no/such/model",), expect=("model.name: /no/such/model does not exist",)),
    Case("model-not-an-id", sets=("model.name=not a model!",), expect=("model.name: 'not a model!' is neither",)),
    Case(
        "model-a-text-file",
        make=_write("m.txt", "x"),
        sets=("model.name={tmp}/m.txt",),
        expect=("model.name:", "m.txt is a file but not a .gguf"),
    ),
    Case(
        "safetensors-truncated",
        make=_model_copy(lambda m: _truncate(m / "model.safetensors")),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "model.safetensors is truncated"),
    ),
    Case(
        "safetensors-garbage",
        make=_model_copy(lambda m: (m / "model.safetensors").write_bytes(_noise(4096))),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "model.safetensors is truncated or not a safetensors"),
    ),
    Case(
        "config-json-garbage",
        make=_model_copy(lambda m: (m / "config.json").write_text("{'not': json")),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "config.json is not valid JSON"),
    ),
    Case(
        "no-tokenizer",
        make=_model_copy(lambda m: (m / "tokenizer.json").unlink()),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "has no tokenizer"),
    ),
    Case(
        "no-weights",
        make=_model_copy(lambda m: (m / "model.safetensors").unlink()),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "has no weights"),
    ),
    Case(
        "gguf-random",
        make=_write("m.gguf", _noise(8192)),
        sets=("model.name={tmp}/m.gguf",),
        expect=("model.name:", "m.gguf is not a GGUF file"),
    ),
    Case(
        "gguf-truncated-header",
        make=_write("m.gguf", b"GGUF" + struct.pack("<IQQ", 3, 2, 4) + b"\x05\x00"),
        sets=("model.name={tmp}/m.gguf",),
        expect=("model.name:", "m.gguf is truncated or corrupt"),
    ),
    Case(
        "gguf-empty",
        make=_write("m.gguf", b""),
        sets=("model.name={tmp}/m.gguf",),
        expect=("model.name:", "m.gguf is not a GGUF file"),
    ),
    # ---- a saved adapter to continue from
    Case(
        "adapter-config-garbage",
        make=_adapter,
        sets=("lora.init_adapter={tmp}/adapter",),
        expect=("lora.init_adapter:", "adapter_config.json is not readable JSON"),
    ),
    Case(
        "adapter-missing", sets=("lora.init_adapter={tmp}/none",), expect=("lora.init_adapter:", "not a saved adapter")
    ),
    # ---- data
    Case(
        "data-csv",
        make=_write("d.csv", "text\nhello\n"),
        sets=("data.domain={tmp}/d.csv",),
        expect=("data.domain:", "d.csv: unsupported file type '.csv'", ".jsonl"),
    ),
    Case("data-csv-missing", sets=("data.domain={tmp}/none.csv",), expect=("data.domain:", "none.csv does not exist")),
    Case(
        "data-latin1",
        make=_write("l.txt", "first document\n\nsecond caf\xe9 document\n".encode("latin-1")),
        sets=("data.domain={tmp}/l.txt",),
        expect=("data.domain:", "l.txt is not UTF-8 (line 3, byte 26"),
    ),
    Case(
        "data-utf16",
        make=_write("u.txt", "hello\n\nworld\n".encode("utf-16")),
        sets=("data.general={tmp}/u.txt",),
        expect=("data.general:", "u.txt is UTF-16"),
    ),
    Case(
        "data-random-bytes",
        make=_write("r.txt", _noise(20000)),
        sets=("data.domain={tmp}/r.txt",),
        expect=("data.domain:", "r.txt is binary"),
    ),
    Case(
        "data-jsonl-not-object",
        make=_write("l.jsonl", '{"text": "a"}\n[1, 2]\n'),
        sets=("data.domain={tmp}/l.jsonl",),
        expect=("data.domain:", "l.jsonl:2: a JSON list, not an object"),
    ),
    Case(
        "data-jsonl-not-json",
        make=_write("l.jsonl", '{"text": "a"}\n{text: b}\n'),
        sets=("data.domain={tmp}/l.jsonl",),
        expect=("data.domain:", "l.jsonl:2: not valid JSON"),
    ),
    Case(
        "data-json-array",
        make=_write("l.json", '[\n  {"text": "a"}\n]\n'),
        sets=("data.domain={tmp}/l.json",),
        expect=("data.domain:", "l.json:1: not valid JSON", "one object per line"),
    ),
    Case(
        "data-jsonl-field",
        make=_write("l.jsonl", '{"body": "a"}\n'),
        sets=("data.domain={tmp}/l.jsonl", "data.domain.text_field=text"),
        expect=("data.domain:", "no field 'text'"),
    ),
    Case(
        "data-empty",
        make=_write("e.txt", ""),
        sets=("data.general={tmp}/e.txt",),
        expect=("data.general:", "e.txt is empty"),
    ),
    Case(
        "data-fake-parquet",
        make=_write("p.parquet", "not parquet"),
        sets=("data.domain={tmp}/p.parquet",),
        expect=("data.domain:", "p.parquet is not a Parquet file"),
    ),
    Case(
        "data-plain-folder",
        make=lambda tmp, m: (tmp / "plain").mkdir(),
        sets=("data.domain={tmp}/plain",),
        expect=("data.domain:", "not a datasets.save_to_disk folder"),
    ),
    Case(
        "data-builtin-unknown", sets=("data.domain=builtin:poetry",), expect=("data.domain: unknown built-in corpus",)
    ),
    Case(
        "data-hub-offline",
        sets=("data.domain=someone/no-such-corpus",),
        env={"HF_HUB_OFFLINE": "1"},
        expect=("data.domain: someone/no-such-corpus is a hub dataset id", "HF_HUB_OFFLINE"),
    ),
    Case(
        "heal-data-binary",
        make=_write("h.txt", _noise(3000, seed=2)),
        sets=("model.heal.steps=2", "model.heal.data={tmp}/h.txt"),
        expect=("model.heal.data:", "h.txt is binary"),
    ),
    # ---- problems that show only at run time (sweep on the tiny model)
    Case(
        "run-targets-not-in-model",
        command="sweep",
        sets=("lora.target_modules=[q_proj,qkv_proj]",),
        expect=("lora.target_modules: ['qkv_proj'] match no module", "'gate_proj'"),
    ),
    Case(
        "run-model-without-type",
        command="sweep",
        make=_model_copy(lambda m: (m / "config.json").write_text("{}")),
        sets=("model.name={tmp}/model",),
        expect=("model.name:", "/model does not load", "model_type"),
    ),
    Case(
        "run-dtype-without-cuda",
        command="sweep",
        sets=("model.dtype=bfloat16",),
        expect=("model.dtype: bfloat16 needs a CUDA GPU",),
    ),
    Case(
        "run-shorter-than-a-block",
        command="sweep",
        make=_write("short.txt", _docs(12)),
        sets=("data.domain={tmp}/short.txt",),
        expect=("data.domain:", "short.txt", "model.max_seq_length=64", "data.eval_fraction"),
    ),
    Case(
        "run-one-document",
        command="sweep",
        make=_write("one.txt", "just one document, never split"),
        sets=("data.domain={tmp}/one.txt",),
        expect=("data.domain:", "one.txt", "need at least 2 documents"),
    ),
    Case(
        "run-jsonl-late-list",
        command="sweep",
        make=_late(b"[1, 2]", ".jsonl"),
        sets=("data.domain={tmp}/late.jsonl",),
        expect=("data.domain:", "late.jsonl:61: a JSON list, not an object"),
    ),
    Case(
        "run-txt-late-latin1",
        command="sweep",
        make=_late("caf\xe9".encode("latin-1"), ".txt"),
        sets=("data.general={tmp}/late.txt",),
        expect=("data.general:", "late.txt is not UTF-8 (line"),
    ),
    # study.storage: what can be seen without connecting (validate), and a server that refuses (sweep)
    Case("storage-empty", sets=("study.storage=''",), expect=("study.storage: must not be empty",)),
    Case(
        "storage-unknown-scheme", sets=("study.storage=mongodb://db/cpt",), expect=("study.storage: unknown database",)
    ),
    Case(
        "storage-missing-driver",
        sets=("study.storage=mysql+nosuchdriver://u@h/cpt",),
        expect=("study.storage:", "driver that is not installed"),
    ),
    Case("storage-is-a-folder", sets=("study.storage=sqlite:///{tmp}",), expect=("study.storage:", "is a folder")),
    Case(
        "storage-parent-is-a-file",
        make=_write("plain.txt", "x"),
        sets=("study.storage=sqlite:///{tmp}/plain.txt/s.db",),
        expect=("study.storage:", "plain.txt is not a writable folder"),
    ),
    Case("storage-memory", sets=("study.storage=sqlite://",), expect=("study.storage:", "sqlite:///path/to/file.db")),
    Case(
        "storage-random-bytes",
        make=_write("noise.db", _noise(8192)),
        sets=("study.storage={tmp}/noise.db",),
        expect=("study.storage:", "noise.db is not a SQLite database"),
    ),
    Case(
        "storage-undefined-variable",
        command="sweep",
        sets=("study.storage=sqlite:///${CPT_FUZZ_UNSET_DIR}/s.db",),
        expect=("study.storage:", "${CPT_FUZZ_UNSET_DIR}, which is not set"),
    ),
    Case(
        "gpus-without-cuda",
        command="sweep",
        sets=("parallel.gpus=[0]",),
        expect=("parallel.gpus: no CUDA GPU is visible on this host",),
    ),
    Case(
        "storage-refused",
        command="sweep",
        sets=("study.storage=postgresql://u:fuzz-pw@127.0.0.1:9/cpt",),
        expect=("study.storage: cannot open postgresql+psycopg2://u:***@127.0.0.1:9/cpt",),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_a_clear_error(case: Case, tmp_path, tiny_model, request, monkeypatch, capsys):
    if case.id in ("run-dtype-without-cuda", "gpus-without-cuda"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("a machine with CUDA runs bfloat16")
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    if case.make:
        case.make(tmp_path, tiny_model)
    config = DEMO
    if case.yaml is not None:
        config = str(tmp_path / "bad.yaml")
        Path(config).write_bytes(case.yaml.encode() if isinstance(case.yaml, str) else case.yaml)
    if case.config is not None:
        config = case.config.replace("{tmp}", str(tmp_path))
    sets = [s.replace("{tmp}", str(tmp_path)).replace("{model}", str(tiny_model)) for s in case.sets]
    if case.command == "sweep":
        sets = request.getfixturevalue("tiny_overrides") + sets
    args = [case.command, config, *(["--n-trials", "1"] if case.command == "sweep" else [])]
    rc = main(args + [x for s in sets for x in ("--set", s)])
    out = capsys.readouterr()
    said = out.out + out.err
    assert "Traceback" not in said
    assert rc == 2, said[-3000:]
    for words in case.expect:
        assert words in said, f"{words!r} not in:\n{said[-3000:]}"


def test_there_are_enough_cases():
    assert len(CASES) >= 45 and len({c.id for c in CASES}) == len(CASES)


def test_an_unreadable_config_file_names_the_file(tmp_path, monkeypatch, capsys):
    # Root reads any file whatever its mode, so the refusal is simulated where the harness reads.
    config = tmp_path / "locked.yaml"
    config.write_text("study:\n  name: x\n")

    def refuse(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", refuse)
    assert main(["validate", str(config)]) == 2
    err = capsys.readouterr().err
    assert "locked.yaml" in err and "cannot read the config file (Permission denied)" in err


def test_an_unwritable_output_dir_is_named(tmp_path, monkeypatch, capsys):
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real_access(p, mode))
    assert main(["validate", DEMO, "--set", f"study.output_dir={tmp_path}/runs"]) == 2
    err = capsys.readouterr().err
    assert f"study.output_dir: {tmp_path}/runs (its nearest existing parent {tmp_path}) is not writable" in err
