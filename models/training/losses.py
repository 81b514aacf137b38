"""Localisation losses over recorded attention maps (attention_maps.py) against region masks.

Every loss takes maps {block: {group: [B, Tq]}} with each block's grid and the token groups (which
carry the target masks at any resolution); masks are resized to each block's grid here.

- "consistentid": ConsistentID paper eq. 1, the balanced L1 (FastComposer paper's form): per group,
  mean of the map outside the mask minus mean of the map inside the mask, each mean over its own
  area, so a small region weighs as much as a large one.
- "fastcomposer": `mean(attn * (1 - seg)) - mean(attn * seg)` with both means over all pixels (the formula
  of REFERENCE.md 4 read literally), so a large region weighs more. FastComposer's released
  BalancedL1Loss divides each term by its own region's area instead: that is the "consistentid" option.
- "storymaker": StoryMaker's MSE: per person, the summed attention of that person's groups against
  the person mask; a background group against the complement of the union of person masks.

Groups absent from a sample (no valid token, e.g. a region the parser did not find) do not count: each
sample's loss is the mean over the groups present in it (StoryMaker: its persons and background
groups), samples are averaged (one with no group adds
zero), then blocks. Each sample's term depends on that sample alone, so a data-parallel mean of per-rank
losses (or of accumulated micro-batches) equals the loss of the whole batch.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from .attention_maps import TokenGroup

LOSSES = ("consistentid", "fastcomposer", "storymaker")


def resize_mask(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, H, W] (or [H, W]) in 0..1 -> [B, h*w] on a block's grid, by area averaging.

    Area (not bilinear) keeps the fraction of each block pixel the region covers, which is what
    the maps' "attention inside the region" should be measured against when a 64x64 mask meets an
    8x8 block.
    """
    if mask.ndim == 2:
        mask = mask.unsqueeze(0)
    m = mask.unsqueeze(1).float()
    if tuple(m.shape[-2:]) != tuple(grid):
        m = F.adaptive_avg_pool2d(m, grid) if m.shape[-2] >= grid[0] and m.shape[-1] >= grid[1] else \
            F.interpolate(m, size=grid, mode="bilinear", align_corners=False)
    return m.flatten(1).clamp(0.0, 1.0)


def masks_on_grid(masks, grid: tuple[int, int]) -> torch.Tensor:
    """Masks for one training image ([H, W] or [1, H, W] each, any size; None = empty) -> [N, h, w] on the
    latent grid (resize_mask's area averaging), as the dataset caches them."""
    return torch.stack([torch.zeros(grid) if m is None else resize_mask(m[:1].float() if m.ndim == 3 else m.float(),
                                                                         grid).view(grid) for m in masks])


def _mean_of_each_samples_groups(values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """values, valid [G, B] -> each sample's mean over its own present groups, summed and divided by B (a sample
    with no group adds zero). Linear in samples: a batch split over processes (DDP) or micro-batches gives the
    loss of the whole batch, whichever regions each part of it happens to hold."""
    w = valid.to(values.dtype)
    return ((values * w).sum(0) / w.sum(0).clamp(min=1)).sum() / values.shape[1]


def balanced_l1(attn: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """[B] mean(attn outside) - mean(attn inside), each over its own area."""
    outside = 1.0 - mask
    return (attn * outside).sum(1) / (outside.sum(1) + eps) - (attn * mask).sum(1) / (mask.sum(1) + eps)


def fastcomposer_l1(attn: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] mean(attn * (1 - mask)) - mean(attn * mask) over all pixels."""
    return (attn * (1.0 - mask)).mean(1) - (attn * mask).mean(1)


def _storymaker_block(maps: Mapping[str, torch.Tensor], groups: Sequence[TokenGroup], grid) -> torch.Tensor | None:
    persons: dict[int, list[TokenGroup]] = {}
    background = []
    for g in groups:
        if g.name not in maps:
            continue
        if g.background:
            background.append(g)
        else:
            persons.setdefault(g.person if g.person is not None else 0, []).append(g)
    values, valid = [], []       # one [B] row per person, then per background group
    union = None
    for members in persons.values():
        attn = sum(maps[g.name] for g in members)
        mask = resize_mask(members[0].mask.to(attn.device), grid)
        union = mask if union is None else torch.maximum(union, mask)
        values.append(((attn - mask) ** 2).mean(1))
        valid.append(torch.stack([g.valid.to(attn.device) for g in members]).any(0))
    for g in background:
        attn = maps[g.name]
        target = 1.0 - (union if union is not None else torch.zeros_like(attn))
        values.append(((attn - target) ** 2).mean(1))
        valid.append(g.valid.to(attn.device))
    return _mean_of_each_samples_groups(torch.stack(values), torch.stack(valid)) if values else None


def localisation_loss(maps: Mapping, grids: Mapping, groups: Sequence[TokenGroup], kind: str = "consistentid"
                      ) -> torch.Tensor | None:
    """Scalar loss averaged over blocks (None when nothing was recorded)."""
    if kind not in LOSSES:
        raise ValueError(f"localisation loss must be one of {LOSSES}, got {kind!r}")
    per_block = []
    for block, block_maps in maps.items():
        grid = grids[block]
        if kind == "storymaker":
            term = _storymaker_block(block_maps, groups, grid)
            if term is not None:
                per_block.append(term)
            continue
        values, valid = [], []
        for g in groups:
            if g.name not in block_maps or g.background:
                continue
            attn = block_maps[g.name]
            mask = resize_mask(g.mask.to(attn.device), grid)
            values.append(balanced_l1(attn, mask) if kind == "consistentid" else fastcomposer_l1(attn, mask))
            valid.append(g.valid.to(attn.device))
        if values:
            per_block.append(_mean_of_each_samples_groups(torch.stack(values), torch.stack(valid)))
    return torch.stack(per_block).mean() if per_block else None


def mask_mass(maps: Mapping, grids: Mapping, groups: Sequence[TokenGroup]) -> float:
    """Fraction of the (non-negative) attention of each group that falls inside its mask, averaged
    over groups, blocks and samples: the quantity the localisation loss is meant to raise."""
    values = []
    for block, block_maps in maps.items():
        for g in groups:
            if g.name not in block_maps or g.background:
                continue
            attn = block_maps[g.name].detach().float()
            mask = resize_mask(g.mask.to(attn.device), grids[block])
            frac = (attn * mask).sum(1) / attn.sum(1).clamp(min=1e-12)
            values.append(frac[g.valid.to(attn.device)])
    if not values:
        return float("nan")
    return float(torch.cat(values).mean())
