"""Sweep configuration: YAML is data, these dataclasses are the schema.

Loading goes YAML file -> ``--set`` overrides -> typed dataclasses -> checks. Every problem is collected and
reported at once, each naming the key as the user writes it (``search.rank.choices``). Nothing here imports
torch or touches the disk beyond the config file itself, so ``cpt-harness validate`` works on a fresh install.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

# The Unsloth CPT guidance, as numbers. See README "The rules".
RSLORA_RANK_THRESHOLD = 64  # rsLoRA for ranks above this
EMBEDDING_LR_RATIO_RANGE = (0.1, 0.5)  # embedding LR 2-10x smaller than the base LR
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
EMBEDDING_MODULES = ("embed_tokens", "lm_head")


def _help(text: str, default: Any = dataclasses.MISSING, factory: Any = dataclasses.MISSING) -> Any:
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class StudyConfig:
    name: str = _help("Optuna study name; also the W&B group.", "cpt")
    storage: str = _help("SQLAlchemy URL or path of a SQLite file holding the study.", "sqlite:///runs/studies.db")
    n_trials: int = _help("Number of COMPLETE trials the study should hold when the sweep ends.", 12)
    objective: Literal["pareto"] = _help("pareto: minimize domain_loss and forgetting together.", "pareto")
    sampler: Literal["tpe", "random", "nsga2"] = _help("Optuna sampler, by name.", "tpe")
    seed: int = _help("Sampler seed.", 0)
    max_failures: int = _help("Stop the sweep after this many failed trials in one run.", 3)
    keep_adapters: Literal["pareto", "all", "none"] = _help("Which trials keep their saved adapter.", "pareto")
    output_dir: str = _help("Where adapters and per-trial files go (one folder per study).", "runs")
    heartbeat_interval: int = _help("Seconds between a running trial's heartbeats in the study database.", 30)
    grace_period: int | None = _help(
        "A running trial with no heartbeat for this long belongs to a dead worker: it is marked FAIL and retried "
        "(default: 4 x heartbeat_interval).", None
    )
    max_retries: int = _help("How often a dead worker's trial is retried.", 2)
    max_forgetting: float | None = _help(
        "Pareto study: the chosen trial is the front's lowest domain loss with forgetting at most this "
        "(null: the knee of the front).", None
    )


@dataclass
class DataSource:
    path: str = _help("builtin:NAME, a .txt/.jsonl/.parquet file, a datasets.save_to_disk folder, or a hub id.")
    text_field: str = _help("Column holding the text (jsonl, parquet, datasets).", "text")
    split: str = _help("Split to read from a hub dataset or a DatasetDict folder.", "train")


@dataclass
class HealConfig:
    steps: int = _help("Steps of a LoRA pass on general text merged into the base before anything else; 0: off.", 0)
    data: DataSource = _help(
        "Healing text. When it is data.general, healing reads only its training documents, never the held-out "
        "ones that measure forgetting.", factory=lambda: DataSource("builtin:austen"))
    rank: int = _help("LoRA rank of the healing pass.", 64)
    learning_rate: float = _help("Learning rate of the healing pass.", 2e-4)
    batch_size: int = _help("Blocks per healing step.", 8)


@dataclass
class ModelConfig:
    name: str = _help(
        "builtin:smollm2-135m-instruct, a local HF folder, a local .gguf file, or a Hugging Face model id.",
        "builtin:smollm2-135m-instruct",
    )
    max_seq_length: int = _help("Tokens per packed training/eval block.", 512)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = _help(
        "auto: bfloat16 on a GPU, float32 on a CPU.", "auto"
    )
    load_in_4bit: bool = _help("unsloth backend only: QLoRA on a 4-bit base.", False)
    keep_loaded: bool = _help(
        "Keep the base model loaded in each worker and start every trial from a copy of it, instead of loading it "
        "from disk per trial. Costs one more copy of the base in GPU memory per worker; set false for a model "
        "that does not fit twice.", True
    )
    heal: HealConfig = _help(
        "Heal a dequantized base first: without it, any English training repairs quantization loss and masks "
        "forgetting.", factory=lambda: HealConfig()
    )


@dataclass
class DataConfig:
    domain: DataSource = _help("The new domain's text (train + held-out).", factory=lambda: DataSource("builtin:legal"))
    general: Union[DataSource, list[DataSource]] = _help(
        "General text, one source or a list: the held-out part of each measures forgetting (token-weighted over "
        "all of them, each also reported on its own); a validation part of each one's other documents measures "
        "healing.", factory=lambda: DataSource("builtin:brown"),
    )
    eval_fraction: float = _help("Fraction of documents held out for evaluation.", 0.1)
    seed: int = _help("Seed of the document split.", 0)

    def general_sources(self) -> list[DataSource]:
        """data.general as a list, whichever form the file used."""
        return list(self.general) if isinstance(self.general, list) else [self.general]


@dataclass
class TrainConfig:
    max_steps: int = _help("Optimizer steps per trial.", 200)
    batch_size: int = _help("Blocks per micro-batch.", 8)
    grad_accum: int = _help("Micro-batches per optimizer step.", 1)
    warmup_ratio: float = _help("Fraction of the steps spent warming the LR up; then cosine decay to 0.", 0.05)
    eval_every: int = _help("Evaluate domain and general loss every N steps (and at the end).", 50)
    weight_decay: float = _help("AdamW weight decay (LoRA group; embeddings get none).", 0.0)
    max_grad_norm: float = _help("Gradient clipping norm; 0 turns it off.", 1.0)
    gradient_checkpointing: bool = _help("Trade compute for memory (unsloth: its offloaded variant).", False)
    compile: bool = _help(
        "unsloth: torch.compile each decoder block. Measured on an H200 (SmolLM2, 16 x 512): no faster per step, "
        "and ~25 s more per trial, so off by default; it may pay off for long trials.", False
    )
    seed: int = _help("Seed of the data order and LoRA init (the same for every trial).", 0)
    time_limit_s: float | None = _help("Fail a trial that trains longer than this.", None)
    divergence_factor: float = _help("Fail a trial whose loss exceeds this multiple of its first loss.", 3.0)


@dataclass
class EvalConfig:
    max_tokens: int = _help("Tokens of held-out text per corpus (the same blocks for every trial).", 16384)
    batch_size: int = _help("Blocks per evaluation batch.", 8)


@dataclass
class LoraConfig:
    target_modules: list[str] = _help("Modules that get LoRA adapters.", factory=lambda: list(DEFAULT_TARGETS))
    train_embeddings: bool = _help("Train embed_tokens and lm_head in the embedding LR group.", True)
    use_rslora: Union[bool, Literal["auto"]] = _help("auto: rsLoRA exactly when the rank is above 64.", "auto")
    alpha: float = _help("LoRA alpha; the scale is alpha/r, or alpha/sqrt(r) under rsLoRA.", 32.0)
    dropout: float = _help("LoRA dropout.", 0.0)
    init_adapter: str | None = _help(
        "Continue training from this saved adapter folder (its rank and targets win over the search space).", None
    )


@dataclass
class RankSearch:
    choices: list[int] = _help("LoRA ranks to try.", factory=lambda: [16, 64, 128, 256])


@dataclass
class FloatSearch:
    low: float = _help("Lower bound.")
    high: float = _help("Upper bound.")
    log: bool = _help("Sample on a log scale.", True)


@dataclass
class SearchConfig:
    rank: RankSearch = _help("LoRA rank.", factory=RankSearch)
    learning_rate: FloatSearch = _help("Base learning rate.", factory=lambda: FloatSearch(5e-5, 5e-4))
    embedding_lr_ratio: FloatSearch = _help(
        "Embedding LR = ratio x learning_rate.", factory=lambda: FloatSearch(0.1, 0.5)
    )


@dataclass
class RulesConfig:
    rslora_above_64: bool = _help("Require rsLoRA for ranks above 64 (false: an ablation breaking it on purpose).", True)
    embedding_lr_ratio_range: bool = _help("Require the embedding-LR ratio within [0.1, 0.5].", True)


@dataclass
class WandbConfig:
    project: str = _help("W&B project.", "cpt-harness")
    entity: str | None = _help("W&B entity (team or user).", None)
    mode: Literal["auto", "online", "offline", "disabled"] = _help(
        "auto: online with an API key, else offline run files under WANDB_DIR.", "auto"
    )
    tags: list[str] = _help("Extra tags on every run.", factory=list)


@dataclass
class TrackingConfig:
    wandb: WandbConfig = _help("Weights & Biases.", factory=WandbConfig)


@dataclass
class AblationConfig:
    factors: list[str] = _help(
        "Factors of the factorial design: gate_proj, embeddings (default), rslora, embedding_lr_ratio.",
        factory=lambda: ["gate_proj", "embeddings"],
    )
    seeds: int = _help("Seeds per arm; seed k gives every arm the same data order and LoRA init.", 5)
    rank: int = _help("LoRA rank of every arm (unless --from-study).", 64)
    learning_rate: float = _help("Base learning rate of every arm (unless --from-study).", 2e-4)
    embedding_lr_ratio: float = _help("Embedding-LR ratio where embeddings train (unless --from-study).", 0.2)
    high_rank: int = _help("The rank of every arm when the rslora factor is in the design.", 256)
    study_name: str | None = _help("The ablation's own study (default: <study.name>-ablation).", None)


@dataclass
class ParallelConfig:
    workers: int = _help("Worker processes on a CPU machine (cpt-harness sweep --workers).", 1)
    gpus: list[int] | None = _help("GPUs to use, one or more workers each (--gpus 0,1); null: no GPU workers.", None)
    trials_per_gpu: Union[int, Literal["auto"]] = _help(
        "Concurrent trials per GPU; auto: from a measured trial's peak memory and the card's free memory.", 1
    )


@dataclass
class Config:
    study: StudyConfig = _help("Study and storage.", factory=StudyConfig)
    model: ModelConfig = _help("Base model.", factory=ModelConfig)
    backend: Literal["auto", "peft", "unsloth"] = _help("auto: unsloth on a CUDA GPU when installed, else peft.", "auto")
    data: DataConfig = _help("Corpora.", factory=DataConfig)
    train: TrainConfig = _help("Training loop.", factory=TrainConfig)
    eval: EvalConfig = _help("Evaluation.", factory=EvalConfig)
    lora: LoraConfig = _help("LoRA layout.", factory=LoraConfig)
    search: SearchConfig = _help("Search space Optuna samples from.", factory=SearchConfig)
    rules: RulesConfig = _help("The Unsloth CPT rules, enforced unless opted out.", factory=RulesConfig)
    tracking: TrackingConfig = _help("Experiment tracking.", factory=TrackingConfig)
    parallel: ParallelConfig = _help("Several trials at once: worker processes, GPUs.", factory=ParallelConfig)
    ablation: AblationConfig = _help("`cpt-harness ablate`: the factorial design.", factory=AblationConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class ConfigError(Exception):
    """Every problem found in a config, one per line, each naming its key."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path | None, overrides: list[str] = ()) -> Config:
    """Read a sweep file, apply ``--set key=value`` overrides, build and check the typed config."""
    source = str(path) if path else "defaults"
    raw = _read_yaml(path) if path else {}
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    cfg = _build(Config, raw, "", problems)
    if cfg is not None:
        problems.extend(p for p in check(cfg) if p not in problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError([f"config file not found: {path} (see sweeps/ for examples)"], str(path))
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(raw).__name__}"], str(path))
    return raw


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        problems.append(f"--set {item!r}: expected dotted.key=value, e.g. --set train.max_steps=100")
        return
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        problems.append(f"--set {key}: value is not valid YAML ({e})")
        return
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part in ("domain", "general"):
            node[part] = {"path": node[part]}  # `data.domain: FILE` is shorthand for {path: FILE}
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
        if not isinstance(node[part], dict):
            problems.append(f"--set {key}: {part} is not a section")
            return
        node = node[part]
    node[parts[-1]] = parsed


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Turn a mapping into dataclass ``cls``; unknown keys and wrong types go to ``problems``."""
    if cls is DataSource and isinstance(raw, str):
        raw = {"path": raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
        return cls() if _all_defaults(cls) else None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {_join(prefix, close[0])}?)" if close else f" (valid: {', '.join(names)})"
            problems.append(f"{_join(prefix, key)}: unknown key{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], key, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{key}: required")
            kwargs[f.name] = None
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - only when a required field was reported above
        problems.append(f"{prefix}: {e}")
        return None


def _all_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _coerce(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        for option in options:
            scratch: list[str] = []
            result = _coerce(option, value, key, scratch)
            if not scratch:
                return result
        problems.append(f"{key}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{key}: must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, e.g. [a, b]; got {value!r}")
            return value
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            problems.append(f"{key}: expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value  # pragma: no cover


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


# ---------------------------------------------------------------------------------------------- checks


def check(cfg: Config) -> list[str]:
    """Semantic checks, including the Unsloth CPT rules. Touches no network and loads nothing."""
    from harness import ablation, models  # light: no torch at import
    from harness import data as data_mod

    checks = [_check_numbers, _check_search, _check_rules, _check_targets,
              lambda c: models.check_model_name(c.model.name, "model.name"),
              lambda c: data_mod.check_source(c.data.domain, "data.domain"),
              lambda c: data_mod.check_general(c.data.general, "data.general"),
              _check_init_adapter, _check_heal, ablation.check]
    problems: list[str] = []
    for fn in checks:
        try:
            problems += fn(cfg)
        except (TypeError, AttributeError, ValueError):
            pass  # a value of the wrong type, already reported by the schema
    return problems


def _check_numbers(cfg: Config) -> list[str]:
    positive = {
        "study.n_trials": cfg.study.n_trials,
        "model.max_seq_length": cfg.model.max_seq_length,
        "train.max_steps": cfg.train.max_steps,
        "train.batch_size": cfg.train.batch_size,
        "train.grad_accum": cfg.train.grad_accum,
        "train.eval_every": cfg.train.eval_every,
        "eval.max_tokens": cfg.eval.max_tokens,
        "eval.batch_size": cfg.eval.batch_size,
        "lora.alpha": cfg.lora.alpha,
    }
    problems = []
    for k, v in positive.items():
        try:
            if v <= 0:
                problems.append(f"{k}: must be > 0, got {v}")
        except TypeError:
            pass
    if cfg.study.heartbeat_interval < 1:
        problems.append(f"study.heartbeat_interval: must be >= 1 second, got {cfg.study.heartbeat_interval}")
    if cfg.study.grace_period is not None and cfg.study.grace_period <= cfg.study.heartbeat_interval:
        problems.append(f"study.grace_period: must exceed study.heartbeat_interval ({cfg.study.heartbeat_interval}), "
                        f"got {cfg.study.grace_period}")
    if cfg.parallel.workers < 1:
        problems.append(f"parallel.workers: must be >= 1, got {cfg.parallel.workers}")
    if cfg.parallel.gpus is not None and (not cfg.parallel.gpus or any(g < 0 for g in cfg.parallel.gpus)):
        problems.append(f"parallel.gpus: a non-empty list of GPU indices, e.g. [0, 1]; got {cfg.parallel.gpus}")
    if cfg.parallel.trials_per_gpu != "auto" and cfg.parallel.trials_per_gpu < 1:
        problems.append(f"parallel.trials_per_gpu: must be >= 1 or auto, got {cfg.parallel.trials_per_gpu}")
    if cfg.study.max_failures < 1:
        problems.append(f"study.max_failures: must be >= 1, got {cfg.study.max_failures}")
    if not cfg.study.name.strip():
        problems.append("study.name: must not be empty")
    if not 0 <= cfg.train.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio: must be in [0, 1), got {cfg.train.warmup_ratio}")
    if not 0 < cfg.data.eval_fraction < 1:
        problems.append(f"data.eval_fraction: must be in (0, 1), got {cfg.data.eval_fraction}")
    if cfg.train.time_limit_s is not None and cfg.train.time_limit_s <= 0:
        problems.append(f"train.time_limit_s: must be > 0 or null, got {cfg.train.time_limit_s}")
    if cfg.train.divergence_factor <= 1:
        problems.append(f"train.divergence_factor: must be > 1, got {cfg.train.divergence_factor}")
    if not 0 <= cfg.lora.dropout < 1:
        problems.append(f"lora.dropout: must be in [0, 1), got {cfg.lora.dropout}")
    return problems


def _check_search(cfg: Config) -> list[str]:
    problems = []
    choices = cfg.search.rank.choices
    if not choices:
        problems.append("search.rank.choices: must not be empty, e.g. [16, 64, 128]")
    problems += [f"search.rank.choices: ranks must be > 0, got {r}" for r in choices if r <= 0]
    if len(set(choices)) != len(choices):
        problems.append(f"search.rank.choices: duplicate ranks in {choices}")
    for name in ("learning_rate", "embedding_lr_ratio"):
        rng: FloatSearch = getattr(cfg.search, name)
        if rng.low > rng.high:
            problems.append(f"search.{name}: low <= high must hold, but got (low={rng.low}, high={rng.high})")
        if rng.low <= 0:
            problems.append(f"search.{name}.low: must be > 0, got {rng.low}")
    return problems


def _check_rules(cfg: Config) -> list[str]:
    problems = []
    high_ranks = [r for r in cfg.search.rank.choices if r > RSLORA_RANK_THRESHOLD]
    if cfg.lora.use_rslora is False and high_ranks and cfg.rules.rslora_above_64:
        problems.append(
            f"lora.use_rslora: false with rank choices above {RSLORA_RANK_THRESHOLD} ({high_ranks}) breaks the "
            "rsLoRA rule; use `auto` (rsLoRA exactly when r > 64), drop those ranks, or set "
            "rules.rslora_above_64: false for an ablation that breaks it on purpose"
        )
    lo, hi = EMBEDDING_LR_RATIO_RANGE
    rng = cfg.search.embedding_lr_ratio
    if cfg.lora.train_embeddings and cfg.rules.embedding_lr_ratio_range and (rng.low < lo or rng.high > hi):
        problems.append(
            f"search.embedding_lr_ratio: [{rng.low}, {rng.high}] leaves [{lo}, {hi}] (an embedding LR 2-10x "
            "smaller than the base LR); narrow it, or set rules.embedding_lr_ratio_range: false for an ablation"
        )
    return problems


def _check_targets(cfg: Config) -> list[str]:
    problems = []
    targets = cfg.lora.target_modules
    if not targets:
        problems.append("lora.target_modules: must not be empty, e.g. " + str(DEFAULT_TARGETS))
    embedded = [t for t in targets if t in EMBEDDING_MODULES]
    if embedded:
        problems.append(
            f"lora.target_modules: {embedded} are trained in full through lora.train_embeddings, not as LoRA "
            "targets; remove them from target_modules"
        )
    return problems


def _check_init_adapter(cfg: Config) -> list[str]:
    """Continuing from a saved adapter: its rank, alpha, targets and embeddings are fixed; the file must agree."""
    path = cfg.lora.init_adapter
    if path is None:
        return []
    config_file = Path(path).expanduser() / "adapter_config.json"
    if not config_file.is_file():
        return [f"lora.init_adapter: {path} is not a saved adapter folder (no adapter_config.json); "
                "give a trial's adapter/ folder, e.g. runs/<study>/trial-0003/adapter"]
    import json

    saved = json.loads(config_file.read_text())
    r, alpha = saved.get("r"), saved.get("lora_alpha")
    problems = []
    if cfg.search.rank.choices != [r]:
        problems.append(f"search.rank.choices: the adapter in lora.init_adapter has rank {r}; set [{r}]")
    if alpha is not None and float(alpha) != cfg.lora.alpha:
        problems.append(f"lora.alpha: the adapter in lora.init_adapter has alpha {alpha}; set {alpha}")
    targets = saved.get("target_modules") or []
    if set(targets) != set(cfg.lora.target_modules):
        problems.append(f"lora.target_modules: the adapter in lora.init_adapter targets {sorted(targets)}")
    rslora = r is not None and r > RSLORA_RANK_THRESHOLD if cfg.lora.use_rslora == "auto" else cfg.lora.use_rslora
    if bool(saved.get("use_rslora")) != bool(rslora):
        problems.append(f"lora.use_rslora: the adapter in lora.init_adapter has use_rslora={saved.get('use_rslora')}")
    trained = bool(set(saved.get("modules_to_save") or []) & set(EMBEDDING_MODULES))
    if trained != cfg.lora.train_embeddings:
        problems.append(f"lora.train_embeddings: the adapter in lora.init_adapter {'trains' if trained else 'does not train'} "
                        f"the embeddings; set {str(trained).lower()}")
    return problems


def _check_heal(cfg: Config) -> list[str]:
    from harness import data as data_mod

    h = cfg.model.heal
    problems = []
    if h.steps < 0 or h.rank < 1 or h.batch_size < 1 or h.learning_rate <= 0:
        problems.append("model.heal: steps >= 0, and rank, batch_size and learning_rate > 0")
    if h.steps > 0:
        problems += data_mod.check_source(h.data, "model.heal.data")
        if any(h.data.path == g.path and h.data != g for g in cfg.data.general_sources()):
            problems.append("model.heal.data: the same corpus as data.general but another text_field or split; "
                            "to heal on its training documents, make both entries identical")
    return problems


def summary(cfg: Config) -> str:
    """The one line ``validate`` prints for a good file."""
    s = cfg.search
    return (
        f"study {cfg.study.name!r}: {cfg.study.n_trials} trials ({cfg.study.objective}, {cfg.study.sampler}), "
        f"model {cfg.model.name}, backend {cfg.backend}, domain {cfg.data.domain.path}, general "
        f"{' + '.join(g.path for g in cfg.data.general_sources())}, ranks {s.rank.choices}, lr [{s.learning_rate.low:g}, {s.learning_rate.high:g}], "
        f"embedding ratio [{s.embedding_lr_ratio.low:g}, {s.embedding_lr_ratio.high:g}], "
        f"{cfg.train.max_steps} steps x {cfg.train.batch_size * cfg.train.grad_accum} x {cfg.model.max_seq_length} tokens"
    )
