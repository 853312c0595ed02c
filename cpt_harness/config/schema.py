"""The sweep file's schema: one dataclass per section, every field with its type, default and help (what
``cpt-harness explain`` prints). YAML is data; these dataclasses are the schema. Nothing here imports torch or
touches the disk."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Union

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
        "Embedding-LR ratio (required when lora.train_embeddings; may lie outside search.embedding_lr_ratio).", None
    )
    name: str | None = _help("Its name in reports and W&B (default: enqueue[i]).", None)


@dataclass
class StudyConfig:
    name: str = _help("Optuna study name; also the W&B group.", "cpt")
    storage: str = _help("SQLAlchemy URL or path of a SQLite file holding the study.", "sqlite:///runs/studies.db")
    n_trials: int = _help(
        "Number of COMPLETE trials the study should hold when the sweep ends (pruned trials do not count; the sweep "
        "also stops once the study holds 3 x n_trials complete and pruned trials together).",
        12,
    )
    objective: Literal["pareto", "constrained"] = _help(
        "pareto: minimize domain_loss and forgetting together. constrained: minimize domain_loss alone, subject to "
        "forgetting <= study.max_forgetting (one objective, so Optuna's pruners can stop trials early).",
        "pareto",
    )
    sampler: Literal["tpe", "random", "nsga2", "gp", "qmc"] = _help(
        "Optuna sampler, by name. tpe (the default): multivariate, constant liar for running trials, random start-up "
        "scaled to n_trials; gp: Gaussian process; nsga2: genetic, population scaled to n_trials; qmc: a Sobol "
        "sequence; random.",
        "tpe",
    )
    sampler_options: dict[str, Any] = _help(
        "Keyword arguments of the sampler's constructor (e.g. {n_startup_trials: 5} for tpe); they override the "
        "cpt_harness's defaults. seed comes from study.seed, constraints from study.max_forgetting.",
        factory=dict,
    )
    seed: int = _help("Sampler seed.", 0)
    max_failures: int = _help("Stop the sweep after this many failed trials in one run.", 3)
    keep_adapters: Literal["pareto", "all", "none"] = _help(
        "Which trials keep their saved adapter (pareto: the front, or the best trial of a constrained study).", "pareto"
    )
    output_dir: str = _help("Where adapters and per-trial files go (one folder per study).", "runs")
    heartbeat_interval: int = _help("Seconds between a running trial's heartbeats in the study database.", 30)
    grace_period: int | None = _help(
        "A running trial with no heartbeat for this long belongs to a dead worker: it is marked FAIL and retried "
        "(default: 4 x heartbeat_interval).",
        None,
    )
    max_retries: int = _help("How often a dead worker's trial is retried.", 2)
    max_forgetting: float | None = _help(
        "The forgetting budget (nats). Every finished trial records forgetting - max_forgetting as an Optuna "
        "constraint (<= 0: feasible), which tpe, nsga2 and gp take into account; reports grey out trials over it and "
        "choose the lowest domain loss within it (null: no budget; a pareto study's choice is the knee of the front). "
        "Required by objective: constrained.",
        None,
    )
    prune_margin: float | None = _help(
        "With max_forgetting: prune a trial whose forgetting at an eval checkpoint already exceeds max_forgetting by "
        "more than this (nats), in either objective. null: never prune on forgetting.",
        0.05,
    )
    pruner: Literal["none", "median", "successive_halving", "hyperband"] = _help(
        "Optuna pruner on the domain loss reported at every eval checkpoint; objective: constrained only (Optuna "
        "cannot prune a multi-objective study).",
        "none",
    )
    pruner_options: dict[str, Any] = _help(
        "Keyword arguments of the pruner's constructor (e.g. {n_startup_trials: 5, n_warmup_steps: 100} for median); "
        "steps are training steps.",
        factory=dict,
    )
    enqueue: Union[Literal["baselines"], list[EnqueuePoint]] = _help(
        "Points to run first, enqueued once when the study is created (never again on resume): a list of "
        "{rank, learning_rate, embedding_lr_ratio, name}, or `baselines` (Unsloth's CPT recipe: r 128, rsLoRA, lr "
        "5e-5, embedding ratio 0.1; and ablation.rank / learning_rate / embedding_lr_ratio). They count toward "
        "n_trials and are tagged baseline.",
        factory=list,
    )


@dataclass
class DataSource:
    path: str = _help(
        "builtin:NAME, a .txt/.jsonl/.parquet file, a folder (a datasets.save_to_disk one, or of .txt "
        "files with format: file), or a hub id."
    )
    text_field: str = _help("Column holding the text (jsonl, parquet, datasets).", "text")
    split: str = _help("Split to read from a hub dataset or a DatasetDict folder.", "train")
    format: Literal["auto", "paragraphs", "lines", "file"] = _help(
        "How plain text splits into documents. paragraphs: documents separated by blank lines (what auto means for a "
        ".txt file); lines: one document a line; file: a folder of .txt files, one document each (a folder is read "
        "that way only when this is set).",
        "auto",
    )
    weight: float | None = _help(
        "In a data.domain list only: the source's share of the training blocks, relative to the others' (null: 1).",
        None,
    )


@dataclass
class HealConfig:
    steps: int = _help("Steps of a LoRA pass on general text merged into the base before anything else; 0: off.", 0)
    data: DataSource = _help(
        "Healing text. When it is data.general, healing reads only its training documents, never the held-out "
        "ones that measure forgetting.",
        factory=lambda: DataSource("builtin:austen"),
    )
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
        "that does not fit twice.",
        True,
    )
    heal: HealConfig = _help(
        "Heal a dequantized base first: without it, any English training repairs quantization loss and masks "
        "forgetting.",
        factory=lambda: HealConfig(),
    )


@dataclass
class ReplayConfig:
    source: DataSource = _help(
        "General text mixed into the training batches: its training documents only, split as a data.general "
        "corpus is (never its held-out or heal-validation documents)."
    )
    fraction: float = _help(
        "Share of training tokens from the replay source, in [0, 1); search.replay_fraction wins when set.", 0.0
    )


@dataclass
class DataConfig:
    domain: Union[DataSource, list[DataSource]] = _help(
        "The new domain's text (train + held-out): one source, or a list of sources mixed into the training batches "
        "by their weight ([{path: a.jsonl, weight: 2}, {path: b.txt, format: lines}]); each source is split on its "
        "own and its held-out loss reported too (domain_loss/<name>) beside the pooled domain_loss.",
        factory=lambda: DataSource("builtin:legal"),
    )
    general: Union[DataSource, list[DataSource]] = _help(
        "General text, one source or a list: the held-out part of each measures forgetting (token-weighted over "
        "all of them, each also reported on its own); a validation part of each one's other documents measures "
        "healing.",
        factory=lambda: DataSource("builtin:brown"),
    )
    eval_fraction: float = _help("Fraction of documents held out for evaluation.", 0.1)
    seed: int = _help("Seed of the document split.", 0)
    replay: ReplayConfig | None = _help(
        "Replay: {source, fraction}, general text mixed into training batches at a token fraction (null: none). "
        "Forgetting is then also reported on the data.general corpora that are not replayed "
        "(forgetting_unreplayed).",
        None,
    )
    num_proc: Union[int, Literal["auto"]] = _help(
        "Processes that tokenize and pack the corpora when the data cache is built (auto: the CPUs this process may "
        "use, at most 8). Not part of any fingerprint: the blocks are the same whatever it is.",
        "auto",
    )

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
        "eval_schedule.",
        None,
    )
    eval_schedule: Literal["every", "log"] = _help(
        "every: eval_every; log: train.eval_points distinct steps spaced geometrically from step 1 to max_steps "
        "(rounded, de-duplicated and topped up with the smallest unused steps), so the early, steep part of a run is "
        "measured rather than interpolated. log takes the place of eval_every.",
        "every",
    )
    eval_points: int = _help("With eval_schedule: log, how many eval steps (at most max_steps).", 6)
    schedule: Literal["auto", "cosine", "wsd"] = _help(
        "The LR schedule. cosine: warmup, then cosine decay to 0 at max_steps. wsd (warmup-stable-decay): warmup, "
        "then the stable LR for max_steps; at every eval step k a decay branch copies the training state, trains "
        "max(1, round(decay_fraction x k)) more steps on the batches the run would see next with the LR decayed "
        "linearly to 0, is evaluated and discarded (data position and RNG restored): every eval point is the end "
        "of a complete, annealed schedule of its own length. auto: wsd in a shared-arms `ablate` (ablation.design: "
        "shared), cosine elsewhere (so factorial ablations and sweeps resume as they ran).",
        "auto",
    )
    decay_fraction: float = _help("wsd: each decay branch's length as a fraction of its step k.", 0.2)
    weight_decay: float = _help("AdamW weight decay (LoRA group; embeddings get none).", 0.0)
    max_grad_norm: float = _help("Gradient clipping norm; 0 turns it off.", 1.0)
    gradient_checkpointing: Union[bool, Literal["auto"]] = _help(
        "Trade compute for memory (unsloth: its offloaded variant). auto: off when the trial's measured or estimated "
        "peak fits the card, with headroom, once per trial placed on it (the --trials-per-gpu of the sweep or pool that "
        "started the worker, else parallel.trials_per_gpu), on otherwise; "
        "off on a CPU. Speed only: not part of the study's fingerprint.",
        "auto",
    )
    compile: bool = _help(
        "unsloth: torch.compile each decoder block. Measured on an H200 (SmolLM2, 16 x 512): no faster per step, "
        "and ~25 s more per trial, so off by default; it may pay off for long trials.",
        False,
    )
    seed: int = _help("Seed of the data order and LoRA init (the same for every trial).", 0)
    time_limit_s: float | None = _help("Fail a trial that trains longer than this.", None)
    checkpoint_every: int | None = _help(
        "Save the trial's training state (trainable weights, optimizer, scheduler, data position, RNG) every N "
        "steps into its folder (trial-NNNN/resume/): a trial retried after its worker died resumes there and "
        "ends as an uninterrupted run would. null: off. Not part of the study's fingerprint.",
        None,
    )
    divergence_factor: float = _help("Fail a trial whose loss exceeds this multiple of its first loss.", 3.0)


@dataclass
class EvalConfig:
    max_tokens: int = _help("Tokens of held-out text per corpus (the same blocks for every trial).", 16384)
    batch_size: int = _help("Blocks per evaluation batch.", 8)
    test_fraction: float = _help(
        "Share of each corpus's held-out documents set aside as the *test* part: the sampler, the pruner and the "
        "choice of trials see only the other (selection) part, and the recommendation reports the test part. "
        "Split by document, by a stable hash of each document's index and data.seed. 0: no split (trials are "
        "chosen and reported on the same documents, as studies before this setting were).",
        0.5,
    )


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
        "wins over data.replay.fraction). null: not searched.",
        None,
    )


@dataclass
class RulesConfig:
    rslora_above_64: bool = _help(
        "Require rsLoRA for ranks above 64 (false: an ablation breaking it on purpose).", True
    )
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
        "aliases pareto, chosen and confirmed.",
        True,
    )


@dataclass
class TrackingConfig:
    wandb: WandbConfig = _help("Weights & Biases.", factory=WandbConfig)


@dataclass
class SeedRange:
    min: int = _help("Sequential seeds: the seeds every arm runs before the first look (at least 3).", 3)
    max: int = _help("Sequential seeds: the most seeds an arm runs, one more per look while a claim is open.", 8)


@dataclass
class AblationConfig:
    factors: list[str] = _help(
        "Factors of the factorial design: gate_proj, embeddings (default), rslora, embedding_lr_ratio, replay "
        "(data.replay.fraction against none, judged on forgetting on the general corpora not replayed).",
        factory=lambda: ["gate_proj", "embeddings"],
    )
    seeds: int | SeedRange = _help(
        "Seeds per arm; seed k gives every arm the same data order and LoRA init. {min, max}: sequential seeds "
        "(issue 27; analysis/sequential.py judges each look at a group-sequential boundary): the first min seeds "
        "run; adding seeds look by look up to max is not wired into the plan yet.",
        5,
    )
    rank: int = _help("LoRA rank of every arm (unless --from-study).", 64)
    learning_rate: float = _help("Base learning rate of every arm (unless --from-study).", 2e-4)
    embedding_lr_ratio: float = _help("Embedding-LR ratio where embeddings train (unless --from-study).", 0.2)
    high_rank: int = _help(
        "rslora factor: the high rank (with learning_rates: crossed with `rank` as the low rank; without: the rank "
        "of every arm).",
        256,
    )
    learning_rates: list[float] | None = _help(
        "The LR grid: every arm x seed runs at each of these, and claims are judged on the learning-forgetting "
        "frontier across them (at matched domain gain or forgetting). null: the fixed-LR design at "
        "ablation.learning_rate (verdicts at one LR, where an arm that learns less also forgets less).",
        None,
    )
    ratios: list[float] = _help(
        "embedding_lr_ratio factor with learning_rates: its levels (a dose-response; outside [0.1, 0.5] through the "
        "rule's opt-out). In the shared design ablation.embedding_lr_ratio must be one of them.",
        factory=lambda: [0.05, 0.2, 1.0],
    )
    design: Literal["factorial", "shared"] = _help(
        "factorial: every combination of the factors' levels. shared (needs learning_rates): one default arm (gate_proj "
        "in, embeddings trained at ablation.embedding_lr_ratio, the LoRA scale lora.use_rslora gives at ablation.rank, "
        "no replay) and, per factor, its other levels one at a time (rslora: the four (rank, scaling) cells), so "
        "every claim of the guidance is judged in one study against the same default runs.",
        "factorial",
    )
    lr_extend: float = _help(
        "Frontier designs: where an arm's best LR (highest mean final domain gain over its complete seeds) is at an "
        "edge of its grid, the grid is extended on that side by this factor and the new LR run for the arm's seeds, "
        "until the best LR is inside, the new LR diverges, or the arm has max_learning_rates LRs. 1 or less: never.",
        4.0,
    )
    max_learning_rates: int = _help("Frontier designs: the most LRs an arm's grid grows to (ablation.lr_extend).", 6)
    match_levels: list[float] = _help(
        "Frontier designs: the levels each claim's effect is computed at, as fractions of the largest level every arm "
        "reaches in every seed, declared before the data; a verdict holds only where every level agrees. Not part "
        "of the study's fingerprint.",
        factory=lambda: [0.25, 0.5, 0.75, 1.0],
    )
    min_effect: float = _help(
        "The smallest effect that matters (nats; 0.01 is about 1% perplexity): a claim whose 90% interval lies "
        "within +-min_effect is NEGLIGIBLE. Not part of the study's fingerprint.",
        0.01,
    )
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
    backend: Literal["auto", "peft", "unsloth"] = _help(
        "auto: unsloth on a CUDA GPU when installed, else peft.", "auto"
    )
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
