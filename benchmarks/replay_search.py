"""Replay search strategies over a recorded study: which sampler x pruner finds a good setting for the least GPU time.

    python -m benchmarks.replay_search STUDY_DB [--study NAME] [--seeds 20] [--n-trials N] [--max-forgetting F]
                                        [--samplers random,tpe,gp,qmc] [--pruners none,median,successive_halving,hyperband]
                                        [--modes single,pareto] [--out PREFIX]

No training happens: the recorded study is the world. Each strategy runs a fresh in-memory Optuna study whose
objective is a *lookup*: the sampler proposes params, the replay answers with the recorded trial nearest to them in
normalized param space (log-scaled floats and ordered categorical choices mapped to [0, 1]) and reports that
trial's recorded eval curve, checkpoint by checkpoint, so the pruner decides on real curves.

- A replay runs as a sweep does: until ``--n-trials`` trials complete (pruned ones do not count), or until
  ``storage.PRUNED_CAP`` x that many have completed or been pruned; with ``--max-forgetting``, a trial already over
  it by ``--prune-margin`` at a checkpoint is pruned (``study.prune_margin``), in either mode, and every finished
  trial records its constraint (``trial.set_constraint``) for the samplers that read it.
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from benchmarks import common
from cpt_harness.config import StudyConfig
from cpt_harness.search import samplers
from cpt_harness.search import study as storage

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
    return Record(
        t.number,
        dict(t.params),
        normalize(t.params, space),
        np.array([p["domain_loss"] for p in curve]),
        np.array([p["general_loss"] - base_general for p in curve]),
        cost,
    )


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


def make_sampler(name: str, seed: int, n_trials: int):
    """The sampler a sweep of ``n_trials`` gets from the harness (``samplers.make_sampler``: TPE multivariate with
    the constant liar, TPE and GP leaving random start-up after a third of the trials, 4 to 10). A budget reaches
    TPE and GP through ``trial.set_constraint``, as ``cpt_harness.search.pruning`` records it (Optuna 5 reads
    ``trial.constraints``)."""
    return samplers.make_sampler(StudyConfig(sampler=name, n_trials=n_trials, seed=seed), seed)


def make_pruner(name: str, checkpoints: int):
    """The harness's pruners (``samplers.pruner_kwargs``: Optuna's defaults, the first rung at the first checkpoint),
    with checkpoints as steps."""
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(),
        "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=checkpoints),
    }[name]()


@dataclass
class Outcome:
    """One strategy, one seed."""

    gpu_s: float  # what it spent
    full_gpu_s: float  # what the same proposals would have cost with no pruning
    pruned: int
    completed: list[tuple[float, float]]  # (domain loss, forgetting) of the completed trials
    looked_up: list[int]  # the recorded trial each proposal landed on
    spent: list[float] = field(default_factory=list)  # gpu_s when each completed trial ended (anytime quality)

    def best_within(self, gpu_s: float, max_forgetting: float | None) -> float:
        """The best feasible domain loss among the trials completed by ``gpu_s`` spent (inf: none)."""
        return min(
            (
                d
                for (d, f), t in zip(self.completed, self.spent)
                if t <= gpu_s and (max_forgetting is None or f <= max_forgetting)
            ),
            default=math.inf,
        )


def replay(
    sampler: str,
    pruner: str,
    mode: str,
    seed: int,
    space: dict,
    records: list[Record],
    n_trials: int,
    max_forgetting: float | None,
    prune_margin: float | None = None,
) -> Outcome:
    """One strategy, one seed, run as ``cpt_harness.search.pruning`` and a sweep run it: at each checkpoint but the last, a
    trial whose forgetting is over ``max_forgetting + prune_margin`` stops (either mode), then the pruner decides
    (single mode); the run ends at ``n_trials`` complete trials, or ``storage.PRUNED_CAP`` x ``n_trials`` complete
    and pruned."""
    checkpoints = max(len(r.domain) for r in records)
    pareto = mode == "pareto"
    study = optuna.create_study(  # named: HyperbandPruner puts a trial in a bracket by hashing the study's name
        study_name=f"replay-{mode}-{sampler}-{pruner}-{seed}",
        directions=["minimize", "minimize"] if pareto else ["minimize"],
        sampler=make_sampler(sampler, seed, n_trials),
        pruner=make_pruner("none" if pareto else pruner, checkpoints),
    )
    out = Outcome(0.0, 0.0, 0, [], [])

    def objective(trial):
        rec = nearest(normalize(_suggest(trial, space), space), records)
        out.looked_up.append(rec.number)
        out.full_gpu_s += rec.cost[-1]

        def constrain(k: int) -> None:  # once, when the trial ends (pruned or complete), as the harness records it
            if max_forgetting is not None:
                trial.set_constraint(storage.CONSTRAINT, float(rec.forgetting[k] - max_forgetting))

        for k in range(len(rec.domain)):
            if not pareto:
                trial.report(float(rec.domain[k]), k + 1)
            last = k + 1 == len(rec.domain)
            over = (
                max_forgetting is not None
                and prune_margin is not None
                and rec.forgetting[k] > max_forgetting + prune_margin
            )
            if not last and (over or (not pareto and trial.should_prune())):
                out.gpu_s += rec.cost[k]
                out.pruned += 1
                constrain(k)
                raise optuna.TrialPruned()
        constrain(len(rec.domain) - 1)
        out.gpu_s += rec.cost[-1]
        out.completed.append((float(rec.domain[-1]), float(rec.forgetting[-1])))
        out.spent.append(out.gpu_s)
        return (float(rec.domain[-1]), float(rec.forgetting[-1])) if pareto else float(rec.domain[-1])

    def stop(study, trial):  # as a sweep stops: n_trials complete, or PRUNED_CAP x n_trials complete and pruned
        if len(out.completed) >= n_trials or len(out.looked_up) >= storage.PRUNED_CAP * n_trials:
            study.stop()

    study.optimize(objective, n_trials=storage.PRUNED_CAP * n_trials, callbacks=[stop])
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
    row = {
        "gpu_s": _stat([o.gpu_s for o in outcomes]),
        "full_gpu_s": _stat([o.full_gpu_s for o in outcomes]),
        "gpu_fraction": _stat([o.gpu_s / o.full_gpu_s for o in outcomes]),
        "pruned": _stat([o.pruned for o in outcomes]),
    }
    if mode == "single":
        found = [
            min([d for d, f in o.completed if max_forgetting is None or f <= max_forgetting], default=math.inf)
            for o in outcomes
        ]
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


GOAL_SAVING = 0.40  # issue 14: at least 40% less GPU time than random search without pruning, at equal quality


def _regrets(outcomes: list[Outcome], gpu_s: float, best: float, max_forgetting: float | None) -> list[float | None]:
    """Per seed: the regret of the best feasible trial completed within ``gpu_s`` (None: none by then)."""
    found = [o.best_within(gpu_s, max_forgetting) for o in outcomes]
    return [v - best if math.isfinite(v) else None for v in found]


def against_baseline(regrets: list[float | None], base: list[float | None], budget_s: float) -> dict:
    """The issue's goal for one single-mode strategy: with (1 - GOAL_SAVING) of the GPU time random search without
    pruning spends on average (``budget_s``), is the best setting it has found by then (``regrets``, per seed) as
    good as random search's after all of its time (``base``)? Not worse: the upper end of the 95% interval of the
    difference in mean regret, Welch's t over seeds, is at most HIT_NATS (the smallest difference in domain loss
    that matters here). A seed with nothing feasible by then fails the goal outright."""
    from cpt_harness.analysis.stats import t975

    out = {"budget_s": budget_s, "missed": sum(r is None for r in regrets)}
    if out["missed"] or None in base or len(regrets) < 2 or len(base) < 2:
        return {**out, "regret_diff": None, "ci95": None, "goal_met": False}
    va, vb = statistics.variance(regrets) / len(regrets), statistics.variance(base) / len(base)
    diff, se = statistics.fmean(regrets) - statistics.fmean(base), math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (len(regrets) - 1) + vb**2 / (len(base) - 1)) if va + vb > 0 else 1.0
    half = t975(df) * se
    return {**out, "regret_diff": diff, "ci95": [diff - half, diff + half], "goal_met": diff + half <= HIT_NATS}


def _stat(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
        "n": len(values),
    }


def run(
    db: str,
    study: str | None,
    seeds: int,
    n_trials: int | None,
    max_forgetting: float | None,
    samplers: list[str],
    pruners: list[str],
    modes: list[str],
    log=print,
    prune_margin: float | None = None,
) -> dict:
    import warnings

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # QMC, GP constraints
    name, space, records = load_records(db, study)
    n = n_trials or len(records)
    finals = [(float(r.domain[-1]), float(r.forgetting[-1])) for r in records]
    feasible = [d for d, f in finals if max_forgetting is None or f <= max_forgetting]
    result = {
        "study": name,
        "db": str(db),
        "recorded_trials": len(records),
        "n_trials": n,
        "seeds": seeds,
        "checkpoints": max(len(r.domain) for r in records),
        "max_forgetting": max_forgetting,
        "prune_margin": prune_margin,
        "pruned_cap": storage.PRUNED_CAP,
        "best_recorded_feasible_domain_loss": min(feasible) if feasible else None,
        "recorded_gpu_s": float(sum(r.cost[-1] for r in records)),
        "hit_nats": HIT_NATS,
        "strategies": [],
    }
    runs: dict[tuple[str, str, str], list[Outcome]] = {}
    for mode in modes:
        for sampler in samplers:
            for pruner in pruners if mode == "single" else ["none"]:
                started = time.perf_counter()
                outcomes = [
                    replay(sampler, pruner, mode, s, space, records, n, max_forgetting, prune_margin)
                    for s in range(seeds)
                ]
                runs[(mode, sampler, pruner)] = outcomes
                row = {
                    "mode": mode,
                    "sampler": sampler,
                    "pruner": pruner,
                    **summarize(outcomes, mode, records, max_forgetting),
                    "replay_s": time.perf_counter() - started,
                }
                result["strategies"].append(row)
                log(
                    f"[replay] {mode:<6} {sampler:<6} {pruner:<18} GPU {row['gpu_s']['mean']:8.0f} s "
                    f"({row['gpu_fraction']['mean']:.0%} of unpruned)"
                )
    if (base := runs.get(("single", "random", "none"))) is not None and result["best_recorded_feasible_domain_loss"]:
        best = result["best_recorded_feasible_domain_loss"]
        budget = (1 - GOAL_SAVING) * statistics.fmean(o.gpu_s for o in base)
        base_regrets = _regrets(base, math.inf, best, max_forgetting)
        result["goal_budget_s"] = budget
        for r in result["strategies"]:
            if r["mode"] == "single":
                r["vs_random"] = against_baseline(
                    _regrets(runs[(r["mode"], r["sampler"], r["pruner"])], budget, best, max_forgetting),
                    base_regrets,
                    budget,
                )
    return result


def markdown(result: dict) -> str:
    lines = [
        f"Replay of study `{result['study']}` ({result['recorded_trials']} recorded trials, "
        f"{result['checkpoints']} checkpoints each, {result['recorded_gpu_s']:.0f} trial-seconds recorded): "
        f"each run until {result['n_trials']} trials complete (or {result.get('pruned_cap', 3)} x that many "
        f"complete and pruned), {result['seeds']} seeds; prune margin "
        f"{result.get('prune_margin') if result.get('prune_margin') is not None else 'none'}; feasible: forgetting ≤ "
        f"{result['max_forgetting'] if result['max_forgetting'] is not None else '∞'}; best recorded feasible "
        f"domain loss {result['best_recorded_feasible_domain_loss']:.4f}.",
        "",
        "| mode | sampler | pruner | GPU s (mean ± sd) | of unpruned | pruned | best feasible domain loss | "
        f"regret | hit rate (≤ {result['hit_nats']} nats) | hypervolume share | with 60% of random's GPU time: "
        "regret − random's (all of its time), 95% CI | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ms(s: dict, spec: str) -> str:
        return "—" if s.get("mean") is None else f"{s['mean']:{spec}} ± {s['sd']:{spec}}"

    def goal(r: dict) -> str:
        v = r.get("vs_random")
        if v is None:
            return "— | — |"
        if v["ci95"] is None:
            return f"{v['missed']} of {result['seeds']} seeds had found nothing feasible by then | not met |"
        return (
            f"{v['regret_diff']:+.4f} [{v['ci95'][0]:+.4f}, {v['ci95'][1]:+.4f}] | "
            + ("**met**" if v["goal_met"] else "not met")
            + " |"
        )

    for r in result["strategies"]:
        single = r["mode"] == "single"
        lines.append(
            f"| {r['mode']} | {r['sampler']} | {r['pruner']} | {ms(r['gpu_s'], '.0f')} | "
            f"{r['gpu_fraction']['mean']:.0%} | {r['pruned']['mean']:.1f} | "
            + (
                f"{ms(r['best_domain_loss'], '.4f')} | {ms(r['regret'], '.4f')} | {r['hit_rate']:.0%} | — | "
                if single
                else f"— | — | — | {ms(r['hypervolume_share'], '.3f')} | "
            )
            + goal(r)
        )
    if "goal_budget_s" in result:
        lines += [
            "",
            f"Goal (issue 14): at least {GOAL_SAVING:.0%} less GPU time than random search without pruning, "
            f"at equal quality. Each strategy is stopped at {1 - GOAL_SAVING:.0%} of random search's mean GPU "
            f"time ({result['goal_budget_s']:.0f} s) and its best feasible trial by then is compared with "
            f"random search's after all of its time: met when the 95% interval of the difference in regret "
            f"(Welch, over seeds) ends at or below {result['hit_nats']} nats and every seed had found a "
            "feasible trial. Random search itself, so stopped, is the first row's comparison.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("db", help="the recorded study's database: a SQLite file or a storage URL")
    p.add_argument("--study", help="the study's name (needed when the database holds several)")
    p.add_argument("--seeds", type=int, default=20, help="replays per strategy, sampler seeds 0..N-1")
    p.add_argument(
        "--n-trials",
        type=int,
        help="complete trials per replay, as a sweep's study.n_trials (default: as many as were recorded)",
    )
    p.add_argument("--max-forgetting", type=float, help="feasible: final forgetting at most this (default: all)")
    p.add_argument(
        "--prune-margin",
        type=float,
        default=0.05,
        help="with --max-forgetting: stop a trial whose forgetting is over it by more than this at a "
        "checkpoint, as study.prune_margin does (default 0.05, the harness's; a negative value: never)",
    )
    p.add_argument("--samplers", default=",".join(SAMPLERS))
    p.add_argument("--pruners", default=",".join(PRUNERS))
    p.add_argument("--modes", default="single,pareto")
    p.add_argument("--out", help="output prefix (default benchmarks/results/cpu-<date>-replay-<study>)")
    a = p.parse_args(argv)

    def split(s: str, known) -> list[str]:
        if not all(x in known for x in s.split(",") if x):
            sys.exit(f"error: choose from {', '.join(known)}; got {s}")
        return [x for x in s.split(",") if x]

    result = run(
        a.db,
        a.study,
        a.seeds,
        a.n_trials,
        a.max_forgetting,
        split(a.samplers, SAMPLERS),
        split(a.pruners, PRUNERS),
        split(a.modes, ("single", "pareto")),
        prune_margin=a.prune_margin if a.prune_margin >= 0 else None,
    )
    prefix = Path(a.out or common.results_path(f"replay-{result['study']}", "cpu"))
    prefix.parent.mkdir(parents=True, exist_ok=True)
    common.write_json(f"{prefix}.json", result)
    Path(f"{prefix}.md").write_text(markdown(result))
    print(f"[replay] wrote {prefix}.json and {prefix}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
