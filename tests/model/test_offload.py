"""The unsloth backend's offload folder: each load of each process gets its own, so concurrent trials on one base
model never share the file Unsloth writes and memory-maps back (seen failing with 8-16 workers on one host)."""

from __future__ import annotations

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from cpt_harness.model.backends.offload import private_offload_folder


def _unsloth_file(folder: str, model) -> str:
    # unsloth/models/_utils.py offload_to_disk: os.path.join(temporary_location, model.config._name_or_path)
    return os.path.join(folder, model.config._name_or_path, "input_embeddings.pt")


def _model(path):
    return SimpleNamespace(config=SimpleNamespace(_name_or_path=str(path)))


def test_offloaded_file_lands_in_a_fresh_folder_and_the_name_is_restored(tmp_path):
    base = tmp_path / "models" / "smollm2-b179c952"
    model = _model(base)
    with private_offload_folder(model) as first:
        target = _unsloth_file(first, model)
        assert target.startswith(first + os.sep) and not target.startswith(str(base))
        os.makedirs(os.path.dirname(target))
        open(target, "wb").close()
    assert model.config._name_or_path == str(base)
    with pytest.raises(RuntimeError):
        with private_offload_folder(model) as second:
            assert second != first and not os.path.exists(first)  # the earlier load's folder is gone
            raise RuntimeError("get_peft_model failed")
    assert model.config._name_or_path == str(base)


def test_each_process_has_its_own_folder_removed_at_exit(tmp_path):
    code = (
        "import sys; from types import SimpleNamespace as N; from cpt_harness.model.backends.offload import "
        "private_offload_folder as f\nwith f(N(config=N(_name_or_path=sys.argv[1]))) as d: print(d)"
    )
    folders = [
        subprocess.run(
            [sys.executable, "-c", code, str(tmp_path / "model")], capture_output=True, text=True, check=True
        ).stdout.strip()
        for _ in range(2)
    ]
    assert folders[0] != folders[1]
    assert not any(os.path.exists(os.path.dirname(d)) for d in folders)
