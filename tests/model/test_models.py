"""What validate sees of a local model without loading it: the folder's files, safetensors and GGUF headers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cpt_harness.model.resolve import check_model_name, gguf_problem, safetensors_problem


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """A small real GGUF, written by the gguf package (the one transformers reads them with)."""
    import gguf

    path = tmp_path_factory.mktemp("gguf") / "m.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(2)
    writer.add_token_list(["a", "b", "<|endoftext|>"])
    writer.add_tensor("token_embd.weight", np.zeros((3, 8), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_good_gguf_passes_and_any_cut_of_it_fails(gguf_file, tmp_path):
    assert gguf_problem(gguf_file) is None
    blob = gguf_file.read_bytes()
    cut = tmp_path / "cut.gguf"
    for n in (len(blob) - 1, len(blob) // 2, 60, 20, 4):
        cut.write_bytes(blob[:n])
        assert "is truncated or corrupt" in gguf_problem(cut), n
    cut.write_bytes(blob[:4] + b"\x07\x00\x00\x00" + blob[8:])
    assert gguf_problem(cut) == "has GGUF version 7; versions 2 and 3 can be read"
    cut.write_bytes(b"PK\x03\x04" + blob[4:])
    assert gguf_problem(cut).startswith("is not a GGUF file")


def test_a_good_model_folder_passes(tiny_model):
    assert check_model_name(str(tiny_model), "model.name") == []
    assert safetensors_problem(tiny_model / "model.safetensors") is None


def test_a_broken_model_folder_lists_every_problem(tiny_model, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    (model / "tokenizer.json").unlink()
    blob = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(blob[:-1])
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    ps = check_model_name(str(model), "model.name")
    assert [p.split(" ", 2)[1] for p in ps] == [
        str(model),
        str(model / "model.safetensors"),
        str(model / "model.safetensors.index.json"),
    ]
    assert "has no tokenizer" in ps[0]
    assert "is truncated: its tensors need" in ps[1]
    assert ps[2].endswith("names weight files that are missing: model-00002.safetensors")
