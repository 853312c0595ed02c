"""benchmarks.common, the helpers every benchmark shares, and the benchmarks run as modules of the package
``benchmarks`` from the repository root (no sys.path edits)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import date

import pytest

from benchmarks import common
from tests.conftest import ROOT

MODULES = sorted(p.stem for p in (ROOT / "benchmarks").glob("*.py") if p.stem not in ("__init__", "common"))


def py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_returns_the_last_result_line_of_a_worker():
    out = common.run(py("print('noise'); print('RESULT {\"a\": 1}'); print('RESULT {\"a\": 2}'); print('tail')"))
    assert out == {"a": 2}
    marked = common.run(py("import json; print('[x] ' + json.dumps({'b': [1, 2]}))"), marker="[x] ")
    assert marked == {"b": [1, 2]}


def test_run_reports_a_failed_worker(capsys):
    crashed = common.run(py("print('RESULT {\"a\": 1}'); raise SystemExit('worker broke: out of memory')"))
    assert crashed == {"error": "worker broke: out of memory"}, "a result line does not hide a non-zero exit"
    silent = common.run(py("print('no result here')"))
    assert silent == {"error": "no result (exit status 0)"}
    assert "no result here" in capsys.readouterr().err, "the worker's output is shown when it fails"


def test_started_workers_are_collected_with_their_output():
    ok = common.start(py("print('STARTUP {\"import_s\": 0.5}')"))
    bad = common.start(py("import sys; print('half'); sys.exit(3)"))
    assert common.finish(ok, "STARTUP ") == ({"import_s": 0.5}, 'STARTUP {"import_s": 0.5}\n')
    result, out = common.finish(bad, "STARTUP ")
    assert result is None and out == "half\n" and bad.returncode == 3


def test_worker_env_puts_the_repository_first(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = common.worker_env(CUDA_VISIBLE_DEVICES="1")
    assert env["PYTHONPATH"].split(os.pathsep) == [str(ROOT), "/elsewhere"] and env["CUDA_VISIBLE_DEVICES"] == "1"
    monkeypatch.delenv("PYTHONPATH")
    assert common.worker_env()["PYTHONPATH"] == str(ROOT)


def test_result_files_are_named_by_machine_and_date(tmp_path):
    assert common.today() == date.today().isoformat()
    path = common.results_path("replay-x.json", "cpu")
    assert path == ROOT / "benchmarks" / "results" / f"cpu-{date.today().isoformat()}-replay-x.json"
    if not common.cards():
        assert (common.card(), common.machine()) == ("cpu", "cpu")
    common.write_json(tmp_path / "new" / "r.json", {"k": [1]})
    assert json.loads((tmp_path / "new" / "r.json").read_text()) == {"k": [1]}


@pytest.mark.parametrize("module", MODULES)
def test_every_benchmark_runs_as_a_module_from_the_repository_root(module):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--help"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
    assert "sys.path" not in (ROOT / "benchmarks" / f"{module}.py").read_text()
