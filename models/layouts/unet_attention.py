"""The attention layers of SD-family UNets in diffusers `attn_processors` order.

IP-Adapter-style checkpoints (ConsistentID, Visual Persona) index their per-layer weights by the
position of each attention processor in diffusers' UNet: down blocks, then up blocks, then the
mid block; within a block attentions in order, transformer blocks in order, attn1 before attn2.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UNetAttentionConfig:
    """Which diffusers blocks carry transformers, their width and depth."""

    name: str
    context_dim: int
    # (diffusers block path, channels, attentions in the block, transformer depth)
    down: tuple[tuple[str, int, int, int], ...]
    up: tuple[tuple[str, int, int, int], ...]
    mid: tuple[str, int, int, int]


SD15 = UNetAttentionConfig(
    "sd15", 768,
    down=(("down_blocks.0", 320, 2, 1), ("down_blocks.1", 640, 2, 1), ("down_blocks.2", 1280, 2, 1)),
    up=(("up_blocks.1", 1280, 3, 1), ("up_blocks.2", 640, 3, 1), ("up_blocks.3", 320, 3, 1)),
    mid=("mid_block", 1280, 1, 1),
)
SDXL = UNetAttentionConfig(
    "sdxl", 2048,
    down=(("down_blocks.1", 640, 2, 2), ("down_blocks.2", 1280, 2, 10)),
    up=(("up_blocks.0", 1280, 3, 10), ("up_blocks.1", 640, 3, 2)),
    mid=("mid_block", 1280, 1, 10),
)
UNETS = {c.name: c for c in (SD15, SDXL)}


@dataclass(frozen=True)
class AttentionProcessor:
    index: int            # position in diffusers attn_processors
    name: str             # e.g. down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor
    channels: int
    cross: bool           # attn2 (cross-attention) vs attn1 (self-attention)


def attention_processors(cfg: UNetAttentionConfig) -> list[AttentionProcessor]:
    procs: list[AttentionProcessor] = []
    for block, channels, n_attn, depth in (*cfg.down, *cfg.up, cfg.mid):
        for a in range(n_attn):
            for t in range(depth):
                for attn in ("attn1", "attn2"):
                    name = f"{block}.attentions.{a}.transformer_blocks.{t}.{attn}.processor"
                    procs.append(AttentionProcessor(len(procs), name, channels, attn == "attn2"))
    return procs
