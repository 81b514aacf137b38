"""Patched SDXL cross-attention blocks (real ComfyUI SDXL layout) vs the official ConsistentID SDXL processor.

How tests/fixtures/consistentid_sdxl_attention_reference.pt was produced (once, by hand, in a scratch
folder outside the repo; the official code is not part of PartID and is not imported here):

1. JackAILab/ConsistentID at HEAD (Dec 2025): `attention.py` (Consistent_IPAttProcessor) and
   `functions.py` (ProjPlusModel), diffusers 0.42.1 (`Attention`, `LoRALinearLayer`), torch 2.14 CPU,
   fp32, no grad.
2. ProjPlusModel(cross_attention_dim=2048, id_embeddings_dim=512, clip_embeddings_dim=1280,
   num_tokens=4) loaded strictly with `image_proj_model` of the random ConsistentID_SDXL-v1.bin
   (fixtures_builders.adapters); tokens as the SDXL pipeline's get_image_embeds makes them:
   shortcut=True, scale 1.0; uncond = zero ArcFace with the uncond CLIP states.
3. Blocks (diffusers processor index of attn2, channels): down_blocks.1.attentions.1.transformer_blocks.1
   (7, 640), up_blocks.0.attentions.2.transformer_blocks.9 (107, 1280), mid_block.attentions.0.
   transformer_blocks.9 (139, 1280); each a diffusers `Attention(query_dim=C, cross_attention_dim=2048,
   heads=C/64, dim_head=64, bias=False, out_bias=True)` with `Consistent_IPAttProcessor(hidden_size=C,
   cross_attention_dim=2048, scale=1.0, rank=128, num_tokens=4)` loaded strictly with that index's
   `adapter_modules` (LoRA on q/k/v/out + to_k_ip/to_v_ip).
4. Inputs from torch.Generator().manual_seed(20251124), in this order: arcface = normalize(randn(1, 512));
   clip randn(1, 16, 1280); uncond clip randn(1, 16, 1280); ctx randn(2, 77, 2048); then per block:
   to_q randn(C, C)/sqrt(C), to_k, to_v randn(C, 2048)/sqrt(2048), to_out.0 randn(C, C)/sqrt(C),
   its bias randn(C) * 0.1, hidden randn(2, 16, C). Batch order [uncond, cond]; `out` = attn(hidden,
   encoder_hidden_states=cat([ctx, id tokens], dim=1)); `ip_effect` = max |out - out at scale 0|.

Here: PartID ConsistentID Apply's engine (ProjPlus with the SDXL shortcut, LoRA weight patches, the
decoupled attn2 patch) on a ModelPatcher of ComfyUI's SDXL model built on the meta device (the full
layout, no 10 GB of weights); each block's random attn2 weights are merged with its LoRA by
comfy.lora.calculate_weight (what ModelPatcher.patch_model calls per weight) and the block is computed
as BasicTransformerBlock's attn2 replace branch does: to_out(patch(to_q(n), to_k(ctx), to_v(ctx))).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from partid_rig import REPORT, TESTS

REFERENCE = TESTS / "fixtures" / "consistentid_sdxl_attention_reference.pt"
SEED = 20251124
# name -> (ComfyUI patch key, ComfyUI module path, channels)
BLOCKS = {"input.5.1": (("input", 5, 1), "input_blocks.5.1.transformer_blocks.1", 640),
          "output.2.9": (("output", 2, 9), "output_blocks.2.1.transformer_blocks.9", 1280),
          "middle.0.9": (("middle", 0, 9), "middle_block.1.transformer_blocks.9", 1280)}


def module_at(root, path):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def test_patched_sdxl_cross_attention_matches_the_official_processor(comfy):
    import comfy.lora
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders import adapters
    from fixtures_builders.sd_models import SDXL_UNET

    from partid.models import model_files
    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid

    ref = torch.load(REFERENCE, weights_only=True)
    gen = torch.Generator().manual_seed(SEED)
    arcface = F.normalize(torch.randn(1, 512, generator=gen), dim=-1)
    clip = torch.randn(1, 16, 1280, generator=gen)
    uncond_clip = torch.randn(1, 16, 1280, generator=gen)
    ctx = torch.randn(2, 77, 2048, generator=gen)

    cpu = torch.device("cpu")
    meta_sdxl = comfy.supported_models.SDXL(SDXL_UNET).get_model({}, device="meta")
    model = comfy.model_patcher.ModelPatcher(meta_sdxl, cpu, cpu)
    adapter = model_files.load_adapter(str(adapters.consistentid_bin("sdxl")), "ConsistentID")
    with torch.inference_mode():
        patched = apply_consistentid(model, adapter, arcface, ImageStates(clip, uncond_clip[0]))
    patches = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    assert len(patches) == 70
    source = patches[("middle", 0, 0)].groups[0].source
    tokens = torch.cat([source.tokens[1], source.tokens[0]])          # batch order [uncond, cond]
    token_rel = float((tokens - ref["id_tokens"]).abs().max() / ref["id_tokens"].abs().max())
    lines, worst = [f"ID tokens (ProjPlus shortcut) {token_rel:.1e}"], token_rel

    for name, (key, path, ch) in BLOCKS.items():
        weights = {"to_q": torch.randn(ch, ch, generator=gen) / ch ** 0.5,
                   "to_k": torch.randn(ch, 2048, generator=gen) / 2048 ** 0.5,
                   "to_v": torch.randn(ch, 2048, generator=gen) / 2048 ** 0.5,
                   "to_out.0": torch.randn(ch, ch, generator=gen) / ch ** 0.5}
        out_bias = torch.randn(ch, generator=gen) * 0.1
        hidden = torch.randn(2, 16, ch, generator=gen)
        attn2 = module_at(meta_sdxl.diffusion_model, path).attn2
        merged = {}
        for proj, w in weights.items():
            weight_key = f"diffusion_model.{path}.attn2.{proj}.weight"
            assert weight_key in patched.patches, f"no LoRA patch on {weight_key}"
            merged[proj] = comfy.lora.calculate_weight(patched.patches[weight_key], w.clone(), weight_key)
        extra = {"n_heads": attn2.heads, "dim_head": ch // attn2.heads, "cond_or_uncond": ref["batch_order"].tolist(),
                 "attn_precision": None, "sigmas": torch.ones(2)}
        with torch.inference_mode():
            q, k, v = (F.linear(hidden, merged["to_q"]), F.linear(ctx, merged["to_k"]), F.linear(ctx, merged["to_v"]))
            out = F.linear(patches[key](q, k, v, extra), merged["to_out.0"], out_bias)
        expected = ref[f"{name}.out"]
        rel = float((out - expected).abs().max() / expected.abs().max())
        lines.append(f"{name} ({ch} ch, {attn2.heads} heads) {rel:.1e} (ID-branch effect "
                     f"{float(ref[f'{name}.ip_effect']):.2f} of max {float(expected.abs().max()):.2f})")
        worst = max(worst, rel)
    REPORT.append("ConsistentID SDXL attention parity vs official Consistent_IPAttProcessor, max rel: "
                  + "; ".join(lines))
    assert worst < 1e-5
