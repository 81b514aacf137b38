"""Face parsing engine: BiSeNet or SegFormer weights -> a `LabelMap` at the input image's size.

Preprocessing follows each parser's reference code:

- BiSeNet, as ConsistentID's `parsing_face_mask` (SD1.5 and SDXL pipelines): the RGB photo resized to
  512x512 (SDXL pipeline: 1280x1280) with PIL `Image.BILINEAR` (antialiased when shrinking), then
  `ToTensor` (/255) and ImageNet mean/std, the first of BiSeNet's three heads, argmax. The official code
  keeps the map at 512/1280; PartID brings it back to the image size with nearest-neighbour
  (pixel centres, as PIL NEAREST).
- SegFormer, as the jonathandinu/face-parsing model card: `SegformerImageProcessor` (resize to its
  `size`, bilinear antialiased, rescale and normalise), the model, logits upsampled bilinearly
  (align_corners=False) to the image size, argmax. Matched: transformers 5's (torchvision backend)
  `SegformerImageProcessor` with its fused rescale+normalise, on CPU.

The resize runs on CPU on uint8 pixels: torch's uint8 antialiased bilinear kernel follows PIL's
two-pass fixed-point resize (measured: identical on the parity crops and on 20->512, 512->1280; at most
1 level on <0.1% of values when shrinking 512->300) and is the kernel torchvision, so transformers 5,
uses on CPU. Only the resized batch goes to the device. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .bisenet import BiSeNet
from .parsing import LabelMap

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BISENET_RESOLUTIONS = (512, 1280)     # SD1.5 pipeline / SDXL pipeline
PIXEL_BUDGET = 8 * 512 * 512           # network input pixels per forward pass (batch chunking)
OUTPUT_BUDGET = 2 ** 28                # bytes of upsampled SegFormer logits per chunk


def to_uint8_nchw(rgb: torch.Tensor) -> torch.Tensor:
    """[B,H,W,3] float 0..1 -> [B,3,H,W] uint8 on CPU. Rounds, so a loaded 8-bit photo (k/255) is exact."""
    return (rgb.detach().float().cpu().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 3, 1, 2).contiguous()


def resize_bilinear_uint8(pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """PIL `resize(size, BILINEAR)` on a uint8 [B,3,H,W] CPU batch (antialiased when shrinking)."""
    if tuple(pixels.shape[-2:]) == tuple(size):
        return pixels
    return F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)


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


class FaceParser:
    """A built face-parsing network on one device; `parse` is batched and runs under inference mode."""

    def __init__(self, weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.backend = weights.backend
        self.labels = tuple(weights.labels)
        self.source = os.path.basename(str(weights.path).rstrip("/\\"))
        self.device, self.dtype = torch.device(device), dtype
        if self.backend == "bisenet":
            net = BiSeNet(len(self.labels))
            net.load_state_dict(weights.state_dict, strict=True)
            self.preprocess = None
        elif self.backend == "segformer":
            from transformers import SegformerForSemanticSegmentation

            net = SegformerForSemanticSegmentation.from_pretrained(weights.path, local_files_only=True)
            self.preprocess = SegformerPreprocess.from_folder(weights.path)
        else:
            raise ValueError(f"{weights.path}: a '{self.backend}' face parser is not supported; use a BiSeNet .pth "
                             "(face_parsing.pth / 79999_iter.pth) or a SegFormer folder (jonathandinu/face-parsing).")
        self.net = net.eval().requires_grad_(False).to(self.device, dtype)

    # -- network ---------------------------------------------------------------------------------
    def network_input(self, pixels: torch.Tensor, resolution: int) -> torch.Tensor:
        """uint8 [B,3,H,W] (CPU) -> the normalised network input on the device, in the network's dtype."""
        if self.backend == "bisenet":
            x = resize_bilinear_uint8(pixels, (resolution, resolution)).to(self.device)
            x = x.to(torch.float32).div(255)      # torchvision ToTensor
            mean = torch.as_tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            std = torch.as_tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(-1, 1, 1)
            x = x.sub(mean).div(std)              # torchvision Normalize
        else:
            x = self.preprocess(pixels, self.device)
        return x.to(self.dtype)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "bisenet":
            return self.net(x).float()            # first head, already at the network input size
        return self.net(pixel_values=x).logits.float()

    @torch.inference_mode()
    def logits(self, rgb: torch.Tensor, resolution: int = 512) -> torch.Tensor:
        """Raw logits of one batch: BiSeNet [B,C,res,res]; SegFormer [B,C,h/4,w/4] of its processor size."""
        return self._logits(self.network_input(to_uint8_nchw(rgb), resolution))

    def network_size(self, resolution: int) -> tuple[int, int]:
        if self.backend == "bisenet":
            return resolution, resolution
        return self.preprocess.size if self.preprocess.do_resize else None

    # -- parse -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def parse(self, rgb: torch.Tensor, resolution: int = 512, at_input_size: bool = True) -> LabelMap:
        """rgb [B,H,W,3] float 0..1 -> LabelMap [B,H,W] int64 on CPU.

        `resolution` is BiSeNet's square input side (512 or 1280 in the official pipelines); SegFormer
        always uses its processor's size. `at_input_size=False` keeps the map at the network input size
        (BiSeNet's 512/1280 map, as the official code uses it; SegFormer's logits upsampled to its
        processor size).
        """
        if self.backend == "bisenet" and not (isinstance(resolution, int) and resolution >= 64):
            raise ValueError(f"BiSeNet resolution {resolution!r}: expected an int >= 64 (official: 512 or 1280)")
        pixels = to_uint8_nchw(rgb)
        b, _, h, w = pixels.shape
        net_h, net_w = self.network_size(resolution) or (h, w)
        out_h, out_w = (h, w) if at_input_size else (net_h, net_w)
        out_bytes = 4 * len(self.labels) * out_h * out_w
        per_chunk = max(1, min(PIXEL_BUDGET // (net_h * net_w), OUTPUT_BUDGET // out_bytes))
        maps = []
        for start in range(0, b, per_chunk):
            logits = self._logits(self.network_input(pixels[start:start + per_chunk], resolution))
            if self.backend == "segformer":   # model card: upsample logits to the image, then argmax
                if tuple(logits.shape[-2:]) != (out_h, out_w):
                    logits = F.interpolate(logits, size=(out_h, out_w), mode="bilinear", align_corners=False)
                labels = logits.argmax(dim=1)
            else:                             # official: argmax at the network size
                labels = logits.argmax(dim=1)
                if tuple(labels.shape[-2:]) != (out_h, out_w):
                    labels = F.interpolate(labels[:, None].float(), size=(out_h, out_w),
                                           mode="nearest-exact")[:, 0].long()
            maps.append(labels.cpu())
        return LabelMap(torch.cat(maps).to(torch.int64), self.labels, source=f"{self.backend}:{self.source}")


_CACHE_ATTR = "_partid_face_parsers"


def face_parser_from(weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> FaceParser:
    """The FaceParser for these loaded weights on `device`, built once and cached on the weights object."""
    cache = getattr(weights, _CACHE_ATTR, None)
    if cache is None:
        cache = {}
        setattr(weights, _CACHE_ATTR, cache)
    key = (str(torch.device(device)), dtype)
    if key not in cache:
        cache[key] = FaceParser(weights, device, dtype)
    return cache[key]
