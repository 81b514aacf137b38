"""Visual Persona `weight.bin` layout: the parts PartID recognises a file by.

`ip_adapter`: 70 IP key/value pairs at odd processor indices of the SDXL UNet (the IP-Adapter SDXL
convention, see unet_attention.py), projecting the decoder's 2048-d tokens. `image_proj`: the
body-partitioned decoder; its queries `new_pos_embed` [parts, tokens, width] and the unused legacy
`pos_embed` [1, tokens, width] identify it. The decoder's full layout (`decoder_layout`) is the
released BP_Transformer's, checked key for key against the original class.
"""
from __future__ import annotations

from dataclasses import dataclass

from .unet_attention import SDXL, UNetAttentionConfig, attention_processors

Shape = tuple[int, ...]

PARTS = 5
TOKENS_PER_PART = 256
DECODER_WIDTH = 2048


def ip_adapter_layout(unet: UNetAttentionConfig = SDXL, token_dim: int = DECODER_WIDTH) -> dict[str, Shape]:
    out: dict[str, Shape] = {}
    for proc in attention_processors(unet):
        if proc.cross:
            out[f"{proc.index}.to_k_ip.weight"] = (proc.channels, token_dim)
            out[f"{proc.index}.to_v_ip.weight"] = (proc.channels, token_dim)
    return out


@dataclass(frozen=True)
class DecoderConfig:
    parts: int = 5
    tokens: int = 256              # queries per part (= DINOv2 patch tokens of a 224 image)
    layers: int = 8
    heads: int = 8
    width: int = 2048              # SDXL cross-attention width
    encoder_width: int = 1536      # DINOv2 ViT-g/14
    mlp_ratio: float = 4.0
    eps: float = 1e-6

    @property
    def mlp_hidden(self) -> int:
        return int(self.width * self.mlp_ratio)


VISUAL_PERSONA = DecoderConfig()


def decoder_layout(cfg: DecoderConfig = VISUAL_PERSONA) -> dict[str, Shape]:
    """Every key and shape of the released `image_proj` state dict for this configuration."""
    w, e, h = cfg.width, cfg.encoder_width, cfg.mlp_hidden
    out: dict[str, Shape] = {"pos_embed": (1, cfg.tokens, w), "new_pos_embed": (cfg.parts, cfg.tokens, w)}
    for i in range(cfg.layers):
        p = f"transformer.layers.{i}."
        for norm in ("norm1", "norm2", "norm3"):
            out[f"{p}{norm}.weight"] = out[f"{p}{norm}.bias"] = (w,)
        out.update({f"{p}cross_attn.q_proj_weight": (w, w), f"{p}cross_attn.k_proj_weight": (w, e),
                    f"{p}cross_attn.v_proj_weight": (w, e), f"{p}cross_attn.out_proj.weight": (w, w),
                    f"{p}self_attn.in_proj_weight": (3 * w, w), f"{p}self_attn.out_proj.weight": (w, w),
                    f"{p}mlp.0.weight": (h, w), f"{p}mlp.0.bias": (h,), f"{p}mlp.3.weight": (w, h),
                    f"{p}mlp.3.bias": (w,)})
    out["transformer.norm.weight"] = out["transformer.norm.bias"] = (w,)
    return out

