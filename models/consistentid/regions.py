"""Region CLIP-H states handed from the region stage to ConsistentID's text fusion.

Region slots are fixed by meaning, in the order the official pipelines stack region images:
face, eye, ear, nose, lip (REGION_ORDER). The official code compacts the present regions to the
front and pads with CLIP states of all-zero images; here each slot keeps its meaning and `present`
says which slots hold a real region, so a pairing policy can be applied later (prompt.pair_regions).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..layouts.consistentid import CLIP_H_WIDTH

REGION_ORDER: tuple[str, ...] = ("face", "eye", "ear", "nose", "lip")
# PartID Face Regions' mask names (face_regions.REGIONS) -> these slots, in slot order.
SLOT_OF_MASK = {"face": "face", "eyes": "eye", "ears": "ear", "nose": "nose", "mouth": "lip"}


@dataclass(eq=False)  # tensors inside: identity, not value, comparison
class RegionStates:
    """CLIP-H penultimate hidden states of each region image of B reference images.

    states:        [B, 5, N, 1280] (N = 257 for CLIP-ViT-H-14 at 224 px), slot order REGION_ORDER;
                   slots that are not present may hold anything (they are never read).
    present:       [B, 5] bool, True where the reference image has that region.
    uncond_states: [N, 1280], the same encoder's states for an all-zero tensor in CLIP-normalised
                   pixel space: the official unconditional region (used for the negative prompt).
    """

    states: torch.Tensor
    present: torch.Tensor
    uncond_states: torch.Tensor

    def __post_init__(self):
        s, p, u = self.states, self.present, self.uncond_states
        slots = len(REGION_ORDER)
        if s.ndim != 4 or s.shape[1] != slots or s.shape[3] != CLIP_H_WIDTH:
            raise ValueError(f"region states must be [B, {slots}, N, {CLIP_H_WIDTH}], got {list(s.shape)}")
        if p.dtype != torch.bool or tuple(p.shape) != tuple(s.shape[:2]):
            raise ValueError(f"present must be a bool tensor of shape {list(s.shape[:2])}, "
                             f"got {p.dtype} {list(p.shape)}")
        if u.ndim != 2 or u.shape[1] != CLIP_H_WIDTH:
            raise ValueError(f"uncond_states must be [N, {CLIP_H_WIDTH}], got {list(u.shape)}")

    @property
    def batch(self) -> int:
        return self.states.shape[0]

    def present_regions(self, row: int) -> tuple[str, ...]:
        """Names of the regions present in reference `row`, in slot order."""
        flags = self.present[row].tolist()
        return tuple(name for name, here in zip(REGION_ORDER, flags) if here)


def slot_positions(positions, fused_regions) -> torch.Tensor:
    """[5] long: the text position each region slot (REGION_ORDER) is fused into, -1 where it is not (a
    pairing in the form FacialEncoder.fuse_slots takes, one row per training sample)."""
    out = torch.full((len(REGION_ORDER),), -1, dtype=torch.long)
    for position, region in zip(positions, fused_regions):
        if region is not None:
            out[REGION_ORDER.index(region)] = int(position)
    return out
