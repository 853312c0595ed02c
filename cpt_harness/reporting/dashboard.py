"""optuna-dashboard over a study's database (the ``dashboard`` extra): ``cpt-harness dashboard CONFIG [--port N]``.

The server listens on 127.0.0.1 as soon as it starts; what takes longer happens after that, in the background:
each of the sweep's, confirmation's and ablation's studies (those that exist) gets its objective names, the
report (``reports/<study>/report.md``, from ``cpt-harness report``) as its note, with the report's figures as
Optuna artifacts shown inside it. An ablation's arms share their parameters: the arm, seed and factor levels are
the trials' user attributes, which the trials table shows as columns. Adapters are not uploaded: a trial's
``adapter_dir`` attribute is its path.

The note and artifacts live in the study database (optuna-dashboard's own system attributes) and in
``<study.output_dir>/optuna-artifacts``; running the command again changes nothing that has not changed.
"""

from __future__ import annotations

import hashlib
import re
import sys
import threading
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from cpt_harness.infra import urls


def _import():
    try:
        import optuna_dashboard
    except ImportError:
        raise ImportError("cpt-harness dashboard needs optuna-dashboard: pip install -e '.[dashboard]'") from None
    return optuna_dashboard


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):  # one line per request would drown the terminal
        pass


def artifact_store(cfg):
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(cfg.study.output_dir) / "optuna-artifacts"
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def start(cfg, port: int, host: str = "127.0.0.1"):
    """Bind the server (port 0: any free one) and return it; ``serve_forever`` answers requests."""
    from cpt_harness.search import study as storage

    app = _import().wsgi(storage.make_storage(cfg.study.storage), artifact_store=artifact_store(cfg))
    return make_server(host, port, app, server_class=_Server, handler_class=_QuietHandler)


def run(cfg, port: int, reports: Path = Path("reports"), log=print) -> None:
    """Serve until Ctrl-C; the notes and artifacts are added once the server answers."""
    server = start(cfg, port)
    host, bound = server.server_address[:2]
    log(f"[dashboard] optuna-dashboard on http://{host}:{bound}/dashboard  (Ctrl-C stops it)")
    worker = threading.Thread(target=annotate_all, args=(cfg, reports, log), daemon=True)
    worker.start()
    try:
        server.serve_forever()
    finally:
        server.server_close()


def annotate_all(cfg, reports: Path, log=print) -> list[str]:
    """Objective names, notes and figures for every study of ``cfg`` in its storage; the names done."""
    done = []
    try:
        for study in studies(cfg):
            annotate(study, cfg, reports / study.study_name)
            done.append(study.study_name)
        log(f"[dashboard] notes and figures added to {', '.join(done) or 'no study'}")
    except Exception as e:  # noqa: BLE001 - the dashboard is up and stays up; say what went wrong
        print(f"[dashboard] could not add the notes and figures: {urls.redact(str(e))}", file=sys.stderr)
    return done


def studies(cfg) -> list:
    """The sweep's, the confirmation's and the ablation's studies, those that exist in the storage."""
    from cpt_harness.analysis import ablation, confirm
    from cpt_harness.search import study as storage

    store = storage.make_storage(cfg.study.storage)
    out = []
    for name in dict.fromkeys([cfg.study.name, confirm.study_name(cfg), ablation.study_name(cfg)]):
        study = storage.load_if_exists(store, name)
        if study is not None:
            out.append(study)
    return out


def annotate(study, cfg, report_dir: Path) -> None:
    from cpt_harness.search.study import OBJECTIVE_NAMES

    if study.metric_names is None:  # a study from before the harness named them
        study.set_metric_names(OBJECTIVE_NAMES["pareto" if len(study.directions) == 2 else "constrained"])
    figures = {p.name: upload_figure(study, cfg, p) for p in sorted(report_dir.glob("*.png"))}
    body = note(study, report_dir, figures, _study_id(cfg, study.study_name))
    optuna_dashboard = _import()
    if optuna_dashboard.get_note(study) != body:
        optuna_dashboard.save_note(study, body)


def _study_id(cfg, name: str) -> int:
    from cpt_harness.search import study as storage

    return storage.make_storage(cfg.study.storage).get_study_id_from_name(name)


def note(study, report_dir: Path, figures: dict[str, str], study_id: int) -> str:
    """The report as Markdown, its figures pointing at the study's artifacts (``figures``: file -> artifact id),
    which optuna-dashboard serves at /artifacts/<study id>/<artifact id>."""
    md = report_dir / "report.md"
    if not md.is_file():
        return (
            f"## {study.study_name}\n\nNo report yet: `cpt-harness report CONFIG` writes "
            f"`{report_dir}/report.md`, and the next `cpt-harness dashboard` shows it here.\n"
        )

    def link(m: re.Match) -> str:
        target = figures.get(m.group(2))
        return f"]({f'/artifacts/{study_id}/{target}' if target else m.group(2)})"

    return re.sub(r"\]\((\./)?([^)\s]+\.png)\)", link, urls.redact(md.read_text()))


def upload_figure(study, cfg, path: Path) -> str:
    """The figure as a study artifact; one already there with the same name and contents is reused."""
    from optuna.artifacts import get_all_artifact_meta, upload_artifact

    store = artifact_store(cfg)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    for meta in get_all_artifact_meta(study):
        if meta.filename == path.name:
            with store.open_reader(meta.artifact_id) as fh:
                if hashlib.sha256(fh.read()).hexdigest() == digest:
                    return meta.artifact_id
    return upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study, mimetype="image/png")
