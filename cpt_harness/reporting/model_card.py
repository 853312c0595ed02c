"""The model card (README.md) of an export: what `cpt-harness export` writes beside an adapter or a merged model,
built from the study, its config and the exported trial; nothing in it is a template to fill by hand.

The YAML metadata is the Hugging Face Hub's (``base_model``, ``library_name``, ``license``, ``tags``, ``datasets``,
``model-index``); the body says what the base is and how it was loaded (a GGUF dequantized before training: the
adapter fits that base, not the original weights), the corpora with their token counts, the settings, the results
on the test documents with their intervals and number of seeds (or that they are one unconfirmed run), the
forgetting budget it was chosen under, the caveats the report states, and how to load it or train it again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from cpt_harness import __version__, data
from cpt_harness.config import Config, DataSource
from cpt_harness.model import resolve as models
from cpt_harness.reporting import page
from cpt_harness.reporting.card_results import _budget_section, _caveats_section, _prefix, _Results

TAGS = ("cpt-harness", "lora", "continued-pretraining")
TRAIN_CONFIG = "trial_config.yaml"  # cpt_harness.objective.TRIAL_CONFIG, kept in an adapter folder


@dataclass(frozen=True)
class BaseRef:
    """The base model an export names. ``name``: what adapter_config.json's ``base_model_name_or_path`` holds (a
    hub id, or the local path where none is known); ``hub_id``: the Hugging Face id, None where none is known;
    ``how``: why that name, in words; ``path``: the folder the adapter was trained on, on this machine."""

    name: str
    hub_id: str | None
    how: str
    path: str


def build(study, cfg: Config, trial, *, base: BaseRef, merged: bool, why: str, folder: str, saved: str = "") -> str:
    """The card's text: YAML metadata, then the body. ``why``: how the trial was picked (one line); ``folder``: the
    export folder's name, as the card's examples load it; ``saved``: a merged model's dtype, in words."""
    prov = study.user_attrs.get("model_provenance") or models.provenance(base.path)
    r = _Results.of(study, cfg, trial, merged)
    dequantized = _dequantized(cfg, prov)
    lines = [
        f"# {_title(study, cfg, trial, base, merged)}",
        "",
        ("A merged model: the LoRA update" if merged else "A LoRA adapter") + f" of trial {trial.number} of the "
        f"cpt-harness study `{study.study_name}`, continued pretraining on "
        f"{_label(_sources(study, cfg)['domain'])} while general text measured forgetting. Written by "
        f"`cpt-harness export{' --merge' if merged else ''}` (cpt-harness {__version__}) from the study database: "
        "regenerate it rather than edit it.",
        "",
        *_base_section(cfg, base, prov, merged, dequantized, saved),
        *_data_section(study, cfg, trial),
        *_settings_section(cfg, trial),
        *r.section(),
        *_budget_section(study, cfg, trial, why),
        *_caveats_section(study, cfg, prov, r, dequantized),
        *_usage_section(base, merged, folder, dequantized),
    ]
    return (
        "---\n"
        + yaml.safe_dump(metadata(study, cfg, trial, base, merged), sort_keys=False, allow_unicode=True, width=1000)
        + "---\n\n"
        + "\n".join(lines).rstrip()
        + "\n"
    )


def metadata(study, cfg: Config, trial, base: BaseRef, merged: bool) -> dict:
    """The Hub's card metadata. ``base_model`` only where a hub id is known (a local path is no Hub reference)."""
    meta: dict = {}
    if base.hub_id:
        meta["base_model"] = base.hub_id
        meta["base_model_relation"] = "finetune" if merged else "adapter"
    meta["library_name"] = "transformers" if merged else "peft"
    if lic := _license(cfg):
        meta["license"] = lic
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = list(TAGS)
    hub = [
        s.path
        for s in (
            *cfg.data.domain_sources(),
            *cfg.data.general_sources(),
            *([cfg.data.replay.source] if cfg.data.replay is not None else []),
        )
        if _hub_dataset(s)
    ]
    if hub:
        meta["datasets"] = list(dict.fromkeys(hub))
    a, p = trial.user_attrs, _prefix(trial)
    part = "test documents" if p else "held-out documents"
    src = _sources(study, cfg)
    meta["model-index"] = [
        {
            "name": f"{study.study_name}-t{trial.number}",
            "results": [
                {
                    "task": {"type": "text-generation", "name": "Continued pretraining"},
                    "dataset": {"name": f"{_plain(src['domain'])} ({part})", "type": _plain(src["domain"])},
                    "metrics": [
                        {
                            "type": "loss",
                            "value": round(a[f"{p}domain_loss"], 4),
                            "name": f"domain loss (nats/token, {part})",
                        }
                    ],
                },
                {
                    "task": {"type": "text-generation", "name": "Forgetting"},
                    "dataset": {"name": f"{_plain(src['general'])} ({part})", "type": _plain(src["general"])},
                    "metrics": [
                        {
                            "type": "forgetting",
                            "value": round(a[f"{p}forgetting"], 4),
                            "name": f"forgetting (general loss minus the base's, nats/token, {part})",
                        }
                    ],
                },
            ],
        }
    ]
    return meta


# ------------------------------------------------------------------------------------------ the base


def _builtin(cfg: Config) -> models.BuiltinModel | None:
    name = cfg.model.name
    return models.BUILTIN_MODELS.get(name.removeprefix("builtin:")) if name.startswith("builtin:") else None


def _license(cfg: Config) -> str | None:
    spec = _builtin(cfg)
    return spec.license if spec else None


def _title(study, cfg: Config, trial, base: BaseRef, merged: bool) -> str:
    what = "merged model" if merged else "LoRA adapter"
    on = base.hub_id or Path(base.path).name
    return (
        f"{study.study_name}-t{trial.number}: a {what} of {on}, continued pretraining on "
        f"{_plain(_sources(study, cfg)['domain'])}"
    )


def _quantization(member: str) -> str:
    m = re.search(r"\.((?:I?Q\d\w*)|F16|BF16|F32)\.gguf$", member, re.IGNORECASE)
    return m.group(1) if m else "a quantized"


def _dequantized(cfg: Config, prov: dict) -> bool:
    """Whether the base was dequantized from a GGUF before training (the built-in model, a .gguf model.name)."""
    return _builtin(cfg) is not None or cfg.model.name.endswith(".gguf") or "GGUF" in str(prov.get("format", ""))


def _base_section(cfg: Config, base: BaseRef, prov: dict, merged: bool, dequantized: bool, saved: str) -> list[str]:
    spec = _builtin(cfg)
    version = re.search(r"transformers (\S+)", str(prov.get("format", "")))
    how = f" (transformers {version.group(1)})" if version else ""
    if spec is not None:
        q = _quantization(spec.member)
        text = (
            f"**{spec.hub_id}** (licence {spec.license}), loaded as cpt-harness's `{cfg.model.name}`: the {q} "
            f"GGUF `{spec.member}` inside the PyPI package `{spec.package}=={spec.version}` (sha256 "
            f"`{spec.sha256[:16]}…`), dequantized to bfloat16 by transformers' GGUF loader{how}."
        )
    elif dequantized:
        q = _quantization(str(prov.get("source", cfg.model.name)))
        text = (
            f"**{prov.get('description') or cfg.model.name}**, the {q} GGUF `{prov.get('source', cfg.model.name)}`"
            + (f" (sha256 `{prov['sha256'][:16]}…`)" if prov.get("sha256") else "")
            + f", dequantized by transformers' GGUF loader{how}."
        )
    elif base.hub_id and base.hub_id == cfg.model.name:
        text = f"**{base.hub_id}**, from the Hugging Face Hub."
    else:
        text = (
            f"The local model folder `{cfg.model.name}`"
            + (f", named **{base.hub_id}** here ({base.how})" if base.hub_id else "")
            + "."
        )
    if spec is None:
        text += (
            " cpt-harness does not record the licence of a base it does not ship: the base's own licence "
            "applies to this export."
        )
    lines = ["## Base model", "", text, ""]
    if dequantized:
        original = f"the original weights of {spec.hub_id}" if spec else "the model's original weights"
        rounded = (
            "Quantization rounded every weight, and training lowered the loss of the rounded weights, so "
            "part of what was learned repairs that rounding."
        )
        lines += [
            (
                f"**This merged model is the dequantized base plus the update, not {original} plus it.** {rounded} Its "
                "weights carry the rounding, and the numbers below hold for them. To apply the update to the original "
                "weights, export the adapter instead (without --merge); its effect there was not measured."
                if merged
                else f"**The adapter fits that dequantized base, not {original}.** {rounded} The numbers below hold on the "
                "dequantized base. On the original weights the adapter loads (the same architecture and shapes) and "
                "applies, but its losses and forgetting there were not measured and will differ: expect less gain over "
                "the original, which has no rounding to repair. `cpt-harness prepare cpt-harness.yaml` builds the "
                "dequantized base and prints its folder."
            ),
            "",
        ]
    if prov.get("healed_from"):
        h = prov.get("heal") or {}
        lines += [
            f"**Healed before training**: {h.get('steps', '?')} LoRA steps on {h.get('data', '?')} were merged "
            "into the base first (model.heal), and every trial started from that healed base: the adapter "
            "fits it, not the base as loaded. `cpt-harness sweep cpt-harness.yaml` rebuilds it (once, cached)."
            + page._heal_effect(prov),
            "",
        ]
    if merged and saved:
        lines += [f"The merged weights are {saved}.", ""]
    if not merged:
        lines += [
            f"`adapter_config.json` names the base `{base.name}` ({base.how})."
            + (
                ""
                if base.hub_id
                else " That path exists only on the machine that exported it: "
                "`cpt-harness export --base-id NAME` names a Hub model instead."
            ),
            "",
        ]
    return lines


# ------------------------------------------------------------------------------------------ data and settings


def _sources(study, cfg: Config) -> dict:
    stored = ((study.user_attrs.get("data_stats") or {}).get("sources")) or {}
    return {
        "domain": stored.get("domain") or " + ".join(data.source_label(s) for s in cfg.data.domain_sources()),
        "general": stored.get("general") or " + ".join(data.source_label(s) for s in cfg.data.general_sources()),
        **({"replay": stored["replay"]} if "replay" in stored else {}),
    }


def _shown(source: str) -> str:
    """One source as the card shows it: builtin:NAME and hub ids as they are, a local file or folder by its name
    (its path is the exporting machine's)."""
    if source.startswith("builtin:") or _hub_dataset(DataSource(source.split("[")[0])):
        return source
    return Path(source.split("[")[0]).name + (f"[{source.split('[', 1)[1]}" if "[" in source else "")


def _plain(sources: str) -> str:
    return " + ".join(_shown(s) for s in sources.split(" + "))


def _label(sources: str) -> str:
    """Sources (joined by " + ") as the card shows them, with the built-in ones' descriptions."""
    parts = []
    for s in sources.split(" + "):
        short = s.removeprefix("builtin:")
        parts.append(
            f"`{s}` ({data.BUILTIN_CORPORA[short]})"
            if s.startswith("builtin:") and short in data.BUILTIN_CORPORA
            else f"`{_shown(s)}`" + ("" if _hub_dataset(DataSource(s.split("[")[0])) else " (local data)")
        )
    return " + ".join(parts)


def _hub_dataset(src: DataSource) -> bool:
    """Whether a data source is a Hugging Face dataset id (what the card's ``datasets`` lists)."""
    p = src.path
    return (
        not p.startswith("builtin:")
        and not Path(p).expanduser().exists()
        and "/" in p
        and not p.startswith((".", "/", "~"))
        and Path(p).suffix.lower() not in data.FILE_SUFFIXES
        and re.fullmatch(r"[\w.-]+/[\w.-]+", p) is not None
    )


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else "?"


def _data_section(study, cfg: Config, trial) -> list[str]:
    s = study.user_attrs.get("data_stats") or {}
    src, L = _sources(study, cfg), cfg.model.max_seq_length
    train, held = s.get("domain_train") or {}, s.get("domain_eval") or {}
    lines = [
        "## Data",
        "",
        f"- **Domain** (trained on): {_label(src['domain'])}. Training part: {_n(train.get('documents'))} "
        f"documents, {_n(train.get('tokens'))} tokens ({_n(train.get('blocks'))} blocks of {L}); held out: "
        f"{_n(held.get('documents'))} documents, {_n(held.get('documents_evaluated'))} of them evaluated "
        f"({_n(held.get('tokens'))} tokens, eval.max_tokens {cfg.eval.max_tokens:,}).",
    ]
    general = s.get("general_corpora") or {}
    replayed = dict(zip(data.corpus_names(cfg.data.general_sources()), data.replayed_corpora(cfg.data)))
    lines.append(
        "- **General** (measures forgetting; "
        + (
            "its held-out documents are never trained on): "
            if not any(replayed.values())
            else "held-out documents only): "
        )
        + (
            "; ".join(
                f"{_label(g['source'])}: {_n(g.get('documents'))} held-out documents, "
                f"{_n(g.get('documents_evaluated'))} evaluated ({_n(g.get('tokens'))} tokens)"
                + (" — also replayed in training" if replayed.get(name) else "")
                for name, g in general.items()
            )
            or _label(src["general"])
        )
        + "."
    )
    if "replay" in src:
        rt = s.get("replay_train") or {}
        lines.append(
            f"- **Replay** (mixed into training, data.replay.fraction {cfg.data.replay.fraction:g}): "
            f"{_label(src['replay'])}, {_n(rt.get('documents'))} documents, {_n(rt.get('tokens'))} tokens."
        )
    seen = trial.user_attrs.get("tokens_seen")
    if isinstance(seen, int) and train.get("tokens"):
        share = seen / train["tokens"]
        lines.append(
            f"- **Trained on** {seen:,} tokens ("
            + (f"{share:.1%} of" if share < 1 else f"{share:.2f} passes over")
            + " the domain training part"
            + (", replay included" if "replay" in src else "")
            + ")."
        )
    c = s.get("contamination")
    if c:
        lines.append(
            f"- **Held-out domain documents dropped as near-copies of training documents**: {c['dropped']} "
            f"of {c.get('checked', c['held_out_documents'])} checked (>= {c['threshold']:.0%} of their "
            f"{c['ngram_words']}-word sequences occur in the training documents)."
        )
    split = study.user_attrs.get("eval_split")
    if split:
        gen = ", ".join(f"{n} {v['selection']}/{v['test']}" for n, v in split["general"].items())
        lines.append(
            f"- **Held-out documents split by document** (eval.test_fraction {split['test_fraction']:g}), "
            f"selection/test: domain {split['domain']['selection']}/{split['domain']['test']}, {gen}. The "
            "selection part chose the trial; the results below are on the test part, which chose nothing."
        )
    else:
        lines.append(
            "- **Held-out documents not split** (eval.test_fraction 0): the same documents chose the trial "
            "and give the results below."
        )
    if any(x.startswith("builtin:") for x in (*src["domain"].split(" + "), *src["general"].split(" + "))):
        lines.append("- Sources and licences of the built-in corpora: `cpt_harness/corpora/SOURCES.md` in cpt-harness.")
    return lines + [""]


def _settings_section(cfg: Config, trial) -> list[str]:
    a, p, t = trial.user_attrs, trial.params, cfg.train
    rank = a.get("rank", p.get("rank"))
    lr = a.get("learning_rate", p.get("learning_rate"))
    ratio = a.get("embedding_lr_ratio", p.get("embedding_lr_ratio"))
    rslora = a.get("use_rslora")
    rslora_text = ("?" if rslora is None else "on" if rslora else "off") + (
        " (lora.use_rslora auto: on exactly when the rank is above 64)" if cfg.lora.use_rslora == "auto" else ""
    )
    step_tokens = t.batch_size * t.grad_accum * cfg.model.max_seq_length
    sched = "wsd" if getattr(t, "schedule", "cosine") == "wsd" else "cosine"  # auto: cosine in a sweep
    rows = [
        ("LoRA rank", f"{rank}"),
        ("learning rate (LoRA)", f"{lr:.4g}" if isinstance(lr, float) else "?"),
        (
            "embedding-LR ratio",
            f"{ratio:.4g} (embedding LR {ratio * lr:.4g}; `embed_tokens`/`lm_head` trained in full)"
            if isinstance(ratio, float) and isinstance(lr, float)
            else "— (embeddings not trained)",
        ),
        ("rsLoRA", rslora_text),
        (
            "alpha, scale",
            f"{a.get('alpha', cfg.lora.alpha):g}, "
            + (f"{a['lora_scale']:.4g}" if "lora_scale" in a else "?")
            + (" (alpha/sqrt(r))" if rslora else " (alpha/r)"),
        ),
        ("LoRA targets", ", ".join(f"`{m}`" for m in cfg.lora.target_modules)),
        ("LoRA dropout", f"{cfg.lora.dropout:g}"),
        (
            "steps",
            f"{t.max_steps:,} of {t.batch_size} × {t.grad_accum} blocks of {cfg.model.max_seq_length} tokens "
            f"({step_tokens:,} tokens per step)",
        ),
        (
            "tokens",
            f"{a['tokens_seen']:,} seen" if isinstance(a.get("tokens_seen"), int) else f"{t.max_steps * step_tokens:,}",
        ),
        (
            "schedule",
            f"{sched}: linear warmup over {t.warmup_ratio:g} of the steps, then "
            + (
                "cosine decay to 0"
                if sched == "cosine"
                else f"stable, then decay branches of {getattr(t, 'decay_fraction', float('nan')):g} of their step"
            ),
        ),
        (
            "optimizer",
            f"AdamW, weight decay {t.weight_decay:g}, gradient clipping "
            + (f"{t.max_grad_norm:g}" if t.max_grad_norm else "off"),
        ),
        ("seed", f"train.seed {a['seed'] if isinstance(a.get('seed'), int) else t.seed}"),
    ]
    if a.get("replay_fraction") is not None:
        rows.append(("replay fraction", f"{a['replay_fraction']:.3g}"))
    if a.get("rule_violations"):
        rows.append(("rules broken", ", ".join(a["rule_violations"])))
    return ["## Training settings", "", "| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows] + [""]


# ------------------------------------------------------------------------------------------ results


# ------------------------------------------------------------------------------------------ how to use


def _usage_section(base: BaseRef, merged: bool, folder: str, dequantized: bool) -> list[str]:
    here = folder
    lines = ["## How to use it", ""]
    if merged:
        lines += [
            "A standalone model folder: transformers loads it without PEFT.",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'model = AutoModelForCausalLM.from_pretrained("{here}")  # this folder, or its Hub repo',
            f'tokenizer = AutoTokenizer.from_pretrained("{here}")',
            "```",
            "",
        ]
    else:
        load = base.hub_id or base.path
        lines += [
            "With PEFT, on its base:",
            "",
            "```python",
            "from peft import PeftModel",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{load}")',
            f'model = PeftModel.from_pretrained(base, "{here}")  # this folder, or its Hub repo',
            f'tokenizer = AutoTokenizer.from_pretrained("{here}")',
            "model = model.merge_and_unload()  # optional: a plain transformers model",
            "```",
            "",
        ]
        if dequantized and base.hub_id:
            lines += [
                f'`"{load}"` loads the original weights; for the dequantized base the numbers above were '
                "measured on, pass the folder `cpt-harness prepare cpt-harness.yaml` prints.",
                "",
            ]
        lines += ["`cpt-harness export CONFIG OUT --merge` writes the merged model instead.", ""]
    lines += [
        "Train it again with cpt-harness (`pip install .` in its repository): `cpt-harness.yaml` here is the "
        "sweep file of this one setting (one trial, a new study):",
        "",
        "```bash",
        "cpt-harness sweep cpt-harness.yaml",
        "cpt-harness report cpt-harness.yaml",
        "```",
        "",
    ]
    if not merged:
        lines += [f"`{TRAIN_CONFIG}` holds the trial's resolved config as it trained.", ""]
    return lines
