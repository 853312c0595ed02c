"""Config loading, the Unsloth CPT rules, and `cpt-harness validate`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cpt_harness.cli import main
from cpt_harness.config import ConfigError
from cpt_harness.config.validate import load_config

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "sweeps" / "demo.yaml"


@pytest.mark.parametrize("path", sorted((ROOT / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_sweep_file_validates(path, capsys):
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.startswith("ok: ")
    assert path.read_text().startswith("#"), "every sweep file opens with a comment saying what it is for"


def problems(*overrides: str, path: Path = DEMO) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_config(path, list(overrides))
    return e.value.problems


def test_unknown_key_suggests_the_right_one():
    (p,) = problems("train.max_step=3")
    assert p == "train.max_step: unknown key (did you mean train.max_steps?)"


def test_all_problems_are_reported_at_once():
    ps = problems(
        "train.batch_size=0",
        "search.learning_rate.low=1",
        "search.rank.choices=[]",
        "data.domain=/no/such/file.txt",
        "model.name=builtin:nope",
        "backend=gpu",
    )
    joined = "\n".join(ps)
    assert "train.batch_size: must be > 0, got 0" in joined
    assert "search.learning_rate: low <= high must hold, but got (low=1.0, high=0.001)" in joined
    assert "search.rank.choices: must not be empty" in joined
    assert "data.domain: /no/such/file.txt does not exist" in joined
    assert "model.name: unknown built-in model 'nope'" in joined
    assert "backend: must be one of auto, peft, unsloth; got 'gpu'" in joined
    assert len(ps) == 6


def test_wrong_types_name_the_key():
    ps = problems("train.max_steps=ten", "lora.train_embeddings=maybe", "search.rank.choices=8")
    assert "train.max_steps: expected an integer, got 'ten'" in ps
    assert "lora.train_embeddings: expected true or false, got 'maybe'" in ps
    assert "search.rank.choices: expected a list, e.g. [a, b]; got 8" in ps


def test_rslora_rule_enforced_and_opt_out():
    (p,) = problems("lora.use_rslora=false", "search.rank.choices=[32,128]")
    assert p.startswith("lora.use_rslora: false with rank choices above 64 ([128]) breaks the rsLoRA rule")
    cfg = load_config(DEMO, ["lora.use_rslora=false", "search.rank.choices=[32,128]", "rules.rslora_above_64=false"])
    assert cfg.lora.use_rslora is False


def test_embedding_ratio_rule_enforced_and_opt_out():
    (p,) = problems("search.embedding_lr_ratio.high=1.0")
    assert p.startswith("search.embedding_lr_ratio: [0.1, 1.0] leaves [0.1, 0.5]")
    assert load_config(DEMO, ["search.embedding_lr_ratio.high=1.0", "rules.embedding_lr_ratio_range=false"])
    # Without trained embeddings the ratio is unused, so the rule does not apply.
    assert load_config(DEMO, ["search.embedding_lr_ratio.high=1.0", "lora.train_embeddings=false"])


def test_embeddings_are_not_lora_targets():
    (p,) = problems("lora.target_modules=[q_proj,lm_head]")
    assert "['lm_head'] are trained in full through lora.train_embeddings" in p


def test_set_overrides_parse_yaml_and_reach_nested_keys(tiny_corpora):
    cfg = load_config(
        DEMO,
        [
            "search.rank.choices=[64, 128]",
            "search.learning_rate.low=5e-5",
            f"data.general={tiny_corpora['general']}",
            "data.general.text_field=body",
        ],
    )
    assert cfg.search.rank.choices == [64, 128]
    assert cfg.search.learning_rate.low == 5e-5
    assert cfg.data.general.path == str(tiny_corpora["general"]) and cfg.data.general.text_field == "body"


def test_missing_and_malformed_files(tmp_path):
    assert problems(path=tmp_path / "none.yaml")[0].startswith("config file not found")
    bad = tmp_path / "bad.yaml"
    bad.write_text("study: [unclosed\n")
    assert problems(path=bad)[0].startswith("not valid YAML")


def test_validate_exit_codes_and_messages(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("study:\n  n_trial: 3\ntrain:\n  max_steps: -1\n")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "study.n_trial: unknown key (did you mean study.n_trials?)" in err
    assert "train.max_steps: must be > 0, got -1" in err


def test_validate_imports_no_torch_and_needs_no_model():
    """validate must work on a fresh install: it prepares nothing and loads no ML stack."""
    code = (
        "import sys; from cpt_harness.cli import main; rc = main(['validate', %r]); "
        "assert 'torch' not in sys.modules, 'validate imported torch'; sys.exit(rc)" % str(DEMO)
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok: ")


def test_console_script_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "cpt_harness", "validate", str(DEMO), "--set", "train.max_steps=0"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "train.max_steps: must be > 0, got 0" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_one_wrong_type_hides_no_other_problem():
    ps = problems(
        "study.heartbeat_interval=often", "study.max_failures=0", "train.warmup_ratio=1.5", "lora.dropout=-0.1"
    )
    assert ps == [
        "study.heartbeat_interval: expected an integer, got 'often'",
        "study.max_failures: must be >= 1, got 0",
        "train.warmup_ratio: must be in [0, 1), got 1.5",
        "lora.dropout: must be in [0, 1), got -0.1",
    ]


def _float_keys(cls=None, prefix=""):
    """Every key whose schema type is a float (or float | None), as the user writes it."""
    import dataclasses
    import typing

    from cpt_harness.config import Config, DataSource

    cls = cls or Config
    for f in dataclasses.fields(cls):
        tp, key = typing.get_type_hints(cls)[f.name], f"{prefix}{f.name}"
        if tp is DataSource:  # its one float, weight, belongs to a data.domain list (tests/data/test_domain_sources.py)
            continue
        if dataclasses.is_dataclass(tp):
            yield from _float_keys(tp, key + ".")
        elif tp is float or (typing.get_origin(tp) is not list and float in typing.get_args(tp)):
            yield key


@pytest.mark.parametrize(
    "value, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf"), ("nan", "nan"), ("1e999", "inf")]
)
def test_every_float_must_be_finite(value, shown):
    keys = list(_float_keys())
    assert {
        "search.learning_rate.low",
        "lora.alpha",
        "train.time_limit_s",
        "study.max_forgetting",
        "model.heal.learning_rate",
        "ablation.embedding_lr_ratio",
    } <= set(keys)
    ps = problems(*(f"{k}={value}" for k in keys))
    assert sorted(ps) == sorted(f"{k}: must be a finite number, got {shown}" for k in keys)
    assert problems(f"ablation.learning_rates=[1e-4, {value}]") == [
        f"ablation.learning_rates[1]: must be a finite number, got {shown}"
    ]


def test_duplicate_keys_are_refused_with_their_lines(tmp_path):
    bad = tmp_path / "dup.yaml"
    bad.write_text("# twice\nsearch:\n  rank:\n    choices: [8]\n    choices: [16]\nstudy: {name: a}\nstudy: {}\n")
    assert problems(path=bad) == [
        "search.rank.choices: given twice (lines 4 and 5); YAML would keep only the last, so remove one",
        "study: given twice (lines 6 and 7); YAML would keep only the last, so remove one",
    ]
    merged = tmp_path / "merge.yaml"  # YAML merge keys are not duplicates
    merged.write_text("train: &t {max_steps: 5}\neval:\n  <<: {batch_size: 2}\n  max_tokens: 512\n")
    assert load_config(merged).eval.batch_size == 2


@pytest.mark.parametrize("name", ["demo", "gpu-legal", "legal_r64.v2", "Run 3"])
def test_safe_study_names_pass(name):
    assert load_config(DEMO, [f"study.name={name}", f"ablation.study_name={name}-abl"]).study.name == name


@pytest.mark.parametrize(
    "name, fix",
    [
        ("a/b", "a-b"),
        ("..", "my-study"),
        ("../../etc", "etc"),
        ("x\\y", "x-y"),
        (" padded ", "padded"),
        ("/abs", "abs"),
    ],
)
def test_unsafe_study_names_fail_with_a_fix(name, fix):
    (p,) = problems(f"study.name={json.dumps(name)}")  # a JSON string is a YAML one
    assert p.startswith(f"study.name: {name!r} is not a safe name") and p.endswith(f"e.g. {fix!r}")


def test_output_dir_must_be_a_folder_one_can_create(tmp_path):
    (tmp_path / "file").write_text("x")
    (p,) = problems(f"study.output_dir={tmp_path}/file/runs")
    assert p.startswith(f"study.output_dir: {tmp_path}/file is a file, not a folder")
    load_config(DEMO, [f"study.output_dir={tmp_path}/not/yet/there"])
    assert not (tmp_path / "not").exists(), "validating creates nothing"


def test_init_adapter_config_must_be_json(tmp_path):
    (tmp_path / "adapter_config.json").write_text("[1, 2]")
    (p,) = problems(f"lora.init_adapter={tmp_path}")
    assert p == f"lora.init_adapter: {tmp_path}/adapter_config.json holds a JSON list, not an adapter config"


def test_a_binary_or_non_utf8_config_names_the_file(tmp_path):
    bad = tmp_path / "weights.yaml"
    bad.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ConfigError) as e:
        load_config(bad)
    assert e.value.source == str(bad) and e.value.problems[0].startswith("the config file is binary")


def test_general_is_one_source_or_a_list():
    from cpt_harness.config.validate import summary

    single = load_config(DEMO, [])
    assert single.data.general_sources() == [single.data.general] and single.data.general.path == "builtin:brown"
    both = load_config(DEMO, ["data.general=[builtin:brown, {path: builtin:sotu}]"])
    assert [g.path for g in both.data.general_sources()] == ["builtin:brown", "builtin:sotu"]
    assert "general builtin:brown + builtin:sotu" in summary(both)
    ps = problems("data.general=[builtin:brown, builtin:poetry, builtin:brown]")
    assert any(p.startswith("data.general[1]: unknown built-in corpus 'poetry'") for p in ps)
    assert "data.general[2]: builtin:brown is listed twice" in ps
    assert problems("data.general=[]") == [
        "data.general: an empty list; name at least one source, e.g. [builtin:brown, builtin:sotu]"
    ]


def test_a_check_that_raises_is_reported_not_skipped(monkeypatch, capsys):
    from cpt_harness.config import validate as config

    def broken(cfg):
        return cfg.study.no_such_key  # a bug in a check, as a real one would be

    rules = config._rules
    monkeypatch.setattr(config, "_rules", lambda: rules() + [(("study.n_trials",), broken)])
    assert main(["validate", str(ROOT / "sweeps" / "demo.yaml")]) == 2
    err = capsys.readouterr().err
    assert "study.n_trials: could not be checked: its check raised AttributeError" in err
    assert "bug in cpt-harness" in err and "Traceback" not in err


def test_every_error_the_harness_raises_is_a_harness_error():
    """One tree: an exception class defined anywhere in the package derives from errors.HarnessError (private
    ones used for control flow inside one function aside)."""
    import ast
    import importlib

    from cpt_harness import errors

    found = []
    for path in sorted((ROOT / "cpt_harness").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.ClassDef)
                and not node.name.startswith("_")
                and any("Error" in ast.unparse(b) or "Exception" in ast.unparse(b) for b in node.bases)
            ):
                found.append((module, node.name))
    assert ("cpt_harness.errors", "ConfigError") in found and len(found) > 10
    for module, name in found:
        if (
            module == "cpt_harness.config.load" and name == "DuplicateKeys"
        ):  # a YAML loader's error, turned into a problem
            continue
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, errors.HarnessError), f"{module}.{name} is not a HarnessError"
    assert errors.ConfigError([]).exit_code == 2 and errors.SweepAborted().exit_code == 1


def test_explain_shows_every_key_with_its_help_and_refuses_unknown_ones(capsys):
    from cpt_harness.config import explain

    every = explain.keys()
    assert all(k.help for k in every), [k.key for k in every if not k.help]
    assert {"study.n_trials", "search.learning_rate.low", "data.domain", "lora.use_rslora"} <= {k.key for k in every}
    assert main(["explain", "search.learning_rate"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("search.learning_rate:  Base learning rate.")
    assert "search.learning_rate.low  (number; default 5.0e-05)" in out and "study." not in out
    assert main(["explain", "lora.use_rslor"]) == 2
    assert "lora.use_rslor: unknown key (did you mean lora.use_rslora?)" in capsys.readouterr().err


def test_init_names_the_study_and_refuses_a_bad_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "ablate-me", "--from", "gpu-ablation"]) == 0
    cfg = load_config(tmp_path / "ablate-me.yaml")
    assert (
        cfg.study.name == "ablate-me"
        and cfg.ablation.factors == load_config(ROOT / "sweeps" / "gpu-ablation.yaml").ablation.factors
    )
    assert main(["init", "../up", "--from", "nope"]) == 2
    err = capsys.readouterr().err
    assert "NAME:" in err and "--from: no packaged sweep file 'nope' (packaged: demo, " in err
