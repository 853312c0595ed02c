"""The performance table (issue 18's goals) in docs/gpu.md is what the committed GPU results say, and its figures
are computed from them (scripts/readme_perf_table.py). No GPU needed: it reads benchmarks/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = ROOT / "scripts" / "readme_perf_table.py"
PAGE = ROOT / "docs" / "gpu.md"  # where the table lives; the README links to it
RESULTS = ROOT / "benchmarks" / "results"


def _script():
    spec = importlib.util.spec_from_file_location("readme_perf_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_perf_table_in_the_docs_is_what_the_committed_results_say():
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert _script().PAGE == PAGE
    page = PAGE.read_text()
    block = page.split("<!-- perf-table:begin (scripts/readme_perf_table.py) -->", 1)[1].split(
        "<!-- perf-table:end -->", 1
    )[0]
    assert block.strip() == "\n".join(_script().rows())
    assert "| harness ≥ 0.98× raw Unsloth tokens/s, 1B shape (llama-3.2-1b, 8 × 2048)" in block


def _ratio(files, mode):
    """The median over repeat files of MODE's tokens/s / raw-unsloth's in the same file."""
    per_file = []
    for f in files:
        by = {r["mode"]: r["tokens_per_s"] for r in json.loads(f.read_text())["runs"]}
        per_file.append(by[mode] / by["raw-unsloth"])
    return statistics.median(per_file)


def _speedups(name, gpus, suffix):
    doc = json.loads((RESULTS / name).read_text())
    by = {r["label"]: r for r in doc["runs"]}
    one, many = by[f"k8-gpu1{suffix}"], by[f"k8-gpu{gpus}{suffix}"]
    return (
        many["trials_per_hour"] / one["trials_per_hour"],
        many["steady_trials_per_hour"] / one["steady_trials_per_hour"],
    )


def test_the_perf_rows_carry_the_figures_of_the_result_files():
    rows = _script().rows()
    assert len(rows) == 2 + 8
    harness, before, warm, cold, k, scaling, scaling2, scaling_cold = rows[2:]

    # 1B throughput: the median over repeats of each file's harness / raw-unsloth tokens/s
    files = sorted(RESULTS.glob("h200-2026-11-28-throughput-1b-masters-r*.json"))
    assert len(files) >= 3
    vs_raw = _ratio(files, "harness-unsloth")
    assert 0.9 < vs_raw < 1.05
    assert f"ratio {vs_raw:.3f}×" in harness and ("**met**" in harness) == (round(vs_raw, 3) >= 0.98)
    tokens = statistics.median(
        r["tokens_per_s"] for f in files for r in json.loads(f.read_text())["runs"] if r["mode"] == "harness-unsloth"
    )
    assert f"harness {tokens:,.0f} tokens/s" in harness
    assert all(f"`{f.relative_to(ROOT)}`" in harness for f in files)
    earlier = sorted(RESULTS.glob("h200-2026-11-28-throughput-1b-emb-r*.json"))
    assert f"{_ratio(earlier, 'harness-unsloth'):.3f}× raw Unsloth" in before and "**" not in before

    # warm and cold pool start-up
    [w] = json.loads((RESULTS / "h200-2026-11-28-pool-startup-warm.json").read_text())
    [c] = json.loads((RESULTS / "h200-2026-11-28-pool-startup-cold.json").read_text())
    assert f"first step {w['first_step_s']:.1f} s" in warm and ("**met**" in warm) == (w["first_step_s"] <= 20.0)
    assert f"first step {c['first_step_s']:.1f} s" in cold and f"{c['first_step_s'] / w['first_step_s']:.1f}×" in cold

    # K trials per GPU on warm pools: every K's trials/hour, the best K against K = 1
    runs = sorted(
        (r for f in RESULTS.glob("h200-2026-11-28-parallel-pool-k*.json") for r in json.loads(f.read_text())["runs"]),
        key=lambda r: r["k"],
    )
    assert [r["k"] for r in runs] == list(range(1, 9))
    assert all(f"{r['k']} {r['trials_per_hour']:.1f}" in k for r in runs)
    best = max(runs, key=lambda r: r["trials_per_hour"])
    assert f"best K = {best['k']}: {best['trials_per_hour'] / runs[0]['trials_per_hour']:.2f}× K = 1" in k

    # 1 -> 4 GPUs at the best K on warm pools, by trials/hour and by the steady rate, against 3.8x
    span, steady = _speedups("h200x4-2026-11-28-scaling-pool.json", 4, "-pool")
    assert 3.0 < span < 4.2 and 3.0 < steady < 4.2
    verdict = lambda x: "met" if round(x, 2) >= 3.8 else "not met"  # noqa: E731
    assert (
        f"**{verdict(span)} ({span:.2f}×) by trials/hour; {verdict(steady)} by steady rate ({steady:.2f}×)**" in scaling
    )
    span2, _ = _speedups("h200x2-2026-11-28-scaling-pool.json", 2, "-pool")
    assert f"({span2:.2f}×)" in scaling2 and f"{span2 / 2:.0%} of linear" in scaling2
    span_cold, _ = _speedups("h200x4-2026-11-28-scaling.json", 4, "")
    assert f"({span_cold:.2f}×)" in scaling_cold and f"reported ({verdict(span_cold)} by trials/hour)" in scaling_cold


def test_a_missing_result_file_is_named(tmp_path, monkeypatch, capsys):
    module = _script()
    for f in RESULTS.glob("h200*-2026-11-28-*.json"):
        (tmp_path / f.name).write_text(f.read_text())
    monkeypatch.setattr(module, "RESULTS", tmp_path)
    assert len(module.rows()) == 10  # the copies make the same table
    (tmp_path / "h200x4-2026-11-28-scaling-pool.json").unlink()
    with pytest.raises(module.MissingResult, match="h200x4-2026-11-28-scaling-pool.json"):
        module.rows()
    assert module.main(["--check"]) == 2
    assert "no result file" in capsys.readouterr().err


def test_a_stale_table_is_found_and_rewritten_in_place(tmp_path, monkeypatch, capsys):
    module = _script()
    page = tmp_path / "gpu.md"
    text = PAGE.read_text()
    stale = text.replace("| **met** (", "| **not met** (", 1)
    assert stale != text
    page.write_text(stale)
    monkeypatch.setattr(module, "PAGE", page)
    assert module.main(["--check"]) == 1
    assert "run scripts/readme_perf_table.py" in capsys.readouterr().err
    assert page.read_text() == stale  # --check writes nothing
    assert module.main([]) == 0 and page.read_text() == text  # only the block changes
    page.write_text(text.replace("<!-- perf-table:end -->", ""))
    assert module.main(["--check"]) == 2 and "markers" in capsys.readouterr().err
