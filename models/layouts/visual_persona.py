"""Visual Persona `weight.bin` layout: the parts PartID recognises a file by.

`ip_adapter`: 70 IP key/value pairs at odd processor indices of the SDXL UNet (the IP-Adapter SDXL
convention, see unet_attention.py), projecting the decoder's 2048-d tokens. `image_proj`: the
body-partitioned decoder; its queries `new_pos_embed` [parts, tokens, width] and the unused legacy
`pos_embed` [1, tokens, width] identify it. The decoder's full layout is checked when the decoder
network itself loads the weights (strict load).
"""
from __future__ import annotations

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


def decoder_signature(parts: int = PARTS, tokens: int = TOKENS_PER_PART, width: int = DECODER_WIDTH) -> dict[str, Shape]:
    return {"new_pos_embed": (parts, tokens, width), "pos_embed": (1, tokens, width)}
