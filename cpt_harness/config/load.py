"""Loading a sweep file: YAML (duplicate keys refused) -> ``--set key=value`` overrides -> the typed dataclasses of
``schema``, every problem collected with the key as the user writes it (``search.rank.choices``). Checking the
values is ``validate``'s."""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from cpt_harness.config.schema import Config, DataSource
from cpt_harness.errors import ConfigError


def build(path: str | Path | None, overrides: Sequence[str] = ()) -> tuple[Config | None, list[str]]:
    """The typed config from a sweep file and ``--set key=value`` overrides (None where it cannot be built), and
    the schema's problems; the values are checked by ``validate``."""
    raw = _read_yaml(path) if path else {}
    problems: list[str] = []
    for item in overrides:
        _apply_override(raw, item, problems)
    return _build(Config, raw, "", problems), problems


def _read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder, not a sweep file; give a YAML file, e.g. sweeps/demo.yaml"], str(path))
    if not path.is_file():
        raise ConfigError([f"config file not found: {path} (see sweeps/ for examples)"], str(path))
    try:
        blob = path.read_bytes()
    except OSError as e:
        reason = f"cannot read the config file ({e.strerror or e}); check its permissions"
        raise ConfigError([reason], str(path)) from None
    if problem := text_problem(blob):
        raise ConfigError([f"the config file {problem}; a sweep file is YAML text"], str(path))
    try:
        raw = yaml.load(blob.decode("utf-8"), Loader=_UniqueKeyLoader)
    except DuplicateKeys as e:
        raise ConfigError(e.problems, str(path)) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError([f"top level must be a mapping of sections, got {type(raw).__name__}"], str(path))
    return raw


class DuplicateKeys(yaml.YAMLError):
    """A YAML document with a key given twice in one mapping; ``problems`` names each, as the user writes it."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping: plain YAML keeps the last one silently, so a
    setting written twice would be half ignored."""

    def construct_document(self, node):
        problems = list(_duplicate_keys(node, ""))
        if problems:
            raise DuplicateKeys(problems)
        return super().construct_document(node)


def _duplicate_keys(node: yaml.Node, prefix: str):
    if isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            yield from _duplicate_keys(item, f"{prefix}[{i}]")
    if not isinstance(node, yaml.MappingNode):
        return
    seen: dict[str, int] = {}
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
            continue
        key, line = _join(prefix, key_node.value), key_node.start_mark.line + 1
        if key_node.value in seen:
            where = f"lines {seen[key_node.value]} and {line}" if seen[key_node.value] != line else f"line {line}"
            yield f"{key}: given twice ({where}); YAML would keep only the last, so remove one"
        seen.setdefault(key_node.value, line)
        yield from _duplicate_keys(value_node, key)


def _apply_override(raw: dict[str, Any], item: str, problems: list[str]) -> None:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        problems.append(f"--set {item!r}: expected dotted.key=value, e.g. --set train.max_steps=100")
        return
    try:
        parsed = yaml.load(value, Loader=_UniqueKeyLoader) if value.strip() else None
    except DuplicateKeys as e:
        problems.extend(f"--set {key}: {p}" for p in e.problems)
        return
    except yaml.YAMLError as e:
        problems.append(f"--set {key}: value is not valid YAML ({e})")
        return
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if isinstance(node.get(part), str) and part in ("domain", "general", "source"):
            node[part] = {"path": node[part]}  # `data.domain: FILE` is shorthand for {path: FILE}
        if not isinstance(node.get(part), dict):
            node[part] = {} if node.get(part) is None else node[part]
        if not isinstance(node[part], dict):
            problems.append(f"--set {key}: {part} is not a section")
            return
        node = node[part]
    node[parts[-1]] = parsed


def _build(cls: type, raw: Any, prefix: str, problems: list[str]) -> Any:
    """Turn a mapping into dataclass ``cls``; unknown keys and wrong types go to ``problems``."""
    if cls is DataSource and isinstance(raw, str):
        raw = {"path": raw}
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.append(f"{prefix or 'config'}: expected a mapping, got {raw!r}")
        return cls() if _all_defaults(cls) else None
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {_join(prefix, close[0])}?)" if close else f" (valid: {', '.join(names)})"
            problems.append(f"{_join(prefix, key)}: unknown key{hint}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        key = _join(prefix, f.name)
        if f.name in raw:
            kwargs[f.name] = _coerce(hints[f.name], raw[f.name], key, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{key}: required")
            kwargs[f.name] = None
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - only when a required field was reported above
        problems.append(f"{prefix}: {e}")
        return None


def _all_defaults(cls: type) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _coerce(tp: Any, value: Any, key: str, problems: list[str]) -> Any:
    origin = typing.get_origin(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _build(tp, value, key, problems)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        kind = _container_kind(type(value))
        shaped = [o for o in options if kind is not None and _container_kind(o) == kind]
        if len(shaped) == 1:  # a list for the list form (a mapping for the mapping form): its own, precise problems
            return _coerce(shaped[0], value, key, problems)
        tried = []
        for option in options:
            scratch: list[str] = []
            result = _coerce(option, value, key, scratch)
            if not scratch:
                return result
            tried += scratch
        finite = [p for p in tried if "must be a finite number" in p]  # the right type, a wrong value: say so
        problems.append(finite[0] if finite else f"{key}: expected {_describe(tp)}, got {value!r}")
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            problems.append(f"{key}: must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}")
        return value
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            problems.append(
                f"{key}: expected a mapping of names to values, e.g. {{n_startup_trials: 5}}; got {value!r}"
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            problems.append(f"{key}: expected a list, e.g. [a, b]; got {value!r}")
            return value
        (item_tp,) = typing.get_args(tp)
        return [_coerce(item_tp, v, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    if tp is type(None):
        if value is not None:
            problems.append(f"{key}: expected null")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            problems.append(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{key}: expected a number, got {value!r}")
            return value
        if not math.isfinite(value):
            problems.append(f"{key}: must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            problems.append(f"{key}: expected a string, got {value!r}")
        return value
    return value  # pragma: no cover


def _container_kind(tp: Any) -> str | None:
    """list or mapping, for a type (list[X], dict[...], a dataclass) or a value's type; None for scalars."""
    origin = typing.get_origin(tp) or tp
    if origin is list:
        return "list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    return None


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(t) for t in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if tp is DataSource:
        return "a source (PATH or {path: PATH, ...})"
    if origin is list and typing.get_args(tp) == (DataSource,):
        return "a list of sources"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def text_problem(blob: bytes, complete: bool = True, line: int = 1, byte: int = 0) -> str | None:
    """Why ``blob`` (a whole file, or its first bytes when not ``complete``) is not UTF-8 text; None if it is.
    ``line`` and ``byte``: where the blob starts in its file, when it is a later chunk of it."""
    if byte == 0 and blob.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "is UTF-16, not UTF-8; re-encode it, e.g. iconv -f utf-16 -t utf-8 FILE > NEW"
    if (nul := blob.find(b"\0")) >= 0:
        return f"is binary, not text (a NUL byte at byte {byte + nul})"
    try:
        codecs.getincrementaldecoder("utf-8")().decode(blob, final=complete)
        return None
    except UnicodeDecodeError as e:
        undecodable = blob.decode("utf-8", errors="replace").count("\ufffd") / len(blob)
        if undecodable > 0.1 and len(blob) >= 256:  # a few bad bytes in a short text are an encoding, not binary
            return f"is binary, not text ({undecodable:.0%} of its first {len(blob):,} bytes are not UTF-8)"
        at = line + blob.count(b"\n", 0, e.start)
        return (
            f"is not UTF-8 (line {at}, byte {byte + e.start}: {blob[e.start : e.start + 4]!r}); re-encode it as "
            "UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW"
        )
