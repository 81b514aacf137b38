"""Opt-in (PARTID_FULL_SDXL=1): the random ConsistentID SDXL adapter on a full-size SDXL UNet, one forward.

The default suite covers SDXL with a small-channel SDXL layout (its own adapter sizes) and installs the
real-size random SDXL adapter on the meta-device full-size layout (test_consistentid_nodes.py). This
test builds the full SDXL UNet on the CPU in bfloat16 (about 5 GB; about 9 GB peak with the adapter
and the LoRA backups) with random weights and runs ONE UNet forward at a 32x32 latent (cond and
uncond chunks) with ConsistentID applied through its node engine: every one of the 70 patched
cross-attention blocks fires, and the output is finite.
"""
from __future__ import annotations

import os

import pytest
import torch

pytestmark = pytest.mark.skipif(os.environ.get("PARTID_FULL_SDXL") != "1",
                                reason="full-size SDXL on the CPU: set PARTID_FULL_SDXL=1 (minutes, ~9 GB RAM)")


def test_full_size_sdxl_forward_with_the_real_random_adapter(comfy):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders import adapters
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    from partid.models import model_files
    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid

    config = comfy.supported_models.SDXL(SDXL_UNET)
    config.set_inference_dtype(torch.bfloat16, None)
    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(init_random_(config.get_model({}, device="cpu"), 0), cpu, cpu)
    adapter = model_files.load_adapter(str(adapters.consistentid_bin("sdxl")), "ConsistentID")
    gen = torch.Generator().manual_seed(0)
    states = ImageStates(torch.randn(1, 257, 1280, generator=gen), torch.randn(257, 1280, generator=gen))
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=gen), dim=-1)
    with torch.inference_mode():
        patched = apply_consistentid(model, adapter, embeds, states)
    del adapter
    calls = []
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    for key, patch in list(replace.items()):
        def spy(q, k, v, extra, patch=patch, key=key):
            out = patch(q, k, v, extra)
            calls.append((key, bool(torch.isfinite(out).all())))
            return out
        patched.set_model_attn2_replace(spy, *key)
    x = torch.randn(2, 4, 32, 32, generator=gen)
    context = torch.randn(2, 77, 2048, generator=gen)
    sigmas = torch.full((2,), 5.0)
    options = dict(patched.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigmas)
    patched.patch_model()
    try:
        with torch.inference_mode():
            out = patched.model.apply_model(x, sigmas, c_crossattn=context, y=torch.zeros(2, 2816),
                                            transformer_options=options)
    finally:
        patched.unpatch_model()
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert len(calls) == 70 and all(ok for _, ok in calls) and len({k for k, _ in calls}) == 70
