"""One patched cross-attention block of the real ComfyUI SD1.5 UNet vs the official ConsistentID processor.

How tests/fixtures/consistentid_attention_reference.pt was produced (once, by hand, in a scratch
folder outside the repo; the official code is not part of PartID and is not imported here):

1. JackAILab/ConsistentID at HEAD (Dec 2025): `attention.py` (Consistent_IPAttProcessor) and
   `functions.py` (ProjPlusModel) unchanged, with diffusers 0.42.1 (its `Attention` and
   `LoRALinearLayer`), torch 2.14 CPU, fp32, no grad.
2. Weights: attn2 to_q/to_k/to_v/to_out.0 of the random full-size SD1.5 checkpoint
   (fixtures_builders.sd_models.sd15_checkpoint) for middle_block.1.transformer_blocks.0 (diffusers
   mid_block, adapter index 31, 1280 channels) and input_blocks.1.1.transformer_blocks.0
   (down_blocks.0.attentions.0, index 1, 320 channels), loaded into diffusers `Attention(query_dim=C,
   cross_attention_dim=768, heads=8, dim_head=C/8, bias=False, out_bias=True)`;
   `Consistent_IPAttProcessor(hidden_size=C, cross_attention_dim=768, rank=128, num_tokens=4,
   scale=1.0)` loaded strictly with `adapter_modules` index 31 / 1 of the random ConsistentID-v1.bin
   (fixtures_builders.adapters), ProjPlusModel with its `image_proj`; all fp16 tensors cast to fp32.
3. Inputs from torch.Generator().manual_seed(20251123), in this order: arcface = normalize(randn(1,
   512)); clip_q, uncond_clip_q = int8 q8 of (1, 16, 1280) each (16 CLIP tokens instead of 257: the
   Perceiver takes any count); ctx_q = q8 (2, 77, 768); then per block hidden_q = q8 (2, 16, C).
   q8 = clamp(round(16 * randn), -127, 127); real values q / 16.
4. ID tokens: ProjPlusModel(arcface, clip, shortcut=False) (cond) and ProjPlusModel(zeros, uncond clip)
   (uncond), stacked in batch order [uncond, cond]; `out` = attn(hidden, encoder_hidden_states=
   cat([ctx, id_tokens], dim=1)) per block (the official pipeline appends the 4 ID tokens to the text).
   `ip_effect` = max |out - out with the processor's scale set to 0|.

Here: PartID ConsistentID Apply's engine (apply_consistentid: ProjPlus, LoRA weight patches, the
decoupled attn2 patch) on the ModelPatcher of the same checkpoint; the block is computed as
BasicTransformerBlock's attn2 replace branch does it: to_out(patch(to_q(n), to_k(ctx), to_v(ctx))),
with the LoRA merged by ModelPatcher.patch_model() and cond_or_uncond = [1, 0].
"""
from __future__ import annotations

import pytest
import torch
from partid_rig import REPORT, TESTS

REFERENCE = TESTS / "fixtures" / "consistentid_attention_reference.pt"
BLOCKS = {"middle.0.0": (("middle", 0, 0), "middle_block.1.transformer_blocks.0"),
          "input.1.0": (("input", 1, 0), "input_blocks.1.1.transformer_blocks.0")}


@pytest.fixture(scope="module")
def sd15(comfy, model_dirs):
    from comfy.sd import load_checkpoint_guess_config

    path = comfy.folder_paths.get_full_path_or_raise("checkpoints", "partid_random_sd15.safetensors")
    return load_checkpoint_guess_config(path, output_vae=False, output_clip=False)[0]


def module_at(root, path):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def test_patched_cross_attention_matches_the_official_processor(sd15):
    from fixtures_builders import adapters

    from partid.models import model_files
    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid

    ref = torch.load(REFERENCE, weights_only=True)
    scale = float(ref["q_scale"])
    adapter = model_files.load_adapter(str(adapters.consistentid_bin("sd15")), "ConsistentID")
    states = ImageStates(ref["clip_q"].float() / scale, ref["uncond_clip_q"][0].float() / scale)
    with torch.inference_mode():
        patched = apply_consistentid(sd15, adapter, ref["arcface"], states)
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    source = patches[("middle", 0, 0)].groups[0].source
    tokens = torch.cat([source.tokens[1], source.tokens[0]])          # batch order [uncond, cond]
    token_rel = float((tokens - ref["id_tokens"]).abs().max() / ref["id_tokens"].abs().max())
    ctx = ref["ctx_q"].float() / scale
    lines, worst = [f"ID tokens {token_rel:.1e}"], token_rel
    before = {k: v.clone() for k, v in sd15.model.state_dict().items() if ".attn2." in k and "middle_block" in k}
    patched.patch_model()
    try:
        for name, (key, path) in BLOCKS.items():
            attn2 = module_at(patched.model.diffusion_model, path).attn2
            hidden = ref[f"{name}.hidden_q"].float() / scale
            extra = {"n_heads": attn2.heads, "dim_head": attn2.to_q.weight.shape[0] // attn2.heads,
                     "cond_or_uncond": ref["batch_order"].tolist(), "attn_precision": None,
                     "sigmas": torch.ones(2)}
            with torch.inference_mode():
                out = attn2.to_out(patches[key](attn2.to_q(hidden), attn2.to_k(ctx), attn2.to_v(ctx), extra))
            expected = ref[f"{name}.out"]
            rel = float((out - expected).abs().max() / expected.abs().max())
            lines.append(f"{name} ({attn2.to_q.weight.shape[0]} ch) {rel:.1e} (ID-branch effect "
                         f"{float(ref[f'{name}.ip_effect']):.2f} of max {float(expected.abs().max()):.2f})")
            worst = max(worst, rel)
    finally:
        patched.unpatch_model()
    after = sd15.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # LoRA merged only while patched
    REPORT.append("ConsistentID attention parity vs official Consistent_IPAttProcessor, max rel: " + "; ".join(lines))
    assert worst < 1e-5
