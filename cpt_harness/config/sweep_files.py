"""The sweep files that ship with the package, and starting a new one from them (``cpt-harness init``).

sweeps/ lives at the repository root (every documented command says ``sweeps/...``) and is copied into the
wheel as the ``sweeps`` folder of this package (pyproject.toml maps it), so an installed ``cpt-harness`` finds
them too: without a CONFIG, ``validate`` and ``sweep`` use the packaged demo when there is no ./sweeps/demo.yaml.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path

from cpt_harness import __version__
from cpt_harness.config.names import safe_name_problems
from cpt_harness.errors import ConfigError

DEFAULT = "demo"
INIT_SOURCES = ("demo", "gpu-legal", "gpu-ablation")  # the files a new sweep is best started from


def packaged_dir() -> Path:
    """The packaged sweep files: this package's sweeps/ in an installed wheel, the repository's in a checkout."""
    installed = importlib.resources.files("cpt_harness") / "sweeps"
    if installed.is_dir():
        return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "sweeps"


def names() -> list[str]:
    return sorted(p.stem for p in packaged_dir().glob("*.yaml"))


def packaged(name: str) -> Path:
    return packaged_dir() / f"{name}.yaml"


def config_path(arg: str | None) -> Path:
    """The sweep file a command reads: ``arg`` as given (NAME alone: sweeps/NAME.yaml here, else the packaged
    one); no ``arg``: sweeps/demo.yaml here, else the packaged demo."""
    if not arg:
        here = Path("sweeps") / f"{DEFAULT}.yaml"
        return here if here.exists() else packaged(DEFAULT)
    path = Path(arg)
    if path.exists() or path.suffix:
        return path
    for candidate in (Path("sweeps") / f"{arg}.yaml", packaged(arg)):  # `cpt-harness sweep demo`
        if candidate.exists():
            return candidate
    return path


def init(name: str, source: str = DEFAULT, folder: Path = Path(".")) -> Path:
    """Write ``folder/NAME.yaml``: the packaged ``source`` file, its study named NAME and its comments pointing at
    the new file. Refuses to overwrite a file."""
    problems = safe_name_problems(name, "NAME")
    if source not in names():
        problems.append(f"--from: no packaged sweep file {source!r} (packaged: {', '.join(names())})")
    out = folder / f"{name}.yaml"
    if out.exists():
        problems.append(f"{out} exists: pick another NAME, or delete it first")
    if problems:
        raise ConfigError(problems, "init")
    text = packaged(source).read_text()
    text = re.sub(
        r"^(study:\n(?:[ \t]*#.*\n)*[ \t]+name:[ \t]*)\S+",
        lambda m: m.group(1) + name,
        text,
        count=1,
        flags=re.MULTILINE,
    )
    text = text.replace(f"sweeps/{source}.yaml", out.name)
    head = f"# Started from the packaged {source}.yaml by `cpt-harness init {name}` (cpt-harness {__version__}).\n"
    out.write_text(head + text)
    return out
