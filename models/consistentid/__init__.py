"""ConsistentID's image-side modules, state-dict compatible with the official checkpoints.

- `ProjPlus`: ArcFace + whole-image CLIP-H states -> 4 ID tokens (checkpoint group `image_proj`,
  spelt `image_proj_model` in the SDXL file; model_files canonicalises it).
- `FacialEncoder`: per-region CLIP-H states -> one token per region, fused into the prompt
  embeddings at given positions (checkpoint group `FacialEncoder`).

Both are plain torch modules built from config (`ProjPlus.from_config`, `FacialEncoder(cross_dim)`)
or from a loaded checkpoint (`from_adapter(weights, dtype, device)`, a strict load).
"""
from .facial_encoder import FacialEncoder, FuseModule, RegionQueryResampler, pair_indices
from .perceiver import PerceiverAttention, PerceiverResampler
from .proj_plus import ProjPlus

__all__ = ["FacialEncoder", "FuseModule", "PerceiverAttention", "PerceiverResampler", "ProjPlus",
           "RegionQueryResampler", "pair_indices"]
