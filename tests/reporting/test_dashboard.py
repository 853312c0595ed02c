"""`cpt-harness dashboard`: optuna-dashboard opened in a real headless browser (Debian's chromium and
chromium-driver, which .ci/run installs) over the committed GPU sweep and ablation studies, and the W&B
workspace spec built from them. Without the browser, the test is skipped locally and fails in CI (CI=1)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from cpt_harness.cli import main
from tests.conftest import ROOT

CONFIG = str(ROOT / "sweeps" / "gpu-legal.yaml")
CHROMIUM, DRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def studies(tmp_path_factory) -> Path:
    """The GPU sweep (12 trials) and the GPU ablation (100 trials, 60 complete) in one SQLite file, as `report` left
    them."""
    db = tmp_path_factory.mktemp("dash") / "study.db"
    for src, name in (("gpu-legal", "gpu-legal"), ("legal-claims", "gpu-legal-ablation")):
        optuna.copy_study(
            from_study_name=name,
            from_storage=f"sqlite:///{ROOT / 'reports' / src / 'study.db'}",
            to_storage=f"sqlite:///{db}",
        )
    return db


def _sets(db: Path, *more: str) -> list[str]:
    return [
        x for o in (f"study.storage=sqlite:///{db}", f"study.output_dir={db.parent}/runs", *more) for x in ("--set", o)
    ]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _browser():
    if not (Path(CHROMIUM).is_file() and Path(DRIVER).is_file()):
        if os.environ.get("CI"):
            pytest.fail("CI must provide Debian's chromium and chromium-driver; see .ci/run")
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1000",
    ):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    return webdriver.Chrome(service=Service(DRIVER), options=opts)  # an explicit driver: nothing is downloaded


def _wait_text(driver, text: str, timeout: float = 30) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: text in d.find_element(By.TAG_NAME, "body").text)
    return driver.find_element(By.TAG_NAME, "body").text


def _line(proc, prefix: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith(prefix):
            return line
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"no line starting {prefix!r}; stderr: {proc.stderr.read()}")


@pytest.mark.integration
def test_optuna_dashboard_in_a_real_browser(studies):
    pytest.importorskip("optuna_dashboard")
    driver = _browser()
    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cpt_harness",
            "dashboard",
            CONFIG,
            "--port",
            str(port),
            "--reports",
            str(ROOT / "reports" / "_none"),
        ]
        + _sets(studies),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        # It answers first; the notes and figures come after.
        assert f"http://127.0.0.1:{port}/dashboard" in _line(proc, "[dashboard] optuna-dashboard on")
        storage = optuna.storages.RDBStorage(f"sqlite:///{studies}")
        ids = {n: storage.get_study_id_from_name(n) for n in ("gpu-legal", "gpu-legal-ablation")}
        driver.get(f"http://127.0.0.1:{port}/dashboard")
        home = _wait_text(driver, "gpu-legal-ablation")
        assert "gpu-legal" in home.replace("gpu-legal-ablation", "")
        driver.get(f"http://127.0.0.1:{port}/dashboard/studies/{ids['gpu-legal']}/trials")
        assert "12 Trials" in _wait_text(driver, "Trials")
        driver.get(f"http://127.0.0.1:{port}/dashboard/studies/{ids['gpu-legal']}")
        page = _wait_text(driver, "Objective X")
        assert "domain_loss" in page and "forgetting" in page  # the objectives by name, not "Objective 0"
        # The ablation's arms share their parameters: each trial shows its arm.
        driver.get(f"http://127.0.0.1:{port}/dashboard/studies/{ids['gpu-legal-ablation']}/trials")
        n = len(storage.get_all_trials(ids["gpu-legal-ablation"]))
        trials = _wait_text(driver, f"{n} Trials")
        assert "arm gate_proj=in,embeddings=trained" in _wait_text(driver, "User Attributes")
        assert f"{n} Trials" in trials and n == 100
        assert "notes and figures added to gpu-legal, gpu-legal-ablation" in _line(proc, "[dashboard] notes")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.integration
def test_the_report_is_the_study_note_with_its_figures(studies, tmp_path):
    pytest.importorskip("optuna_dashboard")
    from optuna_dashboard import get_note

    from cpt_harness.config.validate import load_config
    from cpt_harness.reporting import dashboard

    reports = tmp_path / "reports"
    shutil.copytree(ROOT / "reports" / "gpu-legal", reports / "gpu-legal")
    cfg = load_config(CONFIG, [f"study.storage=sqlite:///{studies}", f"study.output_dir={tmp_path}/runs"])
    assert dashboard.annotate_all(cfg, reports, log=lambda _: None) == ["gpu-legal", "gpu-legal-ablation"]
    sweep = optuna.load_study(study_name="gpu-legal", storage=f"sqlite:///{studies}")
    figures = {a.filename: a.artifact_id for a in optuna.artifacts.get_all_artifact_meta(sweep)}
    assert set(figures) == {"pareto.png", "curves.png", "importances.png"}
    body = get_note(sweep)
    study_id = optuna.storages.RDBStorage(f"sqlite:///{studies}").get_study_id_from_name("gpu-legal")
    assert "What to use" in body and f"](/artifacts/{study_id}/{figures['pareto.png']})" in body
    stored = tmp_path / "runs" / "optuna-artifacts" / figures["pareto.png"]
    assert stored.read_bytes() == (reports / "gpu-legal" / "pareto.png").read_bytes()
    ablation = optuna.load_study(study_name="gpu-legal-ablation", storage=f"sqlite:///{studies}")
    assert "No report yet" in get_note(ablation)
    # Again: nothing new uploaded, the note unchanged.
    dashboard.annotate_all(cfg, reports, log=lambda _: None)
    assert len(optuna.artifacts.get_all_artifact_meta(sweep)) == 3 and get_note(sweep) == body


def test_bad_input_says_what_is_wrong(studies, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["dashboard", CONFIG, "--port", str(port)] + _sets(studies)) == 2
    assert f"--port {port}: cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    assert main(["dashboard", CONFIG, "--port", "70000"] + _sets(studies)) == 2
    assert "--port: must be 0-65535" in capsys.readouterr().err
    assert main(["dashboard", CONFIG] + _sets(tmp_path / "none.db")) == 2
    assert "no study database" in capsys.readouterr().err
    assert main(["dashboard", CONFIG] + _sets(studies, "study.name=other")) == 2
    assert "no study 'other' (nor its confirmation or ablation)" in capsys.readouterr().err


@pytest.mark.integration
def test_wandb_workspace_spec_from_a_real_study(studies, tmp_path, capsys):
    pytest.importorskip("wandb_workspaces")
    from cpt_harness.reporting import workspace

    out = tmp_path / "spec.json"
    assert main(["dashboard", CONFIG, "--wandb", "--out", str(out)] + _sets(studies)) == 0
    said = capsys.readouterr().out
    assert f"spec written to {out}" in said and f"python -m cpt_harness.reporting.workspace {out}" in said
    spec = json.loads(out.read_text())
    assert spec["filters"] == {"group": ["gpu-legal", "gpu-legal-ablation"]} and spec["project"] == "cpt-harness"
    assert spec["entity"] == "" and "default entity of the W&B user" in said
    panels = [p for s in spec["sections"] for p in s["panels"]]
    curves = [p for p in panels if p["type"] == "line"]
    assert {p["y"] for p in curves} >= {"eval/domain_loss", "eval/forgetting", "eval/domain_gain"}
    assert all(p["x"] == "tokens_seen" and "groupby" not in p for p in curves)  # a sweep: one line per trial
    [pareto] = [p for p in panels if p["type"] == "scatter"]
    assert (pareto["x"], pareto["y"]) == ("summary:forgetting", "summary:domain_loss")
    [parallel] = [p for p in panels if p["type"] == "parallel"]
    assert parallel["columns"] == [
        "config:trial.rank",
        "config:trial.learning_rate",
        "config:trial.embedding_lr_ratio",
        "summary:domain_loss",
        "summary:forgetting",
    ]
    assert {p["with_respect_to"] for p in panels if p["type"] == "importance"} == {"domain_loss", "forgetting"}
    assert [p["table"] for p in panels if p["type"] == "table"] == ["trials"]

    # The same spec, as the wandb-workspaces objects `.save()` would send.
    import wandb_workspaces.reports.v2 as wr

    ws = workspace.workspace(spec)
    built = [p for s in ws.sections for p in s.panels]
    assert [type(p) for p in built] == [wr.LinePlot] * 5 + [
        wr.ScatterPlot,
        wr.ParallelCoordinatesPlot,
        wr.ParameterImportancePlot,
        wr.ParameterImportancePlot,
        wr.WeavePanelSummaryTable,
    ]
    assert built[5].x == wr.SummaryMetric("forgetting") and built[6].columns[0].metric == wr.Config("trial.rank")
    assert "gpu-legal-ablation" in str(ws.runset_settings.filters) and ws.settings.x_axis == "tokens_seen"

    # An ablation alone: curves grouped by arm, mean and min-max over seeds; the entity from the sweep file.
    abl = tmp_path / "ablation.db"
    optuna.copy_study(
        from_study_name="gpu-legal-ablation", from_storage=f"sqlite:///{studies}", to_storage=f"sqlite:///{abl}"
    )
    assert main(["dashboard", CONFIG, "--wandb", "--out", str(out)] + _sets(abl, "tracking.wandb.entity=lab")) == 0
    spec = json.loads(out.read_text())
    assert spec["entity"] == "lab" and spec["groupby"] == ["arm"]
    curve = next(p for s in spec["sections"] for p in s["panels"] if p["type"] == "line")
    assert (curve["groupby"], curve["aggfunc"], curve["rangefunc"]) == ("arm", "mean", "minmax")
    assert workspace.workspace(spec).sections[0].panels[0].groupby == wr.Config("arm")
