"""Identity-adapter checkpoints in the official layouts, random weights."""
from __future__ import annotations

from pathlib import Path

import torch

from partid.models.layouts import consistentid

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
    """weight.bin in the released layout (full decoder + 70 IP key/value pairs), random weights."""
    from .visual_persona import visual_persona_bin as full

    return full()
