"""Checking a config: the limits of single values, the Unsloth CPT rules and the cross-checks, each problem naming
its key; ``load_config`` = load (``config.load``) then check. It reads the problems the data, model, search and
analysis modules know about their own keys, so it sits above them in the import order (layer 9): nothing below
imports it."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any, Callable

from cpt_harness import data as data_mod
from cpt_harness.analysis import ablation  # light: none of these imports torch (search.study imports optuna)
from cpt_harness.config import load
from cpt_harness.config.names import safe_name_problems
from cpt_harness.config.schema import (
    DEFAULT_TARGETS,
    EMBEDDING_LR_RATIO_RANGE,
    EMBEDDING_MODULES,
    RSLORA_RANK_THRESHOLD,
    Config,
    FloatSearch,
)
from cpt_harness.errors import ConfigError
from cpt_harness.infra import urls
from cpt_harness.model import resolve as models
from cpt_harness.search import samplers
from cpt_harness.search import space as search_space


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Read a sweep file, apply ``--set key=value`` overrides, build and check the typed config."""
    cfg, problems = load.build(path, overrides)
    if cfg is not None:
        invalid = {p.split(": ", 1)[0] for p in problems}  # every schema problem starts with its key
        problems.extend(p for p in check(cfg, invalid) if p not in problems)
    if problems:
        raise ConfigError(problems, str(path) if path else "defaults")
    assert cfg is not None  # load.build returns None only with a problem, raised above
    return cfg


def check(cfg: Config, invalid: AbstractSet[str] = frozenset()) -> list[str]:
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
        except Exception as e:  # noqa: BLE001 - never skipped: an odd value, or a bug in the check, is a problem to see
            problems.append(
                f"{keys[0]}: could not be checked: its check raised {type(e).__name__}: {e} (if the "
                "value is right, this is a bug in cpt-harness: please report it)"
            )
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
    (
        "train.eval_steps",
        lambda v: v is None or (len(v) > 0 and all(isinstance(s, int) and s >= 1 for s in v)),
        "must be a non-empty list of steps >= 1, e.g. [10, 50, 200], or null",
    ),
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
    (
        "ablation.seeds",
        lambda v: not isinstance(v, int) or v >= 2,
        "a paired t-interval needs at least 2 seeds (5 or more advised)",
    ),
    (
        "ablation.seeds",
        lambda v: isinstance(v, int) or 3 <= v.min <= v.max,
        "{min, max} needs 3 <= min <= max (3: the fewest seeds a verdict reads)",
    ),
    ("ablation.rank", lambda v: v >= 1, "must be >= 1"),
    ("ablation.high_rank", lambda v: v >= 1, "must be >= 1"),
    ("ablation.learning_rate", lambda v: v > 0, "must be > 0"),
    ("ablation.embedding_lr_ratio", lambda v: v > 0, "must be > 0"),
    ("ablation.min_effect", lambda v: v >= 0, "must be >= 0 (nats)"),
    ("ablation.max_learning_rates", lambda v: v >= 2, "must be >= 2"),
    (
        "ablation.match_levels",
        lambda v: len(v) > 0 and all(0 < x <= 1 for x in v),
        "must be a non-empty list of fractions in (0, 1], e.g. [0.25, 0.5, 0.75, 1.0]",
    ),
]


def _limit(key: str, holds: Callable[[Any], bool], what: str) -> Callable[[Config], list[str]]:
    def rule(cfg: Config) -> list[str]:
        value = _get(cfg, key)
        return [] if holds(value) else [f"{key}: {what}, got {value}"]

    return rule


def _rules() -> list[tuple[tuple[str, ...], Callable[[Config], list[str]]]]:
    """Every check as (the keys it reads, the check)."""
    return [((key,), _limit(key, holds, what)) for key, holds, what in LIMITS] + [
        (("study.grace_period", "study.heartbeat_interval"), _check_grace_period),
        (("train.eval_steps", "train.max_steps"), _check_eval_steps),
        (("study.objective", "study.max_forgetting", "study.pruner"), _check_objective),
        (("study.sampler", "study.sampler_options", "study.n_trials"), lambda c: samplers.sampler_problems(c)),
        (
            ("study.pruner", "study.pruner_options", "train.eval_every", "train.max_steps"),
            lambda c: samplers.pruner_problems(c),
        ),
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
        (
            ("ablation.factors", "ablation.learning_rates", "ablation.ratios", "ablation.rank", "ablation.high_rank"),
            ablation.check,
        ),
        (("study.storage",), lambda c: urls.check(c.study.storage)),
    ]


def _check_weights_only_in_domain(cfg: Config) -> list[str]:
    general = cfg.data.general
    keyed = (
        [("data.general", general)]
        if not isinstance(general, list)
        else [(f"data.general[{i}]", g) for i, g in enumerate(general)]
    )
    keyed += [("model.heal.data", cfg.model.heal.data)]
    if cfg.data.replay is not None:
        keyed.append(("data.replay.source", cfg.data.replay.source))
    return [
        f"{key}.weight: a weight mixes the sources of a data.domain list; {src.path} here is not one (remove "
        "the weight)"
        for key, src in keyed
        if src.weight is not None
    ]


def _check_eval_steps(cfg: Config) -> list[str]:
    steps, n = cfg.train.eval_steps, cfg.train.max_steps
    late = [s for s in steps or [] if isinstance(s, int) and s > n]
    return (
        [f"train.eval_steps: {late} beyond train.max_steps ({n}); list steps up to it (max_steps is always evaluated)"]
        if late
        else []
    )


def _check_grace_period(cfg: Config) -> list[str]:
    s = cfg.study
    if s.grace_period is not None and s.grace_period <= s.heartbeat_interval:
        return [
            f"study.grace_period: must exceed study.heartbeat_interval ({s.heartbeat_interval}), got {s.grace_period}"
        ]
    return []


def _check_objective(cfg: Config) -> list[str]:
    s = cfg.study
    problems = []
    if s.objective == "constrained" and s.max_forgetting is None:
        problems.append(
            "study.max_forgetting: objective: constrained minimizes domain loss subject to forgetting <= "
            "study.max_forgetting; set the budget in nats, e.g. 0.05"
        )
    if s.pruner != "none" and s.objective != "constrained":
        problems.append(
            f"study.pruner: {s.pruner} needs objective: constrained (Optuna cannot prune a multi-objective "
            "study); with objective: pareto use none (trials over the forgetting budget are still pruned "
            "by study.prune_margin)"
        )
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


def _check_output_dir(output_dir: str) -> list[str]:
    """Where the study's folder will go: a folder, or a path one can create; nothing is created here."""
    path = Path(output_dir).expanduser()
    if not output_dir.strip():
        return ["study.output_dir: must not be empty, e.g. runs"]
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return [
            f"study.output_dir: {existing} is a file, not a folder; point study.output_dir at a folder "
            "(it is created if missing)"
        ]
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
        return [
            f"lora.init_adapter: {path} is not a saved adapter folder (no adapter_config.json); "
            "give a trial's adapter/ folder, e.g. runs/<study>/trial-0003/adapter"
        ]
    import json

    try:
        saved = json.loads(config_file.read_bytes())
    except (OSError, ValueError) as e:
        return [
            f"lora.init_adapter: {config_file} is not readable JSON ({e}); give a trial's adapter/ folder as "
            "saved by a sweep"
        ]
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
        problems.append(
            f"lora.train_embeddings: the adapter in lora.init_adapter {'trains' if trained else 'does not train'} "
            f"the embeddings; set {str(trained).lower()}"
        )
    return problems


def _check_heal(cfg: Config) -> list[str]:
    h = cfg.model.heal
    problems = []
    if h.steps > 0:
        problems += data_mod.check_source(h.data, "model.heal.data")
        if any(h.data.path == g.path and h.data != g for g in cfg.data.general_sources()):
            problems.append(
                "model.heal.data: the same corpus as data.general but another text_field or split; "
                "to heal on its training documents, make both entries identical"
            )
    return problems


def _check_replay(cfg: Config) -> list[str]:
    r, rng, problems = cfg.data.replay, cfg.search.replay_fraction, []
    if rng is not None:
        if r is None:
            problems.append("search.replay_fraction: needs data.replay: {source: ...}, the general text to mix in")
        if not 0 <= rng.low <= rng.high < 1:
            problems.append(
                f"search.replay_fraction: 0 <= low <= high < 1 must hold, but got (low={rng.low}, high={rng.high})"
            )
    if r is None:
        return problems
    if not 0 <= r.fraction < 1:
        problems.append(f"data.replay.fraction: must be in [0, 1), got {r.fraction}")
    problems += data_mod.check_source(r.source, "data.replay.source")
    if all(g == r.source for g in cfg.data.general_sources()):
        problems.append(
            "data.general: every corpus in it is data.replay.source; add one that is not replayed (e.g. "
            "builtin:sotu), so that forgetting is also measured on general text no trial trains on"
        )
    return problems


def summary(cfg: Config) -> str:
    """The one line ``validate`` prints for a good file."""
    s = cfg.search
    return (
        f"study {cfg.study.name!r}: {cfg.study.n_trials} trials ({cfg.study.objective}, {cfg.study.sampler}"
        + (f", pruner {cfg.study.pruner}" if cfg.study.pruner != "none" else "")
        + (f", max forgetting {cfg.study.max_forgetting:g}" if cfg.study.max_forgetting is not None else "")
        + "), "
        f"model {cfg.model.name}, backend {cfg.backend}, domain {' + '.join(d.path for d in cfg.data.domain_sources())}, general "
        f"{' + '.join(g.path for g in cfg.data.general_sources())}, ranks {s.rank.choices}, lr [{s.learning_rate.low:g}, {s.learning_rate.high:g}], "
        f"embedding ratio [{s.embedding_lr_ratio.low:g}, {s.embedding_lr_ratio.high:g}], "
        + (
            f"replay {cfg.data.replay.source.path} at "
            + (
                f"[{s.replay_fraction.low:g}, {s.replay_fraction.high:g}]"
                if s.replay_fraction
                else f"{cfg.data.replay.fraction:g}"
            )
            + ", "
            if cfg.data.replay
            else ""
        )
        + f"{cfg.train.max_steps} steps x {cfg.train.batch_size * cfg.train.grad_accum} x {cfg.model.max_seq_length} tokens"
    )
