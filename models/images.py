"""Turning whatever image a user feeds into what a model expects, with errors that name the fix.

ComfyUI IMAGEs are float [B,H,W,C] in 0..1; real inputs also arrive as RGBA (C=4), grayscale
(C=1), [H,W,C] without a batch axis, tiny thumbnails or huge scans.
"""
from __future__ import annotations

import torch

from .errors import InputError

MIN_SIDE = 32  # below this no parser or detector sees anything; upscaled with a warning-free resize


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


def to_uint8_hwc(image: torch.Tensor) -> "numpy.ndarray":  # noqa: F821
    """One [H,W,3] float image -> uint8 numpy, rounding as PIL does when saving."""
    return (image.detach().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()


def from_uint8_hwc(array) -> torch.Tensor:
    return torch.from_numpy(array).float() / 255.0
