"""ConsistentID's CLIP-H inputs (region images, official preprocessing) and ID tokens, without ComfyUI.

The official pipelines preprocess with transformers 4.x `CLIPImageProcessor()`, whose PIL path
transformers 5 names `CLIPImageProcessorPil`; region images are `Image.composite(photo, black,
mask.resize(photo.size))`. Both are compared here bit for bit with the real libraries.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_builders.clip_vision import clip_vision_h_layout
from fixtures_builders.photos import astronaut
from PIL import Image

from partid.models.consistentid import ProjPlus
from partid.models.consistentid import identity as cid_identity
from partid.models.consistentid import region_images as ri


def rng_u8(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize("crop", [(0, 512, 0, 512), (0, 512, 64, 448), (100, 400, 50, 267), (0, 300, 0, 512),
                                  (7, 238, 11, 480)])
def test_official_preprocessing_equals_transformers_pil_processor(crop):
    processor = getattr(pytest.importorskip("transformers"), "CLIPImageProcessorPil", None)
    if processor is None:
        pytest.skip("transformers without CLIPImageProcessorPil (4.x: CLIPImageProcessor is the PIL path)")
    y0, y1, x0, x1 = crop
    photo = np.ascontiguousarray(astronaut()[y0:y1, x0:x1])
    ref = processor()(images=Image.fromarray(photo), return_tensors="pt").pixel_values[0]
    ours = ri.normalise_u8(ri.official_resize_crop(photo))
    assert torch.equal(ours, ref)


def test_long_side_is_truncated_as_transformers_does():
    assert ri.official_output_size(512, 384) == (298, 224)      # ComfyUI's round() gives 299
    assert ri.official_output_size(384, 512) == (224, 298)
    assert ri.official_output_size(512, 512) == (224, 224)


def test_composite_and_mask_resize_equal_pil():
    photo, mask = rng_u8((64, 80, 3)), rng_u8((64, 80), seed=1)
    pil = Image.composite(Image.fromarray(photo), Image.new("RGB", (80, 64)), Image.fromarray(mask))
    assert np.array_equal(ri.composite_u8(torch.from_numpy(photo), torch.from_numpy(mask)).numpy(), np.asarray(pil))
    small = rng_u8((32, 40), seed=2)
    resized = ri.mask_to_u8(torch.from_numpy(small).float() / 255, 64, 80)
    assert np.array_equal(resized.numpy(), np.asarray(Image.fromarray(small).resize((80, 64))))
    binary = torch.zeros(64, 80)
    binary[10:30, 20:50] = 1
    region = ri.composite_u8(torch.from_numpy(photo), ri.mask_to_u8(binary, 64, 80))
    assert torch.equal(region[10:30, 20:50], torch.from_numpy(photo)[10:30, 20:50]) and int(region[:10].max()) == 0


def test_region_plan_slots_presence_and_broadcast():
    rgb = torch.from_numpy(np.stack([rng_u8((16, 16, 3), s) for s in range(2)]))
    face = torch.zeros(2, 16, 16)
    face[0, 2:8, 2:8] = 1                 # present in image 0 only
    nose = torch.ones(1, 8, 8)            # one mask shared by both images, another resolution
    plan = ri.plan_region_images(rgb, {"face": face, "eye": None, "ear": torch.zeros(2, 16, 16), "nose": nose})
    assert plan.slots == [(0, 0), (0, 3), (1, 3)]
    assert plan.present.tolist() == [[True, False, False, True, False], [False, False, False, True, False]]
    assert plan.images.shape == (5, 16, 16, 3) and torch.equal(plan.images[3:], rgb)   # whole images last
    assert torch.equal(plan.images[1], rgb[0]) and torch.equal(plan.images[2], rgb[1])  # all-ones nose mask
    with pytest.raises(ValueError, match="expected"):
        ri.plan_region_images(rgb, {"lip": torch.ones(3, 16, 16)})
    with pytest.raises(ValueError, match="unknown regions"):
        ri.plan_region_images(rgb, {"mouth": None})

    states = torch.arange(5.0).view(5, 1, 1).expand(5, 3, 1280)
    uncond = torch.full((3, 1280), -1.0)
    regions, whole = ri.split_states(states, plan, uncond)
    assert regions.shape == (2, 5, 3, 1280) and torch.equal(whole, states[3:])
    assert regions[:, :, 0, 0].tolist() == [[0, -1, -1, 1, -1], [-1, -1, -1, 2, -1]]
    image_states = ri.ImageStates(whole, uncond)
    assert image_states.batch == 2
    with pytest.raises(ValueError, match="uncond_states"):
        ri.ImageStates(whole, uncond[:2])


def test_clip_vision_fixture_layout_is_transformers_clip_vit_h():
    transformers = pytest.importorskip("transformers")
    config = transformers.CLIPVisionConfig(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                                           num_attention_heads=16, patch_size=14, image_size=224, projection_dim=1024)
    with torch.device("meta"):
        model = transformers.CLIPVisionModelWithProjection(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("position_ids")}
    assert clip_vision_h_layout() == expected
    assert sum(np.prod(s) for s in expected.values()) == pytest.approx(632.1e6, rel=1e-3)


@pytest.fixture(scope="module")
def proj():
    torch.manual_seed(0)
    module = ProjPlus.from_config(cross_dim=128)   # small width, same structure as SD1.5's 768
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    return module.eval().requires_grad_(False)


def test_id_tokens_cond_uncond_and_reference_pairing(proj):
    gen = torch.Generator().manual_seed(1)
    arc = torch.nn.functional.normalize(torch.randn(2, 512, generator=gen), dim=-1)
    clip = torch.randn(2, 9, 1280, generator=gen)
    uncond_clip = torch.randn(9, 1280, generator=gen)
    cond, uncond = cid_identity.id_tokens(proj, arc[:1], clip[:1], uncond_clip)
    assert cond.shape == uncond.shape == (1, 4, 128)
    torch.testing.assert_close(cond, proj(arc[:1], clip[:1]))
    torch.testing.assert_close(uncond, proj(torch.zeros(1, 512), uncond_clip[None]))
    # two references: average of each reference's tokens, or all 8 tokens
    avg, _ = cid_identity.id_tokens(proj, arc, clip, uncond_clip, "average")
    torch.testing.assert_close(avg, proj(arc, clip).mean(0, keepdim=True))
    cat, cat_uncond = cid_identity.id_tokens(proj, arc, clip, uncond_clip, "concat")
    assert cat.shape == cat_uncond.shape == (1, 8, 128)
    torch.testing.assert_close(cat_uncond, uncond.repeat(1, 2, 1))
    # one embedding shared by two images (and the reverse)
    shared, _ = cid_identity.id_tokens(proj, arc[0], clip, uncond_clip)
    torch.testing.assert_close(shared, proj(arc[:1].expand(2, -1), clip).mean(0, keepdim=True))
    with pytest.raises(ValueError, match="pair by index"):
        cid_identity.id_tokens(proj, torch.zeros(3, 512), clip, uncond_clip)
    with pytest.raises(ValueError, match=r"\[N, 512\]"):
        cid_identity.id_tokens(proj, torch.zeros(1, 256), clip, uncond_clip)
    assert cid_identity.zero_embedding_rows(torch.stack([arc[0], torch.zeros(512)])) == [1]
