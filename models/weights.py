"""Safe checkpoint reading: `.safetensors` first, pickles only through `weights_only=True`.

A pickle that needs code to rebuild (a whole pickled nn.Module, numpy objects, custom classes)
is refused with a message saying so; nothing here runs code from a model file.
"""
from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Mapping

import torch

from .errors import ModelFileError, UnsafeCheckpointError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
PICKLE_SUFFIXES = (".bin", ".pth", ".pt", ".ckpt")
WEIGHT_SUFFIXES = SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES


def load_state_dict(path: str, device: str | torch.device = "cpu") -> dict:
    """Read a checkpoint into a (possibly nested) dict of tensors.

    Nested dicts are kept as they are stored (ConsistentID's `{"image_proj": {...}, ...}`);
    use `flatten` / `unflatten` to move between the two forms.
    """
    if not os.path.isfile(path):
        raise ModelFileError(f"[PartID] model file not found: {path}")
    lower = path.lower()
    if lower.endswith(SAFETENSORS_SUFFIXES):
        from safetensors.torch import load_file

        try:
            return load_file(path, device=str(device))
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ModelFileError(f"[PartID] {path} is not a readable .safetensors file ({exc}). "
                                 "Fix: download the file again; it may be truncated.") from exc
    if lower.endswith(PICKLE_SUFFIXES):
        try:
            data = _torch_load(path, device)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"[PartID] {path} is a pickle that needs Python code to load, and PartID only loads "
                "plain tensors (torch.load(weights_only=True)). Refused for safety. Fix: get the "
                ".safetensors version of this file, or convert a copy you trust to .safetensors "
                f"outside ComfyUI. Detail: {str(exc).splitlines()[0]}") from exc
        except (RuntimeError, EOFError, OSError) as exc:
            raise ModelFileError(f"[PartID] {path} could not be read as a PyTorch checkpoint ({exc}). "
                                 "Fix: download the file again; it may be truncated.") from exc
        if isinstance(data, Mapping) and "state_dict" in data and isinstance(data["state_dict"], Mapping):
            data = data["state_dict"]
        if not isinstance(data, Mapping):
            raise ModelFileError(f"[PartID] {path} holds a {type(data).__name__}, not a dict of tensors.")
        return dict(data)
    raise ModelFileError(f"[PartID] {path}: unsupported weight file type; expected one of "
                         f"{', '.join(WEIGHT_SUFFIXES)}.")


def _torch_load(path: str, device: str | torch.device):
    """torch.load(weights_only=True), memory-mapped when the file allows it (zip format, CPU).

    Mapped tensors are backed by the file, not by the process's own memory: the fp32 state of a large
    checkpoint (DINOv2 ViT-g/14: 4.5 GB) that a node output keeps alive costs page cache the OS can
    drop, not RAM, once a network has been built from it in another dtype or on the GPU.
    """
    if torch.device(device).type == "cpu":
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap can only be used" not in str(exc):      # a legacy (non-zip) file: read it whole below
                raise
    return torch.load(path, map_location=device, weights_only=True)


def flatten(state: Mapping, prefix: str = "") -> dict[str, torch.Tensor]:
    """`{"a": {"b": t}}` -> `{"a.b": t}`; tensors only."""
    flat: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif isinstance(value, torch.Tensor):
            flat[name] = value
    return flat


def sub_state_dict(flat: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Keys under `prefix.` with the prefix removed."""
    p = prefix + "."
    return {k[len(p):]: v for k, v in flat.items() if k.startswith(p)}


def sha256_of(path: str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
