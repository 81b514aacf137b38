"""ConsistentID's ID-token projection (`ProjPlusModel` officially; IP-Adapter FaceID-Plus design).

ArcFace embedding [B, 512] -> Linear(512, 1024) -> GELU -> Linear(1024, 4*D) -> 4 tokens of D ->
LayerNorm, then refined by a depth-4 Perceiver (D/64 heads of 64) that attends over the CLIP-ViT-H
**penultimate** hidden states of the whole reference image [B, 257, 1280] -> [B, 4, D].

Shortcut, as the official forward does it:
    shortcut=False: tokens = resampler(id_tokens, clip)         (`scale` is ignored entirely)
    shortcut=True:  tokens = id_tokens + scale * resampler(...)
The official SD1.5 pipeline calls it with shortcut=False, the SDXL pipeline with shortcut=True,
scale=1.0; `from_adapter` picks the same per base model.

Unconditional tokens (the negative side of CFG) are made the official way by the caller:
ArcFace = zeros, CLIP states = the CLIP-H encoding of an all-zero tensor in the already
CLIP-normalised pixel space (`image_encoder(torch.zeros_like(pixel_values))`), i.e. not a black
image. CLIP encoding happens elsewhere; this module only consumes hidden states.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..layouts.consistentid import CLIP_H_WIDTH
from ..model_files import AdapterWeights
from .perceiver import PerceiverResampler, materialise

ARCFACE_DIM = 512
NUM_ID_TOKENS = 4
DIM_HEAD = 64


class ProjPlus(nn.Module):
    """State dict keys: proj.0, proj.2, norm, perceiver_resampler.* (the official `image_proj`)."""

    def __init__(self, cross_dim: int = 768, shortcut: bool = False, scale: float = 1.0,
                 arcface_dim: int = ARCFACE_DIM, clip_dim: int = CLIP_H_WIDTH, num_tokens: int = NUM_ID_TOKENS):
        super().__init__()
        self.cross_dim, self.num_tokens = cross_dim, num_tokens
        self.shortcut, self.scale = shortcut, scale      # inference config, not in the checkpoint
        self.proj = nn.Sequential(
            nn.Linear(arcface_dim, 2 * arcface_dim),
            nn.GELU(),
            nn.Linear(2 * arcface_dim, num_tokens * cross_dim),
        )
        self.norm = nn.LayerNorm(cross_dim)
        self.perceiver_resampler = PerceiverResampler(
            in_dim=clip_dim, width=cross_dim, out_dim=cross_dim, depth=4, heads=cross_dim // DIM_HEAD)

    @classmethod
    def from_config(cls, cross_dim: int, shortcut: bool = False, scale: float = 1.0) -> ProjPlus:
        return cls(cross_dim=cross_dim, shortcut=shortcut, scale=scale)

    @classmethod
    def from_adapter(cls, weights: AdapterWeights, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu", shortcut: bool | None = None,
                     scale: float = 1.0) -> ProjPlus:
        """The `image_proj` group of a ConsistentID checkpoint, cast to dtype on device.

        shortcut=None follows the official pipelines: off for SD1.5, on (scale 1.0) for SDXL.
        """
        cross_dim = weights.format.context_dim
        if shortcut is None:
            shortcut = weights.format.base == "sdxl"
        return materialise(lambda: cls.from_config(cross_dim, shortcut, scale),
                           weights.groups["image_proj"], dtype, device)

    def forward(self, arcface: torch.Tensor, clip_states: torch.Tensor) -> torch.Tensor:
        """arcface [B, 512], clip_states [B, N, 1280] (N = 257 for CLIP-H/14 at 224) -> [B, 4, D]."""
        dtype = self.norm.weight.dtype
        id_tokens = self.proj(arcface.to(dtype)).reshape(-1, self.num_tokens, self.cross_dim)
        id_tokens = self.norm(id_tokens)
        refined = self.perceiver_resampler(id_tokens, clip_states.to(dtype))
        if self.shortcut:
            return id_tokens + self.scale * refined
        return refined
