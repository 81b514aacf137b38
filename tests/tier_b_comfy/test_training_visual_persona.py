"""PartID Train Visual Persona in the real ComfyUI, on real photos.

The node runs on the tiny SDXL-layout UNet (real ComfyUI modules, fixtures_builders/training.py) with a
reduced Visual Persona adapter sized for it (one decoder block, 16 tokens per part, 384-wide DINOv2
input), the random DINOv2 ViT-S/14 and SegFormer body parser through PartID's own loader nodes, and the
random SD1.5 checkpoint's VAE and CLIP-L text encoder. Stand-ins, because the real sizes do not train on
two shared CPU cores: the CLIP's 768-wide output is tiled to SDXL's 2048 context / 1280 pooled widths, and
the adapter format table gets one extra entry with the reduced shapes (base "sdxl_tiny1", whose UNet layout
is the tiny one), so the saved file goes through the Visual Persona Loader's real file reading, format
check and grouping.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from partid_rig import REPORT

pytestmark = pytest.mark.filterwarnings("ignore")


def run_node(comfy, name, **inputs):
    with torch.inference_mode():   # as ComfyUI's executor runs every node
        return comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS[name], **inputs)[0]


class WideClip:
    """A real CLIP text encoder whose outputs are tiled to SDXL's widths (context 2048, pooled 1280)."""

    def __init__(self, clip):
        self.clip = clip

    def tokenize(self, text):
        return self.clip.tokenize(text)

    def encode_from_tokens(self, tokens, return_pooled=False):
        cond, pooled = self.clip.encode_from_tokens(tokens, return_pooled=True)
        cond = torch.cat([cond, cond, cond], -1)[..., :2048]
        pooled = torch.cat([pooled, pooled], -1)[..., :1280]
        return (cond, pooled) if return_pooled else cond


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Astronaut and two people cropped from the group photo, in two identity folders."""
    from fixtures_builders.photos import astronaut, group_photo
    from PIL import Image

    root = tmp_path_factory.mktemp("vp_train") / "data"
    group = group_photo()
    h, w = group.shape[:2]
    side = min(h, w // 3)
    crops = {"person0/astronaut.png": astronaut(), "person1/left.png": group[:side, :side],
             "person1/middle.png": group[:side, w // 2 - side // 2:w // 2 + side // 2]}
    for rel, img in crops.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img)).save(root / rel)
    return root


@pytest.fixture(scope="module")
def tiny_vp(comfy, model_dirs):
    """The comfy-loaded pack's format table and UNet layouts extended with the reduced adapter; its file."""
    from fixtures_builders.training import TINY_SDXL_LAYOUT, tiny_visual_persona_groups
    from safetensors.torch import save_file

    pack = comfy.package.__name__
    formats = sys.modules[pack + ".models.formats"]
    layouts = sys.modules[pack + ".models.layouts.unet_attention"]
    vp_layouts = sys.modules[pack + ".models.layouts.visual_persona"]
    groups = tiny_visual_persona_groups(encoder_width=384)
    dec = vp_layouts.DecoderConfig(tokens=16, layers=1, heads=8, width=2048, encoder_width=384, mlp_ratio=0.25)
    layout = TINY_SDXL_LAYOUT
    tiny_format = dataclasses.replace(
        formats.VISUAL_PERSONA_SDXL, name="Visual Persona SDXL (reduced, test)", base="sdxl_tiny1",
        groups={"image_proj": (("image_proj",), vp_layouts.decoder_layout(dec), True),
                "ip_adapter": (("ip_adapter",), vp_layouts.ip_adapter_layout(layout, 2048), True)})
    assert not tiny_format.mismatches(groups)
    saved_formats = formats.ADAPTER_FORMATS
    formats.ADAPTER_FORMATS = (*saved_formats, tiny_format)
    layouts.UNETS["sdxl_tiny1"] = layout
    folder = Path(comfy.folder_paths.get_folder_paths("identity_adapters")[0])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "partid_test_tiny_vp.safetensors"
    save_file({f"{g}.{k}": v.contiguous() for g, vals in groups.items() for k, v in vals.items()}, str(path))
    yield path.name
    formats.ADAPTER_FORMATS = saved_formats
    del layouts.UNETS["sdxl_tiny1"]
    path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def clip_vae(sd15_clip_vae):
    clip, vae = sd15_clip_vae
    return WideClip(clip), vae


def test_node_is_registered(comfy):
    assert "PartIDTrainVisualPersona" in comfy.added
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDTrainVisualPersona"]
    node.VALIDATE_CLASS()
    required = set(node.GET_NODE_INFO_V1()["input"]["required"])
    assert {"model", "vae", "clip", "adapter", "dinov2", "body_parser", "folder", "train", "loc_weight",
            "loc_loss", "save_every", "resume", "output_name"} <= required


def test_trains_on_photos_and_the_loader_reads_the_result(comfy, model_dirs, tiny_vp, clip_vae, photos, caplog):
    from fixtures_builders.training import tiny_sdxl_patcher

    clip, vae = clip_vae
    (adapter,) = run_node(comfy, "PartIDVisualPersonaLoader", adapter=tiny_vp)
    (dinov2,) = run_node(comfy, "PartIDDINOv2Loader", dinov2="dinov2_vits14_pretrain.pth")
    (parser,) = run_node(comfy, "PartIDBodyParserLoader", parser="segformer_b2_clothes")
    original = {g: {k: v.half() for k, v in vals.items()} for g, vals in adapter.groups.items()}
    changed, lines, written = {}, [], []
    for train, group, other in (("id_kv", "ip_adapter", "image_proj"), ("decoder", "image_proj", "ip_adapter")):
        caplog.clear()
        with caplog.at_level("INFO", logger="partid.training"):
            trained, curve, path = run_node(
                comfy, "PartIDTrainVisualPersona", model=tiny_sdxl_patcher(), vae=vae, clip=clip, adapter=adapter,
                dinov2=dinov2, body_parser=parser, folder=str(photos), output_name=f"partid_test_vp_{train}",
                train=train, steps=2, batch_size=2, learning_rate=1e-2, precision="fp32", loc_weight=1.0,
                resolution=128, save_every=0, resume=False)
        written.append(Path(path))
        losses = [float(m) for m in re.findall(r"step \d+/2 loss (\S+)", caplog.text)]
        locs = [float(m) for m in re.findall(r"step \d+/2 loss .* loc (\S+)", caplog.text)]
        assert len(losses) == 2 and all(math.isfinite(x) for x in losses), caplog.text
        assert len(locs) == 2 and all(math.isfinite(x) and x != 0 for x in locs), caplog.text   # parts found
        assert curve.shape[0] == 1 and curve.shape[-1] == 3 and trained.family == "Visual Persona"
        (reloaded,) = run_node(comfy, "PartIDVisualPersonaLoader", adapter=Path(path).name)
        assert reloaded.groups.keys() == original.keys()
        assert all(torch.equal(reloaded.groups[other][k].half(), original[other][k]) for k in original[other])
        changed[train] = max(float((reloaded.groups[group][k].float() - original[group][k].float()).abs().max())
                             for k in original[group])
        assert changed[train] > 1e-3
        lines.append(f"{train}: losses {', '.join(f'{x:.4f}' for x in losses)} (loc {locs[0]:.4f}), {group} max change "
                     f"{changed[train]:.4f}, {other} unchanged")
    cache = list((photos / ".partid_cache").glob("*.safetensors"))
    assert len(cache) == 3                        # part features computed once per image, reused by run 2
    # The parser and DINOv2 ran under ComfyUI's model management; once the features were cached DINOv2 was dropped.
    assert parser._partid_body_parser.patcher is not None and not hasattr(dinov2, "_partid_dinov2")
    REPORT.append("Visual Persona trainer node (tiny SDXL, reduced adapter, DINOv2-S + SegFormer random, real "
                  "photos at 128 px, 2 steps x 2): " + "; ".join(lines))
    states = Path(comfy.folder_paths.get_output_directory()) / "partid_training"
    for p in [*written, *states.glob("partid_test_vp_*.state.*")]:
        p.unlink(missing_ok=True)


@pytest.mark.parametrize("change, named", [({"precision": "fp8"}, "precision"), ({"loc_loss": "l2"}, "loc_loss"),
                                           ({"model": "sd15"}, "model")])
def test_bad_inputs_are_named_before_any_image_is_prepared(comfy, model_dirs, tiny_vp, photos, change, named):
    """ComfyUI 0.3.64 does not check combo values; an SD1.5 MODEL was a bare ValueError after the dataset cache."""
    from fixtures_builders.sd_models import tiny_sd15_patcher
    from fixtures_builders.training import tiny_sdxl_patcher

    (adapter,) = run_node(comfy, "PartIDVisualPersonaLoader", adapter=tiny_vp)
    (dinov2,) = run_node(comfy, "PartIDDINOv2Loader", dinov2="dinov2_vits14_pretrain.pth")
    (parser,) = run_node(comfy, "PartIDBodyParserLoader", parser="segformer_b2_clothes")
    inputs = dict(model=tiny_sdxl_patcher(), vae=None, clip=None, adapter=adapter, dinov2=dinov2, body_parser=parser,
                  folder=str(photos), train="id_kv", precision="fp32", resume=False)
    inputs.update(change)
    if inputs["model"] == "sd15":
        inputs["model"] = tiny_sd15_patcher()
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDTrainVisualPersona"]
    with pytest.raises(ValueError) as err, torch.inference_mode():   # vae=None: preparing an image would crash
        node.execute(**inputs)
    assert type(err.value).__name__ == "InputError"
    assert "PartID Train Visual Persona" in str(err.value) and f"input '{named}'" in str(err.value)
