"""What Optuna samples, and what follows from it under the Unsloth CPT rules.

``suggest`` takes any Optuna trial (a real one, or ``optuna.trial.FixedTrial`` in tests) and returns the
trial's hyperparameters with the derived values: rsLoRA on or off, the effective LoRA scale, the embedding LR,
and which rules (if any) the trial breaks.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import asdict
from typing import Any

from cpt_harness.config import Config
from cpt_harness.train.params import TrialParams, derive


def suggest(trial: Any, cfg: Config) -> TrialParams:
    s = cfg.search
    with warnings.catch_warnings():
        # An enqueued point (study.enqueue) may lie outside the ranges: Optuna runs it as given, with this warning;
        # the objective records it as the trial's outside_search_space instead.
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        rank = trial.suggest_categorical("rank", list(s.rank.choices))
        lr = trial.suggest_float("learning_rate", s.learning_rate.low, s.learning_rate.high, log=s.learning_rate.log)
        ratio = None
        if cfg.lora.train_embeddings:
            r = s.embedding_lr_ratio
            ratio = trial.suggest_float("embedding_lr_ratio", r.low, r.high, log=r.log)
        replay = cfg.data.replay.fraction if cfg.data.replay is not None else None
        if s.replay_fraction is not None:
            replay = trial.suggest_float("replay_fraction", s.replay_fraction.low, s.replay_fraction.high)
    return derive(rank, lr, ratio, cfg, replay)


def outside(params: TrialParams, cfg: Config) -> list[str]:
    """Which of an enqueued point's values lie outside the search ranges (it still runs, as given)."""
    s, out = cfg.search, []
    for name, value in (("learning_rate", params.learning_rate), ("embedding_lr_ratio", params.embedding_lr_ratio)):
        rng = getattr(s, name)
        if value is not None and not rng.low <= value <= rng.high:
            out.append(f"{name} {value:g} outside search.{name} [{rng.low:g}, {rng.high:g}]")
    return out


# Unsloth's continued-pretraining recipe (its CPT notebooks and docs): r = 128 with rsLoRA, learning rate 5e-5, the
# embeddings at 5e-6, i.e. a ratio of 0.1.
UNSLOTH_CPT = {"rank": 128, "learning_rate": 5e-5, "embedding_lr_ratio": 0.1}


def enqueued(cfg: Config) -> list[tuple[str, dict[str, Any]]]:
    """study.enqueue as (name, Optuna params) pairs: the listed points, or `baselines`: Unsloth's CPT recipe and
    the ablation's defaults (ablation.rank, learning_rate, embedding_lr_ratio)."""
    e = cfg.study.enqueue
    points: list[tuple[str, dict[str, Any]]]
    if e == "baselines":
        a = cfg.ablation
        points = [
            ("unsloth-cpt", dict(UNSLOTH_CPT)),
            (
                "ablation-defaults",
                {"rank": a.rank, "learning_rate": a.learning_rate, "embedding_lr_ratio": a.embedding_lr_ratio},
            ),
        ]
    else:
        points = [
            (
                p.name or f"enqueue[{i}]",
                {"rank": p.rank, "learning_rate": p.learning_rate, "embedding_lr_ratio": p.embedding_lr_ratio},
            )
            for i, p in enumerate(e)
        ]
    for _, params in points:
        if not cfg.lora.train_embeddings:
            params.pop("embedding_lr_ratio")
    return points


def enqueue_problems(cfg: Config) -> list[str]:
    """Each point's values: positive, a rank among the choices (Optuna cannot record a categorical value outside
    them), and an embedding ratio exactly when the embeddings train."""
    e, choices, problems = cfg.study.enqueue, cfg.search.rank.choices, []
    named = e == "baselines"
    for i, (name, params) in enumerate(enqueued(cfg)):
        key = "study.enqueue" if named else f"study.enqueue[{i}]"
        what = f" (baseline {name})" if named else ""
        if params["rank"] not in choices:
            problems.append(
                f"{key}{'' if named else '.rank'}: rank {params['rank']}{what} is not in "
                f"search.rank.choices {choices}; Optuna records a rank only among the choices: add it there"
                + (", or list the points to run instead of `baselines`" if named else "")
            )
        if not params["learning_rate"] > 0:
            problems.append(f"{key}.learning_rate: must be > 0, got {params['learning_rate']}")
        ratio = None if named or isinstance(e, str) else e[i].embedding_lr_ratio
        if not named and cfg.lora.train_embeddings and ratio is None:
            problems.append(f"{key}.embedding_lr_ratio: required while lora.train_embeddings is true, e.g. 0.2")
        elif not named and not cfg.lora.train_embeddings and ratio is not None:
            problems.append(f"{key}.embedding_lr_ratio: lora.train_embeddings is false; remove it")
        elif ratio is not None and not ratio > 0:
            problems.append(f"{key}.embedding_lr_ratio: must be > 0, got {ratio}")
    names = [name for name, _ in enqueued(cfg)]
    twice = sorted({n for n in names if names.count(n) > 1})
    problems += [f"study.enqueue: the name {n!r} is given twice" for n in twice]
    return problems


SPEED_ONLY = ("time_limit_s", "compile", "checkpoint_every", "gradient_checkpointing")
# Fingerprinted (as true or false) before it was known to be speed-only: a study whose stored fingerprint hashed
# it still resumes, with any value of it (``accepted_fingerprints``).
LEGACY_SPEED_ONLY = {"gradient_checkpointing": (False, True)}
CONSTRAINT_AWARE = ("tpe", "nsga2", "gp")  # samplers that read the trials' forgetting constraint


def space_fingerprint(cfg: Config, extra: dict | None = None) -> str:
    """Identifies what a trial's numbers mean: search space, rules, LoRA layout, training and eval protocol, and
    the weights' dtype where one is set.

    A study resumed with a different fingerprint would mix incomparable trials. The sampler, trial count,
    failure budget, time limit and speed-only switches are left out: they do not change what a trial measures.
    """
    return _digest(space_payload(cfg, extra))


def accepted_fingerprints(cfg: Config, extra: dict | None = None) -> set[str]:
    """Every search-space fingerprint a study may hold and still match ``cfg``: today's, and the ones studies run
    before a speed-only key left the fingerprint recorded (that key hashed as each value it could have had)."""
    payload = space_payload(cfg, extra)
    out = {_digest(payload)}
    for key, values in LEGACY_SPEED_ONLY.items():
        for value in values:
            out.add(_digest({**payload, "train": {**payload["train"], key: value}}))
    return out


def space_payload(cfg: Config, extra: dict | None = None) -> dict[str, Any]:
    """What ``space_fingerprint`` hashes, kept on the study so that a refused resume can name the key."""
    train = {k: v for k, v in asdict(cfg.train).items() if k not in SPEED_ONLY}
    # The schedule and eval-step keys only where they differ from what studies before them did (cosine, eval_every):
    # those studies keep their fingerprint.
    if cfg.train.schedule in ("auto", "cosine"):
        del train["schedule"], train["decay_fraction"]
    if cfg.train.eval_steps is None:
        del train["eval_steps"]
    if cfg.train.eval_schedule == "every":
        del train["eval_schedule"], train["eval_points"]
    payload: dict[str, Any] = {
        # replay only when set: studies run before it keep their fingerprint
        "search": {k: v for k, v in asdict(cfg.search).items() if k != "replay_fraction" or v is not None},
        "rules": asdict(cfg.rules),
        "lora": asdict(cfg.lora),
        "train": train,
        # test_fraction only when set: studies run before it (no split) keep their fingerprint at 0
        "eval": {k: v for k, v in asdict(cfg.eval).items() if k != "test_fraction" or v},
        "objective": cfg.study.objective,
    }
    s = cfg.study
    if s.max_forgetting is not None and (s.objective == "constrained" or s.sampler in CONSTRAINT_AWARE):
        # Only when the budget drives the search (the objective, or a sampler that reads the constraint): studies
        # that used it only to choose a trial afterwards keep their fingerprint.
        payload["max_forgetting"] = s.max_forgetting
    if cfg.data.replay is not None:  # its source is in the data fingerprint; the fraction is the protocol's
        payload["replay_fraction"] = cfg.data.replay.fraction
    if len(cfg.data.domain_sources()) > 1:  # several domain sources: how they mix is the protocol's (one keeps its)
        payload["domain_weights"] = cfg.data.domain_weights()
    if cfg.model.dtype != "auto":  # only then: the studies run before dtype was part of it keep their fingerprint
        payload["dtype"] = cfg.model.dtype
    if extra:
        payload["extra"] = extra
    return json.loads(json.dumps(payload, default=str))


def _digest(payload: Any) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
