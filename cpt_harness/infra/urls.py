"""Study storage URLs: what they may be, how a password is given, and the one redaction rule.

A password never leaves the process: everything that writes a URL or a config (W&B config and run arguments,
logs, reports, ``chosen.yaml``, error messages) passes it through ``redact`` first, and parallel workers get the
URL through their environment (``CPT_HARNESS_STORAGE``), never their command line. Give a password without
writing it anywhere: ``PGPASSWORD`` or ``~/.pgpass`` (PostgreSQL's own), or ``${NAME}`` in the URL, which is
expanded from the environment only when connecting (``postgresql://cpt:${CPT_DB_PASSWORD}@db/cpt``).

Light on purpose (no SQLAlchemy, no Optuna): ``cpt-harness validate`` checks a URL without connecting.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sqlite3
from pathlib import Path

from cpt_harness.errors import StorageError

ENV_STORAGE = "CPT_HARNESS_STORAGE"  # overrides study.storage; how parallel workers receive the URL

# scheme -> drivers SQLAlchemy may use for it (the first importable one serves the bare scheme)
DRIVERS = {
    "sqlite": ["sqlite3"],
    "postgresql": ["psycopg2", "psycopg", "pg8000", "asyncpg"],
    "mysql": ["MySQLdb", "pymysql", "mysql.connector"],
    "mariadb": ["MySQLdb", "pymysql", "mysql.connector"],
}
DRIVER_MODULES = {
    "psycopg2": "psycopg2",
    "psycopg": "psycopg",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "mysqldb": "MySQLdb",
    "pymysql": "pymysql",
    "mysqlconnector": "mysql.connector",
    "pysqlite": "sqlite3",
}
INSTALL = {
    "psycopg2": "pip install 'cpt-harness[postgres]' (psycopg2-binary)",
    "psycopg": "pip install psycopg",
    "MySQLdb": "pip install mysqlclient",
    "pymysql": "pip install pymysql",
}

_CREDENTIALS = re.compile(r"(?P<head>\b[a-zA-Z][\w+.-]*://[^:/@\s'\"]*:)(?P<password>[^@\s'\"]*)(?P<at>@)")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)(?P<password>[^&\s'\"]*)", re.IGNORECASE)
_ENV_REF = re.compile(r"\$\{(\w+)\}")


def redact(text: str) -> str:
    """``text`` with every password in a URL (``user:PASSWORD@``, ``?password=...``) replaced by ``***``.
    A ``${NAME}`` reference is kept: it names a variable, it is not the secret."""

    def hide(m: re.Match) -> str:
        pw = m.group("password")
        keep = pw if _ENV_REF.fullmatch(pw) or not pw else "***"
        return m.group("head") + keep + (m.group("at") if "at" in m.groupdict() else "")

    return _QUERY_PASSWORD.sub(hide, _CREDENTIALS.sub(hide, text))


def redact_tree(value):
    """A copy of a config tree (dicts, lists, strings) with every string passed through ``redact``."""
    if isinstance(value, dict):
        return {k: redact_tree(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(v) for v in value]
    return redact(value) if isinstance(value, str) else value


def storage_url(storage: str) -> str:
    """A bare path means a SQLite file; anything with '://' is an SQLAlchemy URL. Not expanded: safe to show."""
    return storage if "://" in storage else f"sqlite:///{storage}"


def connect_url(storage: str) -> str:
    """The URL to connect with: ``${NAME}`` expanded from the environment, and a bare ``postgresql://`` given the
    driver that is installed (SQLAlchemy maps it to psycopg 3, while the postgres extra installs psycopg2)."""
    url = storage_url(storage)
    missing = [name for name in _ENV_REF.findall(url) if name not in os.environ]
    if missing:
        raise StorageError(
            f"study.storage: {redact(url)} refers to ${{{missing[0]}}}, which is not set in the "
            f"environment; export {missing[0]}=... before running"
        )
    url = _ENV_REF.sub(lambda m: os.environ[m.group(1)], url)
    scheme, rest = url.split("://", 1)
    if scheme == "postgresql" and not _importable("psycopg") and _importable("psycopg2"):
        url = f"postgresql+psycopg2://{rest}"
    return url


def sqlite_path(url: str) -> Path | None:
    url = storage_url(url)
    return Path(url.removeprefix("sqlite:///")) if url.startswith("sqlite:///") else None


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check(storage: str, key: str = "study.storage") -> list[str]:
    """What can be seen without connecting: the scheme is known, its driver installed, a SQLite file's folder
    usable and the file (if there) a study database. Creates nothing."""
    if not isinstance(storage, str) or not storage.strip():
        return [
            f"{key}: must not be empty; give a SQLite file (runs/studies.db) or an SQLAlchemy URL "
            "(postgresql://USER@HOST/DB)"
        ]
    url = storage_url(storage.strip())
    scheme = url.split("://", 1)[0].lower()
    dialect, _, driver = scheme.partition("+")
    if dialect not in DRIVERS:
        return [
            f"{key}: unknown database {dialect!r} in {redact(url)}; use a SQLite file path, sqlite:///FILE, "
            "postgresql://USER@HOST/DB or mysql://USER@HOST/DB"
        ]
    modules = [DRIVER_MODULES.get(driver, driver)] if driver else DRIVERS[dialect]
    if not any(_importable(m) for m in modules):
        return [
            f"{key}: {redact(url)} needs a database driver that is not installed ({' or '.join(modules)}); "
            + INSTALL.get(modules[0], f"pip install {modules[0]}")
        ]
    path = sqlite_path(url)
    if dialect == "sqlite" and path is None:
        return [f"{key}: {redact(url)}: a SQLite URL is sqlite:///path/to/file.db (three slashes, then the path)"]
    return sqlite_problems(path, key) if path is not None else []


def sqlite_problems(path: Path, key: str = "study.storage") -> list[str]:
    if path.is_dir():
        return [f"{key}: {path} is a folder; give a file inside it, e.g. {path / 'studies.db'}"]
    if path.exists():
        problem = not_a_study_database(path)
        return [f"{key}: {problem}"] if problem else []
    folder = next((p for p in path.absolute().parents if p.exists()), None)
    if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        return [f"{key}: cannot create {path}: {folder} is not a writable folder; choose another path"]
    return []


def not_a_study_database(path: Path) -> str | None:
    """Why an existing file cannot hold a study (never written to), or None. An empty file is a new database.

    Only SQLite itself touches the file: closing any other descriptor of it would drop the POSIX locks this
    process's open connections hold on it (seen: a parallel sweep's parent then read a stale, "malformed"
    database while its workers wrote)."""
    if not os.access(path, os.R_OK):
        return f"{path} is not readable (check its permissions)"
    try:
        con = sqlite3.connect(path, timeout=120)
        try:
            con.execute("PRAGMA query_only = ON")
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            damage = [r[0] for r in con.execute("PRAGMA quick_check")]
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        if "locked" in str(e):
            return None  # busy, not damaged: the storage itself waits for it
        kind = (
            "not a SQLite database (corrupt, or another kind of file)"
            if "not a database" in str(e)
            else f"a damaged SQLite database ({e})"
        )
        return f"{path} is {kind}; give another path, or restore it from a copy"
    if damage != ["ok"]:
        return f"{path} is a damaged SQLite database ({damage[0]}); restore it from a copy or give another path"
    if tables and "studies" not in tables:
        return (
            f"{path} is a SQLite database of something else (tables: {', '.join(sorted(tables)[:5])}); "
            "studies are never written into it: give another path"
        )
    return None
