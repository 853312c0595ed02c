"""Sweep configuration: YAML is data, these dataclasses are the schema.

Loading goes YAML file -> ``--set`` overrides -> typed dataclasses -> checks. Every problem is collected and
reported at once, each naming the key as the user writes it (``search.rank.choices``). Nothing here imports
torch or touches the disk beyond the config file itself, so ``cpt-harness validate`` works on a fresh install.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Union

import yaml

from cpt_harness.errors import ConfigError

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
class EnqueuePoint:
    rank: int = _help("LoRA rank; must be one of search.rank.choices (Optuna records a choice only among them).")
    learning_rate: float = _help("Base learning rate (may lie outside search.learning_rate: it still runs).")
    embedding_lr_ratio: float | None = _help(
        "Embedding-LR ratio (required when lora.train_embeddings; may lie outside search.embedding_lr_ratio).", None)
    name: str | None = _help("Its name in reports and W&B (default: enqueue[i]).", None)


@dataclass
class StudyConfig:
    name: str = _help("Optuna study name; also the W&B group.", "cpt")
    storage: str = _help("SQLAlchemy URL or path of a SQLite file holding the study.", "sqlite:///runs/studies.db")
    n_trials: int = _help(
        "Number of COMPLETE trials the study should hold when the sweep ends (pruned trials do not count; the sweep "
        "also stops once the study holds 3 x n_trials complete and pruned trials together).", 12)
    objective: Literal["pareto", "constrained"] = _help(
        "pareto: minimize domain_loss and forgetting together. constrained: minimize domain_loss alone, subject to "
        "forgetting <= study.max_forgetting (one objective, so Optuna's pruners can stop trials early).", "pareto")
    sampler: Literal["tpe", "random", "nsga2", "gp", "qmc"] = _help(
        "Optuna sampler, by name. tpe (the default): multivariate, constant liar for running trials, random start-up "
        "scaled to n_trials; gp: Gaussian process; nsga2: genetic, population scaled to n_trials; qmc: a Sobol "
        "sequence; random.", "tpe")
    sampler_options: dict[str, Any] = _help(
        "Keyword arguments of the sampler's constructor (e.g. {n_startup_trials: 5} for tpe); they override the "
        "cpt_harness's defaults. seed comes from study.seed, constraints from study.max_forgetting.", factory=dict)
    seed: int = _help("Sampler seed.", 0)
    max_failures: int = _help("Stop the sweep after this many failed trials in one run.", 3)
    keep_adapters: Literal["pareto", "all", "none"] = _help(
        "Which trials keep their saved adapter (pareto: the front, or the best trial of a constrained study).",
        "pareto")
    output_dir: str = _help("Where adapters and per-trial files go (one folder per study).", "runs")
    heartbeat_interval: int = _help("Seconds between a running trial's heartbeats in the study database.", 30)
    grace_period: int | None = _help(
        "A running trial with no heartbeat for this long belongs to a dead worker: it is marked FAIL and retried "
        "(default: 4 x heartbeat_interval).", None
    )
    max_retries: int = _help("How often a dead worker's trial is retried.", 2)
    max_forgetting: float | None = _help(
        "The forgetting budget (nats). Every finished trial records forgetting - max_forgetting as an Optuna "
        "constraint (<= 0: feasible), which tpe, nsga2 and gp take into account; reports grey out trials over it and "
        "choose the lowest domain loss within it (null: no budget; a pareto study's choice is the knee of the front). "
        "Required by objective: constrained.", None
    )
    prune_margin: float | None = _help(
        "With max_forgetting: prune a trial whose forgetting at an eval checkpoint already exceeds max_forgetting by "
        "more than this (nats), in either objective. null: never prune on forgetting.", 0.05)
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = _help(
        "Optuna pruner on the domain loss reported at every eval checkpoint; objective: constrained only (Optuna "
        "cannot prune a multi-objective study).", "none")
    pruner_options: dict[str, Any] = _help(
        "Keyword arguments of the pruner's constructor (e.g. {n_startup_trials: 5, n_warmup_steps: 100} for median); "
        "steps are training steps.", factory=dict)
    enqueue: Union[Literal["baselines"], list[EnqueuePoint]] = _help(
        "Points to run first, enqueued once when the study is created (never again on resume): a list of "
        "{rank, learning_rate, embedding_lr_ratio, name}, or `baselines` (Unsloth's CPT recipe: r 128, rsLoRA, lr "
        "5e-5, embedding ratio 0.1; and ablation.rank / learning_rate / embedding_lr_ratio). They count toward "
        "n_trials and are tagged baseline.", factory=list)


@dataclass
class DataSource:
    path: str = _help("builtin:NAME, a .txt/.jsonl/.parquet file, a folder (a datasets.save_to_disk one, or of .txt "
                      "files with format: file), or a hub id.")
    text_field: str = _help("Column holding the text (jsonl, parquet, datasets).", "text")
    split: str = _help("Split to read from a hub dataset or a DatasetDict folder.", "train")
    format: Literal["auto", "paragraphs", "lines", "file"] = _help(
        "How plain text splits into documents. paragraphs: documents separated by blank lines (what auto means for a "
        ".txt file); lines: one document a line; file: a folder of .txt files, one document each (a folder is read "
        "that way only when this is set).", "auto")
    weight: float | None = _help(
        "In a data.domain list only: the source's share of the training blocks, relative to the others' (null: 1).",
        None)


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
class ReplayConfig:
    source: DataSource = _help(
        "General text mixed into the training batches: its training documents only, split as a data.general "
        "corpus is (never its held-out or heal-validation documents).")
    fraction: float = _help(
        "Share of training tokens from the replay source, in [0, 1); search.replay_fraction wins when set.", 0.0)


@dataclass
class DataConfig:
    domain: Union[DataSource, list[DataSource]] = _help(
        "The new domain's text (train + held-out): one source, or a list of sources mixed into the training batches "
        "by their weight ([{path: a.jsonl, weight: 2}, {path: b.txt, format: lines}]); each source is split on its "
        "own and its held-out loss reported too (domain_loss/<name>) beside the pooled domain_loss.",
        factory=lambda: DataSource("builtin:legal"))
    general: Union[DataSource, list[DataSource]] = _help(
        "General text, one source or a list: the held-out part of each measures forgetting (token-weighted over "
        "all of them, each also reported on its own); a validation part of each one's other documents measures "
        "healing.", factory=lambda: DataSource("builtin:brown"),
    )
    eval_fraction: float = _help("Fraction of documents held out for evaluation.", 0.1)
    seed: int = _help("Seed of the document split.", 0)
    replay: ReplayConfig | None = _help(
        "Replay: {source, fraction}, general text mixed into training batches at a token fraction (null: none). "
        "Forgetting is then also reported on the data.general corpora that are not replayed "
        "(forgetting_unreplayed).", None)
    num_proc: Union[int, Literal["auto"]] = _help(
        "Processes that tokenize and pack the corpora when the data cache is built (auto: the CPUs this process may "
        "use, at most 8). Not part of any fingerprint: the blocks are the same whatever it is.", "auto")

    def domain_sources(self) -> list[DataSource]:
        """data.domain as a list, whichever form the file used."""
        return list(self.domain) if isinstance(self.domain, list) else [self.domain]

    def domain_weights(self) -> list[float]:
        return [1.0 if s.weight is None else float(s.weight) for s in self.domain_sources()]

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
    eval_steps: list[int] | None = _help(
        "Evaluate at exactly these steps (max_steps is always added); when set, takes the place of eval_every and "
        "eval_schedule.", None)
    eval_schedule: Literal["every", "log"] = _help(
        "every: eval_every; log: train.eval_points distinct steps spaced geometrically from step 1 to max_steps "
        "(rounded, de-duplicated and topped up with the smallest unused steps), so the early, steep part of a run is "
        "measured rather than interpolated. log takes the place of eval_every.", "every")
    eval_points: int = _help("With eval_schedule: log, how many eval steps (at most max_steps).", 6)
    schedule: Literal["auto", "cosine", "wsd"] = _help(
        "The LR schedule. cosine: warmup, then cosine decay to 0 at max_steps. wsd (warmup-stable-decay): warmup, "
        "then the stable LR for max_steps; at every eval step k a decay branch copies the training state, trains "
        "max(1, round(decay_fraction x k)) more steps on the batches the run would see next with the LR decayed "
        "linearly to 0, is evaluated and discarded (data position and RNG restored): every eval point is the end "
        "of a complete, annealed schedule of its own length. auto: wsd in `ablate`, cosine elsewhere.", "auto")
    decay_fraction: float = _help("wsd: each decay branch's length as a fraction of its step k.", 0.2)
    weight_decay: float = _help("AdamW weight decay (LoRA group; embeddings get none).", 0.0)
    max_grad_norm: float = _help("Gradient clipping norm; 0 turns it off.", 1.0)
    gradient_checkpointing: Union[bool, Literal["auto"]] = _help(
        "Trade compute for memory (unsloth: its offloaded variant). auto: off when the trial's measured or estimated "
        "peak fits the card, with headroom, once per trial placed on it (the --trials-per-gpu of the sweep or pool that "
        "started the worker, else parallel.trials_per_gpu), on otherwise; "
        "off on a CPU. Speed only: not part of the study's fingerprint.", "auto")
    compile: bool = _help(
        "unsloth: torch.compile each decoder block. Measured on an H200 (SmolLM2, 16 x 512): no faster per step, "
        "and ~25 s more per trial, so off by default; it may pay off for long trials.", False
    )
    seed: int = _help("Seed of the data order and LoRA init (the same for every trial).", 0)
    time_limit_s: float | None = _help("Fail a trial that trains longer than this.", None)
    checkpoint_every: int | None = _help(
        "Save the trial's training state (trainable weights, optimizer, scheduler, data position, RNG) every N "
        "steps into its folder (trial-NNNN/resume/): a trial retried after its worker died resumes there and "
        "ends as an uninterrupted run would. null: off. Not part of the study's fingerprint.", None)
    divergence_factor: float = _help("Fail a trial whose loss exceeds this multiple of its first loss.", 3.0)


@dataclass
class EvalConfig:
    max_tokens: int = _help("Tokens of held-out text per corpus (the same blocks for every trial).", 16384)
    batch_size: int = _help("Blocks per evaluation batch.", 8)
    test_fraction: float = _help(
        "Share of each corpus's held-out documents set aside as the *test* part: the sampler, the pruner and the "
        "choice of trials see only the other (selection) part, and the recommendation reports the test part. "
        "Split by document, by a stable hash of each document's index and data.seed. 0: no split (trials are "
        "chosen and reported on the same documents, as studies before this setting were).", 0.5)


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
class LinearSearch:
    low: float = _help("Lower bound (may be 0).")
    high: float = _help("Upper bound.")


@dataclass
class SearchConfig:
    rank: RankSearch = _help("LoRA rank.", factory=RankSearch)
    learning_rate: FloatSearch = _help("Base learning rate.", factory=lambda: FloatSearch(5e-5, 5e-4))
    embedding_lr_ratio: FloatSearch = _help(
        "Embedding LR = ratio x learning_rate.", factory=lambda: FloatSearch(0.1, 0.5)
    )
    replay_fraction: LinearSearch | None = _help(
        "Replay's token fraction as a search dimension, {low, high} on a linear scale in [0, 1) (needs data.replay; "
        "wins over data.replay.fraction). null: not searched.", None)


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
    log_adapters: bool = _help(
        "Log every saved adapter as a W&B artifact of type model, by reference (file:// URIs and checksums: no copy "
        "of the weights), with the trial's config and the base model's provenance; `cpt-harness report` adds the "
        "aliases pareto, chosen and confirmed.", True)


@dataclass
class TrackingConfig:
    wandb: WandbConfig = _help("Weights & Biases.", factory=WandbConfig)


@dataclass
class AblationConfig:
    factors: list[str] = _help(
        "Factors of the factorial design: gate_proj, embeddings (default), rslora, embedding_lr_ratio, replay "
        "(data.replay.fraction against none, judged on forgetting on the general corpora not replayed).",
        factory=lambda: ["gate_proj", "embeddings"],
    )
    seeds: int = _help("Seeds per arm; seed k gives every arm the same data order and LoRA init.", 5)
    rank: int = _help("LoRA rank of every arm (unless --from-study).", 64)
    learning_rate: float = _help("Base learning rate of every arm (unless --from-study).", 2e-4)
    embedding_lr_ratio: float = _help("Embedding-LR ratio where embeddings train (unless --from-study).", 0.2)
    high_rank: int = _help(
        "rslora factor: the high rank (with learning_rates: crossed with `rank` as the low rank; without: the rank "
        "of every arm).", 256)
    learning_rates: list[float] | None = _help(
        "The LR grid: every arm x seed runs at each of these, and claims are judged on the learning-forgetting "
        "frontier across them (at matched domain gain or forgetting). null: the fixed-LR design at "
        "ablation.learning_rate (verdicts at one LR, where an arm that learns less also forgets less).", None)
    ratios: list[float] = _help(
        "embedding_lr_ratio factor with learning_rates: its levels (a dose-response; outside [0.1, 0.5] through the "
        "rule's opt-out). In the shared design ablation.embedding_lr_ratio must be one of them.",
        factory=lambda: [0.05, 0.2, 1.0])
    design: Literal["factorial", "shared"] = _help(
        "factorial: every combination of the factors' levels. shared (needs learning_rates): one default arm (gate_proj "
        "in, embeddings trained at ablation.embedding_lr_ratio, the LoRA scale lora.use_rslora gives at ablation.rank, "
        "no replay) and, per factor, its other levels one at a time (rslora: the four (rank, scaling) cells), so "
        "every claim of the guidance is judged in one study against the same default runs.", "factorial")
    lr_extend: float = _help(
        "Frontier designs: where an arm's best LR (highest mean final domain gain over its complete seeds) is at an "
        "edge of its grid, the grid is extended on that side by this factor and the new LR run for the arm's seeds, "
        "until the best LR is inside, the new LR diverges, or the arm has max_learning_rates LRs. 1 or less: never.",
        4.0)
    max_learning_rates: int = _help("Frontier designs: the most LRs an arm's grid grows to (ablation.lr_extend).", 6)
    match_levels: list[float] = _help(
        "Frontier designs: the levels each claim's effect is computed at, as fractions of the largest level every arm "
        "reaches in every seed, declared before the data; a verdict holds only where every level agrees. Not part "
        "of the study's fingerprint.", factory=lambda: [0.25, 0.5, 0.75, 1.0])
    min_effect: float = _help(
        "The smallest effect that matters (nats; 0.01 is about 1% perplexity): a claim whose 90% interval lies "
        "within +-min_effect is NEGLIGIBLE. Not part of the study's fingerprint.", 0.01)
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
        invalid = {p.split(": ", 1)[0] for p in problems}  # every schema problem starts with its key
        problems.extend(p for p in check(cfg, invalid) if p not in problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


def _read_yaml(path: str | Path) -> dict[str, Any]:
    from cpt_harness.data import text_problem  # light: numpy only

    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a sweep file; give a YAML file, e.g. sweeps/demo.yaml"], str(path))
    if not path.is_file():
        raise ConfigError([f"config file not found: {path} (see sweeps/ for examples)"], str(path))
    try:
        blob = path.read_bytes()
    except OSError as e:
        problem = f"cannot read the config file ({e.strerror or e}); check its permissions"
        raise ConfigError([problem], str(path)) from None
    if problem := text_problem(blob):
        raise ConfigError([f"the config file {problem}; a sweep file is YAML text"], str(path))
    try:
        raw = yaml.load(blob.decode("utf-8"), Loader=_UniqueKeyLoader)
    except DuplicateKeys as e:
        raise ConfigError(e.problems, str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(raw).__name__}"], str(path))
    return raw


class DuplicateKeys(yaml.YAMLError):
    """A YAML document with a key given twice in one mapping; ``problems`` names each, as the user writes it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last one silently, so a
    setting written twice would be half ignored."""

    def construct_document(self, node):
        problems = list(_duplicate_keys(node, ""))
        if problems:
            raise DuplicateKeys(problems)
        return super().construct_document(node)


def _duplicate_keys(node: yaml.Node, prefix: str):
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
            continue
        key, line = _join(prefix, key_node.value), key_node.start_mark.line + 1
        if key_node.value in seen:
            where = f"lines {seen[key_node.value]} and {line}" if seen[key_node.value] != line else f"line {line}"
            yield f"{key}: given twice ({where}); YAML would keep only the last, so remove one"
        seen.setdefault(key_node.value, line)
        yield from _duplicate_keys(value_node, key)


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        problems.append(f"--set {item!r}: expected dotted.key=value, e.g. --set train.max_steps=100")
        return
    try:
        parsed = yaml.load(value, Loader=_UniqueKeyLoader) if value.strip() else None
    except DuplicateKeys as e:
        problems.extend(f"--set {key}: {p}" for p in e.problems)
        return
    except yaml.YAMLError as e:
        problems.append(f"--set {key}: value is not valid YAML ({e})")
        return
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part in ("domain", "general", "source"):
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
        kind = _container_kind(type(value))
        shaped = [o for o in options if kind is not None and _container_kind(o) == kind]
        if len(shaped) == 1:  # a list for the list form (a mapping for the mapping form): its own, precise problems
            return _coerce(shaped[0], value, key, problems)
        tried = []
        for option in options:
            scratch: list[str] = []
            result = _coerce(option, value, key, scratch)
            if not scratch:
                return result
            tried += scratch
        finite = [p for p in tried if "must be a finite number" in p]  # the right type, a wrong value: say so
        problems.append(finite[0] if finite else f"{key}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{key}: must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.append(f"{key}: expected a mapping of names to values, e.g. {{n_startup_trials: 5}}; "
                            f"got {value!r}")
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
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        if not math.isfinite(value):
            problems.append(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value  # pragma: no cover


def _container_kind(tp: Any) -> str | None:
    """list or mapping, for a type (list[X], dict[...], a dataclass) or a value's type; None for scalars."""
    origin = typing.get_origin(tp) or tp
    if origin is list:
        return "list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if tp is DataSource:
        return "a source (PATH or {path: PATH, ...})"
    if origin is list and typing.get_args(tp) == (DataSource,):
        return "a list of sources"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


# ---------------------------------------------------------------------------------------------- checks


def check(cfg: Config, invalid: set[str] = frozenset()) -> list[str]:
    """Semantic checks, including the Unsloth CPT rules. Touches no network and loads nothing (it may read the
    first bytes of a model or data file).

    Every rule runs on its own, so one value of the wrong type never hides the other problems; a rule is skipped
    when a key it reads is in ``invalid`` (values the schema already reported)."""
    problems: list[str] = []
    for keys, rule in _rules():
        if any(_touches(key, bad) for key in keys for bad in invalid):
            continue
        try:
            problems += rule(cfg)
        except Exception as e:  # never skipped: an odd value, or a bug in the check, is a problem to see
            problems.append(f"{keys[0]}: could not be checked: its check raised {type(e).__name__}: {e} (if the "
                            "value is right, this is a bug in cpt-harness: please report it)")
    return problems


def _touches(key: str, bad: str) -> bool:
    """Whether a rule reading ``key`` reads the invalid value ``bad`` (the key itself, a part, or its section)."""
    return key == bad or bad.startswith((key + ".", key + "[")) or key.startswith(bad + ".")


def _get(cfg: Config, key: str) -> Any:
    return functools.reduce(getattr, key.split("."), cfg)


# One value each: (key, holds, what is valid).
LIMITS: list[tuple[str, Callable[[Any], bool], str]] = [
    ("study.n_trials", lambda v: v > 0, "must be > 0"),
    ("study.max_failures", lambda v: v >= 1, "must be >= 1"),
    ("study.heartbeat_interval", lambda v: v >= 1, "must be >= 1 second"),
    ("study.max_retries", lambda v: v >= 0, "must be >= 0"),
    ("study.prune_margin", lambda v: v is None or v >= 0, "must be >= 0 (nats) or null"),
    ("model.max_seq_length", lambda v: v > 0, "must be > 0"),
    ("model.heal.steps", lambda v: v >= 0, "must be >= 0 (0: no healing)"),
    ("model.heal.rank", lambda v: v >= 1, "must be >= 1"),
    ("model.heal.batch_size", lambda v: v >= 1, "must be >= 1"),
    ("model.heal.learning_rate", lambda v: v > 0, "must be > 0"),
    ("data.eval_fraction", lambda v: 0 < v < 1, "must be in (0, 1)"),
    ("data.num_proc", lambda v: v == "auto" or v >= 1, "must be >= 1 or auto"),
    ("train.max_steps", lambda v: v > 0, "must be > 0"),
    ("train.batch_size", lambda v: v > 0, "must be > 0"),
    ("train.grad_accum", lambda v: v > 0, "must be > 0"),
    ("train.eval_every", lambda v: v > 0, "must be > 0"),
    ("train.warmup_ratio", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("train.eval_points", lambda v: v >= 1, "must be >= 1"),
    ("train.eval_steps", lambda v: v is None or (len(v) > 0 and all(isinstance(s, int) and s >= 1 for s in v)),
     "must be a non-empty list of steps >= 1, e.g. [10, 50, 200], or null"),
    ("train.decay_fraction", lambda v: 0 < v <= 1, "must be in (0, 1]"),
    ("train.weight_decay", lambda v: v >= 0, "must be >= 0"),
    ("train.max_grad_norm", lambda v: v >= 0, "must be >= 0 (0: no clipping)"),
    ("train.time_limit_s", lambda v: v is None or v > 0, "must be > 0 or null"),
    ("train.checkpoint_every", lambda v: v is None or v >= 1, "must be >= 1 (steps) or null (off)"),
    ("train.divergence_factor", lambda v: v > 1, "must be > 1"),
    ("eval.max_tokens", lambda v: v > 0, "must be > 0"),
    ("eval.batch_size", lambda v: v > 0, "must be > 0"),
    ("eval.test_fraction", lambda v: 0 <= v < 1, "must be in [0, 1) (0: no selection/test split)"),
    ("lora.alpha", lambda v: v > 0, "must be > 0"),
    ("lora.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    ("search.learning_rate.low", lambda v: v > 0, "must be > 0"),
    ("search.embedding_lr_ratio.low", lambda v: v > 0, "must be > 0"),
    ("parallel.workers", lambda v: v >= 1, "must be >= 1"),
    ("parallel.trials_per_gpu", lambda v: v == "auto" or v >= 1, "must be >= 1 or auto"),
    ("ablation.seeds", lambda v: v >= 2, "a paired t-interval needs at least 2 seeds (5 or more advised)"),
    ("ablation.rank", lambda v: v >= 1, "must be >= 1"),
    ("ablation.high_rank", lambda v: v >= 1, "must be >= 1"),
    ("ablation.learning_rate", lambda v: v > 0, "must be > 0"),
    ("ablation.embedding_lr_ratio", lambda v: v > 0, "must be > 0"),
    ("ablation.min_effect", lambda v: v >= 0, "must be >= 0 (nats)"),
    ("ablation.max_learning_rates", lambda v: v >= 2, "must be >= 2"),
    ("ablation.match_levels", lambda v: len(v) > 0 and all(0 < x <= 1 for x in v),
     "must be a non-empty list of fractions in (0, 1], e.g. [0.25, 0.5, 0.75, 1.0]"),
]


def _limit(key: str, holds: Callable[[Any], bool], what: str) -> Callable[[Config], list[str]]:
    def rule(cfg: Config) -> list[str]:
        value = _get(cfg, key)
        return [] if holds(value) else [f"{key}: {what}, got {value}"]
    return rule


def _rules() -> list[tuple[tuple[str, ...], Callable[[Config], list[str]]]]:
    """Every check as (the keys it reads, the check)."""
    from cpt_harness import ablation, models, search_space, storage, urls  # light: no torch at import (storage: optuna)
    from cpt_harness import data as data_mod

    return [((key,), _limit(key, holds, what)) for key, holds, what in LIMITS] + [
        (("study.grace_period", "study.heartbeat_interval"), _check_grace_period),
        (("train.eval_steps", "train.max_steps"), _check_eval_steps),
        (("study.objective", "study.max_forgetting", "study.pruner"), _check_objective),
        (("study.sampler", "study.sampler_options", "study.n_trials"), lambda c: storage.sampler_problems(c)),
        (("study.pruner", "study.pruner_options", "train.eval_every", "train.max_steps"),
         lambda c: storage.pruner_problems(c)),
        (("study.enqueue", "search", "lora.train_embeddings"), search_space.enqueue_problems),
        (("parallel.gpus",), _check_gpus),
        (("search.rank.choices",), _check_ranks),
        (("search.learning_rate",), lambda c: _check_range(c, "learning_rate")),
        (("search.embedding_lr_ratio",), lambda c: _check_range(c, "embedding_lr_ratio")),
        (("lora.use_rslora", "search.rank.choices", "rules.rslora_above_64"), _check_rslora_rule),
        (("lora.train_embeddings", "rules.embedding_lr_ratio_range", "search.embedding_lr_ratio"), _check_ratio_rule),
        (("lora.target_modules",), _check_targets),
        (("study.name",), lambda c: safe_name_problems(c.study.name, "study.name")),
        (("ablation.study_name",), lambda c: safe_name_problems(c.ablation.study_name, "ablation.study_name")),
        (("study.output_dir",), lambda c: _check_output_dir(c.study.output_dir)),
        (("model.name",), lambda c: models.check_model_name(c.model.name, "model.name")),
        (("data.domain",), lambda c: data_mod.check_domain(c.data.domain, "data.domain")),
        (("data.general",), lambda c: data_mod.check_general(c.data.general, "data.general")),
        (("data.general", "data.replay", "model.heal.data"), _check_weights_only_in_domain),
        (("lora.init_adapter",), _check_init_adapter),
        (("data.replay", "search.replay_fraction", "data.general"), _check_replay),
        (("model.heal.steps", "model.heal.data", "data.general"), _check_heal),
        (("ablation.factors", "ablation.learning_rates", "ablation.ratios", "ablation.rank", "ablation.high_rank"),
         ablation.check),
        (("study.storage",), lambda c: urls.check(c.study.storage)),
    ]


def _check_weights_only_in_domain(cfg: Config) -> list[str]:
    general = cfg.data.general
    keyed = ([("data.general", general)] if not isinstance(general, list) else
             [(f"data.general[{i}]", g) for i, g in enumerate(general)])
    keyed += [("model.heal.data", cfg.model.heal.data)]
    if cfg.data.replay is not None:
        keyed.append(("data.replay.source", cfg.data.replay.source))
    return [f"{key}.weight: a weight mixes the sources of a data.domain list; {src.path} here is not one (remove "
            "the weight)" for key, src in keyed if src.weight is not None]


def _check_eval_steps(cfg: Config) -> list[str]:
    steps, n = cfg.train.eval_steps, cfg.train.max_steps
    late = [s for s in steps or [] if isinstance(s, int) and s > n]
    return [f"train.eval_steps: {late} beyond train.max_steps ({n}); list steps up to it (max_steps is always "
            "evaluated)"] if late else []


def _check_grace_period(cfg: Config) -> list[str]:
    s = cfg.study
    if s.grace_period is not None and s.grace_period <= s.heartbeat_interval:
        return [f"study.grace_period: must exceed study.heartbeat_interval ({s.heartbeat_interval}), "
                f"got {s.grace_period}"]
    return []


def _check_objective(cfg: Config) -> list[str]:
    s = cfg.study
    problems = []
    if s.objective == "constrained" and s.max_forgetting is None:
        problems.append("study.max_forgetting: objective: constrained minimizes domain loss subject to forgetting <= "
                        "study.max_forgetting; set the budget in nats, e.g. 0.05")
    if s.pruner != "none" and s.objective != "constrained":
        problems.append(f"study.pruner: {s.pruner} needs objective: constrained (Optuna cannot prune a multi-objective "
                        "study); with objective: pareto use none (trials over the forgetting budget are still pruned "
                        "by study.prune_margin)")
    return problems


def _check_gpus(cfg: Config) -> list[str]:
    gpus = cfg.parallel.gpus
    if gpus is not None and (not gpus or any(g < 0 for g in gpus)):
        return [f"parallel.gpus: a non-empty list of GPU indices, e.g. [0, 1]; got {gpus}"]
    return []


def _check_ranks(cfg: Config) -> list[str]:
    choices = cfg.search.rank.choices
    problems = [] if choices else ["search.rank.choices: must not be empty, e.g. [16, 64, 128]"]
    problems += [f"search.rank.choices: ranks must be > 0, got {r}" for r in choices if r <= 0]
    if len(set(choices)) != len(choices):
        problems.append(f"search.rank.choices: duplicate ranks in {choices}")
    return problems


def _check_range(cfg: Config, name: str) -> list[str]:
    rng: FloatSearch = getattr(cfg.search, name)
    if rng.low > rng.high:
        return [f"search.{name}: low <= high must hold, but got (low={rng.low}, high={rng.high})"]
    return []


def _check_rslora_rule(cfg: Config) -> list[str]:
    high_ranks = [r for r in cfg.search.rank.choices if r > RSLORA_RANK_THRESHOLD]
    if cfg.lora.use_rslora is False and high_ranks and cfg.rules.rslora_above_64:
        return [
            f"lora.use_rslora: false with rank choices above {RSLORA_RANK_THRESHOLD} ({high_ranks}) breaks the "
            "rsLoRA rule; use `auto` (rsLoRA exactly when r > 64), drop those ranks, or set "
            "rules.rslora_above_64: false for an ablation that breaks it on purpose"
        ]
    return []


def _check_ratio_rule(cfg: Config) -> list[str]:
    lo, hi = EMBEDDING_LR_RATIO_RANGE
    rng = cfg.search.embedding_lr_ratio
    if cfg.lora.train_embeddings and cfg.rules.embedding_lr_ratio_range and (rng.low < lo or rng.high > hi):
        return [
            f"search.embedding_lr_ratio: [{rng.low}, {rng.high}] leaves [{lo}, {hi}] (an embedding LR 2-10x "
            "smaller than the base LR); narrow it, or set rules.embedding_lr_ratio_range: false for an ablation"
        ]
    return []


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


def safe_name_problems(name: str | None, key: str) -> list[str]:
    """A study name becomes folder and file names (<output_dir>/<name>/, reports/<name>/): it must be one
    plain path component."""
    if name is None:
        return []
    if not name.strip():
        return [f"{key}: must not be empty; it names the study's folders, e.g. legal-r64"]
    unsafe = (name != name.strip() or any(c in name for c in "/\\") or ".." in name or name == "."
              or any(ord(c) < 32 for c in name))
    if not unsafe:
        return []
    fix = re.sub(r"[^\w.-]+", "-", name.replace("..", ".")).strip("-.") or "my-study"
    return [f"{key}: {name!r} is not a safe name: it becomes folder names (runs/<name>, reports/<name>), so no "
            f"'/', '\\', '..', control characters or surrounding spaces; e.g. {fix!r}"]


def _check_output_dir(output_dir: str) -> list[str]:
    """Where the study's folder will go: a folder, or a path one can create; nothing is created here."""
    path = Path(output_dir).expanduser()
    if not output_dir.strip():
        return ["study.output_dir: must not be empty, e.g. runs"]
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [f"study.output_dir: {existing} is a file, not a folder; point study.output_dir at a folder "
                "(it is created if missing)"]
    if not os.access(existing, os.W_OK | os.X_OK):
        where = "" if existing == path else f" (its nearest existing parent {existing})"
        return [f"study.output_dir: {output_dir}{where} is not writable; choose a folder you can write to"]
    return []


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

    try:
        saved = json.loads(config_file.read_bytes())
    except (OSError, ValueError) as e:
        return [f"lora.init_adapter: {config_file} is not readable JSON ({e}); give a trial's adapter/ folder as "
                "saved by a sweep"]
    if not isinstance(saved, dict):
        return [f"lora.init_adapter: {config_file} holds a JSON {type(saved).__name__}, not an adapter config"]
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
    from cpt_harness import data as data_mod

    h = cfg.model.heal
    problems = []
    if h.steps > 0:
        problems += data_mod.check_source(h.data, "model.heal.data")
        if any(h.data.path == g.path and h.data != g for g in cfg.data.general_sources()):
            problems.append("model.heal.data: the same corpus as data.general but another text_field or split; "
                            "to heal on its training documents, make both entries identical")
    return problems


def _check_replay(cfg: Config) -> list[str]:
    from cpt_harness import data as data_mod

    r, rng, problems = cfg.data.replay, cfg.search.replay_fraction, []
    if rng is not None:
        if r is None:
            problems.append("search.replay_fraction: needs data.replay: {source: ...}, the general text to mix in")
        if not 0 <= rng.low <= rng.high < 1:
            problems.append(f"search.replay_fraction: 0 <= low <= high < 1 must hold, but got (low={rng.low}, "
                            f"high={rng.high})")
    if r is None:
        return problems
    if not 0 <= r.fraction < 1:
        problems.append(f"data.replay.fraction: must be in [0, 1), got {r.fraction}")
    problems += data_mod.check_source(r.source, "data.replay.source")
    if all(g == r.source for g in cfg.data.general_sources()):
        problems.append("data.general: every corpus in it is data.replay.source; add one that is not replayed (e.g. "
                        "builtin:sotu), so that forgetting is also measured on general text no trial trains on")
    return problems


def summary(cfg: Config) -> str:
    """The one line ``validate`` prints for a good file."""
    s = cfg.search
    return (
        f"study {cfg.study.name!r}: {cfg.study.n_trials} trials ({cfg.study.objective}, {cfg.study.sampler}"
        + (f", pruner {cfg.study.pruner}" if cfg.study.pruner != "none" else "")
        + (f", max forgetting {cfg.study.max_forgetting:g}" if cfg.study.max_forgetting is not None else "") + "), "
        f"model {cfg.model.name}, backend {cfg.backend}, domain {' + '.join(d.path for d in cfg.data.domain_sources())}, general "
        f"{' + '.join(g.path for g in cfg.data.general_sources())}, ranks {s.rank.choices}, lr [{s.learning_rate.low:g}, {s.learning_rate.high:g}], "
        f"embedding ratio [{s.embedding_lr_ratio.low:g}, {s.embedding_lr_ratio.high:g}], "
        + (f"replay {cfg.data.replay.source.path} at " + (f"[{s.replay_fraction.low:g}, {s.replay_fraction.high:g}]"
           if s.replay_fraction else f"{cfg.data.replay.fraction:g}") + ", " if cfg.data.replay else "") +
        f"{cfg.train.max_steps} steps x {cfg.train.batch_size * cfg.train.grad_accum} x {cfg.model.max_seq_length} tokens"
    )
