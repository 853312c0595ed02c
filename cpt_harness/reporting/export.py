"""``cpt-harness export``: a sweep's result as something to use.

The adapter of the recommended trial (``--chosen``, the default: the report's "What to use", cpt_harness.confirm's
rule) or of trial N is copied to OUT with the base model's tokenizer and ``cpt-harness.yaml``, the sweep file that
trains it again (the config travels with the checkpoint). With ``--merge`` the LoRA weights, and the embeddings
trained in full, are merged into the base instead, and OUT is a standalone model folder that
``transformers.AutoModelForCausalLM.from_pretrained`` loads without PEFT.

Either way OUT gets a filled model card, README.md (cpt_harness.model_card), in place of PEFT's empty template.
The adapter names its base portably: ``base_model_name_or_path`` is the Hugging Face id of a ``builtin:`` model
(or of a local copy of its GGUF) and a hub id model.name as it is; a local folder stays its path, unless
``--base-id NAME`` gives the id (which also overrides the others).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from cpt_harness.config import Config
from cpt_harness.errors import ConfigError

SWEEP_FILE = "cpt-harness.yaml"
CARD = "README.md"
_HUB_MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # org/name, or a legacy name without org


def export(
    cfg: Config, study, out: Path, number: int | None = None, merge: bool = False, log=print, base_id: str | None = None
) -> Path:
    """Write trial ``number`` (None: the recommended one) of ``study`` to ``out``; the folder written.
    ``base_id``: the Hugging Face id to name the base by (``--base-id``)."""
    _check_base_id(base_id)
    trial, why = _pick(cfg, study, number)
    adapter = _adapter(cfg, study, trial)
    if out.exists() and any(out.iterdir()):
        raise ConfigError([f"OUT: {out} exists and is not empty: name a new folder"], "export")
    base = _base(cfg, adapter)
    ref = reference(cfg, base, base_id, study.user_attrs.get("model_provenance"))
    saved = ""
    if merge:
        saved = _merged(adapter, base, out)
    else:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        _tokenizer(base).save_pretrained(out)
        _name_base(out, ref)
    from cpt_harness.reporting import model_card, sweep_report

    (out / SWEEP_FILE).write_text(
        sweep_report.chosen_sweep_file(
            study, cfg, trial, why=why, written_by=f"cpt-harness export{' --merge' if merge else ''}", name=SWEEP_FILE
        )
    )
    (out / CARD).write_text(
        model_card.build(study, cfg, trial, base=ref, merged=merge, why=why, folder=out.name, saved=saved)
    )
    named = (
        f"the model card names the base {ref.hub_id} ({ref.how})"
        if merge and ref.hub_id
        else f"the model card names no hub id for the base ({ref.how})"
        if merge
        else f"adapter_config.json names the base {ref.name} ({ref.how})"
    )
    log(
        f"[export] trial {trial.number} of study {study.study_name!r} ({why}) -> {out}"
        + (f" (merged: a standalone model, {saved})" if merge else f" (a LoRA adapter on {base})")
        + f"; {named}; model card {out / CARD}"
    )
    return out


def _check_base_id(base_id: str | None) -> None:
    if base_id is None:
        return
    if not base_id.strip():
        raise ConfigError(
            [
                "--base-id: must not be empty; give the base's Hugging Face id, e.g. "
                "HuggingFaceTB/SmolLM2-135M-Instruct, or leave --base-id out"
            ],
            "export",
        )
    if not _HUB_MODEL_ID.match(base_id) or len(base_id) > 96 or "--" in base_id or ".." in base_id:
        raise ConfigError(
            [
                f"--base-id: {base_id!r} is not a Hugging Face model id (org/name, letters, digits, "
                "'-', '_', '.'); give the id the base has on the Hub, e.g. "
                "HuggingFaceTB/SmolLM2-135M-Instruct"
            ],
            "export",
        )


def reference(cfg: Config, base: str, base_id: str | None = None, provenance: dict | None = None):
    """How the export names its base (a ``model_card.BaseRef``): ``base_id`` where given; a ``builtin:`` model's
    hub id, or that of the built-in GGUF a local .gguf is a copy of (same sha256); a hub-id model.name as it is;
    else the local folder ``base`` (no hub id)."""
    from cpt_harness.model import resolve as models
    from cpt_harness.reporting.model_card import BaseRef

    name = cfg.model.name
    if base_id is not None:
        return BaseRef(base_id, base_id, "given with --base-id", base)
    if name.startswith("builtin:") and (spec := models.BUILTIN_MODELS.get(name.removeprefix("builtin:"))):
        return BaseRef(spec.hub_id, spec.hub_id, f"the Hugging Face id of {name}", base)
    sha = (provenance or models.provenance(base)).get("sha256")
    if copy := next((b for b in models.BUILTIN_MODELS.values() if sha and b.sha256 == sha), None):
        return BaseRef(copy.hub_id, copy.hub_id, f"the Hugging Face id of the built-in GGUF {name} is a copy of", base)
    if not Path(name).expanduser().exists() and not name.startswith((".", "/", "~")) and models._HUB_ID.match(name):
        return BaseRef(name, name, "model.name, a Hugging Face id", base)
    return BaseRef(base, None, "a local path: no Hugging Face id is known for it; `--base-id NAME` names one", base)


def _name_base(out: Path, ref) -> None:
    """adapter_config.json's base_model_name_or_path: ``ref.name`` (PEFT wrote the folder trained on)."""
    path = out / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = ref.name
    path.write_text(json.dumps(config, indent=2, sort_keys=True))


def _pick(cfg: Config, study, number: int | None):
    from cpt_harness.analysis import confirm

    if number is None:
        rec = confirm.recommend(study, cfg.study.max_forgetting, confirm.load_study(cfg))
        if rec.trial is None:
            raise ConfigError(
                [f"--chosen: no trial to export: {rec.no_setting or rec.how}; name one with --trial N"], "export"
            )
        return rec.trial, confirm.summary_line(rec)
    done = [t for t in study.get_trials(deepcopy=False) if t.number == number and t.state.name == "COMPLETE"]
    if not done:
        raise ConfigError([f"--trial {number}: no complete trial {number} in study {study.study_name!r}"], "export")
    a = done[0].user_attrs
    return done[0], f"trial {number}: domain loss {a['domain_loss']:.4f}, forgetting {a['forgetting']:+.4f}"


def _adapter(cfg: Config, study, trial) -> Path:
    path = trial.user_attrs.get("adapter_dir")
    if path and (Path(path) / "adapter_config.json").is_file():
        return Path(path)
    where = f" ({path} is gone)" if path else ""
    raise ConfigError(
        [
            f"trial {trial.number} of study {study.study_name!r} has no saved adapter{where}: study.keep_adapters="
            f"{cfg.study.keep_adapters} keeps {'the Pareto front' if cfg.study.keep_adapters == 'pareto' else 'none'}; "
            "train it again with `cpt-harness sweep reports/<study>/chosen.yaml` (written by `cpt-harness report`), "
            "or export another trial"
        ],
        "export",
    )


def _base(cfg: Config, adapter: Path) -> str:
    """The base model the adapter was trained on: the folder its config names (the prepared, perhaps healed,
    base), else model.name resolved again."""
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded
    if cfg.model.heal.steps > 0:
        raise ConfigError(
            [
                f"the healed base the adapter was trained on ({recorded}) is not on this machine; run the "
                "sweep's setup here first (`cpt-harness sweep CONFIG --n-trials 1` prepares it)"
            ],
            "export",
        )
    from cpt_harness.model import resolve as models

    return models.resolve(cfg.model.name)


def _tokenizer(base: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


ROUNDING_LIMIT = 0.1  # the share of the update (by norm) that rounding a merged model to the base's dtype may lose


def _merged(adapter: Path, base: str, out: Path) -> str:
    """Merge in float32, then save in the base's own dtype where rounding to it keeps the update (loses at most
    ROUNDING_LIMIT of it, by norm), else in float32: a short run's update can be smaller than a bfloat16 weight's
    rounding step (the demo's 12 steps on SmolLM2 would lose 74% of it, and 13% of its domain-loss gain). What was
    saved, in words."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None) or torch.float32
    dtype = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), str(adapter))
    lost = 0.0 if dtype == torch.float32 else rounding_loss(model, dtype)
    name = str(dtype).removeprefix("torch.")
    if lost > ROUNDING_LIMIT:
        dtype, note = (
            torch.float32,
            (
                f"saved in float32: rounding the merged weights to the base's {name} would "
                f"lose {lost:.0%} of the update (by norm)"
            ),
        )
    else:
        note = f"saved in {name}, the base's dtype" + (
            f" (rounding to it loses {lost:.2%} of the update, by norm)" if name != "float32" else ""
        )
    merged = model.merge_and_unload()
    merged.to(dtype)
    merged.save_pretrained(out)
    _tokenizer(base).save_pretrained(out)
    return note


def rounding_loss(model, dtype) -> float:
    """How much of a PEFT model's update rounding the merged weights to ``dtype`` would lose: the norm of the
    rounding error over the norm of the update, over every LoRA layer and every module trained in full."""
    import torch
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    lost = update = 0.0
    seen: set[int] = set()  # a tied embedding is one matrix under two names
    with torch.no_grad():
        for module in model.modules():
            pairs = []
            if isinstance(module, LoraLayer):
                w = module.get_base_layer().weight
                pairs = [
                    (w, w.float() + module.get_delta_weight(a).float())
                    for a in module.active_adapters
                    if a in module.lora_A
                ]
            elif isinstance(module, ModulesToSaveWrapper) and hasattr(module.original_module, "weight"):
                pairs = [
                    (module.original_module.weight, module.modules_to_save[a].weight.float())
                    for a in module.active_adapters
                    if a in module.modules_to_save
                ]
            for old, new in pairs:
                if id(old) in seen:
                    continue
                seen.add(id(old))
                lost += (new.to(dtype).float() - new).pow(2).sum().item()
                update += (new - old.float()).pow(2).sum().item()
    return (lost / update) ** 0.5 if update > 0 else 0.0
