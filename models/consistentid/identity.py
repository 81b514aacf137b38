"""ConsistentID's ID tokens: ProjPlus over ArcFace + whole-image CLIP-H states, conditional and not.

Official (`get_image_embeds`, SD1.5 and SDXL pipelines):
    cond   = ProjPlus(normed ArcFace of faces[0], CLIP-H penultimate(whole reference))
    uncond = ProjPlus(zeros_like(ArcFace),        CLIP-H penultimate(zeros in normalised pixels))
with shortcut=False on SD1.5 and shortcut=True, scale 1.0 on SDXL (ProjPlus.from_adapter picks it).
The ArcFace input is insightface's `normed_embedding` in both pipelines, which is what
PARTID_FACE_EMBEDS carries. An image without a face gets a zero ArcFace row, as the official
pipelines do (`torch.zeros((1, 512))`).

Several references (the official pipelines take one): ArcFace rows and CLIP rows pair by index
(either side may have one row, which is shared); each reference gives its 4 tokens and the
tokens are averaged ("average") or concatenated into 4 x B tokens attended jointly ("concat").
"""
from __future__ import annotations

import torch

from .proj_plus import ARCFACE_DIM, ProjPlus

COMBINE = ("average", "concat")


def pair_references(embeds: torch.Tensor, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ArcFace [N, 512] and CLIP states [B, T, C] -> row-aligned [R, 512], [R, T, C] (R = max(N, B))."""
    if embeds.ndim == 1:
        embeds = embeds.unsqueeze(0)
    if embeds.ndim != 2 or embeds.shape[1] != ARCFACE_DIM:
        raise ValueError(f"face embeddings must be [N, {ARCFACE_DIM}], got {list(embeds.shape)}")
    if embeds.shape[0] == 0:
        raise ValueError("there are no face embeddings (every image was skipped)")
    n, b = embeds.shape[0], states.shape[0]
    if n != b and 1 not in (n, b):
        raise ValueError(f"{n} face embeddings but {b} reference images; they pair by index, so give as many "
                         "of each (or one of either)")
    r = max(n, b)
    return embeds.expand(r, -1), states.expand(r, *states.shape[1:])


def id_tokens(proj: ProjPlus, embeds: torch.Tensor, states: torch.Tensor, uncond_states: torch.Tensor,
              combine: str = "average") -> tuple[torch.Tensor, torch.Tensor]:
    """-> (cond, uncond), each [1, Tk, D] on proj's device and dtype; Tk = 4 (average) or 4 x R (concat)."""
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    weight = proj.norm.weight
    embeds, states = pair_references(embeds, states)
    embeds = embeds.to(device=weight.device, dtype=weight.dtype)
    cond = proj(embeds, states.to(device=weight.device, dtype=weight.dtype))           # [R, 4, D]
    uncond = proj(torch.zeros_like(embeds[:1]), uncond_states[None].to(device=weight.device, dtype=weight.dtype))
    if combine == "average":
        cond = cond.mean(0, keepdim=True)
    else:
        # The uncond tokens are repeated to the same count: attention over R identical copies of
        # a token set equals attention over one copy, and every conditioning must have one shape.
        cond = cond.reshape(1, -1, cond.shape[-1])
        uncond = uncond.repeat(1, embeds.shape[0], 1)
    return cond, uncond


def zero_embedding_rows(embeds: torch.Tensor) -> list[int]:
    """Rows that are all zero: images in which face analysis found no face (bypass)."""
    if embeds.ndim == 1:
        embeds = embeds.unsqueeze(0)
    return [i for i in range(embeds.shape[0]) if not bool(embeds[i].any())]
