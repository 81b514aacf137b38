"""DINOv2 (models/dinov2.py): strict loads of the torch-hub layout for every size, the transformers
folder layout, and measured parity with the original facebookresearch code.

How the DINOv2 entries of tests/fixtures/visual_persona_reference.npz were produced (once, by hand,
in a scratch folder outside the repo; no original code is part of PartID or imported here):

1. github.com/facebookresearch/dinov2 at commit 81b2b64 (`git archive`), the version Visual Persona
   vendors in `model/dinov2` (VP's vision_transformer.py reads the same up to formatting and import
   paths: `interpolate(scale_factor=((w0 + 0.1) / sqrt(N), ...))`; its layers/ are not in the stored
   index and are taken as 81b2b64's: explicit-matmul attention without xFormers).
   XFORMERS_DISABLED=1, torch 2.14 CPU, fp32, no grad.
2. `vit_small(patch_size=14, img_size=518, init_values=1.0, ffn_layer="mlp", block_chunks=0)` (the hub
   constructor's arguments), `load_state_dict(strict=True)` of fixtures_builders.parsers.dinov2_hub_pth(
   "vits14") (random, seed 3, fp32).
3. Inputs: (a) the five part images of the astronaut as the ORIGINAL Visual Persona preprocessing
   makes them (see test_visual_persona_engine.py; CLIP-normalised fp32, shoes = zeros), [5,3,224,224];
   stored: `dino_cls` [5,384] and `dino_face_patchtokens` = x_norm_patchtokens[1] [256,384].
   (b) a non-square input: q = int8(clamp(round(24 * randn(1,3,126,182)), -127, 127)) from
   torch.Generator().manual_seed(20251123), pixels = q / 24 (exact in fp32); stored: `dino_nonsquare_*`.
4. `transformers4_vs_original_max_abs`: transformers 4.57.1 Dinov2Model on the same weights and input (a),
   max |last_hidden_state[:, 1:] - x_norm_patchtokens| (its size=(16,16) interpolation).

Also checked by hand in that scratch folder, not stored (too slow for CI on 2 cores, ~20 s a forward):
- upstream HEAD (b8931f7, SDPA attention): bitwise equal to ours on ViT-S/14 at 224, 518 and 168x252.
- ViT-g/14 (SwiGLU, hidden 4096, 1,136,480,768 parameters; random_state(dinov2_hub_layout(vitg14),
  seed=3, fp32); one randn(1,3,224,224) input, Generator seed 7): 81b2b64 vs ours, patch tokens max abs
  2.6e-6 (rel 3.9e-7), cls 1.7e-6; strict load of the same state dict into both.
- transformers 5.23 Dinov2Model with SwiGLU (width 96, depth 2) at 518x518 (no interpolation): bitwise
  equal to ours, so position-embedding interpolation is the only difference between the two.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fixtures_builders import photos
from fixtures_builders.parsers import dinov2_hub_pth
from fixtures_builders.visual_persona import astronaut_masks, dinov2_transformers_folder, transformers_state_from_hub
from partid_rig import REPORT, TESTS

from partid.models import model_files
from partid.models.dinov2 import DINOv2, hub_state_from_transformers
from partid.models.errors import ModelFileError
from partid.models.layouts.dinov2 import DINOV2_SIZES, dinov2_hub_layout
from partid.models.visual_persona.part_images import part_images, vp_mask_from_png

REFERENCE = TESTS / "fixtures" / "visual_persona_reference.npz"
TOLERANCE = 1e-5            # relative: max |ours - original| / max |original|, fp32


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(REFERENCE))


@pytest.fixture(scope="module")
def hub_model():
    return DINOv2.from_weights(model_files.load_dinov2(str(dinov2_hub_pth("vits14"))))


@pytest.fixture(scope="module")
def astronaut_parts():
    masks = np.stack([vp_mask_from_png(m) for m in astronaut_masks()])
    return part_images(photos.astronaut(), masks).pixels[0]


def _rel(ours: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    ref_t = torch.from_numpy(ref)
    diff = (ours - ref_t).abs().max().item()
    return diff, diff / ref_t.abs().max().item()


@pytest.mark.parametrize("size", list(DINOV2_SIZES))
def test_every_hub_size_has_the_hub_layout(size):
    cfg = DINOV2_SIZES[size]
    with torch.device("meta"):
        model = DINOv2(cfg)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == dinov2_hub_layout(cfg)


def test_hub_file_loads_strict(hub_model):
    state = torch.load(dinov2_hub_pth("vits14"), weights_only=True)
    assert set(hub_model.state_dict()) == set(state)
    assert hub_model.config == DINOV2_SIZES["vits14"]
    broken = dict(state)
    broken.pop("mask_token")
    with pytest.raises(ModelFileError, match="torch-hub layout"):
        DINOv2.from_state_dict(broken)


@torch.no_grad()
def test_parity_with_original_code(hub_model, reference, astronaut_parts):
    patches, cls = hub_model(astronaut_parts)
    assert patches.shape == (5, 256, 384)
    d_face = _rel(patches[1], reference["dino_face_patchtokens"])
    d_cls = _rel(cls, reference["dino_cls"])
    x = torch.from_numpy(reference["dino_nonsquare_input_q24"]).float() / 24
    p2, c2 = hub_model(x)
    assert p2.shape == (1, 9 * 13, 384)
    d_ns = _rel(p2[0], reference["dino_nonsquare_patchtokens"])
    d_ns_cls = _rel(c2[0], reference["dino_nonsquare_cls"])
    REPORT.append(f"DINOv2 ViT-S/14 vs original (81b2b64): 224 patch tokens max abs {d_face[0]:.2e} (rel {d_face[1]:.1e}),"
                  f" cls {d_cls[0]:.2e}; 126x182 patch tokens {d_ns[0]:.2e} (rel {d_ns[1]:.1e})")
    for abs_rel in (d_face, d_cls, d_ns, d_ns_cls):
        assert abs_rel[1] < TOLERANCE


def test_position_embeddings_use_the_original_scale_factor(hub_model):
    pos = hub_model.pos_embed.detach()
    assert hub_model.interpolate_pos_encoding(37 * 37, 37, 37, torch.float32) is hub_model.pos_embed
    got = hub_model.interpolate_pos_encoding(256, 16, 16, torch.float32)
    grid = pos[:, 1:].reshape(1, 37, 37, -1).permute(0, 3, 1, 2)
    want = F.interpolate(grid, scale_factor=(16.1 / 37, 16.1 / 37), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 256, -1)
    by_size = F.interpolate(grid, size=(16, 16), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 256, -1)
    assert torch.equal(got[:, 1:], want) and torch.equal(got[:, :1], pos[:, :1])
    assert (got[:, 1:] - by_size).abs().max() > 1e-3        # a size is not the same as the scale factor


def test_transformers_folder_loads_to_the_same_network(hub_model):
    weights = model_files.load_dinov2(str(dinov2_transformers_folder("vits14")))
    assert weights.layout == "transformers"
    model = DINOv2.from_weights(weights)
    ours = hub_model.state_dict()
    assert all(torch.equal(v, ours[k]) for k, v in model.state_dict().items())


def test_transformers_in_memory_names_convert_too():
    transformers = pytest.importorskip("transformers")
    state = torch.load(dinov2_hub_pth("vits14"), weights_only=True)
    model = transformers.Dinov2Model.from_pretrained(str(dinov2_transformers_folder("vits14")))
    back = hub_state_from_transformers(model.state_dict())       # transformers 5 names q_proj/o_proj/...
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    assert set(hub_state_from_transformers(transformers_state_from_hub(state))) == set(state)


@torch.no_grad()
def test_transformers_dinov2model_differs_measured(hub_model, reference, astronaut_parts):
    """transformers interpolates position embeddings with size=(16,16): report how far that lands."""
    transformers = pytest.importorskip("transformers")
    model = transformers.Dinov2Model.from_pretrained(str(dinov2_transformers_folder("vits14"))).eval()
    hidden = model(pixel_values=astronaut_parts[1:2]).last_hidden_state[0, 1:]
    diff, rel = _rel(hidden, reference["dino_face_patchtokens"])
    pos = model.embeddings.interpolate_pos_encoding(torch.zeros(1, 257, 384), 224, 224)
    pos_diff = (pos - hub_model.interpolate_pos_encoding(256, 16, 16, torch.float32)).abs().max().item()
    REPORT.append(f"DINOv2 ViT-S/14: transformers {transformers.__version__} Dinov2Model vs original, face part: max abs "
                  f"{diff:.3g} (rel {rel:.1e}); its 16x16 position embeddings differ by up to {pos_diff:.3g}; "
                  f"transformers 4.57.1 over all five part images at fixture time: "
                  f"{float(reference['transformers4_vs_original_max_abs']):.3g}")
    assert hidden.shape == (256, 384)


@torch.no_grad()
def test_half_precision_runs(hub_model, astronaut_parts):
    model = DINOv2.from_state_dict(hub_model.state_dict(), dtype=torch.bfloat16)
    small = astronaut_parts[1:2, :, :70, :70]                       # 5x5 patches: cheap, still interpolated
    patches, _ = model(small.bfloat16())
    ref, _ = hub_model(small)
    assert patches.dtype == torch.bfloat16
    assert (patches.float() - ref).abs().max() / ref.abs().max() < 0.1
