"""SD1.5 models built with the real ComfyUI: a full-size random checkpoint and a tiny in-process UNet.

Only imported when ComfyUI is importable (tiers B and C).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .cache import cached

# What ComfyUI's model detection derives from an SD1.5 checkpoint.
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
# ComfyUI's detected SDXL base config (comfy/model_detection.py).
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
# Same layout (attention at every level, 768-wide context), 32 channels: milliseconds per step.
TINY_SD15_UNET = dict(SD15_UNET, model_channels=32, num_res_blocks=[1, 1], channel_mult=[1, 2],
                      transformer_depth=[1, 1, 1, 1], transformer_depth_output=[1, 1, 1, 1, 1, 1])
SD15_VAE = dict(double_z=True, z_channels=4, resolution=256, in_channels=3, out_ch=3, ch=128, ch_mult=[1, 2, 4, 4],
                num_res_blocks=2, attn_resolutions=[], dropout=0.0)


NORMS = (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)


def init_random_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """ComfyUI builds layers without initialising them: give every tensor small random values.

    Normalisation layers get unit scales (chosen by module type: many are named `out.0`,
    `in_layers.0`), everything 1-d else zero bias, matrices fan-in-scaled noise.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:
                p.fill_(1.0 if "scale" in name else 0.0)
            elif p.ndim == 1:
                p.zero_()
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
        for m in module.modules():
            if isinstance(m, NORMS) and getattr(m, "weight", None) is not None:
                m.weight.fill_(1.0)
    return module


def sd15_model(unet_config: dict, seed: int = 0):
    import comfy.supported_models

    config = comfy.supported_models.SD15(unet_config)
    model = config.get_model({}, device="cpu")
    return init_random_(model, seed)


def tiny_sd15_patcher(seed: int = 0):
    """A tiny SD1.5-layout UNet inside a real ModelPatcher."""
    import comfy.model_patcher

    model = sd15_model(TINY_SD15_UNET, seed)
    return comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))


def import_comfyui() -> None:
    """The checkpoint builders use ComfyUI's own model classes. In a run of tier C alone nothing has imported
    ComfyUI in this process yet: import it as the tier-B fixture does (CPU, its `utils` before comfy's)."""
    import sys

    if "comfy.cli_args" in sys.modules:
        return
    from partid_rig import COMFYUI

    if COMFYUI not in sys.path:
        sys.path.insert(0, COMFYUI)
    import utils.extra_config  # noqa: F401
    import comfy.cli_args

    comfy.cli_args.args.cpu = True


def sd15_checkpoint() -> Path:
    """A full-size SD1.5 checkpoint (UNet + CLIP-L + VAE, fp16 safetensors, about 2.1 GB), random weights."""
    def build(path):
        import_comfyui()
        import comfy.ldm.models.autoencoder
        import comfy.sd1_clip
        from safetensors.torch import save_file

        model = sd15_model(SD15_UNET, 0)
        clip = init_random_(comfy.sd1_clip.SD1ClipModel(device="cpu", dtype=torch.float32), 1)
        clip_sd = clip.state_dict()
        vae = init_random_(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4), 2)
        sd = model.state_dict_for_saving(clip_sd, vae.state_dict(), None)
        sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()
              if not k.endswith("position_ids") and "logit_scale" not in k}
        save_file(sd, str(path))

    return cached("checkpoints/partid_random_sd15.safetensors", build)


def sdxl_checkpoint() -> Path:
    """A full-size SDXL base checkpoint in the layout of sd_xl_base_1.0.safetensors (UNet `model.diffusion_model.`,
    CLIP-L `conditioner.embedders.0.transformer.`, open_clip CLIP-G `conditioner.embedders.1.model.`, VAE
    `first_stage_model.`), fp16, random weights: about 6.9 GB. Built with ComfyUI's own SDXL classes and its
    saving conversion, so CheckpointLoaderSimple detects it as SDXL."""
    def build(path):
        import_comfyui()
        import comfy.ldm.models.autoencoder
        import comfy.sdxl_clip
        import comfy.supported_models
        from safetensors.torch import save_file

        config = comfy.supported_models.SDXL(dict(SDXL_UNET))
        config.set_inference_dtype(torch.float16, None)      # build in fp16: halves the builder's memory
        model = init_random_(config.get_model({}, device="cpu"), 10)
        clip = init_random_(comfy.sdxl_clip.SDXLClipModel(device="cpu", dtype=torch.float16), 11)
        vae = init_random_(comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=SD15_VAE, embed_dim=4), 12)
        sd = model.state_dict_for_saving(clip.state_dict(), vae.state_dict(), None)
        del model, clip, vae
        sd = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        save_file(sd, str(path))

    return cached("checkpoints/partid_random_sdxl.safetensors", build)
