"""Matching on the learning–forgetting frontier, against trajectories built by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cpt_harness.analysis import frontier, stats
from cpt_harness.analysis.frontier import Base, DocRun, Docs, Run
from cpt_harness.analysis.stats import CONTRADICTED, SUPPORTED, Claim

LRS = (1e-4, 3e-4, 1e-3)


def line(levels, seed, lr, final_gain, forgetting_per_gain, checkpoints=4):
    """A run whose gain grows linearly to ``final_gain`` and whose forgetting is proportional to its gain."""
    gain = np.linspace(0, final_gain, checkpoints + 1)
    return Run(levels, seed, lr, gain, forgetting_per_gain * gain)


def test_a_run_starts_at_the_base_model():
    with pytest.raises(ValueError, match="starting at the base model"):
        Run({"a": "x"}, 0, 1e-4, [0.1, 0.2], [0.0, 0.1])


def test_monotone_keeps_the_records_of_the_matched_axis_with_their_own_other_value():
    x = np.array([0.0, 0.5, 0.3, 0.4, 0.8, 0.8, 1.0])
    y = np.array([0.0, 1.0, 2.0, 2.5, 3.0, 4.0, 5.0])
    xs, ys = frontier.monotone(x, y)
    assert xs.tolist() == [0.0, 0.5, 0.8, 1.0] == np.unique(np.maximum.accumulate(x)).tolist()
    assert ys.tolist() == [0.0, 1.0, 3.0, 5.0]  # the dip (0.3, 0.4: still below 0.5) and the repeat reach nothing new
    assert frontier.at_level(x, y, 0.8) == 3.0  # where 0.8 was first reached
    # 0.6 lies between the records (0.5, 1) and (0.8, 3), not between the raw neighbours (0.4, 2.5) and (0.8, 3).
    assert frontier.at_level(x, y, 0.6) == pytest.approx(1 + (0.1 / 0.3) * 2)


def test_interpolation_by_hand_and_never_extrapolated():
    r = Run({}, 0, 1e-4, [0.0, 0.2, 0.6, 1.0], [0.0, 0.1, 0.2, 0.5])
    assert frontier.at_level(*r.along("gain"), 0.4) == pytest.approx(0.15)
    assert frontier.at_level(*r.along("gain"), 0.9) == pytest.approx(0.2 + 0.75 * 0.3)
    assert frontier.at_level(*r.along("forgetting"), 0.35) == pytest.approx(0.6 + 0.5 * 0.4)
    assert frontier.at_level(*r.along("gain"), 1.0) == pytest.approx(0.5)
    assert frontier.at_level(*r.along("gain"), 1.0001) is None and frontier.at_level(*r.along("gain"), -0.1) is None


def test_envelope_over_learning_rates():
    runs = [
        Run({}, 0, 1e-4, [0, 0.3, 0.6], [0, 0.05, 0.10]),
        Run({}, 0, 3e-4, [0, 0.5, 1.0], [0, 0.15, 0.30]),
        Run({}, 0, 1e-3, [0, 0.9, 1.2], [0, 0.18, 0.60]),
    ]
    # forgetting at gain 0.8: the first run does not reach it; 0.24 and 0.16 → the lowest
    assert frontier.envelope(runs, "gain", 0.8) == pytest.approx(0.8 / 0.9 * 0.18)
    assert frontier.envelope(runs, "gain", 0.5) == pytest.approx(0.05 + (0.2 / 0.3) * 0.05)  # the low LR wins
    assert frontier.envelope(runs, "gain", 1.3) is None
    # gain at forgetting 0.2: 0.6667 (3e-4) and 0.9143 (1e-3) → the highest
    assert frontier.envelope(runs, "forgetting", 0.2) == pytest.approx(0.9 + (0.02 / 0.42) * 0.3)


def _two_arms():
    """Arm B forgets 0.3 per unit of gain, A 0.2. Reach (largest gain over LRs): A 1.2 / 0.9, B 1.5 / 1.1 in seeds
    0 / 1; seed 2 has only arm A (reach 0.5)."""
    runs = []
    for arm, slope, reach in (("A", 0.2, (1.2, 0.9, 0.5)), ("B", 0.3, (1.5, 1.1))):
        for seed, top in enumerate(reach):
            runs += [line({"f": arm}, seed, 1e-4, top / 2, slope), line({"f": arm}, seed, 3e-4, top, slope)]
    return runs


def test_default_match_level_dropped_seeds_and_n():
    runs = _two_arms()
    assert frontier.match_level(runs, "gain") == pytest.approx(0.9)  # seed 2 lacks arm B: it cannot lower the level
    m = frontier.matched_effect(runs, "gain", "f", advice="A", alternative="B")
    assert (m.level, m.metric, m.n, m.dropped) == (pytest.approx(0.9), "forgetting", 2, (2,))
    assert m.per_seed == pytest.approx({0: 0.1 * 0.9, 1: 0.1 * 0.9})
    fixed = frontier.matched_effect(runs, "gain", "f", advice="A", alternative="B", level=1.0)
    assert fixed.n == 1 and fixed.dropped == (1, 2) and fixed.per_seed == pytest.approx({0: 0.1})
    # Gain at matched forgetting: A reaches 0.18 in seed 1, B 0.36 and more.
    g = frontier.matched_effect(runs, "forgetting", "f", advice="A", alternative="B")
    assert g.level == pytest.approx(0.18) and g.per_seed == pytest.approx({0: 0.6 - 0.9, 1: 0.6 - 0.9})


def test_a_level_no_arm_moves_past_matches_nothing():
    runs = [Run({"f": arm}, s, 1e-4, [0, 0.5], [0, -0.1]) for arm in "AB" for s in range(3)]
    m = frontier.matched_effect(runs, "forgetting", "f", "A", "B")  # general loss only fell: level 0
    assert m.level == 0 and m.n == 0 and m.dropped == (0, 1, 2) and math.isnan(m.mean)


def test_crossed_factors_average_over_the_other_factors_levels():
    runs = []
    for seed in range(3):
        for emb, extra in (("trained", 0.1), ("frozen", 0.3)):
            runs += [
                line({"gate_proj": "in", "embeddings": emb}, seed, 1e-4, 1.0, 0.2),
                line({"embeddings": emb, "gate_proj": "out"}, seed, 1e-4, 1.0, 0.2 + extra),
            ]  # order-free
    m = frontier.matched_effect(runs, "gain", "gate_proj", "in", "out")
    assert m.level == pytest.approx(1.0) and m.per_seed == pytest.approx({0: 0.2, 1: 0.2, 2: 0.2})


def test_best_lr_is_chosen_leaving_the_seed_out_and_edges_are_flagged():
    final = {0: (0.5, 1.0, 2.0), 1: (0.5, 1.0, 0.1), 2: (0.5, 1.0, 0.2)}  # seed -> final gain at each LR
    runs = [
        Run({"rank": "64"}, s, lr, [0, 0.9 if lr == 1e-3 else g / 2, g], [0, 0.1, 0.2])
        for s, gains in final.items()
        for lr, g in zip(LRS, gains)
    ]
    best = frontier.best_lr(runs)
    # Seed 0 alone would pick 1e-3 (2.0); the other seeds' means are 0.5, 1.0, 0.15 -> 3e-4.
    # Seeds 1 and 2: the others' means at 1e-3 are 1.1 and 1.05 (final gains, not the 0.9 peak) -> 1e-3.
    assert best.lr == {0: 3e-4, 1: 1e-3, 2: 1e-3}
    assert best.per_seed == pytest.approx({0: 1.0, 1: 0.1, 2: 0.2})
    assert best.at_edge == (1, 2) and best.grid == LRS
    with pytest.raises(ValueError, match="one cell"):
        frontier.best_lr(runs + [line({"rank": "128"}, 0, 1e-4, 1.0, 0.1)])


def test_rslora_interaction_on_the_best_lr_of_each_cell():
    cell = {("16", "off"): 1.0, ("256", "off"): 1.1, ("16", "on"): 1.0, ("256", "on"): 1.5}
    runs = []
    for (rank, rs), g in cell.items():
        for seed in range(3):
            top = g + (0.01 * seed if (rank, rs) == ("256", "on") else 0)
            runs += [
                line({"rank": rank, "rslora": rs}, seed, 1e-4, top / 3, 0.1),
                line({"rank": rank, "rslora": rs}, seed, 1e-3, top, 0.1),
            ]
    inter = frontier.interaction(runs, "rank", ("16", "256"), "rslora", ("off", "on"))
    # (1.5 + 0.01 s − 1.0) − (1.1 − 1.0)
    assert inter.per_seed == pytest.approx({0: 0.4, 1: 0.41, 2: 0.42})
    assert len(inter.at_edge) == 12  # every cell picks the top of a two-LR grid


def test_dose_response_slope_per_seed_and_its_t_test():
    ratios = ("0.03", "0.1", "0.5", "1.0")
    runs = [
        line({"embedding_lr_ratio": r}, seed, 1e-4, 1.0, 0.5 + (0.05 + 0.01 * seed) * math.log(float(r)))
        for r in ratios
        for seed in range(4)
    ]
    dr = frontier.dose_response(runs)
    assert dr.test == "per-seed log-ratio slope, t-test" and dr.level == pytest.approx(1.0)
    assert dr.slopes == pytest.approx({0: 0.05, 1: 0.06, 2: 0.07, 3: 0.08})
    assert dr.means == pytest.approx({float(r): 0.5 + 0.065 * math.log(float(r)) for r in ratios})
    v = stats.verdict(Claim(list(dr.slopes.values()), +1, delta=0.01))  # a larger ratio forgets more
    assert v.label == SUPPORTED and v.estimate == pytest.approx(0.065)


def test_fixed_lr_says_contradicted_where_the_frontier_says_supported():
    """'Leaving gate_proj out speeds up forgetting': forgetting(out) − forgetting(in) > 0.

    With gate_proj out the adapter learns half as fast at every LR but forgets 0.30 (± seed noise) per unit of gain
    against 0.20 with it in. At one LR (3e-4) "in" learns 1.0 and forgets 0.20, "out" learns 0.5 and forgets 0.15:
    it seems to forget less. At matched gain (1.667, the most "out" reaches) "out" forgets 50% more.
    """
    noise = (-1, 0, 1, 2, -2)
    runs = []
    for seed, e in enumerate(noise):
        for lr, scale in zip(LRS, (1 / 3, 1.0, 10 / 3)):
            runs += [
                line({"gate_proj": "in"}, seed, lr, 1.0 * scale, 0.20),
                line({"gate_proj": "out"}, seed, lr, 0.5 * scale, 0.30 + 0.005 * e),
            ]
    final = {(r.levels["gate_proj"], r.seed): r.forgetting[-1] for r in runs if r.lr == 3e-4}
    at_one_lr = [final[("out", s)] - final[("in", s)] for s in range(5)]
    assert stats.verdict(Claim(at_one_lr, +1, delta=0.01)).label == CONTRADICTED
    m = frontier.matched_effect(runs, "gain", "gate_proj", advice="in", alternative="out")
    assert m.level == pytest.approx(5 / 3) and m.n == 5
    assert m.per_seed == pytest.approx({s: (0.10 + 0.005 * e) * 5 / 3 for s, e in enumerate(noise)})
    assert stats.verdict(Claim(list(m.per_seed.values()), +1, delta=0.01)).label == SUPPORTED


# ------------------------------------------------------------------------------------------ document bootstrap


def _doc_trials(rng, doc_noise, n_dom=40, n_gen=30):
    """Two arms x 3 seeds x 2 LRs, 3 checkpoints after step 0. A document's NLL is its tokens times the model's
    per-token loss plus, with ``doc_noise``, a per-document difficulty shared by every model (as real text has)."""
    tok_dom, tok_gen = rng.integers(50, 500, n_dom).astype(float), rng.integers(50, 500, n_gen).astype(float)
    hard_dom, hard_gen = doc_noise * rng.normal(size=n_dom), doc_noise * rng.normal(size=n_gen)
    per_token = lambda loss, hard: np.multiply.outer(loss, np.ones_like(hard)) + hard  # noqa: E731
    base = Base(Docs(per_token(3.0, hard_dom) * tok_dom, tok_dom), Docs(per_token(2.0, hard_gen) * tok_gen, tok_gen))
    trials = []
    for arm, fpg in (("in", 0.2), ("out", 0.3)):
        for seed in range(3):
            for lr, top in ((1e-4, 0.4), (1e-3, 1.0 + 0.05 * seed)):
                gain = np.array([top / 3, 2 * top / 3, top])
                dom = per_token(3.0 - gain, hard_dom) * tok_dom * (1 + 0.02 * rng.normal(size=(3, n_dom)))
                gen = per_token(2.0 + fpg * gain, hard_gen) * tok_gen
                trials.append(DocRun({"gate_proj": arm}, seed, lr, Docs(dom, tok_dom), Docs(gen, tok_gen)))
    return trials, base


def _effect(runs):
    return frontier.matched_effect(runs, "gain", "gate_proj", "in", "out").mean


def test_runs_from_documents_by_hand():
    trials, base = _doc_trials(np.random.default_rng(0), doc_noise=0.3)
    with pytest.raises(ValueError, match=r"\[n_checkpoints, n_docs\]"):
        DocRun({}, 0, 1e-4, trials[0].domain, base.general)
    runs = frontier.runs_from_docs(trials, base)
    t = trials[4]
    hand = base.domain.nll.sum() / base.domain.tokens.sum() - t.domain.nll[1].sum() / t.domain.tokens.sum()
    assert runs[4].gain[0] == 0 and runs[4].gain[2] == pytest.approx(hand)
    assert runs[4].forgetting[3] == pytest.approx(
        t.general.nll[2].sum() / t.general.tokens.sum() - base.general.nll.sum() / base.general.tokens.sum()
    )


def test_bootstrap_without_document_noise_has_no_variance():
    # Every document of a corpus has the same per-token loss for a given model: any draw gives the same losses.
    rng = np.random.default_rng(1)
    trials, base = _doc_trials(rng, doc_noise=0.0)
    flat = lambda docs: Docs(np.outer(docs.nll.sum(1) / docs.tokens.sum(), docs.tokens), docs.tokens)  # noqa: E731
    trials = [DocRun(t.levels, t.seed, t.lr, flat(t.domain), t.general) for t in trials]
    assert frontier.bootstrap_var(trials, base, _effect, replicates=50) == pytest.approx(0.0, abs=1e-24)


def test_bootstrap_mean_matches_the_full_data_estimate():
    trials, base = _doc_trials(np.random.default_rng(2), doc_noise=0.3)
    full = _effect(frontier.runs_from_docs(trials, base))
    reps = frontier.bootstrap(trials, base, _effect, replicates=400, seed=3)
    assert reps.std() > 1e-4  # the documents do move the effect
    assert abs(reps.mean() - full) < 4 * reps.std() / math.sqrt(len(reps)) + 0.05 * reps.std()
    assert frontier.bootstrap_var(trials, base, _effect, replicates=400, seed=3) == pytest.approx(reps.var(ddof=1))


def test_one_draw_serves_every_arm_and_the_base():
    """Arm "out" is arm "in" made exactly 0.1 nats/token better on every domain document, and each trial's general
    NLL is the base's plus 0.05 nats per token. Only a draw shared by the arms (and by the base) keeps the
    difference at exactly 0.1 and the forgetting at exactly 0.05 in every replicate."""
    trials, base = _doc_trials(np.random.default_rng(4), doc_noise=0.5)
    ins = [t for t in trials if t.levels["gate_proj"] == "in"]
    general = Docs(np.tile(base.general.nll + 0.05 * base.general.tokens, (3, 1)), base.general.tokens)
    paired = [DocRun(t.levels, t.seed, t.lr, t.domain, general) for t in ins]
    paired += [
        DocRun({"gate_proj": "out"}, t.seed, t.lr, Docs(t.domain.nll - 0.1 * t.domain.tokens, t.domain.tokens), general)
        for t in ins
    ]

    def final(runs, arm, what):
        return np.mean([getattr(r, what)[-1] for r in runs if r.levels["gate_proj"] == arm and r.lr == 1e-3])

    gap = frontier.bootstrap(paired, base, lambda runs: final(runs, "out", "gain") - final(runs, "in", "gain"), 100)
    assert gap == pytest.approx(np.full(100, 0.1), abs=1e-9)
    assert frontier.bootstrap(paired, base, lambda runs: final(runs, "in", "forgetting"), 100) == pytest.approx(
        np.full(100, 0.05), abs=1e-9
    )
    assert frontier.bootstrap(paired, base, lambda runs: final(runs, "in", "gain"), 100).std() > 1e-3


def test_the_bootstrap_draws_each_general_corpus_within_itself():
    """Two general corpora of very different per-token loss: a pooled draw changes their shares and with them the
    general loss; drawn within each corpus (as the eval was built: eval.max_tokens each) every replicate keeps
    each corpus's number of documents, and the base's general loss varies far less."""
    rng = np.random.default_rng(5)
    corpus = np.repeat([0, 1], [30, 10])
    tokens = np.full(40, 500.0)
    nll = np.where(corpus == 0, 2.0, 6.0) * tokens * (1 + 0.01 * rng.normal(size=40))
    draws = frontier._draws(np.random.default_rng(0), 40, 300, corpus)
    assert (draws[corpus == 0].sum(0) == 30).all() and (draws[corpus == 1].sum(0) == 10).all()
    within = Docs(nll, tokens).loss(draws)
    pooled = Docs(nll, tokens).loss(frontier._draws(np.random.default_rng(0), 40, 300))
    assert within.std() < pooled.std() / 5
    one = frontier._draws(np.random.default_rng(0), 40, 300, np.zeros(40, int))  # one corpus: the pooled draw
    assert np.array_equal(one, frontier._draws(np.random.default_rng(0), 40, 300))
