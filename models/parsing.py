"""The parse result every parser returns: an integer label map with its label names."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LabelMap:
    """`labels[i]` names value i in `maps` ([B,H,W] int64, at the input image's size)."""

    maps: torch.Tensor
    labels: tuple[str, ...]
    source: str = ""          # which parser produced it

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

    def within(self, mask: torch.Tensor) -> "LabelMap":
        """This map with every pixel outside `mask` (MASK [H, W] or [1 or B, H, W], any size, >= 0.5 inside after
        a bilinear resize) set to label 0, the parsers' background: e.g. one person of several, or a cutout."""
        from .labels import normalise

        if normalise(self.labels[0]) != "background":
            raise ValueError(f"label 0 of this map is {self.labels[0]!r}, not the background")
        m = mask.float().to(self.maps.device)
        m = m.unsqueeze(0) if m.ndim == 2 else m
        b = self.maps.shape[0]
        if m.ndim != 3 or m.shape[0] not in (1, b):
            raise ValueError(f"the mask has shape {list(mask.shape)} for {b} image(s)")
        if tuple(m.shape[-2:]) != tuple(self.maps.shape[-2:]):
            m = torch.nn.functional.interpolate(m[:, None], size=tuple(self.maps.shape[-2:]), mode="bilinear",
                                                align_corners=False)[:, 0]
        inside = (m >= 0.5).expand(b, -1, -1)
        return LabelMap(torch.where(inside, self.maps, torch.zeros_like(self.maps)), self.labels, self.source)

