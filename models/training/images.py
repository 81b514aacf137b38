"""Reading a training image and its optional mask file: one square crop rule for both.

Each training image is centre-cropped to a square and resized to the run's resolution, so the
latent, the parser's masks and a user's `*_mask.png` all cover the same pixels.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from ..images import open_image

MASK_SUFFIXES = ("_mask.png", "_mask.jpg")


def _square(im, resolution: int, resample):
    side = min(im.size)
    left, top = (im.width - side) // 2, (im.height - side) // 2
    return im.crop((left, top, left + side, top + side)).resize((resolution, resolution), resample)


def load_rgb(path: str, resolution: int) -> torch.Tensor:
    """Centre square crop, resized to resolution (bicubic): IMAGE [1, R, R, 3] in 0..1. Read as Load Image
    reads it (EXIF orientation, 16-bit), so training sees the photo the user sees."""
    from PIL import Image

    im = _square(open_image(path, "RGB"), resolution, Image.BICUBIC)
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]


def load_mask_file(path: str, resolution: int) -> torch.Tensor | None:
    """The user's mask beside an image (`name_mask.png` / `name_mask.jpg` for `name.ext`), cut as the
    image is (bilinear, so edges stay soft): [1, R, R] in 0..1; None when there is none."""
    from PIL import Image

    stem = os.path.splitext(path)[0]
    for suffix in MASK_SUFFIXES:
        if os.path.isfile(stem + suffix):
            im = _square(open_image(stem + suffix, "L"), resolution, Image.BILINEAR)
            return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
    return None
