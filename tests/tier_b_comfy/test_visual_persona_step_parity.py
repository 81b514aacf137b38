"""One SDXL UNet step with PartID Visual Persona Apply vs the original Visual Persona processors.

How tests/fixtures/visual_persona_step_reference.npz was produced (once, by hand, in a scratch folder
outside the repo; the original code is not part of PartID and is not imported here):

1. cvlab-kaist/Visual-Persona at d393d09: `AttnProcessor2_0` and `IPAttnProcessor2_0` of
   model/visual_persona/attention_processor.py (the classes vp_test.py picks under torch 2) attached
   exactly as `Visual_Persona.set_ip_adapter` does (IP processor on every attn2, num_tokens 1024),
   weights loaded as `load_ip_adapter` does (`ModuleList(unet.attn_processors.values())
   .load_state_dict(state_dict["ip_adapter"])`, strict), the scale set as `set_scale` does;
   diffusers 0.42.1 `UNet2DConditionModel` with the SDXL base config; torch 2.14 CPU, fp32 (the
   original runs fp16 on a GPU), no grad.
2. UNet weights: ComfyUI's SDXL model built from fixtures_builders.sd_models.SDXL_UNET, randomised by
   init_random_(seed 0) (the same weights as here), renamed for diffusers with
   comfy.utils.unet_to_diffusers and loaded strictly. Two layouts:
   "tiny"  model_channels 32 (ComfyUI's SDXL keeps 64-channel heads; diffusers block_out_channels
           (32, 64, 128), attention_head_dim (1, 1, 2)): the real SDXL depths, 70 cross-attention
           blocks, 64/128 wide (1/2 heads);
           ip_adapter = random_state({(to_k_ip, to_v_ip) shapes of the diffusers processors in
           attn_processors order}, seed 2, fp16), i.e. built from diffusers' order, not PartID's layout;
   "full"  the SDXL base (320/640/1280, 2.6 G parameters); ip_adapter of the random official-layout
           weight.bin (fixtures_builders.visual_persona.visual_persona_bin()).
3. Inputs from torch.Generator().manual_seed(20251123), in this order: sample randn(2, 4, 16, 16);
   text randn(2, 77, 2048); pooled randn(2, 1280); sizes randint(64, 192, (2, 4)) * 8 (orig h, w,
   target h, w); crops randint(0, 16, (2, 2)) * 8 (top, left); identity tokens cond randn(1, 1024,
   2048), then uncond randn(1, 1024, 2048). time_ids = (orig h, orig w, top, left, target h, target w).
   Batch order [uncond, cond] as the SDXL pipeline's CFG batch; encoder_hidden_states =
   cat([text, identity tokens], dim=1) as vp_test.generate builds prompt_embeds; timestep 500.
4. `out` = unet(...).sample with the IP scale 0.7 (the released scripts'), `out_scale0` with scale 0.

Here: the same random UNet in ComfyUI's SDXL class inside a ModelPatcher, PartID's Visual Persona
Apply engine (apply_visual_persona: ip_adapter weights through PartID's layout, the identity tokens
as IdentityTokens of 4 parts x 256), one model.apply_model call as the sampler makes it
(transformer_options with cond_or_uncond [1, 0]) at sigma = sigmas[500]; eps recovered from the
denoised output. The plain model's step is compared with the original at scale 0 as well, so a
mismatch of the base UNet and one of the identity path are told apart. "tiny" runs by default (about
a minute); "full" is opt-in (PARTID_FULL_SDXL=1: 13 GB peak RAM, about 3-4 minutes on 2 CPU cores;
run it under `flock /tmp/partid-heavy.lock`).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from partid_rig import REPORT, TESTS

REFERENCE = TESTS / "fixtures" / "visual_persona_step_reference.npz"
SEED, WEIGHT_SEED, IP_SEED, STEP, SCALE, PART_TOKENS = 20251123, 0, 2, 500, 0.7, 256
TINY_CH = 32
LAYOUTS = {"tiny": {"model_channels": TINY_CH}, "full": {}}
FULL = pytest.mark.skipif(os.environ.get("PARTID_FULL_SDXL") != "1",
                          reason="full-size SDXL in fp32 on the CPU: set PARTID_FULL_SDXL=1 (minutes, ~13 GB RAM)")


def reference_inputs():
    gen = torch.Generator().manual_seed(SEED)
    sample = torch.randn(2, 4, 16, 16, generator=gen)
    text = torch.randn(2, 77, 2048, generator=gen)
    pooled = torch.randn(2, 1280, generator=gen)
    sizes = torch.randint(64, 192, (2, 4), generator=gen) * 8
    crops = torch.randint(0, 16, (2, 2), generator=gen) * 8
    id_cond = torch.randn(1, 4 * PART_TOKENS, 2048, generator=gen)
    id_uncond = torch.randn(1, 4 * PART_TOKENS, 2048, generator=gen)
    return sample, text, pooled, sizes, crops, id_cond, id_uncond


def tiny_layout():
    from partid.models.layouts.unet_attention import UNetAttentionConfig

    c2, c4 = 2 * TINY_CH, 4 * TINY_CH
    return UNetAttentionConfig("sdxl_tiny", 2048, down=(("down_blocks.1", c2, 2, 2), ("down_blocks.2", c4, 2, 10)),
                               up=(("up_blocks.0", c4, 3, 10), ("up_blocks.1", c2, 3, 2)), mid=("mid_block", c4, 1, 10))


def adapter_for(kind):
    from fixtures_builders.random_weights import random_state

    from partid.models import formats, model_files
    from partid.models.layouts.visual_persona import ip_adapter_layout

    if kind == "tiny":
        groups = {"ip_adapter": random_state(ip_adapter_layout(tiny_layout(), 2048), IP_SEED, dtype=torch.float16)}
        return model_files.AdapterWeights(formats.VISUAL_PERSONA_SDXL, "tiny_vp.bin", groups)
    from fixtures_builders.visual_persona import visual_persona_bin

    adapter = model_files.load_adapter(str(visual_persona_bin()), "Visual Persona")
    adapter.groups.pop("image_proj")  # the decoder (1 GB) is not used by the UNet side
    return adapter


def eps_of(patcher, x, sigmas, text, y):
    """The UNet's eps from one apply_model call as the sampler makes it (EPS: denoised = x - sigma * eps)."""
    options = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0], sigmas=sigmas)
    patcher.patch_model()
    try:
        with torch.inference_mode():
            denoised = patcher.model.apply_model(x, sigmas, c_crossattn=text, y=y, transformer_options=options)
    finally:
        patcher.unpatch_model()
    return (x - denoised) / sigmas[0]


def partid_step(kind):
    """eps with PartID Visual Persona Apply, eps of the plain model, and the count of K/V projections made."""
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    from partid.models.identity_tokens import IdentityTokens
    from partid.models.layouts.unet_attention import SDXL
    from partid.models.visual_persona import PART_NAMES
    from partid.nodes.visual_persona_apply import apply_visual_persona
    from partid.nodes.visual_persona_encode import SOURCE

    sample, text, pooled, sizes, crops, id_cond, id_uncond = reference_inputs()
    adapter = adapter_for(kind)
    cpu = torch.device("cpu")
    model = init_random_(comfy.supported_models.SDXL(dict(SDXL_UNET, **LAYOUTS[kind])).get_model({}, device="cpu"),
                         WEIGHT_SEED)
    assert model.get_dtype() == torch.float32
    patcher = comfy.model_patcher.ModelPatcher(model, cpu, cpu)
    identity = IdentityTokens(id_cond, id_uncond, tuple(PART_NAMES[1:5]), (PART_TOKENS,) * 4, (1.0,) * 4, SOURCE)
    patched = apply_visual_persona(patcher, adapter, identity, weight=SCALE,
                                   layout=tiny_layout() if kind == "tiny" else SDXL)
    del adapter
    source = patched.model_options["transformer_options"]["patches_replace"]["attn2"][("middle", 0, 0)].groups[0].source
    ms = patched.get_model_object("model_sampling")
    sigmas = ms.sigmas[STEP].reshape(1).repeat(2)
    assert int(ms.timestep(sigmas)[0]) == STEP
    x = sample * (sigmas[0] ** 2 + 1) ** 0.5     # apply_model divides by sqrt(sigma^2 + 1) (EPS)
    y = torch.cat([model.encode_adm(pooled_output=pooled[i:i + 1], height=int(sizes[i, 0]), width=int(sizes[i, 1]),
                                    crop_h=int(crops[i, 0]), crop_w=int(crops[i, 1]),
                                    target_height=int(sizes[i, 2]), target_width=int(sizes[i, 3]))
                   for i in range(2)])
    return eps_of(patched, x, sigmas, text, y), eps_of(patcher, x, sigmas, text, y), source.projection_count


def check(kind):
    ref = np.load(REFERENCE)
    expected, without_identity = (torch.from_numpy(ref[f"{kind}.out"]), torch.from_numpy(ref[f"{kind}.out_scale0"]))
    eps, plain, projections = partid_step(kind)
    peak = float(expected.abs().max())
    diff = float((eps - expected).abs().max())
    plain_diff = float((plain - without_identity).abs().max())
    effect = float((eps - plain).abs().max())
    REPORT.append(f"Visual Persona SDXL step parity ({kind} UNet, 70 patched blocks, fp32) vs original "
                  f"IPAttnProcessor2_0 at scale {SCALE}: max abs {diff:.1e}, max rel {diff / peak:.1e} (output max "
                  f"{peak:.2f}); unpatched vs original at scale 0: max rel {plain_diff / peak:.1e}; identity effect "
                  f"{effect:.2f} (original: {float((expected - without_identity).abs().max()):.2f})")
    assert projections == 140          # cond and uncond tokens projected once in each of the 70 blocks
    assert diff / peak < 1e-4 and plain_diff / peak < 1e-4
    assert effect > 1000 * diff        # the identity branch changes the output far beyond the mismatch


def test_tiny_sdxl_step_matches_the_original_processors(comfy):
    check("tiny")


@FULL
def test_full_sdxl_step_matches_the_original_processors(comfy):
    check("full")
