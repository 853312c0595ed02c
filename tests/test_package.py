"""The package as a user gets it: a wheel built from this tree, installed (not editable) into a fresh venv, run
from an empty folder, with no checkout in sight."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = "cpt_harness"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The venv's bin folder. The venv reuses this interpreter's site-packages (a .pth line) for the
    dependencies, so nothing is downloaded; the package itself comes from the wheel alone."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in (PACKAGE, "sweeps"):
        shutil.copytree(ROOT / folder, src / folder, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (tmp / "dist").glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {p.relative_to(ROOT).as_posix() for p in (ROOT / PACKAGE).rglob("*.py")}
    assert shipped <= names, f"modules missing from the wheel: {sorted(shipped - names)}"
    assert {f"{PACKAGE}/sweeps/{p.name}" for p in (ROOT / "sweeps").glob("*.yaml")} <= names
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # --ignore-installed: pip runs from this environment and sees its (editable) install, which it would keep.
    subprocess.run(
        pip
        + [
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            "--ignore-installed",
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    (purelib,) = (venv / "lib").glob("python3*/site-packages")
    assert (purelib / PACKAGE / "sweeps" / "demo.yaml").is_file()
    (purelib / "deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv / "bin"


def _run(bin_dir: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.integration
def test_the_installed_wheel_runs_from_an_empty_folder(installed, tmp_path):
    where = _run(installed, tmp_path, "python", "-c", f"import {PACKAGE}; print({PACKAGE}.__file__)")
    assert where.stdout.startswith(str(installed.parent)), f"not the installed copy: {where.stdout}{where.stderr}"

    version = _run(installed, tmp_path, "cpt-harness", "--version")
    assert version.returncode == 0 and version.stdout.strip() == f"cpt-harness {_version()}"

    demo = _run(installed, tmp_path, "cpt-harness", "validate")  # no CONFIG, no ./sweeps: the packaged demo
    assert demo.returncode == 0, demo.stderr
    assert demo.stdout.startswith("ok: ") and f"{PACKAGE}/sweeps/demo.yaml" in demo.stdout

    init = _run(installed, tmp_path, "cpt-harness", "init", "legal-run", "--from", "gpu-legal")
    assert init.returncode == 0, init.stderr
    written = (tmp_path / "legal-run.yaml").read_text()
    assert "\n  name: legal-run\n" in written and "cpt-harness sweep legal-run.yaml" in written
    ok = _run(installed, tmp_path, "cpt-harness", "validate", "legal-run.yaml")
    assert ok.returncode == 0 and "study 'legal-run'" in ok.stdout, ok.stderr
    again = _run(installed, tmp_path, "cpt-harness", "init", "legal-run")
    assert again.returncode == 2 and "legal-run.yaml exists" in again.stderr and "Traceback" not in again.stderr

    explain = _run(installed, tmp_path, "cpt-harness", "explain", "study.n_trials")
    assert explain.returncode == 0 and "study.n_trials  (integer; default 12)" in explain.stdout
    assert "Number of COMPLETE trials" in explain.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["legal-run.yaml"], "nothing else written here"

    env = _run(installed, tmp_path, "cpt-harness", "env")
    assert env.returncode == 0 and env.stdout.startswith(f"cpt-harness {_version()}\n")
    assert "  optuna " in env.stdout and "\ncuda: " in env.stdout and "\nunsloth: " in env.stdout


def _version() -> str:
    import re

    return re.search(r'__version__ = "([^"]+)"', (ROOT / PACKAGE / "__init__.py").read_text()).group(1)
