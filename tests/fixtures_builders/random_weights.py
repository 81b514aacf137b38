"""Random tensors for a layout: deterministic, small-valued, in the dtype the official file uses."""
from __future__ import annotations

import torch


def random_state(layout: dict[str, tuple[int, ...]], seed: int, dtype=torch.float16) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        fan_in = shape[-1] if len(shape) > 1 else 1
        t = torch.randn(shape, generator=gen) / max(fan_in, 1) ** 0.5
        if key.endswith(("norm.weight", "norm1.weight", "norm2.weight", "layernorm.weight", "layer_norm.weight",
                         "norm_out.weight", ".0.weight")) and len(shape) == 1:
            t = 1.0 + 0.1 * t  # LayerNorm scales near one keep activations sane
        out[key] = t.to(dtype)
    return out
