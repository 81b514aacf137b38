"""A random-weight CLIP-ViT-H/14 image encoder in the official clip_vision file layout.

The layout is h94/IP-Adapter `models/image_encoder/model.safetensors` (what ComfyUI users download as
`CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors`): the state dict of transformers'
`CLIPVisionModelWithProjection` (hidden 1280, 32 layers, 16 heads, MLP 5120, patch 14, image 224,
projection 1024), no `position_ids` buffer. Stored in fp16 (the download is fp32; both load the same).
About 632 M parameters, 1.26 GB; built once per machine into the fixture cache.

ComfyUI's `comfy.clip_vision.load` picks its ViT-H config because `encoder.layers.30` exists and
`encoder.layers.47` does not; transformers loads the same file strictly (tests check both).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cache import cached

HIDDEN, LAYERS, HEADS, MLP, PATCH, IMAGE, PROJECTION = 1280, 32, 16, 5120, 14, 224, 1024
TOKENS = (IMAGE // PATCH) ** 2 + 1   # 257: class token + 16 x 16 patches
FILE = "clip_vision/CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


def clip_vision_h_layout() -> dict[str, tuple[int, ...]]:
    """Every key and shape of CLIPVisionModelWithProjection for CLIP-ViT-H/14."""
    v = "vision_model."
    out: dict[str, tuple[int, ...]] = {
        f"{v}embeddings.class_embedding": (HIDDEN,),
        f"{v}embeddings.patch_embedding.weight": (HIDDEN, 3, PATCH, PATCH),
        f"{v}embeddings.position_embedding.weight": (TOKENS, HIDDEN),
        f"{v}pre_layrnorm.weight": (HIDDEN,), f"{v}pre_layrnorm.bias": (HIDDEN,),
    }
    for i in range(LAYERS):
        p = f"{v}encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            out[f"{p}self_attn.{proj}.weight"] = (HIDDEN, HIDDEN)
            out[f"{p}self_attn.{proj}.bias"] = (HIDDEN,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{p}{norm}.weight"] = (HIDDEN,)
            out[f"{p}{norm}.bias"] = (HIDDEN,)
        out[f"{p}mlp.fc1.weight"], out[f"{p}mlp.fc1.bias"] = (MLP, HIDDEN), (MLP,)
        out[f"{p}mlp.fc2.weight"], out[f"{p}mlp.fc2.bias"] = (HIDDEN, MLP), (HIDDEN,)
    out[f"{v}post_layernorm.weight"], out[f"{v}post_layernorm.bias"] = (HIDDEN,), (HIDDEN,)
    out["visual_projection.weight"] = (PROJECTION, HIDDEN)
    return out


def random_clip_vision_state(seed: int = 0, dtype=torch.float16) -> dict[str, torch.Tensor]:
    """Deterministic random weights that keep activations tame through 32 pre-norm layers.

    Matrices: N(0, 1/fan_in) (fan_in = all but the first axis); norm scales 1 + N(0, 0.1^2);
    biases and embeddings N(0, 0.02^2) (the residual stream stays O(1)).
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in clip_vision_h_layout().items():
        t = torch.randn(shape, generator=gen)
        if len(shape) > 1 and "embedding" not in key:
            t = t / (torch.tensor(shape[1:]).prod().item() ** 0.5)
        elif "norm" in key and key.endswith(".weight"):
            t = 1.0 + 0.1 * t
        else:
            t = 0.02 * t
        out[key] = t.to(dtype).contiguous()
    return out


def clip_vision_h() -> Path:
    """Path of the cached random CLIP-ViT-H/14 safetensors (fp16)."""
    def build(path):
        from safetensors.torch import save_file

        save_file(random_clip_vision_state(), str(path), metadata={"format": "pt"})

    return cached(FILE, build)


def link_clip_vision(models_root: Path) -> Path:
    """Symlink the cached CLIP-H into `models_root/clip_vision/` under its usual download name (idempotent)."""
    dest = Path(models_root) / "clip_vision" / Path(FILE).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        dest.symlink_to(clip_vision_h())
    return dest
