"""Names that become folders: a study's name is one plain path component (runs/<name>, reports/<name>)."""

from __future__ import annotations

import re


def safe_name_problems(name: str | None, key: str) -> list[str]:
    """A study name becomes folder and file names (<output_dir>/<name>/, reports/<name>/): it must be one
    plain path component."""
    if name is None:
        return []
    if not name.strip():
        return [f"{key}: must not be empty; it names the study's folders, e.g. legal-r64"]
    unsafe = (
        name != name.strip()
        or any(c in name for c in "/\\")
        or ".." in name
        or name == "."
        or any(ord(c) < 32 for c in name)
    )
    if not unsafe:
        return []
    fix = re.sub(r"[^\w.-]+", "-", name.replace("..", ".")).strip("-.") or "my-study"
    return [
        f"{key}: {name!r} is not a safe name: it becomes folder names (runs/<name>, reports/<name>), so no "
        f"'/', '\\', '..', control characters or surrounding spaces; e.g. {fix!r}"
    ]
