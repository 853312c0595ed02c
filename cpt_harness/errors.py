"""Every error the harness raises on purpose, in one tree (Optuna's ``exceptions.py`` is the model). The command
line catches the base once and exits with the error's ``exit_code``:

    HarnessError
    ├── UserError (exit 2): bad input; the message names the key or file and the fix
    │   ├── ConfigError          a sweep file or --set override (every problem at once)
    │   ├── DataError            a corpus: missing, unreadable, too small   └── FetchError: a built-in corpus's download
    │   ├── ModelNotFound        model.name does not resolve or load
    │   ├── BackendUnavailable   the backend cannot run here (what to install)
    │   ├── StorageError         study.storage cannot be opened
    │   └── StudyMismatch        resuming a study with other model, data or settings
    ├── RunAborted (exit 1): the run started and stopped: SweepAborted (study.max_failures), LockTimeout
    └── TrialFailed: one trial cannot finish (diverged, time limit, AuditError); it is recorded on the trial and
        the sweep goes on, so it reaches the command line only through SweepAborted

The modules that raise them import them from here (``data.DataError`` is this ``DataError``).
"""

from __future__ import annotations


class HarnessError(Exception):
    exit_code = 1


class UserError(HarnessError):
    """Bad input (exit 2)."""

    exit_code = 2


class RunAborted(HarnessError):
    """A run that started and stopped before it was done (exit 1)."""

    exit_code = 1


class ConfigError(UserError):
    """Every problem found in a config, one per line, each naming its key."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = problems
        self.source = source
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(f"  - {p}" for p in problems))


class DataError(UserError):
    pass


class FetchError(DataError):
    """A built-in corpus that could not be downloaded or did not match its pinned hash."""


class ModelNotFound(UserError):
    pass


class BackendUnavailable(UserError):
    """The backend cannot run here; the message says what to install or change."""


class StorageError(UserError):
    """The study storage cannot be used as given; the message names study.storage and the fix."""


class StudyMismatch(UserError):
    pass


class SweepAborted(RunAborted):
    pass


class LockTimeout(RunAborted):
    """Another process held a cache or study lock for longer than cpt_harness.cache.LOCK_TIMEOUT_S."""


class TrialFailed(HarnessError):
    """A trial that cannot finish: diverged, over its time limit, failed its audit. The message is the reason."""


class Diverged(TrialFailed):
    """The loss went non-finite or exploded. In an ablation's LR grid this is a result (the LR is too high), not a
    failure: the trial is marked ``diverged`` and its (arm, seed, LR) counts as run."""


class AuditError(TrialFailed):
    """The trainable parameters or optimizer groups are not what the trial's settings say."""
