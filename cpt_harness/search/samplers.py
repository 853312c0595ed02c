"""Samplers and pruners, chosen by name (study.sampler, study.pruner) with their options checked against the
constructors' own signatures; the options the harness owns (the seed, the constraint) are refused."""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from typing import Any

import optuna

from cpt_harness.config import Config, ConfigError, StudyConfig
from cpt_harness.train.schedule import eval_steps

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "nsga2": "NSGAIISampler",
    "gp": "GPSampler",
    "qmc": "QMCSampler",
}


PRUNERS = {
    "none": "NopPruner",
    "median": "MedianPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "hyperband": "HyperbandPruner",
}


# Constructor arguments the harness sets itself, and from which key.
OWNED = {"seed": "study.seed", "constraints_func": "study.max_forgetting (every finished trial records its constraint)"}


def startup_trials(n_trials: int) -> int:
    """Random trials before a model-based sampler takes over: a third of the budget, 4 to 10 (Optuna's 10 alone
    would make a 12-trial sweep a random search)."""
    return max(4, min(10, n_trials // 3))


def sampler_kwargs(s: StudyConfig, seed: int) -> dict[str, Any]:
    """The sampler's constructor arguments: the harness's defaults for sweeps of 10-50 trials, then
    study.sampler_options. Several trials run at once: TPE's constant liar treats running trials as bad results
    so that it does not propose their neighbours again; GPSampler conditions on the running trials it proposed."""
    by_sampler: dict[str, dict[str, Any]] = {
        "tpe": {"n_startup_trials": startup_trials(s.n_trials), "multivariate": True, "constant_liar": True},
        "gp": {"n_startup_trials": startup_trials(s.n_trials)},
        "nsga2": {"population_size": max(4, min(50, s.n_trials // 3))},  # Optuna's 50: never a second generation
        # Scrambled (Owen) Sobol points, seeded by study.seed: unscrambled, every study draws the same points,
        # starting at the corner of the space
        "qmc": {"scramble": True},
    }
    defaults = by_sampler.get(s.sampler, {})
    cls = getattr(optuna.samplers, SAMPLERS[s.sampler])
    # QMC draws one shared sequence (its position is kept in the study): every worker needs the study's own seed.
    return {**defaults, **_coerced(cls, s.sampler_options), "seed": s.seed if s.sampler == "qmc" else seed}


def make_sampler(s: StudyConfig, seed: int) -> optuna.samplers.BaseSampler:
    cls = getattr(optuna.samplers, SAMPLERS[s.sampler])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # QMCSampler
        try:
            return cls(**sampler_kwargs(s, seed))
        except (TypeError, ValueError) as e:
            raise ConfigError([f"study.sampler_options: optuna's {cls.__name__} refuses them ({e})"]) from None


def pruner_kwargs(cfg: Config) -> dict[str, Any]:
    """The pruner's constructor arguments. Steps are training steps and a trial reports at each eval checkpoint,
    so successive halving and hyperband start their first rung at the first checkpoint."""
    first = eval_steps(cfg.train)[0]
    defaults = {
        "successive_halving": {"min_resource": first},
        "hyperband": {"min_resource": first, "max_resource": cfg.train.max_steps},
    }.get(cfg.study.pruner, {})
    cls = getattr(optuna.pruners, PRUNERS[cfg.study.pruner])
    return {**defaults, **_coerced(cls, cfg.study.pruner_options)}


def make_pruner(cfg: Config) -> optuna.pruners.BasePruner:
    cls = getattr(optuna.pruners, PRUNERS[cfg.study.pruner])
    try:
        return cls(**pruner_kwargs(cfg))
    except (TypeError, ValueError) as e:
        raise ConfigError([f"study.pruner_options: optuna's {cls.__name__} refuses them ({e})"]) from None


def sampler_problems(cfg: Config) -> list[str]:
    """study.sampler_options checked against the sampler's constructor (and, but for gp, whose constructor
    imports torch, by building it)."""
    s = cfg.study
    cls = getattr(optuna.samplers, SAMPLERS[s.sampler])
    problems = _option_problems(cls, s.sampler_options, "study.sampler_options", f"sampler {s.sampler}")
    if not problems and s.sampler != "gp":
        try:
            make_sampler(s, s.seed)
        except ConfigError as e:
            problems += e.problems
    return problems


def pruner_problems(cfg: Config) -> list[str]:
    cls = getattr(optuna.pruners, PRUNERS[cfg.study.pruner])
    problems = _option_problems(cls, cfg.study.pruner_options, "study.pruner_options", f"pruner {cfg.study.pruner}")
    if not problems:
        try:
            make_pruner(cfg)
        except ConfigError as e:
            problems += e.problems
    return problems


def _settable(cls) -> dict[str, inspect.Parameter]:
    """The constructor arguments a sweep file can give: plain values (not callables or Optuna objects), and not
    those the harness sets itself."""
    return {
        name: p
        for name, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and name not in OWNED
        and not re.search(r"Callable|Base[A-Z]", str(p.annotation))
    }


def _option_problems(cls, options: dict[str, Any], key: str, what: str) -> list[str]:
    valid = _settable(cls)
    problems = []
    for name in options:
        if name in OWNED:
            problems.append(f"{key}.{name}: set by {OWNED[name]}, not here")
        elif name not in valid:
            problems.append(
                f"{key}.{name}: not an option of {what} (optuna's {cls.__name__}); valid: "
                + (", ".join(valid) or "none")
            )
    return problems


def _coerced(cls, options: dict[str, Any]) -> dict[str, Any]:
    """Options as the constructor wants them: YAML reads 1e-3 (no dot) as a string."""
    params = inspect.signature(cls).parameters
    out = {}
    for name, value in options.items():
        if isinstance(value, str) and name in params and "float" in str(params[name].annotation):
            with contextlib.suppress(ValueError):
                value = float(value)
        out[name] = value
    return out
