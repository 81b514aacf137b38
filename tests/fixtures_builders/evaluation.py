"""Random-weight evaluation models in their official file layouts.

- `clip_folder()`: openai/clip-vit-large-patch14's folder layout (transformers `CLIPModel`): config.json,
  model.safetensors, preprocessor_config.json (the repo's, verbatim values), tokenizer_config.json,
  special_tokens_map.json, vocab.json, merges.txt. The tokenizer files are the real CLIP BPE vocabulary,
  taken from the copy ComfyUI ships (comfy/sd1_tokenizer, the same openai tokenizer). The network is a
  *small* CLIP (width 64, 2 layers per tower, patch 14, image 224, projection 32) with the same key names
  and config fields: the full ViT-L/14 would be 1.7 GB of random numbers that prove nothing more.
- `dino_vits16_pth()`: dino_deitsmall16_pretrain.pth in the torch-hub layout, full ViT-S/16 size
  (384 wide, 12 blocks, 6 heads, 197 positions), fp32 as released, no LayerScale, no head.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .cache import cached
from .random_weights import random_state

PREPROCESSOR = {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor",
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "resample": 3, "size": 224}
_SPECIAL = {"content": "", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
TOKENIZER_CONFIG = {"add_prefix_space": False, "do_lower_case": True, "errors": "replace",
                    "model_max_length": 77, "pad_token": "<|endoftext|>", "tokenizer_class": "CLIPTokenizer",
                    **{k: {**_SPECIAL, "content": v, "__type": "AddedToken"} for k, v in
                       (("bos_token", "<|startoftext|>"), ("eos_token", "<|endoftext|>"),
                        ("unk_token", "<|endoftext|>"))}}
SPECIAL_TOKENS = {"bos_token": {**_SPECIAL, "content": "<|startoftext|>"},
                  "eos_token": {**_SPECIAL, "content": "<|endoftext|>"},
                  "unk_token": {**_SPECIAL, "content": "<|endoftext|>"}, "pad_token": "<|endoftext|>"}
TINY_TOWER = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4)


def _comfy_tokenizer() -> Path:
    from partid_rig import COMFYUI

    folder = Path(COMFYUI or "") / "comfy" / "sd1_tokenizer"
    if not COMFYUI or not (folder / "vocab.json").is_file():
        raise RuntimeError("the CLIP fixture takes its BPE vocabulary from ComfyUI's comfy/sd1_tokenizer; "
                           "ComfyUI was not found")
    return folder


def _build_clip(path: Path) -> None:
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(text_config=dict(vocab_size=49408, max_position_embeddings=77, projection_dim=32,
                                         **TINY_TOWER),
                        vision_config=dict(image_size=224, patch_size=14, projection_dim=32, **TINY_TOWER),
                        projection_dim=32)
    model = CLIPModel(config)
    with torch.no_grad():   # a visible temperature; CLIP-I/T do not use it, the independent check does
        model.logit_scale.fill_(4.6052)
    model.save_pretrained(path, safe_serialization=True)
    tokenizer = _comfy_tokenizer()
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(tokenizer / name, path / name)
    (path / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    (path / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))
    (path / "special_tokens_map.json").write_text(json.dumps(SPECIAL_TOKENS, indent=2))


def clip_folder() -> Path:
    return cached("evaluation/clip_vit_large_patch14", _build_clip)


def dino_hub_layout(dim: int = 384, depth: int = 12, patch: int = 16, grid: int = 14) -> dict[str, tuple[int, ...]]:
    """Every key and shape of DINO's torch-hub ViT (vision_transformer.py, num_classes=0)."""
    out = {"cls_token": (1, 1, dim), "pos_embed": (1, grid * grid + 1, dim),
           "patch_embed.proj.weight": (dim, 3, patch, patch), "patch_embed.proj.bias": (dim,)}
    for i in range(depth):
        p = f"blocks.{i}."
        out.update({p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                    p + "attn.qkv.weight": (3 * dim, dim), p + "attn.qkv.bias": (3 * dim,),
                    p + "attn.proj.weight": (dim, dim), p + "attn.proj.bias": (dim,),
                    p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                    p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                    p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)})
    out["norm.weight"], out["norm.bias"] = (dim,), (dim,)
    return out


def dino_vits16_pth() -> Path:
    def build(path):
        torch.save(random_state(dino_hub_layout(), seed=5, dtype=torch.float32), path)

    return cached("evaluation/dino_deitsmall16_pretrain.pth", build)


def link_evaluation_models(models_root: Path) -> Path:
    """models_root/evaluation/{clip_vit_large_patch14/, dino_deitsmall16_pretrain.pth} as symlinks (idempotent)."""
    folder = Path(models_root) / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    for src, name in ((clip_folder(), "clip_vit_large_patch14"), (dino_vits16_pth(), "dino_deitsmall16_pretrain.pth")):
        if not (folder / name).exists():
            (folder / name).symlink_to(src)
    return folder
