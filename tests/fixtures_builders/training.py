"""Training fixtures: a tiny ConsistentID adapter for the tiny SD1.5 UNet and a synthetic image folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from partid.models.layouts.consistentid import adapter_modules_layout, facial_encoder_layout, image_proj_layout
from partid.models.layouts.unet_attention import UNetAttentionConfig

from .random_weights import random_state

# The tiny SD1.5 UNet of sd_models.TINY_SD15_UNET (32/64 channels, attention at both levels).
TINY_SD15_LAYOUT = UNetAttentionConfig(
    "sd15_tiny", 768, down=(("down_blocks.0", 32, 1, 1), ("down_blocks.1", 64, 1, 1)),
    up=(("up_blocks.0", 64, 2, 1), ("up_blocks.1", 32, 2, 1)), mid=("mid_block", 64, 1, 1))


def tiny_consistentid_groups(seed: int = 0, lora_up_zero: bool = True, facial: bool = False) -> dict:
    """image_proj (real SD1.5 width, 768), adapter_modules for the tiny UNet (fp32); the FacialEncoder group
    empty, or with `facial` a one-layer, 64-wide FacialEncoder in the official key layout (D = 768)."""
    modules = random_state(adapter_modules_layout(TINY_SD15_LAYOUT), seed + 1, dtype=torch.float32)
    if lora_up_zero:   # the official training init: the LoRA starts as the identity
        modules = {k: (torch.zeros_like(v) if k.endswith("_lora.up.weight") else v) for k, v in modules.items()}
    encoder = random_state(facial_encoder_layout(768, width=64, depth=1), seed + 2, dtype=torch.float32) \
        if facial else {}
    return {"image_proj": random_state(image_proj_layout(768), seed, dtype=torch.float32), "FacialEncoder": encoder,
            "adapter_modules": modules}


def synthetic_folder(root: Path, n: int = 4, size: int = 64, identities: int = 2, seed: int = 0) -> Path:
    """n images: a textured background and a bright 'face' square at a random place, its mask beside it
    (`_mask.png`), a caption file, and images grouped into identity subfolders."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        folder = root / f"person{i % identities}"
        folder.mkdir(exist_ok=True)
        img = (rng.random((size, size, 3)) * 90).astype(np.uint8)
        side = size // 2
        y, x = rng.integers(0, size - side, 2)
        colour = np.array([230, 180, 150]) + rng.integers(-20, 20, 3)
        img[y:y + side, x:x + side] = np.clip(colour + rng.integers(-10, 10, (side, side, 3)), 0, 255)
        mask = np.zeros((size, size), np.uint8)
        mask[y:y + side, x:x + side] = 255
        Image.fromarray(img).save(folder / f"img{i}.png")
        Image.fromarray(mask).save(folder / f"img{i}_mask.png")
        (folder / f"img{i}.txt").write_text(f"a photo of person {i % identities}", encoding="utf-8")
    return root


def write_identities(root: Path, mapping: dict) -> None:
    (root / "identities.json").write_text(json.dumps(mapping), encoding="utf-8")


# A small SDXL-layout UNet: SDXL's levels and widths over 32 channels, one transformer per attention.
TINY_SDXL_OVERRIDES = dict(model_channels=32, transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                           transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
TINY_SDXL_LAYOUT = UNetAttentionConfig(
    "sdxl_tiny1", 2048, down=(("down_blocks.1", 64, 2, 1), ("down_blocks.2", 128, 2, 1)),
    up=(("up_blocks.0", 128, 3, 1), ("up_blocks.1", 64, 3, 1)), mid=("mid_block", 128, 1, 1))


def tiny_sdxl_patcher(seed: int = 0):
    import comfy.model_patcher
    import comfy.supported_models

    from .sd_models import SDXL_UNET, init_random_

    unet = comfy.supported_models.SDXL(dict(SDXL_UNET, **TINY_SDXL_OVERRIDES)).get_model({}, device="cpu")
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(init_random_(unet, seed), cpu, cpu)


def tiny_visual_persona_groups(seed: int = 0, tokens: int = 16, encoder_width: int = 64) -> dict:
    """A one-block decoder (2048 wide, `tokens` queries per part) and ip_adapter for TINY_SDXL_LAYOUT (fp32)."""
    from partid.models.layouts.visual_persona import DecoderConfig, ip_adapter_layout

    from .visual_persona import decoder_state

    dec = DecoderConfig(tokens=tokens, layers=1, heads=8, width=2048, encoder_width=encoder_width, mlp_ratio=0.25)
    return {"image_proj": decoder_state(dec, seed=seed, dtype=torch.float32),
            "ip_adapter": random_state(ip_adapter_layout(TINY_SDXL_LAYOUT, 2048), seed + 1, dtype=torch.float32)}


def raw_vae_latent(model_space: torch.Tensor, base: str = "sd15") -> torch.Tensor:
    """The raw VAE latent that ComfyUI's process_latent_in turns into `model_space` (what the UNet sees).

    Synthetic prepares describe their latents as the UNet should see them; the dataset cache holds what a
    VAE's encode returns, which the trainer scales with the model's latent format, as KSampler does."""
    import comfy.latent_formats

    fmt = comfy.latent_formats.SD15() if base == "sd15" else comfy.latent_formats.SDXL()
    return fmt.process_out(model_space)
