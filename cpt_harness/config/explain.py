"""``cpt-harness explain [KEY]``: every config key (or one, or one section) with its type, default and help, read
from the config dataclasses (cpt_harness/config.py), so what a user reads is what the schema says."""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
import types
import typing
from dataclasses import dataclass
from typing import Any, Literal, Union

import yaml

from cpt_harness.config import Config
from cpt_harness.errors import ConfigError

REQUIRED = "required"


@dataclass(frozen=True)
class Key:
    key: str  # as a sweep file or --set writes it: study.n_trials
    type: str
    default: str  # as YAML; REQUIRED when there is none; "" for a section
    help: str
    section: bool = False


def keys(obj: Any = None, prefix: str = "") -> list[Key]:
    """Every key of the config ``obj`` (default: the defaults), sections before their keys, in the order the
    dataclasses declare them; each default is the value in ``obj`` (a section's own default, where it has one)."""
    obj = Config() if obj is None else obj
    hints = typing.get_type_hints(type(obj))
    out = []
    for f in dataclasses.fields(obj):
        key, tp, value, help_ = f"{prefix}{f.name}", hints[f.name], getattr(obj, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(tp):
            out.append(Key(key, "section", "", help_, section=True))
            out += keys(value, key + ".")
        else:
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            out.append(Key(key, type_text(tp), REQUIRED if required and value is None else _yaml(value), help_))
    return out


def type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join(type_text(t) for t in typing.get_args(tp))
    if origin is Literal:
        return " | ".join(map(str, typing.get_args(tp)))
    if origin is list:
        return f"list of {type_text(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "{" + ", ".join(f.name for f in dataclasses.fields(tp)) + "}"
    return {bool: "true/false", int: "integer", float: "number", str: "string", type(None): "null"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _yaml(value: Any) -> str:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # a default's value, never a class
        value = dataclasses.asdict(value)
    return (
        yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=10**6).strip().removesuffix("...").strip()
    )


def select(key: str | None) -> list[Key]:
    """All keys; or ``key`` itself with, for a section, every key under it. An unknown key is a ConfigError
    naming the closest one."""
    every = keys()
    if not key:
        return every
    chosen = [k for k in every if k.key == key or k.key.startswith(key + ".")]
    if not chosen:
        close = difflib.get_close_matches(key, [k.key for k in every], n=1)
        hint = f" (did you mean {close[0]}?)" if close else " (`cpt-harness explain` lists them all)"
        raise ConfigError([f"{key}: unknown key{hint}"], "explain")
    return chosen


def text(chosen: list[Key], width: int = 100) -> str:
    lines: list[str] = []
    for k in chosen:
        if k.section:
            lines += ([""] if lines and "." not in k.key else []) + [f"{k.key}:  {k.help}"]
            continue
        lines.append(f"  {k.key}  ({k.type}; " + (REQUIRED if k.default == REQUIRED else f"default {k.default}") + ")")
        lines += textwrap.wrap(k.help, width, initial_indent=" " * 6, subsequent_indent=" " * 6)
    return "\n".join(lines)
