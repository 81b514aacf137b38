"""Our generated official layouts equal the shapes the official classes produce.

Fixture `consistentid_checkpoint_layout.json` was produced by instantiating the official
ConsistentID classes (ProjPlusModel, FacialEncoder, the LoRA/IP attention processors of a diffusers
UNet) for SD1.5 and SDXL and dumping every key and shape, plus diffusers' processor order.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from partid.models.layouts.consistentid import consistentid_layout
from partid.models.layouts.dinov2 import DINOV2_SIZES, dinov2_hub_layout
from partid.models.layouts.unet_attention import SD15, SDXL, attention_processors
from partid.models.layouts.visual_persona import ip_adapter_layout

REFERENCE = json.loads((Path(__file__).parent.parent / "fixtures" / "consistentid_checkpoint_layout.json").read_text())


@pytest.mark.parametrize("variant", ["sd15", "sdxl"])
def test_consistentid_layout_matches_official_classes(variant):
    ours = consistentid_layout(variant)
    ref = REFERENCE[variant]
    proj = "image_proj" if variant == "sd15" else "image_proj_model"
    for group, ref_group in (("image_proj", proj), ("FacialEncoder", "FacialEncoder"),
                             ("adapter_modules", "adapter_modules")):
        expected = {k: tuple(v) for k, v in ref[group]["shapes"].items()}
        assert ours[ref_group] == expected, group
        numel = sum(__import__("math").prod(s) for s in ours[ref_group].values())
        assert numel == ref[group]["numel"]


@pytest.mark.parametrize("unet,variant,cross", [(SD15, "sd15", 16), (SDXL, "sdxl", 70)])
def test_processor_order_matches_diffusers(unet, variant, cross):
    procs = attention_processors(unet)
    assert {str(p.index): p.name for p in procs} == REFERENCE[variant]["proc_index"]
    assert sum(p.cross for p in procs) == cross


def test_visual_persona_ip_layout_indices():
    layout = ip_adapter_layout()
    indices = sorted({int(k.split(".")[0]) for k in layout})
    assert indices == list(range(1, 140, 2))  # 70 processors, odd = attn2
    assert layout["1.to_k_ip.weight"] == (640, 2048) and layout["121.to_k_ip.weight"] == (1280, 2048)
    assert layout["109.to_v_ip.weight"] == (640, 2048)


def test_dinov2_giant_parameter_count():
    layout = dinov2_hub_layout(DINOV2_SIZES["vitg14"])
    total = sum(__import__("math").prod(s) for s in layout.values())
    assert layout["blocks.39.mlp.w12.weight"] == (8192, 1536)
    assert 1.13e9 < total < 1.14e9  # ViT-g/14 is 1.1 B parameters
