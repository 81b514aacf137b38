"""ConsistentID's CLIP-H inputs: the region images, the whole reference, and how they are preprocessed.

What the official pipelines do (JackAILab/ConsistentID HEAD, SD1.5 and SDXL alike):

- Region image (`fetch_mask_raw_image`): the region's mask (an 8-bit PIL "L" image at the parse
  size, 512 or 1280) is resized to the photo's size with PIL's default filter (bicubic) and the
  photo is composited over black through it (`Image.composite(photo, black, mask)`): the full
  frame, everything outside the region black, no crop. `composite_u8` is PIL's paste arithmetic
  for an "L" mask, so soft mask edges round as PIL rounds them; binary masks copy pixels exactly.
- Every CLIP input (the region images and the whole reference for ProjPlus) goes through
  `CLIPImageProcessor()` of transformers 4.x, i.e. the PIL path (transformers 5 calls it
  `CLIPImageProcessorPil`): shortest side to 224 with PIL bicubic on the uint8 image, the long
  side `int(224 * long / short)` (truncated), centre crop 224 at `(size - 224) // 2`, x / 255,
  CLIP mean/std. `official_resize_crop` reproduces it bit for bit (tier A checks it against
  transformers' own processor).
- Missing regions are zero tensors in the normalised pixel space; the unconditional states are
  CLIP-H of such a zero tensor (not of a black image: black normalises to about -1.8).

ComfyUI's own `clip_preprocess` (what `CLIP_VISION.encode_image` does with crop=True) resizes with
torch's antialiased bicubic on float pixels, uses `round()` for the long side and rounds the
resized pixels to 8 bits. On the 512x512 astronaut it differs from the official pixels by up to
0.071 in normalised units (12.5% of values differ by more than 1e-3); on non-square photos the
long side can come out one pixel longer than the official (299 vs 298 for 512x384) and the crop
shifts by a pixel: up to 2.2 there. `PREPROCESS` offers both; "official" is the default.

No ComfyUI import: the node does the encoding (nodes/consistentid_encode.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..face_regions import resize_u8
from ..images import as_mask_batch, to_uint8
from .regions import CLIP_H_WIDTH, REGION_ORDER

CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS = ("official", "comfy")


def official_output_size(height: int, width: int, size: int = CLIP_SIZE) -> tuple[int, int]:
    """(height, width) after transformers' shortest-edge resize (long side truncated, not rounded)."""
    if width <= height:
        return int(size * height / width), size
    return size, int(size * width / height)


def official_resize_crop(rgb: np.ndarray, size: int = CLIP_SIZE) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3]: PIL bicubic shortest-edge resize, then centre crop."""
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected a uint8 [H, W, 3] image, got {rgb.dtype} {list(rgb.shape)}")
    h, w = official_output_size(rgb.shape[0], rgb.shape[1], size)
    resized = np.asarray(Image.fromarray(rgb).resize((w, h), resample=Image.BICUBIC))
    top, left = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(resized[top:top + size, left:left + size])


def normalise_u8(pixels: np.ndarray) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> CLIP-normalised float32 [..., 3, H, W], with transformers' arithmetic
    (x * (1/255) in float64, cast to float32, then (x - mean) / std in float32)."""
    x = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
    mean, std = np.array(CLIP_MEAN, np.float32), np.array(CLIP_STD, np.float32)
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis((x - mean) / std, -1, -3)))


def mask_to_u8(mask: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A float mask [h, w] in 0..1 -> uint8 [height, width]; resized as the official code resizes its
    8-bit parse masks to the photo (PIL "L" bicubic) when the sizes differ."""
    m = to_uint8(mask)
    if tuple(m.shape) == (height, width):
        return m
    return torch.from_numpy(resize_u8(m.numpy(), height, width).copy())


def composite_u8(rgb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PIL `Image.composite(rgb, black, mask)` for uint8 rgb [H, W, 3] and uint8 mask [H, W]:
    PIL's blend is (x * m + 128 + ((x * m + 128) >> 8)) >> 8, i.e. x * m / 255 rounded."""
    t = rgb.to(torch.int32) * mask.to(torch.int32).unsqueeze(-1) + 128
    return ((t + (t >> 8)) >> 8).to(torch.uint8)


@dataclass
class RegionPlan:
    """The images one CLIP call encodes and where each result goes.

    images: uint8 [K, H, W, 3]: the present regions (reference-major, REGION_ORDER within a
      reference), then the B whole references.
    slots: (reference index, region slot) of each region image, in image order.
    present: bool [B, 5].
    """

    images: torch.Tensor
    slots: list[tuple[int, int]]
    present: torch.Tensor

    @property
    def batch(self) -> int:
        return self.present.shape[0]


def plan_region_images(rgb_u8: torch.Tensor, masks: dict[str, torch.Tensor | None]) -> RegionPlan:
    """rgb_u8 uint8 [B, H, W, 3]; masks {region in REGION_ORDER: float [M, h, w] (M = 1 or B) or None}.

    A region is present in reference b when its mask row has any pixel above zero; a missing
    (None) or all-zero mask means absent, as the official code treats a label the parse lacks.
    """
    unknown = set(masks) - set(REGION_ORDER)
    if unknown:
        raise ValueError(f"unknown regions {sorted(unknown)}; regions are {REGION_ORDER}")
    b, h, w, _ = rgb_u8.shape
    present = torch.zeros(b, len(REGION_ORDER), dtype=torch.bool)
    images, slots = [], []
    rows: dict[str, torch.Tensor] = {}
    for name, mask in masks.items():
        if mask is None:
            continue
        try:
            rows[name] = as_mask_batch(mask, b)
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}; expected [1 or {b}, height, width]") from exc
    for i in range(b):
        for slot, name in enumerate(REGION_ORDER):
            mask = rows.get(name)
            if mask is None:
                continue
            m = mask[i if mask.shape[0] == b else 0]
            if not bool((m > 0).any()):
                continue
            images.append(composite_u8(rgb_u8[i], mask_to_u8(m, h, w)))
            slots.append((i, slot))
            present[i, slot] = True
    images.extend(rgb_u8[i] for i in range(b))
    return RegionPlan(torch.stack(images), slots, present)


def official_pixels(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [K, H, W, 3] -> uint8 [K, 224, 224, 3], each resized and cropped the official way."""
    return torch.from_numpy(np.stack([official_resize_crop(im.numpy()) for im in images_u8.cpu()]))


@dataclass(eq=False)  # tensors inside: identity, not value, comparison
class ImageStates:
    """CLIP-H penultimate hidden states of B whole reference images, for ProjPlus.

    states:        [B, N, 1280] (N = 257 for CLIP-ViT-H/14 at 224 px).
    uncond_states: [N, 1280], CLIP-H of an all-zero tensor in normalised pixel space (the official
                   unconditional input, paired with a zero ArcFace embedding).
    preprocess:    "official" or "comfy" (see the module docstring).
    """

    states: torch.Tensor
    uncond_states: torch.Tensor
    preprocess: str = "official"

    def __post_init__(self):
        s, u = self.states, self.uncond_states
        if s.ndim != 3 or s.shape[2] != CLIP_H_WIDTH:
            raise ValueError(f"image states must be [B, N, {CLIP_H_WIDTH}], got {list(s.shape)}")
        if tuple(u.shape) != tuple(s.shape[1:]):
            raise ValueError(f"uncond_states must be {list(s.shape[1:])}, got {list(u.shape)}")

    @property
    def batch(self) -> int:
        return self.states.shape[0]


def split_states(states: torch.Tensor, plan: RegionPlan, uncond: torch.Tensor):
    """CLIP states of plan.images [K, N, C] + uncond [N, C] -> (region states [B, 5, N, C], image states [B, N, C]).

    Absent slots hold the unconditional states (never read by the fusion; the official code pads
    them with CLIP states of zero tensors too).
    """
    b = plan.batch
    if states.shape[0] != len(plan.slots) + b:
        raise ValueError(f"{states.shape[0]} CLIP outputs for {len(plan.slots)} regions + {b} references")
    regions = uncond.to(states.dtype).expand(b, len(REGION_ORDER), *uncond.shape).clone()
    for k, (i, slot) in enumerate(plan.slots):
        regions[i, slot] = states[k]
    return regions, states[len(plan.slots):]
