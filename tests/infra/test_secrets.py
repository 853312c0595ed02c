"""Secrets are never written, and a storage that cannot be used is a clear error (exit 2), never a write into it.

The planted-secret test needs a PostgreSQL role of its own: `.ci/run` creates one with a password made for the
run and exports CPT_TEST_POSTGRES_SECRET_URL. Without it the test is skipped locally and fails in CI.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import optuna
import pytest

from cpt_harness.cli import main
from cpt_harness.infra import urls
from cpt_harness.search import study as storage
from tests.conftest import ROOT

DEMO = str(ROOT / "sweeps" / "demo.yaml")
API_KEY = "local-" + "f" * 40  # the shape of a W&B key; never sent anywhere (runs are offline)


def _sets(overrides):
    return [x for o in overrides for x in ("--set", o)]


def _files_holding(root: Path, secret: str) -> list[str]:
    needle = secret.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _watch_worker_cmdlines(tmp_path: Path, stop: threading.Event, seen: list[str]) -> None:
    while not stop.is_set():
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if " worker " in cmd and str(tmp_path) in cmd and cmd not in seen:
                seen.append(cmd)
        time.sleep(0.2)


def test_a_planted_password_and_api_key_are_written_nowhere(tiny_overrides, tmp_path, monkeypatch, capsys):
    url = os.environ.get("CPT_TEST_POSTGRES_SECRET_URL")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CI must provide CPT_TEST_POSTGRES_SECRET_URL (a role of its own); see .ci/run")
        pytest.skip("no PostgreSQL role for the planted secret (set CPT_TEST_POSTGRES_SECRET_URL)")
    password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    # Everything else anyone writes lands in tmp_path too: temp files (W&B media), home, caches, configs.
    for var, sub in (
        ("TMPDIR", "tmp"),
        ("HOME", "home"),
        ("XDG_CACHE_HOME", "cache"),
        ("XDG_CONFIG_HOME", "config"),
        ("WANDB_CACHE_DIR", "wandb-cache"),
        ("WANDB_CONFIG_DIR", "wandb-config"),
    ):
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.chdir(tmp_path)  # reports/<study>/ lands in tmp_path too
    name = f"secret-{uuid.uuid4().hex[:8]}"
    sets = _sets(tiny_overrides + [f"study.storage={url}", f"study.name={name}", "tracking.wandb.mode=offline"])
    stop, cmdlines = threading.Event(), []
    watcher = threading.Thread(target=_watch_worker_cmdlines, args=(tmp_path, stop, cmdlines), daemon=True)
    watcher.start()
    try:
        assert main(["sweep", DEMO, "--n-trials", "2", "--workers", "2"] + sets) == 0
    finally:
        stop.set()
        watcher.join()
    assert main(["report", DEMO] + sets) == 0
    # A refused resume names the key that changed, and not the password.
    assert main(["sweep", DEMO, "--n-trials", "2"] + sets + ["--set", "train.max_steps=7"]) == 2
    out = capsys.readouterr()
    assert "train.max_steps: 6 -> 7" in out.err and "cpt_secret:***@" in out.err

    assert cmdlines, "the workers were seen running"
    assert not [c for c in cmdlines if password in c], "the storage URL never goes on a worker's command line"
    assert password not in out.out + out.err and API_KEY not in out.out + out.err
    written = list(tmp_path.rglob("*"))
    assert any(p.name == "chosen.yaml" for p in written) and any(p.suffix == ".wandb" for p in written)
    assert any(p.name == "debug.log" for p in written)
    assert _files_holding(tmp_path, "cpt_secret:***@localhost"), "the trial runs record the storage, redacted"
    assert _files_holding(tmp_path, password) == []
    assert _files_holding(tmp_path, API_KEY) == []
    # Still usable: the redacted file names the user and host, and says how to give the password.
    chosen = next(p for p in written if p.name == "chosen.yaml").read_text()
    assert "cpt_secret:***@localhost" in chosen and "PGPASSWORD" in chosen


def test_a_refused_connection_is_a_clear_error_without_the_password(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://alice:planted-pw-7q3@127.0.0.1:9/cpt"  # port 9: nothing listens
    sets = _sets(tiny_overrides + [f"study.storage={url}"])
    assert main(["validate", DEMO] + sets) == 0  # validate does not connect
    assert main(["sweep", DEMO, "--n-trials", "1"] + sets) == 2
    out = capsys.readouterr()
    assert "study.storage: cannot open postgresql+psycopg2://alice:***@127.0.0.1:9/cpt" in out.err
    assert "Traceback" not in out.err and "planted-pw-7q3" not in out.out + out.err
    assert _files_holding(tmp_path, "planted-pw-7q3") == []


def test_redact_hides_passwords_and_keeps_variable_references():
    assert urls.redact("postgresql+psycopg2://u:p%40ss@db:5432/x") == "postgresql+psycopg2://u:***@db:5432/x"
    assert urls.redact("error at mysql://root:hunter2@h/db, retry") == "error at mysql://root:***@h/db, retry"
    assert (
        urls.redact("postgresql://u@db/x?password=hunter2&sslmode=require")
        == "postgresql://u@db/x?password=***&sslmode=require"
    )
    assert urls.redact("postgresql://u:${CPT_DB_PASSWORD}@db/x") == "postgresql://u:${CPT_DB_PASSWORD}@db/x"
    assert (
        urls.redact("sqlite:///runs/demo.db and https://wandb.ai/team/p")
        == "sqlite:///runs/demo.db and https://wandb.ai/team/p"
    )
    tree = urls.redact_tree({"study": {"storage": "postgresql://u:hunter2@h/d"}, "tags": ["mysql://a:b@c/d"], "n": 3})
    assert tree == {"study": {"storage": "postgresql://u:***@h/d"}, "tags": ["mysql://a:***@c/d"], "n": 3}


def test_a_password_from_the_environment_is_expanded_only_to_connect(monkeypatch, tmp_path):
    monkeypatch.setenv("CPT_TEST_DB_DIR", str(tmp_path))
    url = "sqlite:///${CPT_TEST_DB_DIR}/env.db"
    assert urls.connect_url(url) == f"sqlite:///{tmp_path}/env.db"
    storage.make_storage(url)
    assert (tmp_path / "env.db").is_file()
    monkeypatch.delenv("CPT_TEST_DB_DIR")
    with pytest.raises(urls.StorageError, match=r"\$\{CPT_TEST_DB_DIR\}, which is not set"):
        urls.connect_url(url)


def test_the_storage_url_can_come_from_the_environment(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(urls.ENV_STORAGE, f"sqlite:///{tmp_path}/from-env.db")
    assert main(["validate", DEMO] + _sets(tiny_overrides)) == 0
    monkeypatch.setenv(urls.ENV_STORAGE, "nosuchdb://x/y")
    assert main(["validate", DEMO] + _sets(tiny_overrides)) == 2
    assert "study.storage: unknown database 'nosuchdb'" in capsys.readouterr().err


def test_a_bare_postgresql_url_uses_the_installed_driver():
    pytest.importorskip("psycopg2")
    if urls._importable("psycopg"):
        pytest.skip("psycopg 3 is installed: SQLAlchemy's own default serves")
    assert urls.connect_url("postgresql://u@h/d") == "postgresql+psycopg2://u@h/d"
    assert urls.connect_url("postgresql+pg8000://u@h/d") == "postgresql+pg8000://u@h/d"


def test_the_lock_key_is_the_same_however_the_password_and_host_are_given():
    keys = {
        storage.lock_key(u)
        for u in (
            "postgresql://cpt:secret@db.example/cpt",
            "postgresql+psycopg2://cpt@10.0.0.5:5432/cpt",
            "postgresql://cpt:other@localhost/cpt",
        )
    }
    assert len(keys) == 1
    assert storage.lock_key("postgresql://cpt@db/other") not in keys


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind", ["random", "foreign", "truncated"])
def test_a_damaged_or_foreign_database_is_refused_and_left_untouched(kind, tiny_overrides, tmp_path, capsys):
    db = tmp_path / "study.db"
    if kind == "random":
        db.write_bytes(os.urandom(4096))
    elif kind == "foreign":
        with sqlite3.connect(db) as con:
            con.execute("CREATE TABLE invoices (id INTEGER, total REAL)")
    else:
        shutil.copy(ROOT / "reports" / "gpu-legal" / "study.db", db)
        with open(db, "r+b") as fh:
            fh.truncate(db.stat().st_size // 3)
    before = _digest(db)
    sets = _sets(tiny_overrides + [f"study.storage=sqlite:///{db}"])
    for command in (["report", DEMO], ["sweep", DEMO, "--n-trials", "1"], ["validate", DEMO]):
        assert main(command + sets) == 2, command
        err = capsys.readouterr().err
        assert str(db) in err and "Traceback" not in err, err
    assert _digest(db) == before
    assert not (tmp_path / "runs").exists(), "nothing was trained"


def test_report_on_an_empty_file_writes_nothing_into_it(tiny_overrides, tmp_path, capsys):
    db = tmp_path / "empty.db"
    db.touch()
    assert main(["report", DEMO] + _sets(tiny_overrides + [f"study.storage=sqlite:///{db}"])) == 2
    assert "no study database" in capsys.readouterr().err and db.stat().st_size == 0


def test_a_committed_study_still_opens_for_its_report(tmp_path):
    db = tmp_path / "legal.db"
    shutil.copy(ROOT / "reports" / "gpu-legal" / "study.db", db)
    assert urls.check(f"sqlite:///{db}") == []
    names = [s.study_name for s in optuna.get_all_study_summaries(storage.make_storage(f"sqlite:///{db}"))]
    assert names
