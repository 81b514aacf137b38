"""Identity tokens on disk: encode a person once, reuse the tokens without the encoders.

Visual Persona's tokens come from DINOv2 ViT-g/14 (1.1 B parameters) and a 523 M-parameter decoder;
the tokens themselves are 256 x 2048 numbers per part. A saved identity lets a graph skip both
networks (and the body parser) on every later run, and lets users share a person's tokens.

The file is a .safetensors with two tensors and string metadata:

    cond     [R, T, W]      as IdentityTokens.cond, dtype kept (PartID's encoders give float32)
    uncond   [1 or R, T, W]
    metadata format "partid-identity", version "1", source, and JSON lists groups, sizes, weights

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import json
import os

from .errors import ModelFileError
from .identity_tokens import IdentityTokens

FORMAT = "partid-identity"
VERSION = "1"


def save_identity(tokens: IdentityTokens, path: str) -> None:
    """Write `tokens` to `path` (.safetensors); the parent folder is created."""
    from safetensors.torch import save_file

    metadata = {"format": FORMAT, "version": VERSION, "source": tokens.source,
                "groups": json.dumps(list(tokens.groups)), "sizes": json.dumps(list(tokens.sizes)),
                "weights": json.dumps(list(tokens.weights))}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_file({"cond": tokens.cond.detach().cpu().contiguous(), "uncond": tokens.uncond.detach().cpu().contiguous()},
              path, metadata=metadata)


def load_identity(path: str) -> IdentityTokens:
    """Read a file written by `save_identity`; ModelFileError saying what is wrong with any other file."""
    from safetensors import SafetensorError, safe_open

    name = os.path.basename(path)
    if not path.endswith(".safetensors"):
        raise ModelFileError(f"[PartID] {name}: identity files are .safetensors written by PartID Save Identity.")
    try:
        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
            keys = set(f.keys())
            if metadata.get("format") != FORMAT:
                raise ModelFileError(f"[PartID] {name} is not a PartID identity file (no '{FORMAT}' metadata): save "
                                     "identities with PartID Save Identity.")
            if metadata.get("version") != VERSION:
                raise ModelFileError(f"[PartID] {name}: identity file version {metadata.get('version')!r}; this "
                                     f"PartID reads version {VERSION}. Encode the person again and save it.")
            if keys != {"cond", "uncond"}:
                raise ModelFileError(f"[PartID] {name}: expected the tensors cond and uncond, found "
                                     f"{', '.join(sorted(keys)) or 'none'}.")
            cond, uncond = f.get_tensor("cond"), f.get_tensor("uncond")
    except SafetensorError as exc:
        raise ModelFileError(f"[PartID] {name} is not a readable .safetensors file ({exc}).") from exc
    try:
        groups, sizes, weights = (json.loads(metadata[k]) for k in ("groups", "sizes", "weights"))
        return IdentityTokens(cond, uncond, tuple(str(g) for g in groups), tuple(int(s) for s in sizes),
                              tuple(float(w) for w in weights), str(metadata["source"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"[PartID] {name}: its identity metadata does not describe its tokens ({exc}).") from exc
