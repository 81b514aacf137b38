"""DINO ViT-S image embeddings for the DINO metric and the per-region / per-part similarities.

Definition (REFERENCE.md 6): cosine of the CLS tokens of a DINO ViT-S (dino_vits16 or dino_vits8) between
reference and generation. The file is the official torch-hub checkpoint
(`dino_deitsmall16_pretrain.pth` / `dino_deitsmall8_pretrain.pth`, dl.fbaipublicfiles.com): a plain
state dict in the timm ViT names (cls_token, pos_embed, patch_embed.proj, blocks.i.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm). That is DINOv2's hub layout without LayerScale, so the
network is models/dinov2.py's ViT with LayerScale set to 1 (LayerNorm eps 1e-6, exact GELU, as DINO's
vision_transformer.py). The output is the CLS token after the final norm (DINO's `model(x)`, head = Identity).

Whole images are preprocessed as the usual DINO evaluation does (DreamBooth's): shortest side to 256
(PIL bicubic), centre crop 224, ImageNet mean/std. Region and part crops are already 224x224 squares
(regions.py) and are only normalised. At 224 the grid equals the stored position grid, so no
position-embedding interpolation takes place.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from ..dinov2 import DINOv2
from ..errors import ModelFileError
from ..layouts.dinov2 import block_count
from ..weights import load_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE, CROP = 256, 224


def _backbone_state(state: dict) -> dict:
    """The plain backbone dict; a full training checkpoint's teacher is unwrapped (module./backbone.)."""
    if "teacher" in state and isinstance(state["teacher"], dict):
        state = state["teacher"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "backbone."):
            key = key.removeprefix(prefix)
        if not key.startswith("head."):
            out[key] = value
    return out


def dino_vit_from_file(path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> DINOv2:
    state = _backbone_state(load_state_dict(path))
    if "cls_token" not in state or "patch_embed.proj.weight" not in state:
        raise ModelFileError(f"[PartID] {path} is not a DINO torch-hub checkpoint (no cls_token / "
                             "patch_embed.proj.weight); expected dino_deitsmall16_pretrain.pth.")
    if any(k.endswith("ls1.gamma") for k in state):
        raise ModelFileError(f"[PartID] {path} is a DINOv2 checkpoint; the DINO metric is defined with DINO "
                             "(v1) ViT-S: use dino_deitsmall16_pretrain.pth.")
    dim = state["cls_token"].shape[-1]
    for i in range(block_count(state)):   # DINO has no LayerScale: a scale of one is the identity
        state[f"blocks.{i}.ls1.gamma"] = torch.ones(dim, dtype=state["cls_token"].dtype)
        state[f"blocks.{i}.ls2.gamma"] = torch.ones(dim, dtype=state["cls_token"].dtype)
    state.setdefault("mask_token", torch.zeros(1, dim, dtype=state["cls_token"].dtype))
    return DINOv2.from_state_dict(state, eps=1e-6, heads=dim // 64, dtype=dtype, device=device)


def resize_centre_crop(rgb: np.ndarray, resize: int = RESIZE, crop: int = CROP) -> np.ndarray:
    """torchvision Resize(256, BICUBIC) + CenterCrop(224) on a PIL image, in numpy."""
    h, w = rgb.shape[:2]
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    img = np.array(Image.fromarray(rgb).resize(size, Image.Resampling.BICUBIC))
    h, w = img.shape[:2]
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return img[top:top + crop, left:left + crop]


def imagenet_normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W], (x/255 - mean) / std."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div(255)
    x = (x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    return x.permute(0, 3, 1, 2).contiguous()


class DINOScorer:
    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.path, self.dtype = path, dtype
        self.model = dino_vit_from_file(path, torch.device(device), dtype)
        cfg = self.model.config
        self.name = os.path.basename(path)
        self.size_name = {384: "ViT-S", 768: "ViT-B"}.get(cfg.embed_dim, "ViT") + f"/{cfg.patch_size}"

    @property
    def device(self) -> torch.device:
        """Where the model is now (ComfyUI's model management may have moved it)."""
        return next(self.model.parameters()).device

    def describe(self) -> str:
        return f"DINO {self.size_name} ({self.name})"

    @torch.inference_mode()
    def embed_normalised(self, pixels: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """[N, 3, 224, 224] normalised pixels -> [N, D] L2-normalised CLS tokens (float32, CPU)."""
        outs = []
        for start in range(0, len(pixels), chunk):
            _, cls = self.model(pixels[start:start + chunk].to(self.device, self.dtype))
            outs.append(cls.float().cpu())
        feats = torch.cat(outs) if outs else torch.zeros(0, self.model.embed_dim)
        return torch.nn.functional.normalize(feats, dim=-1)

    def image_embeddings(self, images: list[np.ndarray]) -> torch.Tensor:
        """Whole uint8 RGB images (any size) -> [N, D], after resize 256 + centre crop 224."""
        return self.embed_normalised(imagenet_normalise(np.stack([resize_centre_crop(i) for i in images])))

    def crop_embeddings(self, crops: np.ndarray) -> torch.Tensor:
        """uint8 [N, 224, 224, 3] region/part crops -> [N, D]."""
        return self.embed_normalised(imagenet_normalise(crops))
