"""Part images -> DINOv2 patch tokens -> decoder tokens, and Visual Persona's unconditional tokens.

The original (`vp_test.py`, `get_image_embeds`) encodes the five part images of one reference with
DINOv2 ViT-g/14 (`x_norm_patchtokens`, the CLS token dropped), decodes them, and for classifier-free
guidance decodes DINOv2 of `torch.zeros_like(image)`: zeros *in the CLIP-normalised space* (not a black
image, not zero tokens). Those unconditional tokens depend only on the weights, so they are computed
once here, for the parts asked for. The original runs both networks in fp16 on GPU; here they run in
whatever dtype and device the modules are in.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .decoder import PartDecoder
from .part_images import SIZE, PartImages

SELECTED_PARTS = (1, 2, 3, 4)          # what the released scripts feed (never the full body)


def _param(module: torch.nn.Module) -> torch.Tensor:
    return next(module.parameters())


@torch.no_grad()
def encode_parts(dinov2, pixels: torch.Tensor, parts: Sequence[int] = SELECTED_PARTS,
                 batch: int = 16) -> torch.Tensor:
    """[R, 5, 3, 224, 224] normalised part images -> patch tokens [R, len(parts), 256, D]."""
    ref = _param(dinov2)
    x = pixels[:, list(parts)]
    flat = x.reshape(-1, *x.shape[2:]).to(device=ref.device, dtype=ref.dtype)
    tokens = torch.cat([dinov2(flat[i:i + batch])[0] for i in range(0, flat.shape[0], batch)])
    return tokens.view(*x.shape[:2], *tokens.shape[1:])


@torch.no_grad()
def part_tokens(dinov2, decoder: PartDecoder, images: PartImages,
                parts: Sequence[int] = SELECTED_PARTS) -> torch.Tensor:
    """Decoder tokens of every reference's parts: [R, len(parts), 256, width]."""
    features = encode_parts(dinov2, images.pixels, parts)
    ref = _param(decoder)
    return decoder(features.to(device=ref.device, dtype=ref.dtype), parts)


@torch.no_grad()
def unconditional_tokens(dinov2, decoder: PartDecoder, parts: Sequence[int] = SELECTED_PARTS) -> torch.Tensor:
    """decoder(DINOv2(zeros)) for each part: [len(parts), 256, width] (the same for every reference)."""
    ref = _param(dinov2)
    zeros = torch.zeros(1, 3, SIZE, SIZE, device=ref.device, dtype=ref.dtype)
    features = dinov2(zeros)[0]                                           # [1, 256, D]
    dec = _param(decoder)
    features = features.to(device=dec.device, dtype=dec.dtype).expand(len(parts), -1, -1)
    return decoder(features, parts)
