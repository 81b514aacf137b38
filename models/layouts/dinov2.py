"""DINOv2 torch-hub checkpoint layout (`dinov2_vit*14_pretrain.pth`), from its configuration."""
from __future__ import annotations

from dataclasses import dataclass

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DINOv2Config:
    embed_dim: int
    depth: int
    heads: int
    ffn: str = "mlp"            # "swiglu" for ViT-g/14
    patch_size: int = 14
    img_size: int = 518         # position embeddings are stored for 37x37 patches

    @property
    def ffn_hidden(self) -> int:
        hidden = 4 * self.embed_dim
        # The hub's fused SwiGLU shrinks the hidden width to 2/3, rounded up to a multiple of 8.
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if self.ffn == "swiglu" else hidden


def block_count(state) -> int:
    """Transformer blocks in a hub-layout state dict (keys `blocks.{i}.*`)."""
    return 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))


def ffn_of(state) -> str:
    """"swiglu" (ViT-g/14's fused w12/w3 MLP) or "mlp" (fc1/fc2), read from the first block's keys."""
    return "swiglu" if "blocks.0.mlp.w12.weight" in state else "mlp"


DINOV2_SIZES = {
    "vits14": DINOv2Config(384, 12, 6),
    "vitb14": DINOv2Config(768, 12, 12),
    "vitl14": DINOv2Config(1024, 24, 16),
    "vitg14": DINOv2Config(1536, 40, 24, ffn="swiglu"),
}


def dinov2_hub_layout(cfg: DINOv2Config) -> dict[str, Shape]:
    d, h = cfg.embed_dim, cfg.ffn_hidden
    grid = cfg.img_size // cfg.patch_size
    out: dict[str, Shape] = {
        "cls_token": (1, 1, d), "pos_embed": (1, grid * grid + 1, d), "mask_token": (1, d),
        "patch_embed.proj.weight": (d, 3, cfg.patch_size, cfg.patch_size), "patch_embed.proj.bias": (d,),
    }
    for i in range(cfg.depth):
        p = f"blocks.{i}"
        out.update({f"{p}.norm1.weight": (d,), f"{p}.norm1.bias": (d,),
                    f"{p}.attn.qkv.weight": (3 * d, d), f"{p}.attn.qkv.bias": (3 * d,),
                    f"{p}.attn.proj.weight": (d, d), f"{p}.attn.proj.bias": (d,),
                    f"{p}.ls1.gamma": (d,), f"{p}.norm2.weight": (d,), f"{p}.norm2.bias": (d,),
                    f"{p}.ls2.gamma": (d,)})
        if cfg.ffn == "swiglu":
            out.update({f"{p}.mlp.w12.weight": (2 * h, d), f"{p}.mlp.w12.bias": (2 * h,),
                        f"{p}.mlp.w3.weight": (d, h), f"{p}.mlp.w3.bias": (d,)})
        else:
            out.update({f"{p}.mlp.fc1.weight": (h, d), f"{p}.mlp.fc1.bias": (h,),
                        f"{p}.mlp.fc2.weight": (d, h), f"{p}.mlp.fc2.bias": (d,)})
    out.update({"norm.weight": (d,), "norm.bias": (d,)})
    return out
