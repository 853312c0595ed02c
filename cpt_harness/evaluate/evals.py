"""Per-document eval results on disk: what a document bootstrap of the learning-forgetting frontier reads.

Every trial writes ``<output_dir>/<study>/trial-NNNN/evals.npz`` (its user attribute ``evals_file`` holds that
path relative to the study folder), and the base model's results are written once per study as
``base_evals.npz`` beside them. The Optuna database holds none of these arrays, only the path. One file:

    step            int64   [C]        optimizer step of each eval checkpoint (0: before training, init_adapter)
    tokens_seen     int64   [C]        training tokens seen at each checkpoint
    domain_nll      float64 [C, Dd]    summed per-token NLL (nats) of each held-out domain document
    domain_tokens   int64   [Dd]       predicted tokens of each domain document
    general_nll     float64 [C, Dg]    the same for each held-out general document, all general corpora
    general_kl      float64 [C, Dg]    summed per-token KL(start || model) of each general document (nats);
                                       zeros in base_evals.npz: the base is the start model
    general_tokens  int64   [Dg]
    general_corpus  int32   [Dg]       the corpus of each general document: an index into general_names
    general_names   str     [K]        the general corpora, in data.general's order
    domain_corpus   int32   [Dd]       the data.domain source of each domain document (files written before it
                                       was added lack it: one source)
    version         int64   []         FORMAT_VERSION

A mean loss is a ratio of sums: ``domain_nll[c].sum() / domain_tokens.sum()`` is checkpoint c's domain_loss;
forgetting is ``general_nll[-1].sum() / general_tokens.sum()`` minus the same of ``base_evals.npz``.
``collect`` gathers a whole study into one compressed file (float32) small enough to commit beside a report.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1
TRIAL_FILE = "evals.npz"
BASE_FILE = "base_evals.npz"
SHARED = ("domain_tokens", "general_tokens", "general_corpus", "general_names")  # the same for a whole study
OPTIONAL = ("domain_corpus",)  # shared too, where every file of a study has it
PER_MODEL = ("step", "tokens_seen", "domain_nll", "general_nll", "general_kl")


@dataclass
class Evals:
    """One model's per-document results at one or more checkpoints (one row per checkpoint)."""

    step: np.ndarray
    tokens_seen: np.ndarray
    domain_nll: np.ndarray
    domain_tokens: np.ndarray
    general_nll: np.ndarray
    general_kl: np.ndarray
    general_tokens: np.ndarray
    general_corpus: np.ndarray
    general_names: np.ndarray
    domain_corpus: np.ndarray | None = None

    @classmethod
    def from_checkpoints(
        cls,
        checkpoints: list,
        general_corpus: np.ndarray,
        general_names: list[str],
        domain_corpus: np.ndarray | None = None,
    ) -> Evals:
        """``checkpoints``: (step, tokens_seen, domain DocLosses, general DocLosses) per eval, in order."""
        _, _, domain, general = checkpoints[0]
        return cls(
            step=np.array([c[0] for c in checkpoints], dtype=np.int64),
            tokens_seen=np.array([c[1] for c in checkpoints], dtype=np.int64),
            domain_nll=np.stack([c[2].nll for c in checkpoints]).astype(np.float64),
            domain_tokens=np.asarray(domain.tokens, dtype=np.int64),
            general_nll=np.stack([c[3].nll for c in checkpoints]).astype(np.float64),
            general_kl=np.stack(
                [c[3].kl if c[3].kl is not None else np.zeros_like(c[3].nll) for c in checkpoints]
            ).astype(np.float64),
            general_tokens=np.asarray(general.tokens, dtype=np.int64),
            general_corpus=np.asarray(general_corpus, dtype=np.int32),
            general_names=np.asarray(general_names, dtype=str),
            domain_corpus=None if domain_corpus is None else np.asarray(domain_corpus, dtype=np.int32),
        )

    def domain_loss(self) -> np.ndarray:
        """Mean domain loss per checkpoint [C]."""
        return self.domain_nll.sum(axis=1) / self.domain_tokens.sum()

    def general_loss(self, corpus: str | None = None) -> np.ndarray:
        """Mean general loss per checkpoint [C], over every general corpus (token-weighted) or one."""
        keep = self._corpus_mask(corpus)
        return self.general_nll[:, keep].sum(axis=1) / self.general_tokens[keep].sum()

    def general_kl_mean(self, corpus: str | None = None) -> np.ndarray:
        """Mean per-token KL(start || model) per checkpoint [C]."""
        keep = self._corpus_mask(corpus)
        return self.general_kl[:, keep].sum(axis=1) / self.general_tokens[keep].sum()

    def _corpus_mask(self, corpus: str | None) -> np.ndarray:
        if corpus is None:
            return np.ones(len(self.general_corpus), dtype=bool)
        names = list(self.general_names)
        if corpus not in names:
            raise KeyError(f"no general corpus {corpus!r} (corpora: {', '.join(names)})")
        return self.general_corpus == names.index(corpus)


def write(path: Path, evals: Evals) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f.name: getattr(evals, f.name) for f in fields(Evals) if getattr(evals, f.name) is not None}
    np.savez_compressed(path, version=np.int64(FORMAT_VERSION), **arrays)
    return path


def read(path: Path) -> Evals:
    with np.load(path) as z:
        if int(z["version"]) != FORMAT_VERSION:
            raise ValueError(f"{path}: evals format version {int(z['version'])}, this harness reads {FORMAT_VERSION}")
        return Evals(**{f.name: z[f.name] for f in fields(Evals) if f.name in z.files or f.name not in OPTIONAL})


def write_trial(study_dir: Path, number: int, evals: Evals) -> str:
    """Write a trial's file; returns its path relative to the study folder (the trial's ``evals_file``)."""
    relative = f"trial-{number:04d}/{TRIAL_FILE}"
    write(study_dir / relative, evals)
    return relative


def read_trial(study_dir: Path, trial) -> Evals | None:
    """A trial's per-document results (an Optuna trial with an ``evals_file`` attribute), None without one."""
    relative = trial.user_attrs.get("evals_file")
    return read(study_dir / relative) if relative else None


def read_base(study_dir: Path) -> Evals | None:
    path = study_dir / BASE_FILE
    return read(path) if path.is_file() else None


def collect(study, study_dir: Path, out: Path, dtype=np.float32, previous: Path | None = None) -> Path:
    """Every complete trial's per-document results, and the base's, in one compressed .npz.

    Keys: the shared ``domain_tokens``, ``general_tokens``, ``general_corpus``, ``general_names``; ``trials``
    (int64, the trial numbers present); ``base/<key>`` and ``<number>/<key>`` for ``step``, ``tokens_seen``,
    ``domain_nll``, ``general_nll``, ``general_kl`` (sums in ``dtype``). ``read_collected`` reads it back.
    ``previous``: an earlier ``collect`` file of this study, whose complete trials (and base) fill in what the
    folder lacks: a study resumed on another machine has only the new block's trial folders there."""
    earlier_base, earlier = read_collected(previous) if previous is not None else (None, {})
    base = read_base(study_dir) if (study_dir / BASE_FILE).is_file() else earlier_base
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    found = {
        t.number: read_trial(study_dir, t)
        for t in complete
        if t.user_attrs.get("evals_file") and (study_dir / t.user_attrs["evals_file"]).is_file()
    }
    found = {n: e for n, e in found.items() if e is not None}
    found |= {t.number: earlier[t.number] for t in complete if t.number not in found and t.number in earlier}
    if missing := [t.number for t in complete if t.user_attrs.get("evals_file") and t.number not in found]:
        raise FileNotFoundError(
            f"{study_dir}: no per-document results for trials {missing[:5]}"
            + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        )
    everything = ([base] if base is not None else []) + list(found.values())
    if not everything:
        raise FileNotFoundError(f"no per-document eval files under {study_dir}")
    arrays: dict[str, np.ndarray] = {k: getattr(everything[0], k) for k in SHARED}
    arrays |= {k: getattr(everything[0], k) for k in OPTIONAL if all(getattr(e, k) is not None for e in everything)}
    for evals in everything[1:]:
        for k in arrays:
            if not np.array_equal(getattr(evals, k), arrays[k]):
                raise ValueError(f"{study_dir}: the trials were not evaluated on the same documents ({k} differs)")
    arrays["trials"] = np.array(sorted(found), dtype=np.int64)
    for prefix, evals in ([("base", base)] if base is not None else []) + [(str(n), found[n]) for n in sorted(found)]:
        for k in PER_MODEL:
            value = getattr(evals, k)
            arrays[f"{prefix}/{k}"] = value.astype(dtype) if value.dtype.kind == "f" else value
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, version=np.int64(FORMAT_VERSION), **arrays)
    return out


def read_collected(path: Path) -> tuple[Evals | None, dict[int, Evals]]:
    """(the base's results or None, {trial number: results}) from a ``collect`` file."""
    with np.load(path) as z:
        shared = {k: z[k] for k in SHARED + OPTIONAL if k in z.files}

        def one(prefix: str) -> Evals:
            return Evals(**shared, **{k: z[f"{prefix}/{k}"] for k in PER_MODEL})

        base = one("base") if "base/step" in z.files else None
        return base, {int(n): one(str(n)) for n in z["trials"]}
