"""The sweep file: its schema (``schema``: one dataclass per section, each field with its help), loading YAML
and ``--set`` overrides into it (``load``), ``explain`` and the packaged ``sweep_files``.

Checking a config (``validate``: the Unsloth CPT rules and the cross-checks, ``load_config``) sits *above* the
modules whose problems it collects (data, model, search, analysis), so this package's face does not import it:
``from cpt_harness.config.validate import load_config``.

Layer 1 of the import order (``validate`` alone is layer 9; docs/architecture.md)."""

from cpt_harness.config.schema import (
    DEFAULT_TARGETS,
    EMBEDDING_LR_RATIO_RANGE,
    EMBEDDING_MODULES,
    RSLORA_RANK_THRESHOLD,
    AblationConfig,
    Config,
    DataConfig,
    DataSource,
    EnqueuePoint,
    EvalConfig,
    FloatSearch,
    HealConfig,
    LinearSearch,
    LoraConfig,
    ModelConfig,
    ParallelConfig,
    RankSearch,
    ReplayConfig,
    RulesConfig,
    SearchConfig,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
    WandbConfig,
)
from cpt_harness.errors import ConfigError

__all__ = [
    "AblationConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "DataSource",
    "DEFAULT_TARGETS",
    "EMBEDDING_LR_RATIO_RANGE",
    "EMBEDDING_MODULES",
    "EnqueuePoint",
    "EvalConfig",
    "FloatSearch",
    "HealConfig",
    "LinearSearch",
    "LoraConfig",
    "ModelConfig",
    "ParallelConfig",
    "RankSearch",
    "ReplayConfig",
    "RSLORA_RANK_THRESHOLD",
    "RulesConfig",
    "SearchConfig",
    "StudyConfig",
    "TrackingConfig",
    "TrainConfig",
    "WandbConfig",
]
