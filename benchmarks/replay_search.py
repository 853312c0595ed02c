"""Replay search strategies over a recorded study: which sampler x pruner finds a good setting for the least GPU time.

    python -m benchmarks.replay_search STUDY_DB [--study NAME] [--seeds 20] [--n-trials N] [--max-forgetting F]
                                        [--samplers random,tpe,gp,qmc] [--pruners none,median,successive_halving,hyperband]
                                        [--modes single,pareto] [--out PREFIX]

No training happens: the recorded study is the world. Each strategy runs a fresh in-memory Optuna study whose
objective is a *lookup*: the sampler proposes params, the replay answers with the recorded trial nearest to them in
normalized param space (log-scaled floats and ordered categorical choices mapped to [0, 1]) and reports that
trial's recorded eval curve, checkpoint by checkpoint, so the pruner decides on real curves.

- GPU time: the trial-seconds the strategy would have spent: a completed trial costs its recorded wall time (the
  sum of its ``timings``, else its duration); a pruned one its load time plus its train, eval, data and log time up to the
  checkpoint where it stopped, in proportion to the tokens seen there.
- single mode (domain loss, pruners apply): quality is the best *feasible* domain loss among the completed trials
  (forgetting at most ``--max-forgetting``; every trial when it is not given), its regret against the best feasible
  recorded trial, and the hit rate: the share of seeds that end within 0.01 nats of that best.
- pareto mode (domain loss and forgetting; Optuna's pruners do not take multi-objective studies, so no pruning):
  quality is the hypervolume of the completed trials' front as a share of the recorded set's.

Writes PREFIX.json and PREFIX.md (default: benchmarks/results/cpu-<date>-replay-<study>). A recorded study of 12 trials only
shows the harness working: with fewer trials than a model-based sampler's start-up, every sampler is random there.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from benchmarks import common

SAMPLERS = ("random", "tpe", "gp", "qmc")
PRUNERS = ("none", "median", "successive_halving", "hyperband")
HIT_NATS = 0.01


@dataclass
class Record:
    """One recorded trial: where it sits in param space, its curve and what it cost."""

    number: int
    params: dict
    x: np.ndarray  # normalized params
    domain: np.ndarray  # domain loss at each checkpoint
    forgetting: np.ndarray  # forgetting at each checkpoint
    cost: np.ndarray  # trial-seconds spent up to each checkpoint (the last: the whole trial)


def load_records(db: str, name: str | None) -> tuple[str, dict, list[Record]]:
    """(study name, search space, records) of a recorded study's complete trials that have an eval curve."""
    url = db if "://" in db else f"sqlite:///{db}"
    names = optuna.study.get_all_study_names(url)
    name = name or (names[0] if len(names) == 1 else None)
    if name is None:
        sys.exit(f"error: {db} holds {len(names)} studies ({', '.join(names)}); pick one with --study")
    study = optuna.load_study(study_name=name, storage=url)
    base = (study.user_attrs.get("base") or {}).get("general_loss")
    trials = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE" and t.user_attrs.get("curve")]
    if base is None or len(trials) < 2:
        sys.exit(f"error: study {name!r} needs stored base losses and at least 2 complete trials with a curve")
    space = {k: v for t in trials for k, v in t.distributions.items()}
    return name, space, [_record(t, space, base) for t in trials]


def _record(t, space: dict, base_general: float) -> Record:
    curve = [p for p in t.user_attrs["curve"] if p.get("step", 1) > 0]  # a step-0 point costs nothing to prune at
    tokens = np.array([p["tokens_seen"] for p in curve], dtype=float)
    timings = t.user_attrs.get("timings") or {}
    total = sum(timings.values()) if timings else t.duration.total_seconds()
    fixed = timings.get("load", 0.0)
    variable = sum(v for k, v in timings.items() if k in ("train", "eval", "data", "log")) if timings else total
    cost = fixed + variable * tokens / tokens[-1]
    cost[-1] = total
    return Record(t.number, dict(t.params), normalize(t.params, space),
                  np.array([p["domain_loss"] for p in curve]),
                  np.array([p["general_loss"] - base_general for p in curve]), cost)


def normalize(params: dict, space: dict) -> np.ndarray:
    out = []
    for name, d in sorted(space.items()):
        v = params.get(name)
        if v is None:
            out.append(0.0)
        elif isinstance(d, CategoricalDistribution):
            out.append(d.choices.index(v) / max(1, len(d.choices) - 1))
        else:
            lo, hi = (math.log(d.low), math.log(d.high)) if d.log else (d.low, d.high)
            out.append(0.0 if hi == lo else ((math.log(v) if d.log else v) - lo) / (hi - lo))
    return np.array(out)


def nearest(x: np.ndarray, records: list[Record]) -> Record:
    """The recorded trial nearest to ``x`` (ties: the lowest trial number)."""
    return min(records, key=lambda r: (float(np.sum((r.x - x) ** 2)), r.number))


def _suggest(trial, space: dict) -> dict:
    out = {}
    for name, d in sorted(space.items()):
        if isinstance(d, CategoricalDistribution):
            out[name] = trial.suggest_categorical(name, list(d.choices))
        elif isinstance(d, IntDistribution):
            out[name] = trial.suggest_int(name, d.low, d.high, log=d.log)
        elif isinstance(d, FloatDistribution):
            out[name] = trial.suggest_float(name, d.low, d.high, log=d.log)
    return out


def make_sampler(name: str, seed: int, constrained: bool):
    constraints = (lambda t: t.user_attrs.get("constraint", [0.0])) if constrained else None
    return {
        "random": lambda: optuna.samplers.RandomSampler(seed=seed),
        "tpe": lambda: optuna.samplers.TPESampler(seed=seed, multivariate=True, constraints_func=constraints),
        "gp": lambda: optuna.samplers.GPSampler(seed=seed, constraints_func=constraints),
        "qmc": lambda: optuna.samplers.QMCSampler(seed=seed, scramble=True),
    }[name]()


def make_pruner(name: str, checkpoints: int):
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=checkpoints,
                                                            reduction_factor=3),
    }[name]()


@dataclass
class Outcome:
    """One strategy, one seed."""

    gpu_s: float  # what it spent
    full_gpu_s: float  # what the same proposals would have cost with no pruning
    pruned: int
    completed: list[tuple[float, float]]  # (domain loss, forgetting) of the completed trials
    looked_up: list[int]  # the recorded trial each proposal landed on


def replay(sampler: str, pruner: str, mode: str, seed: int, space: dict, records: list[Record], n_trials: int,
           max_forgetting: float | None) -> Outcome:
    checkpoints = max(len(r.domain) for r in records)
    pareto = mode == "pareto"
    study = optuna.create_study(
        directions=["minimize", "minimize"] if pareto else ["minimize"],
        sampler=make_sampler(sampler, seed, max_forgetting is not None),
        pruner=make_pruner("none" if pareto else pruner, checkpoints))
    out = Outcome(0.0, 0.0, 0, [], [])

    def objective(trial):
        rec = nearest(normalize(_suggest(trial, space), space), records)
        out.looked_up.append(rec.number)
        out.full_gpu_s += rec.cost[-1]
        for k in range(len(rec.domain)):
            if max_forgetting is not None:
                trial.set_user_attr("constraint", [float(rec.forgetting[k] - max_forgetting)])
            if not pareto:
                trial.report(float(rec.domain[k]), k + 1)
                if k + 1 < len(rec.domain) and trial.should_prune():
                    out.gpu_s += rec.cost[k]
                    out.pruned += 1
                    raise optuna.TrialPruned()
        out.gpu_s += rec.cost[-1]
        out.completed.append((float(rec.domain[-1]), float(rec.forgetting[-1])))
        return (float(rec.domain[-1]), float(rec.forgetting[-1])) if pareto else float(rec.domain[-1])

    study.optimize(objective, n_trials=n_trials)
    return out


def hypervolume(points: list[tuple[float, float]], ref: tuple[float, float]) -> float:
    """The area dominated by ``points`` (both minimized) up to ``ref``."""
    area, best_f = 0.0, ref[1]
    for d, f in sorted(p for p in points if p[0] < ref[0] and p[1] < ref[1]):
        if f < best_f:
            area += (ref[0] - d) * (best_f - f)
            best_f = f
    return area


def summarize(outcomes: list[Outcome], mode: str, records: list[Record], max_forgetting: float | None) -> dict:
    finals = [(float(r.domain[-1]), float(r.forgetting[-1])) for r in records]
    feasible = [d for d, f in finals if max_forgetting is None or f <= max_forgetting]
    best = min(feasible) if feasible else math.nan
    row = {"gpu_s": _stat([o.gpu_s for o in outcomes]), "full_gpu_s": _stat([o.full_gpu_s for o in outcomes]),
           "gpu_fraction": _stat([o.gpu_s / o.full_gpu_s for o in outcomes]),
           "pruned": _stat([o.pruned for o in outcomes])}
    if mode == "single":
        found = [min([d for d, f in o.completed if max_forgetting is None or f <= max_forgetting], default=math.inf)
                 for o in outcomes]
        row["best_domain_loss"] = _stat([v for v in found if math.isfinite(v)])
        row["regret"] = _stat([v - best for v in found if math.isfinite(v)])
        row["no_feasible_found"] = sum(not math.isfinite(v) for v in found)
        row["hit_rate"] = sum(v <= best + HIT_NATS for v in found) / len(found)
    else:
        ds, fs = zip(*finals)
        ref = (max(ds) + 0.01 * (max(ds) - min(ds) or 1), max(fs) + 0.01 * (max(fs) - min(fs) or 1))
        whole = hypervolume(finals, ref)
        row["hypervolume_share"] = _stat([hypervolume(o.completed, ref) / whole for o in outcomes])
    return row


def _stat(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run(db: str, study: str | None, seeds: int, n_trials: int | None, max_forgetting: float | None,
        samplers: list[str], pruners: list[str], modes: list[str], log=print) -> dict:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # QMC, GP constraints
    name, space, records = load_records(db, study)
    n = n_trials or len(records)
    finals = [(float(r.domain[-1]), float(r.forgetting[-1])) for r in records]
    feasible = [d for d, f in finals if max_forgetting is None or f <= max_forgetting]
    result = {"study": name, "db": str(db), "recorded_trials": len(records), "n_trials": n, "seeds": seeds,
              "checkpoints": max(len(r.domain) for r in records), "max_forgetting": max_forgetting,
              "best_recorded_feasible_domain_loss": min(feasible) if feasible else None,
              "recorded_gpu_s": float(sum(r.cost[-1] for r in records)), "hit_nats": HIT_NATS, "strategies": []}
    for mode in modes:
        for sampler in samplers:
            for pruner in (pruners if mode == "single" else ["none"]):
                started = time.perf_counter()
                outcomes = [replay(sampler, pruner, mode, s, space, records, n, max_forgetting) for s in range(seeds)]
                row = {"mode": mode, "sampler": sampler, "pruner": pruner,
                       **summarize(outcomes, mode, records, max_forgetting),
                       "replay_s": time.perf_counter() - started}
                result["strategies"].append(row)
                log(f"[replay] {mode:<6} {sampler:<6} {pruner:<18} GPU {row['gpu_s']['mean']:8.0f} s "
                    f"({row['gpu_fraction']['mean']:.0%} of unpruned)")
    return result


def markdown(result: dict) -> str:
    lines = [f"Replay of study `{result['study']}` ({result['recorded_trials']} recorded trials, "
             f"{result['checkpoints']} checkpoints each, {result['recorded_gpu_s']:.0f} trial-seconds recorded): "
             f"{result['n_trials']} trials per run, {result['seeds']} seeds; feasible: forgetting ≤ "
             f"{result['max_forgetting'] if result['max_forgetting'] is not None else '∞'}; best recorded feasible "
             f"domain loss {result['best_recorded_feasible_domain_loss']:.4f}.", "",
             "| mode | sampler | pruner | GPU s (mean ± sd) | of unpruned | pruned | best feasible domain loss | "
             f"regret | hit rate (≤ {result['hit_nats']} nats) | hypervolume share |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    def ms(s: dict, spec: str) -> str:
        return "—" if s.get("mean") is None else f"{s['mean']:{spec}} ± {s['sd']:{spec}}"

    for r in result["strategies"]:
        single = r["mode"] == "single"
        lines.append(f"| {r['mode']} | {r['sampler']} | {r['pruner']} | {ms(r['gpu_s'], '.0f')} | "
                     f"{r['gpu_fraction']['mean']:.0%} | {r['pruned']['mean']:.1f} | "
                     + (f"{ms(r['best_domain_loss'], '.4f')} | {ms(r['regret'], '.4f')} | {r['hit_rate']:.0%} | — |"
                        if single else f"— | — | — | {ms(r['hypervolume_share'], '.3f')} |"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("db", help="the recorded study's database: a SQLite file or a storage URL")
    p.add_argument("--study", help="the study's name (needed when the database holds several)")
    p.add_argument("--seeds", type=int, default=20, help="replays per strategy, sampler seeds 0..N-1")
    p.add_argument("--n-trials", type=int, help="trials per replay (default: as many as were recorded)")
    p.add_argument("--max-forgetting", type=float, help="feasible: final forgetting at most this (default: all)")
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--pruners", default=",".join(PRUNERS))
    p.add_argument("--modes", default="single,pareto")
    p.add_argument("--out", help="output prefix (default benchmarks/results/cpu-<date>-replay-<study>)")
    a = p.parse_args(argv)
    split = lambda s, known: [x for x in s.split(",") if x] if all(x in known for x in s.split(",") if x) else \
        sys.exit(f"error: choose from {', '.join(known)}; got {s}")  # noqa: E731
    result = run(a.db, a.study, a.seeds, a.n_trials, a.max_forgetting, split(a.samplers, SAMPLERS),
                 split(a.pruners, PRUNERS), split(a.modes, ("single", "pareto")))
    prefix = Path(a.out or common.results_path(f"replay-{result['study']}", "cpu"))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(f"{prefix}.json", result)
    Path(f"{prefix}.md").write_text(markdown(result))
    print(f"[replay] wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
