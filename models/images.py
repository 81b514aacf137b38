"""Turning whatever image a user feeds into what a model expects, with errors that name the fix.

ComfyUI IMAGEs are float [B,H,W,C] in 0..1; real inputs also arrive as RGBA (C=4), grayscale
(C=1), [H,W,C] without a batch axis, tiny thumbnails or huge scans.
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import InputError


def to_rgb_batch(image: torch.Tensor, node: str, input_name: str = "image",
                 alpha: str = "drop") -> tuple[torch.Tensor, torch.Tensor | None]:
    """-> (rgb [B,H,W,3] float32 0..1, alpha mask [B,H,W] or None).

    alpha="drop" ignores the alpha channel; alpha="mask" returns it so callers can use it as a
    person mask; alpha="composite" puts the image on black (what the masked references expect).
    """
    if not isinstance(image, torch.Tensor):
        raise InputError(node, input_name, f"expected an IMAGE tensor, got {type(image).__name__}.",
                         "connect an IMAGE output (e.g. Load Image).")
    if image.ndim == 3:
        image = image.unsqueeze(0)
    if image.ndim != 4:
        raise InputError(node, input_name, f"expected an IMAGE of shape [batch, height, width, channels], "
                         f"got shape {list(image.shape)}.", "connect an IMAGE output (e.g. Load Image).")
    b, h, w, c = image.shape
    if b == 0 or h == 0 or w == 0:
        raise InputError(node, input_name, f"the image is empty (shape {list(image.shape)}).",
                         "check the node that produces it.")
    image = image.float()
    if not torch.isfinite(image).all():
        bad = int((~torch.isfinite(image)).flatten(1).any(1).nonzero()[0])
        raise InputError(node, input_name, "the image holds NaN or infinite values.",
                         "check the node that produces it (a VAE decode in the wrong precision often does this).",
                         batch_index=bad)
    image = image.clamp(0, 1)
    mask = None
    if c == 4:
        rgb, a = image[..., :3], image[..., 3]
        if alpha == "mask":
            mask = a
        elif alpha == "composite":
            rgb = rgb * a.unsqueeze(-1)
        image = rgb
    elif c == 1:
        image = image.expand(b, h, w, 3)
    elif c == 2:  # grayscale + alpha
        gray, a = image[..., :1], image[..., 1]
        mask = a if alpha == "mask" else None
        image = (gray * a.unsqueeze(-1) if alpha == "composite" else gray).expand(b, h, w, 3)
    elif c != 3:
        raise InputError(node, input_name, f"the image has {c} channels; PartID reads 1 (gray), 3 (RGB) or 4 (RGBA).",
                         "convert it to RGB first.")
    return image.contiguous(), mask


def as_mask_batch(mask, batch: int) -> torch.Tensor:
    """A ComfyUI MASK for `batch` images: [H, W] or [1 or batch, H, W] -> float [1 or batch, H, W] (1 = shared by
    every image). ValueError naming the shape otherwise, for the caller to turn into its node's InputError."""
    ok = isinstance(mask, torch.Tensor) and (mask.ndim == 2 or (mask.ndim == 3 and mask.shape[0] in (1, batch)))
    if not ok or min(mask.shape[-2:]) < 1:
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"the mask has shape {shape} for {batch} image(s)")
    return (mask.unsqueeze(0) if mask.ndim == 2 else mask).float()


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """Float 0..1 (any shape) -> uint8 on the CPU, rounded: a loaded 8-bit photo (k / 255) gets its exact pixels
    back, as PIL's save would write them."""
    return (image.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8)


def to_uint8_hwc(image: torch.Tensor) -> np.ndarray:
    """One [H,W,3] float image -> uint8 numpy."""
    return to_uint8(image).numpy()


def from_uint8_hwc(array) -> torch.Tensor:
    return torch.from_numpy(array).float() / 255.0


def image_strip(crops: torch.Tensor, size: int = 128) -> torch.Tensor:
    """uint8 [K,H,W,3] crops -> one IMAGE [1,size,K*size,3] (float 0..1), each crop resized to size x size."""
    x = crops.permute(0, 3, 1, 2).float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return torch.cat(list(x.clamp(0, 1).permute(0, 2, 3, 1)), dim=1)[None]


SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


def open_image(path, mode: str = "RGB"):
    """An image file as ComfyUI's Load Image reads it, as a PIL image in `mode` ("RGB" or "L"): the EXIF
    orientation applied (phone photos are stored sideways), 16-bit grayscale scaled to 8 bits (Pillow's own
    conversion clips it to near white), alpha dropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in SIXTEEN_BIT_MODES:
            wide = np.asarray(im, dtype=np.float64)
            im = Image.fromarray(np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8), "L")
        return im.convert(mode)

