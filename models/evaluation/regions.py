"""Region and part crops for the fine-grained similarities (FGIS proxy and per-body-part).

FGIS has no public definition (REFERENCE.md 6); the proxy parses reference and generation with the same
face parser and compares each facial region. A region's crop is made the way Visual Persona makes its
part images (models/visual_persona/part_images.py): the image times the region mask (other pixels black),
cut to the mask's bounding box, padded square with black, resized to 224 (PIL bicubic).

Face regions: face, eyes, ears, nose, mouth from models/face_regions.py in mode "union" (both eyes, both
ears, the whole mouth: a similarity should see all of a region, not ConsistentID's first-of-pair choice).
Body parts: Visual Persona's five part images exactly (full body = the person on black; face, upper,
lower, shoes = boxes cut out of the person), from models/body_parts.py masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..body_parts import PARTS, body_parts
from ..face_regions import REGIONS, face_regions
from ..visual_persona.part_images import mask_box, pad_square, part_images_one, resize_224, SIZE

REGION_MODE = "union"


@dataclass
class Crops:
    """Named 224x224 crops of one image; a name missing from `images` was not found."""

    images: dict[str, np.ndarray]          # name -> uint8 [224, 224, 3]
    names: tuple[str, ...]                 # every name that could be present, in order

    def present(self, name: str) -> bool:
        return name in self.images


def masked_crop(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """uint8 [H, W, 3] and a bool mask -> the region on black, boxed, padded square, 224x224; None if empty."""
    box = mask_box(mask)
    if box is None:
        return None
    x0, y0, x1, y1 = box
    masked = rgb * mask[..., None].astype(np.uint8)
    return resize_224(pad_square(masked[y0:y1, x0:x1]))


def _as_float_batch(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).float().div(255)[None]


def face_region_crops(parser, rgb: np.ndarray, resolution: int = 512) -> Crops:
    """Parse one uint8 RGB image with a models.face_parsing.FaceParser and crop its five regions."""
    label_map = parser.parse(_as_float_batch(rgb), resolution=resolution)
    regions = face_regions(label_map, mode=REGION_MODE)
    images = {}
    for region in REGIONS:
        crop = masked_crop(rgb, regions.masks[region][0].numpy() >= 0.5)
        if crop is not None:
            images[region] = crop
    return Crops(images, REGIONS)


def body_part_crops(parser, rgb: np.ndarray) -> Crops:
    """Parse one uint8 RGB image with a models.body_parsing.BodyParser; Visual Persona's five part images."""
    label_map = parser.parse(_as_float_batch(rgb))
    masks = body_parts(label_map).stacked()[0]
    uint8, present, _ = part_images_one(rgb, masks)
    return Crops({p: uint8[i] for i, p in enumerate(PARTS) if present[i]}, PARTS)


__all__ = ["Crops", "masked_crop", "face_region_crops", "body_part_crops", "REGIONS", "PARTS", "SIZE"]
