"""DINOv2 ViT image encoder that loads the torch-hub checkpoints (`dinov2_vit*14_pretrain.pth`) unchanged.

Parameter names are the hub layout (models/layouts/dinov2.py): `cls_token`, `pos_embed`, `mask_token`,
`patch_embed.proj`, `blocks.{i}.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,mlp.*,ls2.gamma}`, `norm`;
the MLP is `fc1`/`fc2` (ViT-S/B/L) or the fused SwiGLU `w12`/`w3` (ViT-g/14). A hub file loads strict.

Numerics follow the original facebookresearch code (the copy Visual Persona vendors, upstream commit
81b2b64, and upstream HEAD agree on this): pre-norm blocks with LayerScale, LayerNorm eps 1e-6, exact
GELU, and position embeddings resized with bicubic `interpolate(scale_factor=((rows+0.1)/37,
(cols+0.1)/37))` in fp32, no antialias. A scale factor is not a size: the kernel samples at
`37/16.1` steps, not `37/16`, so transformers' `Dinov2Model` (which passes `size=(16, 16)`) gives other
position embeddings and other outputs (REFERENCE.md section 8). No register-token models.

transformers folders (`facebook/dinov2-*`, config.json + safetensors) are read by converting their keys
to the hub names (`hub_state_from_transformers`); the network is always this one, so the
interpolation stays the original's.
"""
from __future__ import annotations

import json
import math
import os

import torch
import torch.nn.functional as F
from torch import nn

from .layouts.dinov2 import DINOV2_SIZES, DINOv2Config, block_count, ffn_of
from .errors import ModelFileError

INTERPOLATE_OFFSET = 0.1      # the original's "avoid floating point error" kludge (facebookresearch/dino#8)


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"DINOv2 needs sides that are multiples of {self.patch_size}, got {h}x{w}")
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """The hub's fused SwiGLU: `w12` holds [gate; up], out = w3(silu(gate) * up)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * up)


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, cfg: DINOv2Config, eps: float):
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=eps)
        self.attn = Attention(d, cfg.heads)
        self.ls1 = LayerScale(d)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.mlp = SwiGLU(d, cfg.ffn_hidden) if cfg.ffn == "swiglu" else Mlp(d, cfg.ffn_hidden)
        self.ls2 = LayerScale(d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class DINOv2(nn.Module):
    """`forward(pixels [B,3,H,W]) -> (patch tokens [B, H/14*W/14, D], cls [B, D])`, both after the final norm."""

    def __init__(self, cfg: DINOv2Config, eps: float = 1e-6):
        super().__init__()
        self.config = cfg
        d, grid = cfg.embed_dim, cfg.img_size // cfg.patch_size
        self.patch_embed = PatchEmbed(cfg.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))      # unused at inference, kept for a strict load
        self.blocks = nn.ModuleList(Block(cfg, eps) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d, eps=eps)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def interpolate_pos_encoding(self, n_patches: int, rows: int, cols: int, dtype: torch.dtype) -> torch.Tensor:
        pos = self.pos_embed
        n_stored = pos.shape[1] - 1
        if n_patches == n_stored and rows == cols:
            return pos
        m = int(math.sqrt(n_stored))
        grid = pos.float()[:, 1:].reshape(1, m, m, -1).permute(0, 3, 1, 2)
        scale = ((rows + INTERPOLATE_OFFSET) / m, (cols + INTERPOLATE_OFFSET) / m)
        grid = F.interpolate(grid, scale_factor=scale, mode="bicubic", antialias=False)
        if grid.shape[-2:] != (rows, cols):
            raise RuntimeError(f"position-embedding interpolation gave {tuple(grid.shape[-2:])}, not {(rows, cols)}")
        grid = grid.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([pos.float()[:, :1], grid], dim=1).to(dtype)

    def forward_features(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        rows, cols = pixels.shape[-2] // self.config.patch_size, pixels.shape[-1] // self.config.patch_size
        x = self.patch_embed(pixels)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        x = x + self.interpolate_pos_encoding(x.shape[1] - 1, rows, cols, x.dtype)
        for block in self.blocks:
            x = block(x)
        x_norm = self.norm(x)
        return {"x_norm_clstoken": x_norm[:, 0], "x_norm_patchtokens": x_norm[:, 1:], "x_prenorm": x}

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.forward_features(pixels)
        return out["x_norm_patchtokens"], out["x_norm_clstoken"]

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_state_dict(cls, state: dict, eps: float = 1e-6, heads: int | None = None,
                        dtype: torch.dtype | None = None, device=None) -> "DINOv2":
        """A hub-layout state dict, loaded strict. Heads default to the released size's (64 per head)."""
        cfg = config_of_state(state, heads)
        with torch.device("meta"):
            model = cls(cfg, eps)
        try:
            model.load_state_dict(state, strict=True, assign=True)
        except RuntimeError as err:
            raise ModelFileError(f"[PartID] the DINOv2 weights are not in the torch-hub layout: {str(err)[:600]}") from err
        model.to(device=device, dtype=dtype or state["cls_token"].dtype)
        return model.eval().requires_grad_(False)

    @classmethod
    def from_weights(cls, weights, dtype: torch.dtype | None = None, device=None) -> "DINOv2":
        """From `model_files.load_dinov2(path)` (either layout)."""
        if weights.layout == "hub":
            return cls.from_state_dict(weights.state_dict, dtype=dtype, device=device)
        config = weights.config or {}
        state = hub_state_from_transformers(read_transformers_state(weights.path))
        return cls.from_state_dict(state, eps=config.get("layer_norm_eps", 1e-6),
                                   heads=config.get("num_attention_heads"), dtype=dtype, device=device)


def config_of_state(state: dict, heads: int | None = None) -> DINOv2Config:
    if any(k.startswith("register_tokens") for k in state):
        raise ModelFileError("[PartID] DINOv2 with registers (dinov2_*_reg*) is not supported: use the "
                             "plain dinov2_vit*14_pretrain.pth (Visual Persona uses dinov2_vitg14_pretrain.pth).")
    dim = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    depth = block_count(state)
    swiglu = ffn_of(state) == "swiglu"
    hidden = state["blocks.0.mlp.w3.weight" if swiglu else "blocks.0.mlp.fc1.weight"].shape[1 if swiglu else 0]
    grid = int(math.sqrt(state["pos_embed"].shape[1] - 1))
    known = next((c for c in DINOV2_SIZES.values() if c.embed_dim == dim), None)
    cfg = DINOv2Config(dim, depth, heads or (known.heads if known else dim // 64), "swiglu" if swiglu else "mlp",
                       patch, grid * patch)
    if cfg.ffn_hidden != hidden:
        raise ModelFileError(f"[PartID] DINOv2 checkpoint: MLP width {hidden} is not the one the hub code builds "
                             f"for width {dim} ({cfg.ffn_hidden}).")
    return cfg


# -- transformers layout ------------------------------------------------------------------------

def read_transformers_state(folder: str) -> dict[str, torch.Tensor]:
    """model.safetensors (or its sharded index) of a transformers DINOv2 folder."""
    from safetensors.torch import load_file

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index, encoding="utf-8") as fh:
            shards = sorted(set(json.load(fh)["weight_map"].values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(load_file(os.path.join(folder, shard)))
        return state
    single = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(single):
        raise ModelFileError(f"[PartID] {folder}: no model.safetensors (a .bin-only folder is not read; "
                             "re-save it with save_pretrained(safe_serialization=True)).")
    return load_file(single)


# transformers key fragment -> hub fragment, per block. Files on the Hub (and what transformers 5 writes)
# use the first spellings; transformers 5 names the same modules q_proj/.../down_proj in memory.
_BLOCK_RENAMES = {"norm1": "norm1", "norm2": "norm2", "layer_scale1.lambda1": "ls1.gamma",
                  "layer_scale2.lambda1": "ls2.gamma", "attention.output.dense": "attn.proj",
                  "attention.o_proj": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
                  "mlp.weights_in": "mlp.w12", "mlp.weights_out": "mlp.w3", "mlp.down_proj": "mlp.w3"}
_QKV = (("attention.attention.query", "attention.attention.key", "attention.attention.value"),
        ("attention.q_proj", "attention.k_proj", "attention.v_proj"))


def hub_state_from_transformers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers Dinov2Model state dict to the hub layout (q/k/v fused into qkv)."""
    state = {k.removeprefix("dinov2."): v for k, v in state.items()}
    emb = "embeddings."
    out = {"cls_token": state[emb + "cls_token"], "pos_embed": state[emb + "position_embeddings"],
           "patch_embed.proj.weight": state[emb + "patch_embeddings.projection.weight"],
           "patch_embed.proj.bias": state[emb + "patch_embeddings.projection.bias"],
           "norm.weight": state["layernorm.weight"], "norm.bias": state["layernorm.bias"]}
    out["mask_token"] = state.get(emb + "mask_token", torch.zeros(1, out["cls_token"].shape[-1]))
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layer.")})
    for key, value in state.items():
        if key.startswith("encoder.layer."):
            _, _, i, rest = key.split(".", 3)
            for old, new in _BLOCK_RENAMES.items():
                if rest == old or rest.startswith(old + "."):
                    out[f"blocks.{i}.{new}{rest[len(old):]}"] = value
    for i in layers:
        src = f"encoder.layer.{i}."
        for part in ("weight", "bias"):
            for names in _QKV:
                if f"{src}{names[0]}.{part}" in state:
                    out[f"blocks.{i}.attn.qkv.{part}"] = torch.cat([state[f"{src}{n}.{part}"] for n in names])
            if f"{src}mlp.gate_proj.{part}" in state:
                out[f"blocks.{i}.mlp.w12.{part}"] = torch.cat([state[f"{src}mlp.gate_proj.{part}"],
                                                               state[f"{src}mlp.up_proj.{part}"]])
    return out
