"""Where the cross-attention blocks of a ComfyUI SD-family UNet are, and how adapter indices map to them.

ComfyUI keys attention patches by `(block_name, block_id, depth)`: "input"/"output" with the index
into `input_blocks` / `output_blocks`, and **("middle", 0, depth)** for the middle block (patches
registered at ("middle", 1, ...), as some packs do, never fire). Official adapters (ConsistentID,
IP-Adapter, Visual Persona) index their per-layer weights in diffusers' `attn_processors` order
(models/layouts/unet_attention.py). This module connects the three namings without importing comfy:
from the UNet config (the same rules as comfy.utils.unet_to_diffusers; tests check they agree) or
by walking a built diffusion model.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..layouts.unet_attention import UNetAttentionConfig, attention_processors

BlockKey = tuple[str, int, int]  # ("input" | "middle" | "output", block id, depth index)
# Inside a ComfyUI UNet block (TimestepEmbedSequential) the transformer follows the ResBlock.
_TRANSFORMER_SLOT = 1
_BLOCK_LISTS = {"input": "input_blocks", "middle": "middle_block", "output": "output_blocks"}


@dataclass(frozen=True)
class CrossAttentionBlock:
    """One BasicTransformerBlock with a cross-attention, as ComfyUI patches it."""

    key: BlockKey
    path: str                 # inside diffusion_model, e.g. "input_blocks.1.1.transformer_blocks.0"
    inner_dim: int            # heads * dim_head (= block channels for SD1.5/SDXL)
    context_dim: int          # width of the text context attn2 reads
    n_heads: int
    diffusers_path: str | None = None  # e.g. "down_blocks.0.attentions.0.transformer_blocks.0"

    @property
    def dim_head(self) -> int:
        return self.inner_dim // self.n_heads


def _block_path(key: BlockKey) -> str:
    name, block_id, depth = key
    prefix = "middle_block" if name == "middle" else f"{_BLOCK_LISTS[name]}.{block_id}"
    return f"{prefix}.{_TRANSFORMER_SLOT}.transformer_blocks.{depth}"


def _per_level(value, levels: int) -> list[int]:
    return list(value) if isinstance(value, (list, tuple)) else [value] * levels


def cross_attention_blocks(unet_config: dict) -> list[CrossAttentionBlock]:
    """Every cross-attention block of a UNetModel built from `unet_config` (ComfyUI's model_config
    .unet_config), in UNet execution order: input blocks, middle, output blocks.

    Follows openaimodel.UNetModel.__init__ (transformer_depth lists, num_attention_blocks, heads from
    num_heads or num_head_channels) and unet_to_diffusers (diffusers names).
    """
    ch_mult = list(unet_config["channel_mult"])
    levels = len(ch_mult)
    res_blocks = _per_level(unet_config["num_res_blocks"], levels)
    depth_in = list(unet_config["transformer_depth"])
    depth_out = list(unet_config["transformer_depth_output"])
    depth_mid = unet_config.get("transformer_depth_middle")
    attn_blocks = unet_config.get("num_attention_blocks")
    model_ch = unet_config["model_channels"]
    context_dim = unet_config["context_dim"]
    head_ch = unet_config.get("num_head_channels", -1)
    num_heads = unet_config.get("num_heads", -1)

    def make(key, ch, diffusers):
        heads = num_heads if head_ch in (-1, None) else ch // head_ch
        ctx = context_dim[key[2]] if isinstance(context_dim, (list, tuple)) else context_dim
        return CrossAttentionBlock(key, _block_path(key), ch, ctx, heads, diffusers)

    inputs: list[CrossAttentionBlock] = []
    block_id = 1  # input_blocks.0 is the stem convolution
    for level, mult in enumerate(ch_mult):
        for nr in range(res_blocks[level]):
            depth = depth_in.pop(0)
            if depth > 0 and (attn_blocks is None or nr < attn_blocks[level]):
                inputs += [make(("input", block_id, t), model_ch * mult,
                                f"down_blocks.{level}.attentions.{nr}.transformer_blocks.{t}") for t in range(depth)]
            block_id += 1
        if level != levels - 1:
            block_id += 1  # downsampler

    middle = []
    if depth_mid is not None and depth_mid > 0:
        ch = model_ch * ch_mult[-1]
        middle = [make(("middle", 0, t), ch, f"mid_block.attentions.0.transformer_blocks.{t}")
                  for t in range(depth_mid)]

    outputs: list[CrossAttentionBlock] = []
    block_id = 0
    for up, level in enumerate(reversed(range(levels))):
        for i in range(res_blocks[level] + 1):
            depth = depth_out.pop()
            if depth > 0 and (attn_blocks is None or i < attn_blocks[level]):
                outputs += [make(("output", block_id, t), model_ch * ch_mult[level],
                                 f"up_blocks.{up}.attentions.{i}.transformer_blocks.{t}") for t in range(depth)]
            block_id += 1
    return inputs + middle + outputs


def cross_attention_blocks_of_module(diffusion_model: nn.Module) -> list[CrossAttentionBlock]:
    """The same list, read from a built UNet (`model.model.diffusion_model` of a ModelPatcher).

    Dims come from `attn2.to_k.weight.shape` ([inner, context]) and heads from the attention module,
    so fine-tunes with unusual configs are enumerated as they really are.
    """
    found: list[CrossAttentionBlock] = []
    containers = [("input", list(getattr(diffusion_model, "input_blocks", []) or []))]
    mid = getattr(diffusion_model, "middle_block", None)
    containers.append(("middle", [mid] if mid is not None else []))
    containers.append(("output", list(getattr(diffusion_model, "output_blocks", []) or [])))
    for name, blocks in containers:
        for block_id, block in enumerate(blocks):
            for slot, layer in block.named_children():
                transformer_blocks = getattr(layer, "transformer_blocks", None)
                if transformer_blocks is None:
                    continue
                for depth, tb in enumerate(transformer_blocks):
                    attn2 = getattr(tb, "attn2", None)
                    if attn2 is None:
                        continue
                    inner, ctx = attn2.to_k.weight.shape[:2]
                    heads = getattr(attn2, "heads", None) or tb.n_heads
                    prefix = "middle_block" if name == "middle" else f"{_BLOCK_LISTS[name]}.{block_id}"
                    found.append(CrossAttentionBlock((name, block_id, depth),
                                                     f"{prefix}.{slot}.transformer_blocks.{depth}",
                                                     int(inner), int(ctx), int(heads)))
    return found


def diffusers_transformer_paths(unet_config: dict) -> dict[str, str]:
    """diffusers transformer-block path -> ComfyUI path, e.g. 'mid_block.attentions.0.transformer_blocks.3'
    -> 'middle_block.1.transformer_blocks.3' (the transformer part of comfy.utils.unet_to_diffusers)."""
    return {b.diffusers_path: b.path for b in cross_attention_blocks(unet_config)}


# Projections of a ComfyUI CrossAttention that adapter LoRAs touch, by the adapter's own names.
LORA_PROJECTIONS = {"to_q": "to_q", "to_k": "to_k", "to_v": "to_v", "to_out": "to_out.0"}


@dataclass(frozen=True)
class ProcessorTarget:
    """Where one diffusers attention processor (adapter index) lives in a ComfyUI model."""

    index: int
    attn: str                 # "attn1" (self) or "attn2" (cross)
    block: CrossAttentionBlock

    def weight_key(self, projection: str) -> str:
        """ModelPatcher state-dict key, e.g. 'diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight'
        for projection 'to_q' (adapter naming: to_q, to_k, to_v, to_out)."""
        return f"diffusion_model.{self.block.path}.{self.attn}.{LORA_PROJECTIONS[projection]}.weight"


def processor_targets(layout: UNetAttentionConfig, unet_config: dict) -> dict[int, ProcessorTarget]:
    """Adapter processor index (layouts.unet_attention order) -> its ComfyUI block and attention.

    Raises when the adapter's UNet does not match the model (e.g. an SD1.5 adapter on SDXL).
    """
    by_diffusers = {b.diffusers_path: b for b in cross_attention_blocks(unet_config)}
    procs = attention_processors(layout)
    n_cross = sum(p.cross for p in procs)
    if n_cross != len(by_diffusers):
        raise ValueError(f"the {layout.name} adapter has {n_cross} cross-attention layers; this model has "
                         f"{len(by_diffusers)}: the adapter was made for another base model")
    targets: dict[int, ProcessorTarget] = {}
    for proc in procs:
        path, attn = proc.name.rsplit(".", 2)[0], ("attn2" if proc.cross else "attn1")
        block = by_diffusers.get(path)
        if block is None or block.inner_dim != proc.channels:
            raise ValueError(f"adapter layer {proc.index} ({path}, {proc.channels} channels) has no matching "
                             f"layer in this model: the adapter was made for another base model")
        targets[proc.index] = ProcessorTarget(proc.index, attn, block)
    return targets
