"""``cpt-harness export``: a sweep's result as something to use.

The adapter of the recommended trial (``--chosen``, the default: the report's "What to use", cpt_harness.confirm's
rule) or of trial N is copied to OUT with the base model's tokenizer and ``cpt-harness.yaml``, the sweep file that
trains it again (the config travels with the checkpoint). With ``--merge`` the LoRA weights, and the embeddings
trained in full, are merged into the base instead, and OUT is a standalone model folder that
``transformers.AutoModelForCausalLM.from_pretrained`` loads without PEFT.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cpt_harness.config import Config
from cpt_harness.errors import ConfigError

SWEEP_FILE = "cpt-harness.yaml"


def export(cfg: Config, study, out: Path, number: int | None = None, merge: bool = False, log=print) -> Path:
    """Write trial ``number`` (None: the recommended one) of ``study`` to ``out``; the folder written."""
    trial, why = _pick(cfg, study, number)
    adapter = _adapter(cfg, study, trial)
    if out.exists() and any(out.iterdir()):
        raise ConfigError([f"OUT: {out} exists and is not empty: name a new folder"], "export")
    base = _base(cfg, adapter)
    if merge:
        _merged(adapter, base, out)
    else:
        shutil.copytree(adapter, out, dirs_exist_ok=True)
        _tokenizer(base).save_pretrained(out)
    from cpt_harness import report_files

    (out / SWEEP_FILE).write_text(report_files.chosen_sweep_file(
        study, cfg, trial, why=why, written_by=f"cpt-harness export{' --merge' if merge else ''}", name=SWEEP_FILE))
    log(f"[export] trial {trial.number} of study {study.study_name!r} ({why}) -> {out}"
        + (" (merged: a standalone model)" if merge else f" (a LoRA adapter on {base})"))
    return out


def _pick(cfg: Config, study, number: int | None):
    from cpt_harness import confirm

    if number is None:
        rec = confirm.recommend(study, cfg.study.max_forgetting, confirm.load_study(cfg))
        if rec.trial is None:
            raise ConfigError([f"--chosen: no trial to export: {rec.no_setting or rec.how}; name one with --trial N"],
                              "export")
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
    raise ConfigError([
        f"trial {trial.number} of study {study.study_name!r} has no saved adapter{where}: study.keep_adapters="
        f"{cfg.study.keep_adapters} keeps {'the Pareto front' if cfg.study.keep_adapters == 'pareto' else 'none'}; "
        "train it again with `cpt-harness sweep reports/<study>/chosen.yaml` (written by `cpt-harness report`), "
        "or export another trial"], "export")


def _base(cfg: Config, adapter: Path) -> str:
    """The base model the adapter was trained on: the folder its config names (the prepared, perhaps healed,
    base), else model.name resolved again."""
    recorded = json.loads((adapter / "adapter_config.json").read_text()).get("base_model_name_or_path")
    if recorded and Path(recorded).is_dir():
        return recorded
    if cfg.model.heal.steps > 0:
        raise ConfigError([f"the healed base the adapter was trained on ({recorded}) is not on this machine; run the "
                           "sweep's setup here first (`cpt-harness sweep CONFIG --n-trials 1` prepares it)"], "export")
    from cpt_harness import models

    return models.resolve(cfg.model.name)


def _tokenizer(base: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base)


def _merged(adapter: Path, base: str, out: Path) -> None:
    """Merge in float32, then save in the base's own dtype."""
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForCausalLM

    saved_dtype = getattr(AutoConfig.from_pretrained(base), "dtype", None) or torch.float32
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    merged.to(saved_dtype if isinstance(saved_dtype, torch.dtype) else getattr(torch, str(saved_dtype)))
    merged.save_pretrained(out)
    _tokenizer(base).save_pretrained(out)

