"""Identity-adapter checkpoints in the official layouts, random weights."""
from __future__ import annotations

from pathlib import Path

import torch

from partid.models.layouts import consistentid, visual_persona

from .cache import cached
from .random_weights import random_state


def consistentid_bin(variant: str) -> Path:
    """ConsistentID-v1.bin (sd15) / ConsistentID_SDXL-v1.bin (sdxl): a torch.save'd nested dict, fp16."""
    name = {"sd15": "ConsistentID-v1.bin", "sdxl": "ConsistentID_SDXL-v1.bin"}[variant]

    def build(path):
        nested = consistentid.consistentid_layout(variant)
        data = {group: random_state(layout, seed=i) for i, (group, layout) in enumerate(nested.items())}
        torch.save(data, path)

    return cached(f"identity_adapters/{name}", build)


def visual_persona_bin() -> Path:
    """weight.bin: `image_proj` (decoder signature tensors) + `ip_adapter` (exact 70-layer layout).

    Holds only the decoder tensors that identify the format; the full decoder layout is
    checked by the decoder network's strict load (Visual Persona issue).
    """
    def build(path):
        torch.save({"image_proj": random_state(visual_persona.decoder_signature(), 1),
                    "ip_adapter": random_state(visual_persona.ip_adapter_layout(), 2)}, path)

    return cached("identity_adapters/weight.bin", build)
