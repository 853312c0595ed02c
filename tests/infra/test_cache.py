"""The cache's lock: another process holding it too long is a clear error, not a hang; a dead holder's lock is
free at once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from cpt_harness.errors import LockTimeout, RunAborted
from cpt_harness.infra.cache import locked


def test_a_lock_held_too_long_times_out_and_a_dead_holders_is_free(tmp_path):
    path = tmp_path / ".model.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time; from cpt_harness.infra.cache import locked\n"
                f"with locked(__import__('pathlib').Path({str(path)!r})):\n"
                "    print('held', flush=True); time.sleep(60)\n"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.perf_counter()
        with pytest.raises(LockTimeout, match=r"waited 0.5 s for .*\.model\.lock: another cpt-harness process"):
            with locked(path, timeout=0.5):
                pass
        assert 0.4 < time.perf_counter() - started < 5
        assert issubclass(LockTimeout, RunAborted)  # exit 1: the run stopped, the input was fine
    finally:
        holder.kill()
        holder.wait()
    with locked(path, timeout=2):  # the OS released the dead process's lock
        pass
