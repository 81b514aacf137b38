"""IP-Adapter-style Perceiver blocks shared by ConsistentID's two image modules.

Both `ProjPlus` (ID tokens refined over whole-image CLIP-H states) and the `FacialEncoder`'s
region resampler (one learned query over a region's CLIP-H states) are the same stack: project the
image features in, run `depth` x [cross-attention, feed-forward] on a few latent tokens, project
out and LayerNorm. Parameter names match the official checkpoints:

    proj_in, layers.{i}.0.{norm1,norm2,to_q,to_kv,to_out}, layers.{i}.1.{0,1,3}, proj_out, norm_out

Numerics: the official attention scales q and k by dh**-0.25 each and takes the softmax in fp32;
we call `scaled_dot_product_attention` (scale dh**-0.5, fp32 accumulation in its kernels), which is
the same function: the whole modules match the official ones within 1e-6 relative in fp32
(tests/tier_a_engine/test_consistentid_modules.py); fp16 on CPU stays within 1e-3.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F


def feed_forward(dim: int, mult: int = 4) -> nn.Sequential:
    """LayerNorm -> Linear -> GELU -> Linear, no biases on the Linears (keys .0, .1, .3)."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverAttention(nn.Module):
    """Latents attend to [image features ; latents] (the latents also see themselves)."""

    def __init__(self, dim: int, heads: int, dim_head: int = 64):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm1 = nn.LayerNorm(dim)       # on the image features
        self.norm2 = nn.LayerNorm(dim)       # on the latents
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def _split_heads(self, t: torch.Tensor) -> torch.Tensor:
        # Channel c belongs to head c // dim_head, as in the official reshape_tensor.
        b, n, _ = t.shape
        return t.view(b, n, self.heads, -1).transpose(1, 2)

    def forward(self, features: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        features = self.norm1(features)
        latents = self.norm2(latents)
        q = self._split_heads(self.to_q(latents))
        k, v = self.to_kv(torch.cat([features, latents], dim=1)).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(q, self._split_heads(k), self._split_heads(v))
        b, _, n, _ = out.shape
        return self.to_out(out.transpose(1, 2).reshape(b, n, -1))


class PerceiverResampler(nn.Module):
    """proj_in -> depth x (attention + feed-forward, both residual) -> proj_out -> norm_out.

    `forward(latents, features)`: latents [B, L, width], features [B, N, in_dim] -> [B, L, out_dim].
    """

    def __init__(self, in_dim: int, width: int, out_dim: int, depth: int, heads: int, ff_mult: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not a multiple of {heads} heads")
        self.proj_in = nn.Linear(in_dim, width)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(width, heads, width // heads), feed_forward(width, ff_mult)])
            for _ in range(depth))
        self.proj_out = nn.Linear(width, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, latents: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        features = self.proj_in(features)
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))


def materialise(factory: Callable[[], nn.Module], state: Mapping[str, torch.Tensor],
                dtype: torch.dtype, device: torch.device | str) -> nn.Module:
    """Build `factory()` without random init and load `state` strictly, cast to dtype/device.

    The modules are built on the meta device and the checkpoint tensors assigned, so a 200 M
    parameter SDXL projection is never initialised only to be overwritten.
    """
    with torch.device("meta"):
        module = factory()
    module.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in state.items()},
                           strict=True, assign=True)
    return module.eval().requires_grad_(False)
