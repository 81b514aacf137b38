"""ConsistentID-v1.bin / ConsistentID_SDXL-v1.bin layouts (official JackAILab/ConsistentID release).

Three top-level groups: the FaceID-Plus projection (`image_proj`, spelt `image_proj_model` in the
SDXL file), the `FacialEncoder` (AttentionMLP + FuseModule) and `adapter_modules` (rank-128 LoRA on
every attention, plus `to_k_ip`/`to_v_ip` on cross-attention), indexed as in unet_attention.py.
"""
from __future__ import annotations

from .unet_attention import SD15, SDXL, UNetAttentionConfig, attention_processors

Shape = tuple[int, ...]

LORA_RANK = 128
CLIP_H_WIDTH = 1280          # CLIP-ViT-H hidden size fed to both resamplers
CLIP_H_TOKENS = 257          # its penultimate states at 224 px: class token + 16 x 16 patches
ARCFACE_DIM = 512
ID_TOKENS = 4


def _perceiver(prefix: str, dim: int, depth: int, heads_dim: int, ff_mult: int = 4) -> dict[str, Shape]:
    """IP-Adapter Perceiver layers: attention (norm1/norm2/to_q/to_kv/to_out) + LN-Linear-GELU-Linear."""
    out: dict[str, Shape] = {}
    inner = heads_dim
    for i in range(depth):
        p = f"{prefix}.layers.{i}"
        out.update({
            f"{p}.0.norm1.weight": (dim,), f"{p}.0.norm1.bias": (dim,),
            f"{p}.0.norm2.weight": (dim,), f"{p}.0.norm2.bias": (dim,),
            f"{p}.0.to_q.weight": (inner, dim), f"{p}.0.to_kv.weight": (2 * inner, dim),
            f"{p}.0.to_out.weight": (dim, inner),
            f"{p}.1.0.weight": (dim,), f"{p}.1.0.bias": (dim,),
            f"{p}.1.1.weight": (dim * ff_mult, dim), f"{p}.1.3.weight": (dim, dim * ff_mult),
        })
    return out


def image_proj_layout(cross_dim: int) -> dict[str, Shape]:
    """ProjPlusModel: ArcFace 512 -> 4 tokens, refined by a depth-4 Perceiver over CLIP-H tokens."""
    d = cross_dim
    out: dict[str, Shape] = {
        "proj.0.weight": (1024, ARCFACE_DIM), "proj.0.bias": (1024,),
        "proj.2.weight": (ID_TOKENS * d, 1024), "proj.2.bias": (ID_TOKENS * d,),
        "norm.weight": (d,), "norm.bias": (d,),
        "perceiver_resampler.proj_in.weight": (d, CLIP_H_WIDTH), "perceiver_resampler.proj_in.bias": (d,),
        "perceiver_resampler.proj_out.weight": (d, d), "perceiver_resampler.proj_out.bias": (d,),
        "perceiver_resampler.norm_out.weight": (d,), "perceiver_resampler.norm_out.bias": (d,),
    }
    out.update(_perceiver("perceiver_resampler", d, depth=4, heads_dim=d))
    return out


def facial_encoder_layout(cross_dim: int, width: int = 1024, depth: int = 8) -> dict[str, Shape]:
    """AttentionMLP (one learned query) + FuseModule."""
    d, w = cross_dim, width
    out: dict[str, Shape] = {
        "visual_projection.latents": (1, 1, w),
        "visual_projection.proj_in.weight": (w, CLIP_H_WIDTH), "visual_projection.proj_in.bias": (w,),
        "visual_projection.proj_out.weight": (d, w), "visual_projection.proj_out.bias": (d,),
        "visual_projection.norm_out.weight": (d,), "visual_projection.norm_out.bias": (d,),
    }
    out.update(_perceiver("visual_projection", w, depth=depth, heads_dim=w))
    for mlp, n_in in (("mlp1", 2 * d), ("mlp2", d)):
        p = f"fuse_module.{mlp}"
        out.update({f"{p}.layernorm.weight": (n_in,), f"{p}.layernorm.bias": (n_in,),
                    f"{p}.fc1.weight": (d, n_in), f"{p}.fc1.bias": (d,),
                    f"{p}.fc2.weight": (d, d), f"{p}.fc2.bias": (d,)})
    out.update({"fuse_module.layer_norm.weight": (d,), "fuse_module.layer_norm.bias": (d,)})
    return out


def adapter_modules_layout(unet: UNetAttentionConfig) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for proc in attention_processors(unet):
        c, kv_in = proc.channels, (unet.context_dim if proc.cross else proc.channels)
        for proj, n_in in (("to_q", c), ("to_k", kv_in), ("to_v", kv_in), ("to_out", c)):
            out[f"{proc.index}.{proj}_lora.down.weight"] = (LORA_RANK, n_in)
            out[f"{proc.index}.{proj}_lora.up.weight"] = (c, LORA_RANK)
        if proc.cross:
            out[f"{proc.index}.to_k_ip.weight"] = (c, unet.context_dim)
            out[f"{proc.index}.to_v_ip.weight"] = (c, unet.context_dim)
    return out


def consistentid_layout(variant: str) -> dict[str, dict[str, Shape]]:
    """Nested layout `{group: {key: shape}}` as stored in the official .bin files."""
    unet = {"sd15": SD15, "sdxl": SDXL}[variant]
    proj_group = "image_proj" if variant == "sd15" else "image_proj_model"
    return {
        proj_group: image_proj_layout(unet.context_dim),
        "FacialEncoder": facial_encoder_layout(unet.context_dim),
        "adapter_modules": adapter_modules_layout(unet),
    }
