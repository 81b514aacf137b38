"""Safe loading: safetensors first, pickles only as plain tensors, code-needing pickles refused."""
from __future__ import annotations

import collections
import os

import pytest
import torch
from safetensors.torch import save_file

from partid.models.errors import ModelFileError, UnsafeCheckpointError
from partid.models.weights import flatten, load_state_dict, sha256_of, sub_state_dict


class NeedsCode:
    """A class a weights-only unpickler must refuse to build."""

    def __init__(self):
        self.payload = torch.ones(2)


def test_safetensors_round_trip(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"image_proj.a": torch.arange(4.0), "ip_adapter.1.to_k_ip.weight": torch.ones(2, 2)}, str(path))
    state = load_state_dict(str(path))
    assert torch.equal(state["image_proj.a"], torch.arange(4.0))
    assert set(sub_state_dict(state, "ip_adapter")) == {"1.to_k_ip.weight"}


def test_nested_pickle_of_tensors_loads_and_flattens(tmp_path):
    path = tmp_path / "ConsistentID-v1.bin"
    torch.save({"image_proj": {"proj.0.weight": torch.zeros(3, 2, dtype=torch.float16)},
                "adapter_modules": collections.OrderedDict({"1.to_k_ip.weight": torch.ones(1)})}, path)
    state = load_state_dict(str(path))
    assert state["image_proj"]["proj.0.weight"].dtype == torch.float16
    assert set(flatten(state)) == {"image_proj.proj.0.weight", "adapter_modules.1.to_k_ip.weight"}


@pytest.mark.parametrize("payload", [lambda: {"w": NeedsCode()}, lambda: torch.nn.Linear(2, 2)],
                         ids=["custom-class", "whole-module"])
def test_pickle_that_needs_code_is_refused(tmp_path, payload):
    path = tmp_path / "evil.pth"
    torch.save(payload(), path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(str(path))
    msg = str(err.value)
    assert "needs Python code" in msg and ".safetensors" in msg and str(path) in msg


def test_truncated_files_give_a_clear_error(tmp_path):
    good = tmp_path / "ok.safetensors"
    save_file({"a": torch.ones(1000)}, str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelFileError, match="not a readable .safetensors"):
        load_state_dict(str(cut))
    pth = tmp_path / "cut.pth"
    torch.save({"a": torch.ones(1000)}, pth)
    pth.write_bytes(pth.read_bytes()[:300])
    with pytest.raises(ModelFileError, match="download the file again") as err:
        load_state_dict(str(pth))
    # Reported at a node input, the file's own fix is kept, once (it was followed by a second, generic "Fix:").
    at_node = str(err.value.at_input("PartID Some Loader", "file", "choose a file of the right kind."))
    assert at_node.startswith("[PartID] PartID Some Loader, input 'file': ") and at_node.count("Fix:") == 1
    assert "Fix: download the file again" in at_node and "right kind" not in at_node
    plain = ModelFileError("[PartID] x.bin is a Visual Persona file.").at_input("N", "adapter", "pick another.")
    assert str(plain) == "[PartID] N, input 'adapter': x.bin is a Visual Persona file. Fix: pick another."


def test_missing_and_unknown_types(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        load_state_dict(str(tmp_path / "nope.bin"))
    other = tmp_path / "w.npz"
    other.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="unsupported weight file type"):
        load_state_dict(str(other))


def test_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_of(str(p)) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="Linux /proc needed to see the mapping")
def test_zip_pickles_are_memory_mapped_and_legacy_ones_still_load(tmp_path):
    """A zip-format .pth is read memory-mapped (its tensors are pages of the file, listed in /proc/self/maps,
    not copies in the process's memory); a legacy-format file, which cannot be mapped, is read whole."""
    zipped, legacy = tmp_path / "zipped_weights.pth", tmp_path / "legacy_weights.pth"
    tensor = torch.arange(300_000, dtype=torch.float32)
    torch.save({"w": tensor}, zipped)
    torch.save({"w": tensor}, legacy, _use_new_zipfile_serialization=False)
    mapped = load_state_dict(str(zipped))
    with open("/proc/self/maps") as maps:
        assert str(zipped) in maps.read()
    assert torch.equal(mapped["w"], tensor)
    whole = load_state_dict(str(legacy))
    with open("/proc/self/maps") as maps:
        assert str(legacy) not in maps.read()
    assert torch.equal(whole["w"], tensor)
