"""Visual Persona's five part images of a reference, pixel for pixel as its inference code builds them.

Read from cvlab-kaist/Visual-Persona at d393d09, `inference_utils/utils.py` (`prepare_input_image`,
`bounding_rectangle`); written anew here. For one RGB uint8 image and the five body masks in VP's order
(0 full body, 1 face, 2 upper, 3 lower, 4 shoes):

1. masked = image x full-body mask (uint8 multiply: a pixel is kept or becomes 0).
2. part 0 (full body) = the whole masked image (VP's bbox crop of the full body is commented out);
   part p >= 1 = the bounding box of mask p (union of the boxes of its outer contours, i.e. the box
   of all its pixels) cut out of the *masked image*: other parts' pixels inside that box stay.
3. padded to a square with black (`ImageOps.pad`): the crop is pasted at round((side - short) / 2)
   along its short axis, Python's round (half to even: 19.5 -> 20, 42.5 -> 42).
4. resized to 224x224 with PIL bicubic (`Image.resize` default; a 224 square is left as is).
5. CLIPImageProcessor() (transformers 4.x, PIL path): at 224 its resize and centre crop change
   nothing; pixels * (1/255) in float64, cast to float32, then (x - CLIP mean) / CLIP std in float32.
   CLIP's mean/std, not ImageNet's, although the encoder is DINOv2.
6. a part that is not there is a zero image in that normalised space (the original's
   `torch.zeros_like(...)` for parts it does not select), marked absent here.

Masks here are what PartID's body parser gives, float {0,1}; a pixel counts when mask >= 0.5.
VP's own mask PNGs count only pixels equal to 255: read those with `vp_mask_from_png`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..images import as_mask_batch, to_uint8

PART_NAMES = ("full_body", "face", "upper", "lower", "shoes")
SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]          # x0, y0, x1, y1 (exclusive), in image pixels


@dataclass
class PartImages:
    """The part images of R references, in VP's part order."""

    pixels: torch.Tensor                 # [R, 5, 3, 224, 224] float32, CLIP-normalised; 0 where absent
    images: torch.Tensor                 # [R, 5, 224, 224, 3] uint8 before normalisation; 0 where absent
    present: torch.Tensor                # [R, 5] bool
    boxes: list[list[Box | None]]        # crop box of each part in its reference (None where absent)

    def available(self, wanted: Sequence[int] = (1, 2, 3, 4)) -> list[list[int]]:
        """Per reference, the wanted parts it has (VP selects only parts that are there)."""
        return [[p for p in wanted if bool(row[p])] for row in self.present]


def vp_mask_from_png(mask) -> np.ndarray:
    """A VP mask file (path, PIL image or uint8 array) as VP reads it: `(L / 255).astype(uint8)`, so
    only pixels equal to 255 count (1..254 are background). -> float32 {0,1} [H, W]."""
    if isinstance(mask, (str, bytes)) or hasattr(mask, "__fspath__"):
        with Image.open(mask) as img:
            mask = img.convert("L")
    if isinstance(mask, Image.Image):
        mask = np.array(mask.convert("L"))
    return (np.asarray(mask) / 255).astype(np.uint8).astype(np.float32)


def to_uint8_rgb(image) -> np.ndarray:
    """[H, W, 3] uint8 from a uint8 array/tensor or a float one in 0..1 (a ComfyUI IMAGE row).

    Floats are rounded (x * 255 rounded), so an image loaded as uint8 / 255 gets its exact pixels back.
    """
    if isinstance(image, Image.Image):
        return np.array(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.dtype != torch.uint8:
            image = to_uint8(image)
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    if image.ndim != 3 or image.shape[2] < 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {list(image.shape)}")
    return np.ascontiguousarray(image[..., :3])


def _as_bool_mask(mask, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None:
        return None
    if isinstance(mask, torch.Tensor):
        mask = mask.detach().cpu().float().numpy()
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise ValueError(f"a part mask is {list(mask.shape)}, the image is {list(shape)}: they must match")
    return mask >= 0.5 if mask.dtype != np.bool_ else mask


def mask_box(mask: np.ndarray) -> Box | None:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if rows.size == 0:
        return None
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def pad_square(crop: np.ndarray) -> np.ndarray:
    """ImageOps.pad(crop, (side, side), color=black): the crop centred with Python's round."""
    h, w = crop.shape[:2]
    side = max(h, w)
    if h == w:
        return crop
    out = np.zeros((side, side, crop.shape[2]), dtype=crop.dtype)
    if w != side:
        x = round((side - w) * 0.5)
        out[:, x:x + w] = crop
    else:
        y = round((side - h) * 0.5)
        out[y:y + h] = crop
    return out


def resize_224(square: np.ndarray) -> np.ndarray:
    """PIL bicubic, as the original (torch's antialiased bicubic differs by up to 17 levels)."""
    return np.array(Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.BICUBIC))


def clip_normalise(images: torch.Tensor) -> torch.Tensor:
    """[..., H, W, 3] uint8 -> [..., 3, H, W] float32, the arithmetic of CLIPImageProcessor (4.x)."""
    x = (images.to(torch.float64) * (1 / 255)).to(torch.float32)
    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)
    std = torch.tensor(CLIP_STD, dtype=torch.float32)
    return ((x - mean) / std).movedim(-1, -3).contiguous()


def part_images_one(image, masks: Sequence) -> tuple[np.ndarray, list[bool], list[Box | None]]:
    """One reference: -> (uint8 [5, 224, 224, 3], present [5], boxes [5]).

    `masks`: five masks [H, W] in VP order (a [5, H, W] array/tensor or a list; None = missing).
    A missing full-body mask means no masking (as the original with no mask file); a full-body mask
    with no pixel leaves nothing, so every part is absent.
    """
    rgb = to_uint8_rgb(image)
    if len(masks) != len(PART_NAMES):
        raise ValueError(f"expected {len(PART_NAMES)} masks ({', '.join(PART_NAMES)}), got {len(masks)}")
    bools = [_as_bool_mask(m, rgb.shape[:2]) for m in masks]
    full = bools[0]
    masked = rgb if full is None else rgb * full[..., None].astype(np.uint8)
    out = np.zeros((len(PART_NAMES), SIZE, SIZE, 3), dtype=np.uint8)
    present = [False] * len(PART_NAMES)
    boxes: list[Box | None] = [None] * len(PART_NAMES)
    if full is not None and not full.any():
        return out, present, boxes
    for p, mask in enumerate(bools):
        if p == 0:
            box = (0, 0, rgb.shape[1], rgb.shape[0])
        else:
            box = None if mask is None else mask_box(mask)
        if box is None:
            continue
        x0, y0, x1, y1 = box
        out[p] = resize_224(pad_square(masked[y0:y1, x0:x1]))
        present[p], boxes[p] = True, box
    return out, present, boxes


def masks_per_reference(masks: dict, batch: int, size: tuple[int, int]) -> list[list[torch.Tensor | None]]:
    """{part name: MASK [H, W] or [1 or batch, H, W] at any size, or None} -> per reference, the five masks in
    PART_NAMES order at the image size `size` (bilinear; None where not given), as part_images takes them."""
    import torch.nn.functional as F

    out = [[None] * len(PART_NAMES) for _ in range(batch)]
    for p, name in enumerate(PART_NAMES):
        if masks.get(name) is None:
            continue
        m = as_mask_batch(masks[name], batch).cpu()
        if tuple(m.shape[-2:]) != tuple(size):
            m = F.interpolate(m.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)
        for r in range(batch):
            out[r][p] = m[r if m.shape[0] > 1 else 0]
    return out


def part_images(images, masks) -> PartImages:
    """R references: `images` [R, H, W, 3] (ComfyUI IMAGE, or uint8) or a list of [H, W, 3] of any
    sizes; `masks` [R, 5, H, W] or a list of per-reference five masks."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 3:
        images, masks = [images], [masks]
    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} sets of part masks")
    rows = [part_images_one(img, m) for img, m in zip(images, masks)]
    uint8 = torch.from_numpy(np.stack([r[0] for r in rows]))
    present = torch.tensor([r[1] for r in rows], dtype=torch.bool)
    pixels = torch.where(present[:, :, None, None, None], clip_normalise(uint8), 0.0)   # +0.0, as zeros_like
    return PartImages(pixels, uint8, present, [r[2] for r in rows])
