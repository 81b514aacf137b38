"""Face parsing engine: BiSeNet or SegFormer weights -> a `LabelMap` at the input image's size.

Preprocessing follows each parser's reference code:

- BiSeNet, as ConsistentID's `parsing_face_mask` (SD1.5 and SDXL pipelines): the RGB photo resized to
  512x512 (SDXL pipeline: 1280x1280) with PIL `Image.BILINEAR` (antialiased when shrinking), then
  `ToTensor` (/255) and ImageNet mean/std, the first of BiSeNet's three heads, argmax. The official code
  keeps the map at 512/1280; PartID brings it back to the image size with nearest-neighbour
  (pixel centres, as PIL NEAREST) and keeps the 512/1280 map beside it (`LabelMap.parse_maps`) for the
  region masks, which the official code cuts at that size.
- SegFormer, as the jonathandinu/face-parsing model card: see models/segformer.py (shared with the
  body parser).

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .bisenet import BiSeNet
from .parsing import LabelMap
from .segformer import (IMAGENET_MEAN, IMAGENET_STD, Segformer, cached_engine, images_per_chunk,
                        resize_bilinear_uint8, to_uint8_nchw)

BISENET_RESOLUTIONS = (512, 1280)     # SD1.5 pipeline / SDXL pipeline


class FaceParser:
    """A built face-parsing network on one device; `parse` is batched and runs under inference mode."""

    def __init__(self, weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.backend = weights.backend
        self.labels = tuple(weights.labels)
        self.source = os.path.basename(str(weights.path).rstrip("/\\"))
        self.dtype = dtype
        self.segformer = None
        if self.backend == "bisenet":
            net = BiSeNet(len(self.labels))
            net.load_state_dict(weights.state_dict, strict=True)
            self.net = net.eval().requires_grad_(False).to(torch.device(device), dtype)
        elif self.backend == "segformer":
            self.segformer = Segformer(weights.path, torch.device(device), dtype)
            self.net = self.segformer.net
        else:
            raise ValueError(f"{weights.path}: a '{self.backend}' face parser is not supported; use a BiSeNet .pth "
                             "(face_parsing.pth / 79999_iter.pth) or a SegFormer folder (jonathandinu/face-parsing).")

    @property
    def device(self) -> torch.device:
        """Where the network is now (ComfyUI's model management may have moved it since it was built)."""
        return next(self.net.parameters()).device

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
            x = self.segformer.preprocess(pixels, self.device)
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
        pre = self.segformer.preprocess
        return tuple(pre.size) if pre.do_resize else None

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
        net_size = self.network_size(resolution) or (h, w)
        out_size = (h, w) if at_input_size else net_size
        source = f"{self.backend}:{self.source}"
        if self.backend == "segformer":       # model card: upsample logits to the image, then argmax
            return LabelMap(self.segformer.label_maps(pixels, out_size).to(torch.int64), self.labels, source)
        # official: argmax at the network size; PartID also brings it to the image size with nearest
        per, chunks, native = images_per_chunk(net_size, out_size, len(self.labels)), [], []
        for start in range(0, b, per):
            labels = self._logits(self.network_input(pixels[start:start + per], resolution)).argmax(dim=1)
            native.append(labels.cpu())
            if tuple(labels.shape[-2:]) != tuple(out_size):
                labels = F.interpolate(labels[:, None].float(), size=out_size, mode="nearest-exact")[:, 0].long()
            chunks.append(labels.cpu())
        maps, native = torch.cat(chunks).to(torch.int64), torch.cat(native).to(torch.int64)
        parse_maps = native if tuple(native.shape[-2:]) != tuple(maps.shape[-2:]) else None
        return LabelMap(maps, self.labels, source, parse_maps)


_CACHE_ATTR = "_partid_face_parsers"


def face_parser_from(weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> FaceParser:
    """The FaceParser for these loaded weights on `device`, built once and cached on the weights object."""
    return cached_engine(weights, _CACHE_ATTR, device, dtype, FaceParser)
