"""Face parsing engine and ConsistentID's region selection, measured against the official code.

How tests/fixtures/face_parsing_reference.npz was produced (once, by hand, in a scratch folder under
/tmp; the official code is not part of PartID and is not imported here):

1. Snapshot of github.com/JackAILab/ConsistentID at commit e234008 (HEAD, Dec 2025). Its BiSeNet copy
   (`models/BiSeNet/model.py`, `resnet.py`, the face-parsing.PyTorch network) unchanged except that
   `Resnet18.init_weight` returns before downloading the ImageNet ResNet-18 weights (the checkpoint
   overwrites them). From `pipline_StableDiffusion_ConsistentID.py` the methods `parsing_face_mask` and
   `get_prepare_facemask`, from `pipline_StableDiffusionXL_ConsistentID.py` its `parsing_face_mask`
   (1280x1280), and from `functions.py` `mapping_table` and `masks_for_unique_values` were taken
   unchanged by `ast` source extraction and executed with `torch.Tensor.cuda` replaced by identity
   (CPU run). torch 2.14 CPU fp32, torchvision 0.29, Pillow 13, opencv 5.0, one thread.
2. Weights: fixtures_builders.parsers.bisenet_pth() (random, seeded) loaded strictly into the official
   BiSeNet(n_classes=19). `weights_fingerprint` = (sum, sum of abs) over the state dict in float64.
3. Inputs, PIL RGB images from skimage.data.astronaut(): `crop` = rows 0:400, cols 100:460 (400x360:
   shrunk in height, stretched in width by the 512 resize) and `tiny` = rows 100:120, cols 200:220.
   Official parse: `crop512` (SD1.5 pipeline), `crop1280` (SDXL pipeline), `tiny512`. Saved: the
   argmax map the official code returns (`<case>_argmax`, at 512/1280) and the first-head logits
   subsampled at [:, s/2::s, s/2::s] (s = 16 at 512, 40 at 1280) as `<case>_logits_sub`.
4. Hand-made BiSeNet-index label maps 64x64 (`map_holes`: r_eye only, both ears, background hole in
   the skin, mouth between the lips; `map_edge`: regions cut by every border, an l_eye with a hole and
   two blobs, diagonal-only r_ear, single-pixel l_lip; `map_noise`: random 4x4 blocks + skin speckle;
   `map_empty`), plus the crop512/crop1280 official parses, each fed to the official
   `get_prepare_facemask` (its `parsing_face_mask` stubbed to return the map). Saved: the selected
   keys in order (`regions_<map>_keys`) and their 0/255 masks as np.packbits bits.

SegFormer has no official code beyond its model card, so it is compared in-test with transformers'
documented pipeline (SegformerImageProcessor + SegformerForSemanticSegmentation + bilinear upsampling
of the logits to the image size + argmax) on the same random-weight folder: equality expected.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_builders import parsers
from partid_rig import REPORT, TESTS
from skimage import data

from partid.models import model_files
from partid.models.face_parsing import FaceParser, face_parser_from
from partid.models.face_regions import (MODES, REGIONS, FaceRegions, colour_of, face_regions, fill_external_contours,
                                        legend, preview)
from partid.models.labels import BISENET_FACE, SEGFORMER_FACE
from partid.models.parsing import LabelMap

REFERENCE = TESTS / "fixtures" / "face_parsing_reference.npz"
OFFICIAL_KEYS = {"Face": ("face", "skin"), "Left_Eye": ("eyes", "l_eye"), "Right_Eye": ("eyes", "r_eye"),
                 "Left_Ear": ("ears", "l_ear"), "Right_Ear": ("ears", "r_ear"), "Nose": ("nose", "nose"),
                 "Upper_Lip": ("mouth", "u_lip"), "Lower_Lip": ("mouth", "l_lip")}
ASTRONAUT = data.astronaut()
CROP, TINY = ASTRONAUT[0:400, 100:460], ASTRONAUT[100:120, 200:220]


def as_image(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).float().div(255)[None]


@pytest.fixture(scope="module")
def reference():
    with np.load(REFERENCE) as ref:
        return dict(ref)


@pytest.fixture(scope="module")
def bisenet_weights():
    return model_files.load_parser(str(parsers.bisenet_pth()), "face")


@pytest.fixture(scope="module")
def bisenet(bisenet_weights):
    return face_parser_from(bisenet_weights, "cpu")


@pytest.fixture(scope="module")
def segformer_weights():
    return model_files.load_parser(str(parsers.segformer_face_folder()), "face")


def test_fixture_weights_are_the_builders(reference, bisenet_weights):
    state = bisenet_weights.state_dict
    got = [sum(float(v.double().sum()) for v in state.values()),
           sum(float(v.double().abs().sum()) for v in state.values())]
    np.testing.assert_allclose(got, reference["weights_fingerprint"], rtol=1e-12)


@pytest.mark.parametrize("case,image,resolution,step", [("crop512", CROP, 512, 16), ("crop1280", CROP, 1280, 40),
                                                        ("tiny512", TINY, 512, 16)])
def test_bisenet_matches_official_consistentid_parse(reference, bisenet, case, image, resolution, step):
    logits = bisenet.logits(as_image(image), resolution)[0, :, step // 2::step, step // 2::step].numpy()
    diff = float(np.abs(logits - reference[f"{case}_logits_sub"]).max())
    native = bisenet.parse(as_image(image), resolution, at_input_size=False).maps[0].numpy()
    agree = float((native == reference[f"{case}_argmax"]).mean())
    REPORT.append(f"BiSeNet vs official ConsistentID {case}: max |logit diff| {diff:.2e}, label agreement {agree:.6f}")
    assert diff < 1e-4 and agree > 0.9999


def test_label_map_comes_back_at_the_image_size(bisenet):
    native = bisenet.parse(as_image(CROP), 512, at_input_size=False).maps
    full = bisenet.parse(as_image(CROP), 512)
    assert full.maps.shape == (1, 400, 360) and full.maps.dtype == torch.int64 and full.labels == BISENET_FACE
    rows = ((torch.arange(400) + 0.5) * 512 / 400).floor().long()   # nearest by pixel centres (PIL NEAREST)
    cols = ((torch.arange(360) + 0.5) * 512 / 360).floor().long()
    assert torch.equal(full.maps[0], native[0][rows][:, cols])


def test_batch_equals_single_images_and_parser_is_cached(bisenet_weights, bisenet):
    images = [ASTRONAUT[0:256, 0:256], ASTRONAUT[100:356, 150:406], ASTRONAUT[256:512, 256:512]]
    batch = torch.cat([as_image(i) for i in images])
    together, logits = bisenet.parse(batch).maps, bisenet.logits(batch)
    for i, image in enumerate(images):
        # Batched convolutions round differently: logits agree to float noise, labels but for near-ties.
        assert torch.allclose(logits[i], bisenet.logits(as_image(image))[0], atol=1e-5)
        assert (together[i] == bisenet.parse(as_image(image)).maps[0]).float().mean() > 0.999
    assert face_parser_from(bisenet_weights, "cpu") is bisenet
    assert face_parser_from(bisenet_weights, torch.device("cpu")) is bisenet


def test_segformer_matches_transformers_documented_pipeline(segformer_weights):
    from PIL import Image
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

    folder = segformer_weights.path
    processor = SegformerImageProcessor.from_pretrained(folder)
    model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    ours = face_parser_from(segformer_weights, "cpu")
    for image in (CROP, TINY):
        pil = Image.fromarray(np.ascontiguousarray(image))
        with torch.no_grad():
            inputs = processor(images=pil, return_tensors="pt")
            logits = model(**inputs).logits
            upsampled = torch.nn.functional.interpolate(logits, size=pil.size[::-1], mode="bilinear",
                                                        align_corners=False)
        expected = upsampled.argmax(dim=1)
        got = ours.parse(as_image(image))
        diff = float((ours.logits(as_image(image)) - logits).abs().max())
        REPORT.append(f"SegFormer vs transformers pipeline {image.shape[1]}x{image.shape[0]}: max |logit diff| "
                      f"{diff:.1e}, labels equal {torch.equal(got.maps, expected)}")
        assert got.labels == SEGFORMER_FACE and diff == 0.0 and torch.equal(got.maps, expected)


def test_segformer_preprocessor_config_variants(tmp_path):
    import json

    from partid.models.segformer import SegformerPreprocess

    assert SegformerPreprocess.from_folder(str(tmp_path)) == SegformerPreprocess()   # catalog: no such file
    # jonathandinu/face-parsing's file as published (note the feature-extractor type name).
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_reduce_labels": False, "do_rescale": True, "do_resize": True,
        "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "SegformerFeatureExtractor",
        "image_std": [0.229, 0.224, 0.225], "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": 512, "width": 512}}))
    assert SegformerPreprocess.from_folder(str(tmp_path)) == SegformerPreprocess()
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": 384}))       # older int form
    assert SegformerPreprocess.from_folder(str(tmp_path)).size == (384, 384)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"resample": 3}))
    with pytest.raises(ValueError, match="bilinear"):
        SegformerPreprocess.from_folder(str(tmp_path))


def test_onnx_face_parser_is_refused_by_name():
    weights = model_files.ParserWeights("onnx", "/x/face.onnx", BISENET_FACE, "bisenet")
    with pytest.raises(ValueError, match="'onnx' face parser is not supported"):
        FaceParser(weights)


# -- regions -------------------------------------------------------------------------------------
def official_masks(reference, name):
    keys = [str(k) for k in reference[f"regions_{name}_keys"]]
    bits = reference[f"regions_{name}_bits"]
    width = bits.shape[-1] * 8
    return keys, np.unpackbits(bits, axis=-1)[..., :width].astype(bool)


def bisenet_map(reference, name) -> LabelMap:
    key = f"map_{name}" if f"map_{name}" in reference else f"{name}_argmax"
    return LabelMap(torch.from_numpy(reference[key].astype(np.int64))[None], BISENET_FACE)


def to_segformer_order(label_map: LabelMap) -> LabelMap:
    lut = torch.tensor([SEGFORMER_FACE.index(n) for n in BISENET_FACE])
    return LabelMap(lut[label_map.maps], SEGFORMER_FACE)


@pytest.mark.parametrize("name", ["holes", "edge", "noise", "empty", "crop512", "crop1280"])
def test_regions_match_official_consistentid(reference, name):
    keys, masks = official_masks(reference, name)
    for label_map in (bisenet_map(reference, name), to_segformer_order(bisenet_map(reference, name))):
        found = face_regions(label_map, "ConsistentID")
        expected = {OFFICIAL_KEYS[k][0]: (OFFICIAL_KEYS[k][1], masks[i]) for i, k in enumerate(keys)}
        assert [r for r in REGIONS if found.chosen[0][r]] == [OFFICIAL_KEYS[k][0] for k in keys]  # same order too
        for region in REGIONS:
            got = found.masks[region][0].numpy() > 0.5
            if region in expected:
                label, mask = expected[region]
                assert found.chosen[0][region] == (label,)
                assert np.array_equal(got, mask), f"{name}/{region}: {int((got != mask).sum())} pixels differ"
            else:
                assert found.chosen[0][region] == () and not got.any()


@pytest.mark.parametrize("case,resolution", [("crop512", 512), ("crop1280", 1280)])
def test_regions_of_a_photo_at_its_own_size_are_the_official_resized_masks(reference, bisenet, case, resolution):
    """The Face Regions node's path (parse at 512/1280, masks at the photo's 400x360) against what the official
    code composites: its 512/1280 masks resized to the photo by `fetch_mask_raw_image` (PIL "L" `resize`,
    bicubic), then `Image.composite(photo, black, mask)`. Masks and region images must be equal to the bit."""
    from PIL import Image

    from partid.models.consistentid import region_images as ri

    label_map = bisenet.parse(as_image(CROP), resolution)
    assert label_map.maps.shape == (1, 400, 360) and label_map.parse_maps.shape == (1, resolution, resolution)
    found = face_regions(label_map, "ConsistentID")
    keys, masks = official_masks(reference, case)
    photo = Image.fromarray(np.ascontiguousarray(CROP))
    flat_fill = face_regions(LabelMap(label_map.maps, BISENET_FACE), "ConsistentID")   # filled at 400x360
    for key, mask in zip(keys, masks):
        region = OFFICIAL_KEYS[key][0]
        official_mask = Image.fromarray(mask.astype(np.uint8) * 255).resize(photo.size)
        official_image = np.asarray(Image.composite(photo, Image.new("RGB", photo.size, (0, 0, 0)), official_mask))
        ours = found.masks[region][0]
        assert np.array_equal(np.rint(ours.numpy() * 255).astype(np.uint8), np.asarray(official_mask)), region
        plan = ri.plan_region_images(torch.from_numpy(np.ascontiguousarray(CROP))[None], {"face": ours[None]})
        assert np.array_equal(plan.images[0].numpy(), official_image), region
        before = flat_fill.masks[region][0].numpy()
        REPORT.append(f"ConsistentID {case} {region} on a 400x360 photo: mask equal to the official resized mask; "
                      f"filling at 400x360 instead differs on {int((np.rint(before * 255) != np.asarray(official_mask)).sum())} px")


def test_region_known_answers(reference):
    import cv2

    holes = bisenet_map(reference, "holes")
    official = face_regions(holes, "ConsistentID")
    union = face_regions(holes, "union")
    ellipse = np.zeros((64, 64), np.uint8)
    cv2.ellipse(ellipse, (32, 32), (20, 26), 0, 0, 360, 1, -1)
    ellipse[reference["map_holes"] == BISENET_FACE.index("r_ear")] = 0    # the right ear bites the skin's edge
    assert np.array_equal(official.masks["face"][0].numpy(), ellipse.astype(np.float32))  # every hole covered
    assert official.chosen[0]["eyes"] == union.chosen[0]["eyes"] == ("r_eye",)  # l_eye absent: the right one
    assert official.chosen[0]["ears"] == ("l_ear",) and union.chosen[0]["ears"] == ("l_ear", "r_ear")
    assert official.masks["ears"].sum() == 32 and union.masks["ears"].sum() == 64
    assert official.chosen[0]["mouth"] == ("u_lip",) and official.masks["mouth"].sum() == 2 * 12
    assert union.chosen[0]["mouth"] == ("mouth", "u_lip", "l_lip") and union.masks["mouth"].sum() == 6 * 12
    edge = bisenet_map(reference, "edge")
    official, union = face_regions(edge, "ConsistentID"), face_regions(edge, "union")
    assert official.chosen[0]["eyes"] == ("l_eye",) and official.masks["eyes"].sum() == 36 + 16  # hole filled
    assert union.masks["eyes"].sum() == 36 + 16 + 16
    assert official.chosen[0]["mouth"] == ("l_lip",) and official.masks["mouth"].sum() == 1
    assert official.masks["nose"][0, 0:6, 30:36].all()                                   # at the border
    assert official.present("ears").tolist() == [True]


def test_regions_batch_and_errors():
    maps = torch.zeros(2, 8, 8, dtype=torch.int64)
    maps[1, 2:6, 2:6] = BISENET_FACE.index("skin")
    found = face_regions(LabelMap(maps, BISENET_FACE), "union")
    assert isinstance(found, FaceRegions) and found.masks["face"].shape == (2, 8, 8)
    assert found.present("face").tolist() == [False, True] and found.masks["face"][1].sum() == 16
    with pytest.raises(ValueError, match="mode 'both' is not one of ConsistentID, union"):
        face_regions(LabelMap(maps, BISENET_FACE), "both")
    with pytest.raises(KeyError, match="not a face parse"):
        face_regions(LabelMap(maps, ("Background", "Hat", "Hair")), "union")
    ring = np.zeros((9, 9), np.uint8)
    ring[1:8, 1:8] = 255
    ring[3:6, 3:6] = 0
    assert fill_external_contours(ring)[3:6, 3:6].all()


def test_preview_colours_by_name_in_legend_order():
    bisenet = LabelMap(torch.arange(19).view(1, 1, 19), BISENET_FACE)
    segformer = to_segformer_order(bisenet)
    a, b = preview(bisenet), preview(segformer)
    assert a.shape == (1, 1, 19, 3) and torch.equal(a, b)                # same label, same colour, any parser
    assert len({colour_of(n) for n in BISENET_FACE}) == 19
    assert [n for n, _ in legend(SEGFORMER_FACE)] == list(BISENET_FACE[:1]) + [
        "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear", "ear_r", "nose", "mouth",
        "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat"]
    over = preview(bisenet, torch.ones(1, 1, 19, 3))
    assert torch.allclose(over, 0.4 + 0.6 * a)
    assert len(MODES) == 2
