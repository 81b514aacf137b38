"""What the SegFormer face and body parsers share: the processor's preprocessing and the batched parse.

Both model cards (jonathandinu/face-parsing, mattmdjaga/segformer_b2_clothes) run
`SegformerImageProcessor` (resize to its `size`, bilinear antialiased, rescale, normalise), the model,
then upsample the logits bilinearly (align_corners=False) to the image size and take the argmax.
Matched: transformers 5's processor (torchvision backend) with its fused rescale+normalise, on CPU.

The resize runs on CPU on uint8 pixels: torch's uint8 antialiased bilinear kernel follows PIL's
two-pass fixed-point resize (measured: identical on the parity crops and on 20->512, 512->1280; at most
1 level on <0.1% of values when shrinking 512->300) and is the kernel torchvision, so transformers 5,
uses on CPU. Only the resized batch goes to the device. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .images import to_uint8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PIXEL_BUDGET = 8 * 512 * 512           # network input pixels per forward pass (batch chunking)
OUTPUT_BUDGET = 2 ** 28                # bytes of upsampled logits per chunk


def to_uint8_nchw(rgb: torch.Tensor) -> torch.Tensor:
    """[B,H,W,3] float 0..1 -> [B,3,H,W] uint8 on CPU. Rounds, so a loaded 8-bit photo (k/255) is exact."""
    return to_uint8(rgb).permute(0, 3, 1, 2).contiguous()


def resize_bilinear_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL `resize(size, BILINEAR)` on a uint8 [B,3,H,W] CPU batch (antialiased when shrinking)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


def images_per_chunk(net_size: tuple[int, int], out_size: tuple[int, int], n_labels: int) -> int:
    """How many images one forward pass takes within the input-pixel and logit-byte budgets."""
    return max(1, min(PIXEL_BUDGET // (net_size[0] * net_size[1]),
                      OUTPUT_BUDGET // (4 * n_labels * out_size[0] * out_size[1])))


@dataclass
class SegformerPreprocess:
    """The fields of preprocessor_config.json that SegformerImageProcessor applies to images."""

    size: tuple[int, int] = (512, 512)
    do_resize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD
    resample: int = 2                  # PIL BILINEAR, the processor's default

    @classmethod
    def from_folder(cls, folder: str) -> "SegformerPreprocess":
        path = os.path.join(folder, "preprocessor_config.json")
        if not os.path.isfile(path):
            return cls()
        with open(path, encoding="utf-8") as fh:
            cfg = json.load(fh)
        size = cfg.get("size", {"height": 512, "width": 512})
        if isinstance(size, int):
            size = {"height": size, "width": size}
        pre = cls(size=(int(size["height"]), int(size["width"])),
                  **{k: cfg[k] for k in ("do_resize", "do_rescale", "rescale_factor", "do_normalize", "resample")
                     if k in cfg})
        pre.image_mean = tuple(cfg.get("image_mean", IMAGENET_MEAN))
        pre.image_std = tuple(cfg.get("image_std", IMAGENET_STD))
        if pre.resample != 2:
            raise ValueError(f"{path}: resample={pre.resample}; PartID reproduces the processor's bilinear (2) only.")
        return pre

    def network_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return tuple(self.size) if self.do_resize else tuple(image_size)

    def __call__(self, pixels: torch.Tensor, device, size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 [B,3,H,W] -> float32 pixel_values, as the processor's resize + fused rescale/normalise."""
        if self.do_resize:
            pixels = resize_bilinear_uint8(pixels, size or self.size)
        x = pixels.to(device).to(torch.float32)
        if self.do_normalize:
            mean = torch.tensor(self.image_mean, device=x.device)
            std = torch.tensor(self.image_std, device=x.device)
            if self.do_rescale:  # transformers 5 folds the rescale into mean and std
                mean, std = mean * (1.0 / self.rescale_factor), std * (1.0 / self.rescale_factor)
            return (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1)
        return x * self.rescale_factor if self.do_rescale else x


class Segformer:
    """A transformers SegFormer folder built on one device, with its own preprocessing."""

    def __init__(self, folder: str, device: torch.device, dtype: torch.dtype):
        from transformers import SegformerForSemanticSegmentation

        net = SegformerForSemanticSegmentation.from_pretrained(folder, local_files_only=True)
        self.net = net.eval().requires_grad_(False).to(device, dtype)
        self.preprocess = SegformerPreprocess.from_folder(folder)
        self.dtype = dtype

    @property
    def device(self) -> torch.device:
        """Where the network is now (it may have been moved since it was built)."""
        return next(self.net.parameters()).device

    def logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 [B,3,H,W] -> raw logits [B,C,h/4,w/4] of the processor size, float32."""
        return self.net(pixel_values=self.preprocess(pixels, self.device).to(self.dtype)).logits.float()

    def label_maps(self, pixels: torch.Tensor, out_size: tuple[int, int] | None = None) -> torch.Tensor:
        """uint8 [B,3,H,W] -> int64 labels [B,h,w] on CPU at `out_size` (default: the image size), chunked."""
        b, _, h, w = pixels.shape
        out_size = tuple(out_size or (h, w))
        n_labels = self.net.config.num_labels
        per = images_per_chunk(self.preprocess.network_size((h, w)), out_size, n_labels)
        maps = []
        for start in range(0, b, per):
            logits = self.logits(pixels[start:start + per])
            if tuple(logits.shape[-2:]) != out_size:   # model cards: upsample the logits, then argmax
                logits = F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
            maps.append(logits.argmax(dim=1).cpu())
        return torch.cat(maps).to(torch.int64)


def cached_engine(weights, attr: str, device, dtype: torch.dtype, build: Callable):
    """`build(weights, device, dtype)`, made once per (device, dtype) and kept on the loaded weights object."""
    cache = getattr(weights, attr, None)
    if cache is None:
        cache = {}
        setattr(weights, attr, cache)
    key = (str(torch.device(device)), dtype)
    if key not in cache:
        cache[key] = build(weights, device, dtype)
    return cache[key]
