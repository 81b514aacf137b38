"""Visual Persona engine: part images, the body-partitioned decoder, unconditional tokens, against the
original code.

How tests/fixtures/visual_persona_reference.npz (part-image and decoder entries) and
visual_persona_decoder_layout.json were produced (once, by hand, in a scratch folder outside the repo;
no original code is part of PartID or imported here):

1. Original code: cvlab-kaist/Visual-Persona at d393d09, transcribed unchanged into the scratch folder:
   `inference_utils/utils.py` (bounding_rectangle, prepare_input_image; cv2 = opencv-python-headless
   5.0), `block.py` ConditionBlock, `transformer.py` TransformerDecoder ("cond" path), `vp_test.py`
   BP_Transformer, FrozenDinoV2Encoder.forward, get_image_embeds (use_dino) and generate()'s
   possible_keys selection. CLIPImageProcessor() from transformers 4.57.1 (the PIL path the authors
   had), Pillow 13.0. DINOv2: facebookresearch/dinov2 81b2b64 (see test_dinov2.py). torch 2.14 CPU,
   fp32 throughout (the original casts to fp16 on GPU), no grad.
2. Part images: photos.astronaut() (512x512) and its columns 20:475 ("wide", 455x512); masks from
   fixtures_builders.visual_persona.astronaut_masks() given as PIL "L" images (what VP reads from its
   PNGs; values 0/255 plus 128 bands VP treats as background), body_part_keys [1, 2, 3] (no shoes).
   Stored per case: `*_uint8` = full_body.png and body_part_{1,2,3}.png the original wrote (lossless),
   shoes zeros; `*_pixels_sha256` = sha256 of the returned fp32 tensor [5,3,224,224] (C order);
   `*_level_lut` = the normalised value the original gave each uint8 level per channel (NaN: unseen).
   Crop boxes were chosen to hit Python's half-to-even padding offsets (19.5 -> 20, 42.5 -> 42,
   124.5 -> 124, 28.5 -> 28).
3. Decoder: reduced config parts 5, tokens 256, layers 2, heads 4, width 64, encoder width 384 (ViT-S)
   so outputs stay small; weights fixtures_builders.visual_persona.decoder_state(cfg, seed=5) (fp16)
   cast to fp32, strict-loaded into BP_Transformer(2, 4, 64, 384, 256). `decoder_cond` /
   `decoder_uncond` [5,256,64] = get_image_embeds(DINOv2 ViT-S/14 random, BP_Transformer, square-case
   part images): decoder(DINOv2(parts)[:,1:]) and decoder(DINOv2(zeros_like(parts))[:,1:]).
4. Layout: BP_Transformer(8, 8, 2048, 1536, 256) built on the meta device, every state-dict key and
   shape (523,423,744 parameters). The full random weight.bin of fixtures_builders.visual_persona
   was also strict-loaded into that original class there.
5. Full size (visual_persona_decoder_full_reference.npz, 2026-11-24): the original BP_Transformer (vp_test.py,
   transformer.py TransformerDecoder, block.py ConditionBlock at d393d09; import-only edits: accelerate's
   logger -> logging, the unused ModLN import dropped) built as Visual_Persona.init_proj does
   (BP_Transformer(8, 8, 2048, 1536, 256)), the image_proj of visual_persona_bin() cast to fp32 and
   strict-loaded. Inputs: torch.Generator().manual_seed(20261124), randn(4, 256, 1536) as DINOv2 patch tokens
   of parts 1-4; as get_image_embeds does, the decoder gets the 5-image batch [zeros (full body), parts 1-4]
   (slot 0 does not reach the others: randn there changed them by exactly 0.0), and generate() with
   possible_keys [1, 2, 3, 4] concatenates parts 1-4 -> [1, 1024, 2048]. Stored: that output at
   [:, ::8, ::16], its max |value| and float64 sum. fp32 CPU, 2 threads, torch 2.14.1.

Relative difference = max |ours - original| / max |original|; target 1e-5 in fp32.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from fixtures_builders import photos
from fixtures_builders.parsers import dinov2_hub_pth
from fixtures_builders.visual_persona import astronaut_masks, decoder_state, visual_persona_bin
from partid_rig import REPORT, TESTS

from partid.models import model_files
from partid.models.dinov2 import DINOv2
from partid.models.errors import ModelFileError
from partid.models.visual_persona import (VISUAL_PERSONA, DecoderConfig, PartDecoder, decoder_layout, encode_parts,
                                          part_images, part_tokens, select_parts, unconditional_tokens, vp_mask_from_png)
from partid.models.visual_persona.part_images import PART_NAMES, clip_normalise, mask_box, pad_square

FIXTURES = TESTS / "fixtures"
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reference():
    return dict(np.load(FIXTURES / "visual_persona_reference.npz"))


@pytest.fixture(scope="module")
def cases():
    astro = photos.astronaut()
    masks = np.stack([vp_mask_from_png(m) for m in astronaut_masks()])
    return {"square": (astro, masks), "wide": (astro[:, 20:475], masks[:, :, 20:475])}


@pytest.fixture(scope="module")
def parts(cases):
    # One call for both references (different sizes), the square one given as a ComfyUI float IMAGE.
    (sq, sq_masks), (wide, wide_masks) = cases["square"], cases["wide"]
    return part_images([torch.from_numpy(sq).float() / 255, wide], [torch.from_numpy(sq_masks), wide_masks])


@pytest.fixture(scope="module")
def dinov2():
    return DINOv2.from_weights(model_files.load_dinov2(str(dinov2_hub_pth("vits14"))))


@pytest.fixture(scope="module")
def small_decoder(reference):
    cfg = DecoderConfig(*(int(v) for v in reference["decoder_config"]))
    return PartDecoder.from_state_dict({k: v.float() for k, v in decoder_state(cfg, seed=5).items()}, heads=cfg.heads)


def _rel(ours: torch.Tensor, ref: np.ndarray) -> tuple[float, float]:
    ref_t = torch.from_numpy(ref)
    diff = (ours - ref_t).abs().max().item()
    return diff, diff / ref_t.abs().max().item()


# -- part images ----------------------------------------------------------------------------------

@pytest.mark.parametrize("row,name", [(0, "square"), (1, "wide")])
def test_part_images_equal_the_original(parts, reference, row, name):
    assert parts.present[row].tolist() == [True, True, True, True, False]
    assert torch.equal(parts.images[row], torch.from_numpy(reference[f"{name}_uint8"]))       # uint8, exact
    digest = hashlib.sha256(parts.pixels[row].numpy().tobytes()).digest()
    assert digest == reference[f"{name}_pixels_sha256"].tobytes()                             # fp32, bitwise
    assert (parts.pixels[row, 4] == 0).all()
    assert parts.available() == [[1, 2, 3], [1, 2, 3]]


def test_normalisation_is_clip_not_imagenet(reference):
    levels = torch.arange(256, dtype=torch.uint8).view(256, 1, 1).expand(256, 1, 3).contiguous()  # [H, W, 3]
    ours = clip_normalise(levels)[..., 0].numpy()                                             # [3, 256]
    for name in ("square", "wide"):
        lut = reference[f"{name}_level_lut"]
        seen = ~np.isnan(lut)
        assert seen.sum() > 600 and np.array_equal(ours[seen], lut[seen])


def test_padding_rounds_half_to_even_and_masks_count_only_255(cases):
    astro, masks = cases["square"]
    raw = astronaut_masks()
    face = np.ones((123, 84, 3), np.uint8)
    assert pad_square(face)[:, 20].all() and not pad_square(face)[:, 19].any()    # 19.5 -> 20
    wide = np.ones((136, 221, 3), np.uint8)
    assert pad_square(wide)[42].all() and not pad_square(wide)[41].any()          # 42.5 -> 42
    assert mask_box(masks[3] > 0) == (60, 400, 421, 512)                          # VP's reading: 255 only
    assert mask_box(raw[3] > 0) == (0, 380, 421, 512)                             # a 0/255 threshold: other box


def test_missing_part_masks(cases):
    astro, masks = cases["square"]
    out = part_images(astro, [masks[0], masks[1], None, np.zeros_like(masks[3]), masks[4]])
    assert out.present[0].tolist() == [True, True, False, False, False]
    assert (out.pixels[0, 2:] == 0).all() and (out.images[0, 2:] == 0).all()
    nothing = part_images(astro, [np.zeros_like(masks[0])] + list(masks[1:]))
    assert not nothing.present.any()
    with pytest.raises(ValueError, match="5 masks"):
        part_images(astro, masks[:4])
    assert PART_NAMES == ("full_body", "face", "upper", "lower", "shoes")


# -- decoder ----------------------------------------------------------------------------------------

def test_decoder_layout_is_the_released_one():
    ref = json.loads((FIXTURES / "visual_persona_decoder_layout.json").read_text())
    expected = {k: tuple(v) for k, v in ref["layout"].items()}
    assert decoder_layout(VISUAL_PERSONA) == expected
    with torch.device("meta"):
        model = PartDecoder(VISUAL_PERSONA)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert sum(p.numel() for p in model.parameters()) == ref["parameters"] == 523_423_744


@pytest.fixture(scope="module")
def features(parts, dinov2):
    """DINOv2 patch tokens of all five part images of both references: [2, 5, 256, 384]."""
    return encode_parts(dinov2, parts.pixels, parts=range(5))


@torch.no_grad()
def test_decoder_and_unconditional_tokens_match_the_original(features, dinov2, small_decoder, reference):
    cond = small_decoder(features[0])                                                          # [5, 256, 64]
    uncond = unconditional_tokens(dinov2, small_decoder, parts=range(5))
    d_cond, d_uncond = _rel(cond, reference["decoder_cond"]), _rel(uncond, reference["decoder_uncond"])
    REPORT.append(f"Visual Persona decoder (2 layers, width 64) on DINOv2 ViT-S/14 vs original: tokens max abs "
                  f"{d_cond[0]:.2e} (rel {d_cond[1]:.1e}), unconditional {d_uncond[0]:.2e} (rel {d_uncond[1]:.1e})")
    assert d_cond[1] < TOLERANCE and d_uncond[1] < TOLERANCE
    # the unconditional input is zeros after normalisation, not a black image
    black = clip_normalise(torch.zeros(1, 224, 224, 3, dtype=torch.uint8))
    from_black = small_decoder(dinov2(black)[0].expand(5, -1, -1))
    assert (from_black - uncond).abs().max() > 1e-2


@torch.no_grad()
def test_references_and_parts_batch_like_the_loop(parts, features, dinov2, small_decoder):
    both = small_decoder(features[:, 1:4], parts=(1, 2, 3))                                   # [2, 3, 256, 64]
    for r in range(2):
        one = small_decoder(features[r])                                                       # the original's call
        assert (both[r] - one[1:4]).abs().max() < 1e-5
    selected = select_parts(both, [1, 3], parts=(1, 2, 3))
    assert selected.shape == (2, 512, 64)
    assert torch.equal(selected[1], torch.cat([both[1, 0], both[1, 2]]))
    faces = part_tokens(dinov2, small_decoder, parts, parts=(1,))                             # [2, 1, 256, 64]
    assert (faces - both[:, :1]).abs().max() < 1e-5


def test_full_size_decoder_matches_the_original_at_the_released_configuration():
    """523 M parameters, 8 layers of width 2048 over ViT-g features: the configuration users load, not only the
    reduced one above (item 5 of the module docstring)."""
    from partid.models.visual_persona.decoder import select_parts
    from partid.models.visual_persona.tokens import SELECTED_PARTS

    with np.load(FIXTURES / "visual_persona_decoder_full_reference.npz") as ref:
        expected, absmax, seed = ref["out_sub"], float(ref["out_absmax"]), int(ref["inputs_seed"])
        total = float(ref["out_sum"])
    decoder = PartDecoder.from_adapter(model_files.load_adapter(str(visual_persona_bin()), "Visual Persona"),
                                       dtype=torch.float32)
    assert decoder.config == VISUAL_PERSONA
    features = torch.randn(4, 256, 1536, generator=torch.Generator().manual_seed(seed))
    parts = list(SELECTED_PARTS)
    with torch.no_grad():
        tokens = select_parts(decoder(features.unsqueeze(0), parts), parts, parts)
    assert tokens.shape == (1, 1024, 2048)
    diff = float(np.abs(tokens[:, ::8, ::16].numpy() - expected).max())
    REPORT.append(f"Visual Persona decoder, full released size (523 M params, parts 1-4) vs original: max abs "
                  f"{diff:.2e} (rel {diff / absmax:.1e}) on a 1/128 subsample; sum {tokens.double().sum():.6f} vs "
                  f"{total:.6f}")
    assert diff <= TOLERANCE * absmax
    assert abs(float(tokens.abs().max()) - absmax) <= TOLERANCE * absmax
    assert abs(float(tokens.double().sum()) - total) <= TOLERANCE * float(tokens.double().abs().sum())


def test_full_size_weight_bin_loads_strict():
    weights = model_files.load_adapter(str(visual_persona_bin()), "Visual Persona")
    decoder = PartDecoder.from_adapter(weights)
    assert decoder.config == VISUAL_PERSONA
    assert decoder.new_pos_embed.dtype == torch.float16
    assert sum(p.numel() for p in decoder.parameters()) == 523_423_744
    broken = dict(weights.groups["image_proj"])
    broken.pop("pos_embed")                       # the unused legacy queries: a strict load needs them
    with pytest.raises(ModelFileError, match="released layout"):
        PartDecoder.from_state_dict(broken)
