"""The model card's results sections: the test documents' losses with their intervals and seeds (or one run,
unconfirmed), how the trial was chosen under the forgetting budget, and the report's caveats."""

from __future__ import annotations

from dataclasses import dataclass

from cpt_harness import data
from cpt_harness.analysis import confirm
from cpt_harness.config import Config
from cpt_harness.reporting import page
from cpt_harness.search import study as storage


def _prefix(trial) -> str:
    return "test_" if "test_domain_loss" in trial.user_attrs else ""


@dataclass
class _Results:
    trial: object
    prefix: str
    base: dict
    confirmed: confirm.Confirmed | None  # the setting's confirmation runs (None: never confirmed)
    planned_seeds: int
    confirm_name: str
    merged: bool
    seed: int

    @classmethod
    def of(cls, study, cfg: Config, trial, merged: bool) -> _Results:
        cstudy = confirm.load_study(cfg)
        setting = next((c for c in confirm.confirmed_settings(cstudy) if c.setting == trial.number), None)
        planned = len(cstudy.user_attrs.get("seeds") or []) if cstudy is not None else 0
        seed = trial.user_attrs.get("seed")
        return cls(
            trial,
            _prefix(trial),
            study.user_attrs.get("base") or {},
            setting,
            planned,
            confirm.study_name(cfg),
            merged,
            seed if isinstance(seed, int) else cfg.train.seed,
        )

    @property
    def is_confirmed(self) -> bool:
        return self.confirmed is not None and len(self.confirmed.runs) >= 2

    def section(self) -> list[str]:
        p, a = self.prefix, self.trial.user_attrs
        part = "test documents" if p else "held-out documents (not split)"
        head = [
            "## Results",
            "",
            f"Losses in nats per token on the {part}; forgetting is the general loss minus the base model's "
            "(positive: worse at general text).",
        ]
        rows = [
            (
                f"this {'model' if self.merged else 'adapter'} (trial {self.trial.number}, one run)",
                f"{a[f'{p}domain_loss']:.4f}",
                f"{a[f'{p}general_loss']:.4f}" if f"{p}general_loss" in a else "—",
                f"{a[f'{p}forgetting']:+.4f}",
                "1",
            )
        ]
        if self.is_confirmed:
            c = self.confirmed

            def ci(key: str, spec: str) -> str:
                iv = c.interval(key)
                return "—" if not iv.n else f"{iv.mean:{spec}} [{iv.low:{spec}}, {iv.high:{spec}}]"

            d = c.interval(f"{p}domain_loss")
            rows.append(
                (
                    f"the same setting, {d.n} new seeds (`{self.confirm_name}`)",
                    ci(f"{p}domain_loss", ".4f"),
                    ci(f"{p}general_loss", ".4f"),
                    ci(f"{p}forgetting", "+.4f"),
                    str(d.n),
                )
            )
        if f"{p}domain_loss" in self.base:
            rows.append(
                (
                    "base model",
                    f"{self.base[f'{p}domain_loss']:.4f}",
                    f"{self.base[f'{p}general_loss']:.4f}" if f"{p}general_loss" in self.base else "—",
                    "+0.0000",
                    "—",
                )
            )
        table = ["| | domain loss | general loss | forgetting | seeds |", "|---|---|---|---|---|"]
        table += ["| " + " | ".join(r) + " |" for r in rows]
        if self.is_confirmed:
            verdict = (
                f"**Confirmed over {len(self.confirmed.runs)} seeds**: the bracketed values are the means over "
                f"the confirmation's new seeds (train.seed values the sweep did not use) with their 95% "
                f"t-intervals. The weights here are the sweep's own run of the setting (train.seed "
                f"{self.seed}), not one of those seeds."
            )
        else:
            so_far = (
                f" (its confirmation `{self.confirm_name}` has {len(self.confirmed.runs)} of "
                f"{self.planned_seeds or '?'} seeds so far)"
                if self.confirmed is not None and self.confirmed.runs
                else ""
            )
            verdict = (
                f"**Unconfirmed: one run** with one seed (train.seed {self.seed}){so_far}, so no interval. "
                f"`cpt-harness confirm CONFIG`, with the sweep's own config, re-runs its best "
                f"{confirm.DEFAULT_TOP} settings with {confirm.DEFAULT_SEEDS} new seeds and gives intervals; "
                "export again afterwards."
            )
        gain = a.get(f"{p}domain_gain")
        said = (
            []
            if not isinstance(gain, float)
            else [
                f"The domain loss is {gain:.4f} nats/token below the base's."
                if gain >= 0
                else f"The domain loss is {-gain:.4f} nats/token *above* the base's.",
                "",
            ]
        )
        return head + [""] + table + ["", verdict, ""] + said


def _budget_section(study, cfg: Config, trial, why: str) -> list[str]:
    mf = cfg.study.max_forgetting
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    within = storage.feasible(trial, mf)
    if mf is not None:
        text = (
            f"Chosen under the forgetting budget study.max_forgetting = {mf:g} nats/token (forgetting on the "
            f"selection documents): this trial's {trial.user_attrs['forgetting']:+.4f} is "
            + ("within it." if within else "**over it**.")
        )
    else:
        text = (
            "No forgetting budget was set (study.max_forgetting: null): the choice traded domain loss against "
            "forgetting on the Pareto front, its knee first."
        )
    ok = sum(storage.feasible(t, mf) is True for t in done)
    return [
        "## How it was chosen",
        "",
        text
        + f" The study has {len(done)} complete trial"
        + ("s" if len(done) != 1 else "")
        + (f", {ok} within the budget" if mf is not None else "")
        + f" ({storage.objective_of(study)} objective, {cfg.study.sampler} sampler).",
        "",
        f"Exported as: {why}.",
        "",
    ]


def _caveats_section(study, cfg: Config, prov: dict, r: _Results, dequantized: bool) -> list[str]:
    items = []
    if not r.is_confirmed:
        items.append("Unconfirmed: one run with one seed. Another seed can rank the settings differently.")
    if not r.prefix:
        items.append(
            "The held-out documents were not split: the documents that chose this trial also measure it, "
            "which flatters it."
        )
    if note := page.forgetting_note(study):
        items.append(note)
    if not prov.get("healed_from") and dequantized:
        items.append(
            "Forgetting is measured against the base as loaded, not healed: on a dequantized (GGUF) base, "
            "training on any English text repairs some quantization loss and lowers general loss, which "
            "masks forgetting."
        )
    if any(data.replayed_corpora(cfg.data)):
        items.append(
            "A general corpus is also replayed in training: its forgetting flatters (see "
            "`forgetting_unreplayed` in the study)."
        )
    items.append(
        "Everything here is next-token loss on held-out documents of these corpora; nothing measured "
        "downstream tasks, instruction following or safety, which continued pretraining on raw text can "
        "change."
    )
    return ["## Caveats", ""] + [f"- {i}" for i in items] + [""]
