"""Body parsing engine: SegFormer or SCHP ONNX weights -> a `LabelMap` at the input image's size.

Each backend follows its reference code:

- SegFormer (mattmdjaga/segformer_b2_clothes, 18 ATR labels), as its model card:
  `SegformerImageProcessor` (resize to its `size`, 512x512, bilinear; rescale; ImageNet mean/std),
  the model, logits upsampled bilinearly (align_corners=False) to the image size, argmax. Matched:
  transformers 5's `SegformerImageProcessor`, which is the torchvision backend (uint8 antialiased
  bilinear resize on CPU, fused rescale+normalise); transformers 4.x and so the model card's author
  used the PIL path, `SegformerImageProcessorPil` in transformers 5 (tests report the difference).
  The preprocessing and the batched parse are shared with the face parser (models/segformer.py).
- SCHP ONNX exports (OOTDiffusion / IDM-VTON `parsing_atr.onnx`, `parsing_lip.onnx`), as SCHP's
  SimpleFolderDataset + `transform_logits` (used by OOTDiffusion's parsing_api and Visual Persona's
  schp/parse_body.py): the RGB photo as BGR uint8, an aspect-preserving affine (the box
  [0,0,w-1,h-1] centred and scaled to fit) warped to the network size with cv2 INTER_LINEAR and a
  black border, /255, mean [0.406,0.456,0.485] / std [0.225,0.224,0.229] (BGR order); the fusion
  logits (the export's second output; a single [N,C,h,w] output is used as it is) upsampled
  bilinearly (align_corners=True) to the network size, every channel warped back to the image size
  by the inverse affine (cv2 INTER_LINEAR, border 0), argmax. The network size is the ONNX input's
  declared size, else 512 (ATR) / 473 (LIP). Exports with a fixed batch of 1 run image by image.

Nothing here imports ComfyUI.
"""
from __future__ import annotations

import os
from typing import Callable

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError
from .images import to_rgb_batch
from .labels import BODY_LABEL_SETS, FACE_LABEL_SETS
from .parsing import LabelMap
from .segformer import PIXEL_BUDGET, Segformer, cached_engine, to_uint8_nchw

SCHP_INPUT_SIZE = {"atr": (512, 512), "lip": (473, 473)}
SCHP_MEAN_BGR = (0.406, 0.456, 0.485)
SCHP_STD_BGR = (0.225, 0.224, 0.229)
NODE = "PartID Body Parts"


# -- SCHP geometry --------------------------------------------------------------------------------
def schp_affine(height: int, width: int, size: tuple[int, int], inverse: bool = False) -> np.ndarray:
    """SCHP's 2x3 affine from the image to the network input (`inverse`: back), as cv2 builds it.

    The box [0, 0, w-1, h-1] is widened to the network's aspect ratio around its centre; the
    affine maps its centre to the network centre ((W-1)/2, (H-1)/2) and its width to W-1. It is
    built from three float32 point pairs with cv2.getAffineTransform, as SCHP does, so it rounds
    the same way. A 1x1 image (zero-width box) gets width 1 instead of a singular transform.
    """
    net_h, net_w = size
    aspect = net_w / net_h
    box_w, box_h = np.float32(width - 1), np.float32(height - 1)
    centre = np.array([box_w * 0.5, box_h * 0.5], np.float32)
    if box_w > aspect * box_h:
        box_h = box_w / aspect
    elif box_w < aspect * box_h:
        box_w = box_h * aspect
    box_w = np.float32(box_w) if box_w > 0 else np.float32(1.0)

    def triangle(origin, up):  # origin, origin + up, and origin + up turned by 90 degrees about it
        a, b = np.asarray(origin, np.float32), np.asarray(origin, np.float32) + np.asarray(up, np.float32)
        d = a - b
        return np.stack([a, b, b + np.array([-d[1], d[0]], np.float32)]).astype(np.float32)

    src = triangle(centre, [0.0, box_w * -0.5])
    dst = triangle([(net_w - 1) * 0.5, (net_h - 1) * 0.5], [0.0, (net_w - 1) * -0.5])
    return cv2.getAffineTransform(dst, src) if inverse else cv2.getAffineTransform(src, dst)


def schp_network_input(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB [H,W,3] -> float32 [3,H',W'] as SCHP feeds its network (BGR, warped, normalised)."""
    h, w = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    warped = cv2.warpAffine(bgr, schp_affine(h, w, size), (size[1], size[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = warped.astype(np.float32) / np.float32(255.0)                  # torchvision ToTensor
    x = (x - np.array(SCHP_MEAN_BGR, np.float32)) / np.array(SCHP_STD_BGR, np.float32)   # Normalize
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def schp_labels(logits: torch.Tensor, height: int, width: int, size: tuple[int, int]) -> np.ndarray:
    """Network-size logits [C,S,S] (already upsampled) -> int64 [H,W] labels at the image size.

    Each channel is warped back as SCHP's transform_logits does; the argmax is kept as a running
    maximum over channels (first maximum wins, as np.argmax), so no [H,W,C] stack is ever held.
    """
    inverse = schp_affine(height, width, size, inverse=True)
    best = np.full((height, width), -np.inf, np.float32)
    labels = np.zeros((height, width), np.int64)
    for c, channel in enumerate(logits.float().cpu().numpy()):
        warped = cv2.warpAffine(channel, inverse, (width, height), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        better = warped > best
        np.copyto(labels, c, where=better)
        np.maximum(best, warped, out=best)
    return labels


def _onnx_session(path: str, device: torch.device):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers = [("CUDAExecutionProvider", {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ort.InferenceSession(path, sess_options=options, providers=providers)


def _fusion_output(outputs: list[np.ndarray], n_classes: int, path: str) -> np.ndarray:
    """SCHP exports return (parsing, fusion, edge): the last [N,C,h,w] output with C classes is fusion."""
    picks = [o for o in outputs if o.ndim == 4 and o.shape[1] == n_classes]
    if not picks:
        raise ValueError(f"{path}: no output has {n_classes} channels ({[o.shape for o in outputs]}); "
                         "not an SCHP parsing export.")
    return picks[-1]


# -- the parser -----------------------------------------------------------------------------------
class BodyParser:
    """A built body parser on one device; `parse` is batched where the model allows it."""

    def __init__(self, weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.backend, self.labels, self.label_set = weights.backend, tuple(weights.labels), weights.label_set
        self.path = str(weights.path)
        self.source = f"{self.backend}:{os.path.basename(self.path.rstrip('/' + os.sep))}"
        self.dtype, self._run_device = dtype, torch.device(device)
        if self.backend == "segformer":
            self.segformer = Segformer(self.path, self._run_device, dtype)
            self.net = self.segformer.net
        elif self.backend == "onnx":
            self.session = _onnx_session(self.path, self._run_device)
            inp = self.session.get_inputs()[0]
            self.input_name, shape = inp.name, list(inp.shape)
            declared = shape[2:4] if len(shape) == 4 else []
            self.size = (tuple(int(d) for d in declared) if len(declared) == 2 and all(isinstance(d, int) and d > 0
                         for d in declared) else SCHP_INPUT_SIZE[self.label_set])
            self.fixed_batch = shape[0] if shape and isinstance(shape[0], int) and shape[0] > 0 else None
        else:
            raise ValueError(f"{self.path}: a '{self.backend}' body parser is not supported; use a SegFormer folder "
                             "(mattmdjaga/segformer_b2_clothes) or an SCHP export (parsing_atr.onnx / parsing_lip.onnx).")

    @property
    def device(self) -> torch.device:
        """Where the network runs now (a SegFormer may have been moved since it was built)."""
        return self.segformer.device if self.backend == "segformer" else self._run_device

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers() if self.backend == "onnx" else [str(self.device)]

    # -- SegFormer -------------------------------------------------------------------------------
    @torch.inference_mode()
    def segformer_logits(self, rgb: torch.Tensor) -> torch.Tensor:
        """Raw SegFormer logits [B,C,h/4,w/4] of its processor size (for parity tests)."""
        return self.segformer.logits(to_uint8_nchw(rgb))

    # -- SCHP ONNX -------------------------------------------------------------------------------
    def schp_fusion_logits(self, batch: np.ndarray) -> np.ndarray:
        """Normalised network inputs [N,3,S,S] -> fusion logits [N,C,h,w], in runs the export accepts."""
        per = self.fixed_batch or max(1, PIXEL_BUDGET // (self.size[0] * self.size[1]))
        outs = []
        for start in range(0, len(batch), per):
            chunk = np.ascontiguousarray(batch[start:start + per], np.float32)
            n = len(chunk)
            if self.fixed_batch and n < self.fixed_batch:   # an export fixed at N > 1 images: pad the last run
                chunk = np.concatenate([chunk, np.zeros((self.fixed_batch - n, *chunk.shape[1:]), np.float32)])
            run = self.session.run(None, {self.input_name: chunk})
            outs.append(_fusion_output(run, len(self.labels), self.path)[:n])
        return np.concatenate(outs)

    def _parse_schp(self, pixels: torch.Tensor) -> torch.Tensor:
        b, _, h, w = pixels.shape
        images = pixels.permute(0, 2, 3, 1).numpy()
        maps = []
        per = max(1, PIXEL_BUDGET // (self.size[0] * self.size[1]))
        for start in range(0, b, per):
            x = np.stack([schp_network_input(im, self.size) for im in images[start:start + per]])
            logits = torch.from_numpy(self.schp_fusion_logits(x))
            up = F.interpolate(logits, size=self.size, mode="bilinear", align_corners=True)
            maps.extend(torch.from_numpy(schp_labels(u, h, w, self.size)) for u in up)
        return torch.stack(maps)

    # -- parse -----------------------------------------------------------------------------------
    @torch.inference_mode()
    def parse(self, rgb: torch.Tensor) -> LabelMap:
        """rgb [B,H,W,3] float 0..1 -> LabelMap [B,H,W] int64 on CPU, labels as the parser names them."""
        pixels = to_uint8_nchw(rgb)
        maps = self.segformer.label_maps(pixels) if self.backend == "segformer" else self._parse_schp(pixels)
        return LabelMap(maps.to(torch.int64), self.labels, source=self.source)


_CACHE_ATTR = "_partid_body_parsers"


def body_parser_from(weights, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> BodyParser:
    """The BodyParser for these loaded weights on `device`, built once and cached on the weights object."""
    return cached_engine(weights, _CACHE_ATTR, device, dtype, BodyParser)


def check_body_parser(parser, node: str = NODE, input_name: str = "parser"):
    """Refuse anything but loaded body-parser weights, naming what was connected instead."""
    # Duck-typed: the same class can be imported under two module names (ComfyUI's loader and `partid`).
    label_set = getattr(parser, "label_set", None)
    if label_set not in BODY_LABEL_SETS or not hasattr(parser, "backend"):
        kind = f"a face parser ({label_set} labels)" if label_set in FACE_LABEL_SETS else type(parser).__name__
        raise InputError(node, input_name, f"expected a body parser, got {kind}.",
                         "connect 'PartID Body Parser Loader' (segformer_b2_clothes, schp_atr_onnx or schp_lip_onnx).")
    if parser.backend not in ("segformer", "onnx"):
        raise InputError(node, input_name, f"{parser.path} is a '{parser.backend}' body parser, which this node does "
                         "not run.", "load the SegFormer folder or an SCHP .onnx export instead.")
    return parser


def parse_body(parser, image, device: torch.device | str | None = "cpu", node: str = NODE,
               engine_for: Callable = body_parser_from):
    """What the node runs: check the inputs, parse. -> (LabelMap, rgb [B,H,W,3] float).

    `engine_for(weights, device)` gives the BodyParser (the node passes one under ComfyUI's model management).
    """
    weights = check_body_parser(parser, node)
    rgb, _ = to_rgb_batch(image, node, "image")
    return engine_for(weights, device).parse(rgb), rgb
