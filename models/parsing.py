"""The parse result every parser returns: an integer label map with its label names."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .images import as_mask_batch


@dataclass(eq=False)  # tensors inside: identity, not value, comparison
class LabelMap:
    """`labels[i]` names value i in `maps` ([B,H,W] int64, at the input image's size).

    `parse_maps`, when set, is the same parse at the parser's own size before it was brought to the
    image's size ([B,h,w], e.g. BiSeNet's 512x512): ConsistentID's official code cuts its region masks
    there and resizes the masks, not the labels (models/face_regions.py).
    """

    maps: torch.Tensor
    labels: tuple[str, ...]
    source: str = ""          # which parser produced it
    parse_maps: torch.Tensor | None = None

    def index_of(self, name: str) -> int:
        from .labels import normalise

        wanted = normalise(name)
        for i, label in enumerate(self.labels):
            if normalise(label) == wanted:
                return i
        raise KeyError(f"label {name!r} is not one of {', '.join(self.labels)}")

    def mask(self, names) -> torch.Tensor:
        """Float [B,H,W] mask of the union of the named labels; an unknown name raises KeyError."""
        out = torch.zeros(self.maps.shape, dtype=torch.float32, device=self.maps.device)
        for name in names:
            out = torch.maximum(out, (self.maps == self.index_of(name)).float())
        return out

    def pixel_shares(self) -> list[float]:
        """Each label's share of all pixels of the batch, in label order (the legend's statistics)."""
        counts = torch.bincount(self.maps.reshape(-1).cpu().clamp(0, len(self.labels) - 1),
                                minlength=len(self.labels)).float()
        return (counts / max(1, self.maps.numel())).tolist()

    def within(self, mask: torch.Tensor) -> "LabelMap":
        """This map with every pixel outside `mask` (MASK [H, W] or [1 or B, H, W], any size, >= 0.5 inside after
        a bilinear resize) set to label 0, the parsers' background: e.g. one person of several, or a cutout."""
        from .labels import normalise

        if normalise(self.labels[0]) != "background":
            raise ValueError(f"label 0 of this map is {self.labels[0]!r}, not the background")
        m = as_mask_batch(mask, self.maps.shape[0]).to(self.maps.device)
        parse_maps = None if self.parse_maps is None else _keep_inside(self.parse_maps, m)
        return LabelMap(_keep_inside(self.maps, m), self.labels, self.source, parse_maps)


def _keep_inside(maps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """maps [B,H,W] with label 0 wherever mask ([1 or B,h,w]) is below 0.5 after a bilinear resize to H x W."""
    if tuple(mask.shape[-2:]) != tuple(maps.shape[-2:]):
        mask = torch.nn.functional.interpolate(mask[:, None], size=tuple(maps.shape[-2:]), mode="bilinear",
                                               align_corners=False)[:, 0]
    inside = (mask >= 0.5).expand(maps.shape[0], -1, -1)
    return torch.where(inside, maps, torch.zeros_like(maps))

