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
