"""Visual Persona test inputs: the official `weight.bin` layout with random weights, hand-made body masks
for the astronaut photo, and DINOv2 in the transformers folder layout.

- `visual_persona_bin()`: `{"image_proj": full decoder (523 M params), "ip_adapter": 70 IP layers}`,
  fp16, torch.save'd as the released file. Every key and shape of `image_proj` is the one the official
  `BP_Transformer(8, 8, 2048, 1536, 256)` has (tests/fixtures/visual_persona_decoder_layout.json).
- `decoder_state(cfg, seed)`: a random `image_proj` state dict of any decoder configuration (the
  parity fixture uses a reduced one).
- `astronaut_masks()`: five masks in VP order, drawn by hand for skimage's astronaut, as the uint8
  PNG values VP would read (0/255, plus a band of 128 that VP's `(m/255).astype(uint8)` drops).
- `dinov2_transformers_folder(size)`: the random hub DINOv2 of parsers.dinov2_hub_pth(size) written
  as a transformers folder (config.json + model.safetensors, the key names transformers writes).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from partid.models.layouts import visual_persona
from partid.models.layouts.dinov2 import DINOV2_SIZES
from partid.models.visual_persona.decoder import VISUAL_PERSONA, DecoderConfig, decoder_layout

from .cache import cached
from .parsers import dinov2_hub_pth
from .random_weights import random_state


def decoder_state(cfg: DecoderConfig = VISUAL_PERSONA, seed: int = 1, dtype=torch.float16) -> dict[str, torch.Tensor]:
    state = random_state(decoder_layout(cfg), seed=seed, dtype=torch.float32)
    for key, value in state.items():
        if key.endswith("norm3.weight"):      # random_state keeps only the scales it knows by name near one
            state[key] = 1.0 + 0.1 * value
    return {k: v.to(dtype) for k, v in state.items()}


def visual_persona_bin() -> Path:
    """weight.bin in the official layout, every tensor present (about 1.7 GB, fp16)."""
    def build(path):
        torch.save({"image_proj": decoder_state(VISUAL_PERSONA, seed=1),
                    "ip_adapter": random_state(visual_persona.ip_adapter_layout(), 2)}, path)

    return cached("identity_adapters/visual_persona_full/weight.bin", build)


# -- hand-made masks for the astronaut (512 x 512) -------------------------------------------------
# Boxes are chosen so that square padding hits Python's half-to-even rounding both ways: the face box
# is 123 x 84 (offset (123-84)/2 = 19.5 -> 20), the upper box 221 x 136 ((221-136)/2 = 42.5 -> 42).

def astronaut_masks() -> np.ndarray:
    """uint8 [5, 512, 512] with values 0/255 (and 128 where VP's reader sees background)."""
    from PIL import Image, ImageDraw

    def canvas():
        return Image.new("L", (512, 512), 0)

    face = canvas()
    ImageDraw.Draw(face).ellipse((180, 60, 263, 182), fill=255)        # 84 wide, 123 tall
    upper = canvas()
    d = ImageDraw.Draw(upper)
    d.polygon([(120, 230), (340, 230), (340, 365), (120, 365)], fill=255)   # 221 wide, 136 tall
    d.rectangle((150, 240, 200, 260), fill=128)                          # inside: still cut out by the box
    lower = canvas()
    d = ImageDraw.Draw(lower)
    d.rectangle((60, 400, 140, 470), fill=255)                           # two separate blobs
    d.rectangle((300, 430, 420, 511), fill=255)                          # touching the bottom border
    d.rectangle((0, 380, 30, 511), fill=128)                             # 128 only: not part of the box
    shoes = canvas()                                                     # none: absent part
    full = np.maximum.reduce([np.array(m) for m in (face, upper, lower)])
    full[100:140, 200:240] = 128                                         # a hole VP's reader makes black
    return np.stack([full, np.array(face), np.array(upper), np.array(lower), np.array(shoes)])


# -- DINOv2 as a transformers folder ---------------------------------------------------------------

def transformers_state_from_hub(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The hub names -> the names transformers writes to model.safetensors (q/k/v split)."""
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.mask_token": state["mask_token"],
           "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    renames = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.output.dense", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2", "mlp.w12": "mlp.weights_in", "mlp.w3": "mlp.weights_out"}
    for key, value in state.items():
        if not key.startswith("blocks."):
            continue
        _, i, rest = key.split(".", 2)
        dst = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            for name, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{dst}attention.attention.{name}.{rest.rsplit('.', 1)[1]}"] = chunk.contiguous()
        elif rest in ("ls1.gamma", "ls2.gamma"):
            out[f"{dst}layer_scale{rest[2]}.lambda1"] = value
        else:
            module, part = rest.rsplit(".", 1)
            out[f"{dst}{renames[module]}.{part}"] = value
    return out


def dinov2_transformers_folder(size: str = "vits14") -> Path:
    cfg = DINOV2_SIZES[size]

    def build(path: Path):
        from safetensors.torch import save_file

        path.mkdir(parents=True)
        state = torch.load(dinov2_hub_pth(size), weights_only=True)
        save_file(transformers_state_from_hub(state), str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps({
            "model_type": "dinov2", "architectures": ["Dinov2Model"], "hidden_size": cfg.embed_dim,
            "num_hidden_layers": cfg.depth, "num_attention_heads": cfg.heads, "mlp_ratio": 4,
            "image_size": cfg.img_size, "patch_size": cfg.patch_size, "layer_norm_eps": 1e-6,
            "layerscale_value": 1.0, "qkv_bias": True, "use_swiglu_ffn": cfg.ffn == "swiglu",
            "hidden_act": "gelu", "use_mask_token": True}, indent=1))

    return cached(f"dinov2/transformers_{size}", build)
