"""Body parsing engine (SegFormer, SCHP ONNX), Visual Persona's part masks and label selection.

References used here:
- Visual Persona's part sets, by ATR index, from github.com/cvlab-kaist/Visual-Persona at d393d09,
  schp/parse_body.py `parse`: full body = not isin([0, 16]); parts [1,2,3,11], [4,7,14,15,17],
  [5,6,8,12,13], [9,10]. Kept here as numbers and applied to hand-made ATR maps the VP way.
- SegFormer: transformers' documented pipeline (processor, model, logits upsampled bilinearly to
  the image size, argmax) run in the test on the same random-weight folder.
- SCHP: the steps of SCHP's SimpleFolderDataset + transform_logits, written out in this test with
  the closed-form affine (not PartID's point construction), torchvision ToTensor/Normalize,
  torch.nn.Upsample(align_corners=True), per-channel cv2.warpAffine and np.argmax over the stack.
- Geometry: a hand-made ONNX whose fusion logits pick the nearest of a few colours, so the labels
  PartID returns must reproduce the input picture through the letterbox warp and back.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from fixtures_builders import parsers
from fixtures_builders.schp_onnx import nearest_colour_onnx, schp_onnx
from partid_rig import REPORT
from skimage import data

from partid.models import model_files
from partid.models.body_parsing import (SCHP_MEAN_BGR, SCHP_STD_BGR, BodyParser, body_parser_from, parse_body,
                                        schp_affine, schp_network_input)
from partid.models.body_parts import PARTS, BODY_PALETTE, body_parts, colour_of, part_labels, preview
from partid.models.errors import InputError
from partid.models.labels import ATR, LIP, normalise
from partid.models.parsing import LabelMap

ASTRONAUT = data.astronaut()
VP_FULL_BODY_EXCLUDED = [0, 16]
VP_PART_INDICES = [[1, 2, 3, 11], [4, 7, 14, 15, 17], [5, 6, 8, 12, 13], [9, 10]]


def as_image(*arrays: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.ascontiguousarray(a)).float().div(255) for a in arrays])


@pytest.fixture(scope="module")
def segformer_weights():
    return model_files.load_parser(str(parsers.segformer_clothes_folder()), "body")


@pytest.fixture(scope="module")
def atr_weights():
    return model_files.load_parser(str(schp_onnx("atr")), "body")


# -- Visual Persona's parts ------------------------------------------------------------------------
def atr_map(seed: int = 0) -> np.ndarray:
    """Every ATR label in a stripe, then random 4x4 blocks: [2, 36, 40]."""
    stripes = np.repeat(np.arange(18), 2)[:, None].repeat(40, 1)
    blocks = np.random.default_rng(seed).integers(0, 18, (9, 10)).repeat(4, 0).repeat(4, 1)
    return np.stack([stripes, blocks])


def vp_masks(atr: np.ndarray) -> np.ndarray:
    """Visual Persona's masks, by index, as its parse_body builds them -> [B,5,H,W] {0,1}."""
    full = 1 - np.isin(atr, VP_FULL_BODY_EXCLUDED).astype(np.uint8)
    return np.stack([full] + [np.isin(atr, idx).astype(np.uint8) for idx in VP_PART_INDICES], axis=1)


def test_every_atr_label_lands_where_visual_persona_puts_it():
    maps = atr_map()
    got = body_parts(LabelMap(torch.from_numpy(maps), ATR, "hand-made")).stacked().numpy()
    assert got.shape == (2, 5, 36, 40) and np.array_equal(got, vp_masks(maps))
    for label in range(18):                           # one label at a time: which parts it lights
        parts = body_parts(LabelMap(torch.full((1, 2, 2), label), ATR)).stacked()[0, :, 0, 0].numpy()
        expected = [label not in VP_FULL_BODY_EXCLUDED] + [label in idx for idx in VP_PART_INDICES]
        assert parts.tolist() == [float(e) for e in expected], ATR[label]
        if ATR[label] in ("Bag", "Background"):
            assert parts.sum() == 0


def test_parts_follow_label_names_not_indices():
    maps = atr_map(1)
    order = np.random.default_rng(2).permutation(18)        # a parser listing ATR labels in another order
    relabelled = np.argsort(order)[maps]                     # new index of each pixel's label
    shuffled = tuple(ATR[i].upper().replace("-", "_") for i in order)   # and spelling them differently
    got = body_parts(LabelMap(torch.from_numpy(relabelled), shuffled)).stacked().numpy()
    assert np.array_equal(got, vp_masks(maps))


def test_lip_mapping():
    key, names = part_labels(LIP)
    assert key == "lip" and names["full_body"] == LIP[1:]
    where = {n: [p for p in PARTS[1:] if n in names[p]] for n in LIP}
    assert where["Background"] == [] and all(len(v) == 1 for n, v in where.items() if n != "Background")
    assert where["Glove"] == where["Coat"] == where["Jumpsuits"] == ["upper"] and where["Socks"] == ["lower"]
    for name in set(ATR) & set(LIP) - {"Background"}:       # shared names map as Visual Persona's ATR sets
        atr_index = ATR.index(name)
        assert where[name] == [p for p, idx in zip(PARTS[1:], VP_PART_INDICES) if atr_index in idx], name
    maps = torch.arange(20).view(1, 4, 5)
    found = body_parts(LabelMap(maps, LIP))
    union = sum(found.masks[p] for p in PARTS[1:])
    assert torch.equal(union, found.masks["full_body"]) and union.max() == 1     # disjoint, covering
    assert found.present("shoes").tolist() == [True]
    with pytest.raises(KeyError, match="neither ATR nor LIP"):
        body_parts(LabelMap(maps[:, :, :4] % 19, tuple(f"x{i}" for i in range(19))))


def test_preview_colours_by_name():
    atr = LabelMap(torch.arange(18).view(1, 3, 6), ATR)
    lip = LabelMap(torch.arange(20).view(1, 4, 5), LIP)
    seg_names = LabelMap(torch.arange(18).view(1, 3, 6), tuple(n.lower() for n in ATR))
    assert len(set(BODY_PALETTE.values())) == len(BODY_PALETTE) == 22
    for name in ATR:
        colour = torch.tensor(colour_of(name)) / 255
        assert torch.equal(preview(atr)[0].view(-1, 3)[ATR.index(name)], colour)
        assert torch.equal(preview(seg_names)[0].view(-1, 3)[ATR.index(name)], colour)
        if name in LIP:
            assert torch.equal(preview(lip)[0].view(-1, 3)[LIP.index(name)], colour)
    over = preview(atr, torch.ones(1, 3, 6, 3))
    assert over.shape == (1, 3, 6, 3) and over.min() >= 0 and over.max() <= 1


# -- SegFormer --------------------------------------------------------------------------------------
def test_segformer_matches_transformers_documented_pipeline(segformer_weights):
    from PIL import Image
    from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor
    from transformers.models.segformer.image_processing_pil_segformer import SegformerImageProcessorPil

    folder = segformer_weights.path
    processor, pil_processor = SegformerImageProcessor.from_pretrained(folder), SegformerImageProcessorPil.from_pretrained(folder)
    model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    ours = body_parser_from(segformer_weights, "cpu")
    # coffee (600x400 -> 512x512) shrinks one axis and stretches the other: there the torchvision and PIL
    # resizes round a few pixels differently by one level.
    for image in (ASTRONAUT[0:400, 100:460], ASTRONAUT[100:130, 200:220], data.coffee()):
        pil = Image.fromarray(np.ascontiguousarray(image))
        with torch.no_grad():
            inputs = processor(images=pil, return_tensors="pt")
            logits = model(**inputs).logits
            expected = torch.nn.functional.interpolate(logits, size=pil.size[::-1], mode="bilinear",
                                                       align_corners=False).argmax(dim=1)
            pil_inputs = pil_processor(images=pil, return_tensors="pt")
            pil_labels = torch.nn.functional.interpolate(model(**pil_inputs).logits, size=pil.size[::-1],
                                                         mode="bilinear", align_corners=False).argmax(dim=1)
        got = ours.parse(as_image(image))
        diff = float((ours.segformer_logits(as_image(image)) - logits).abs().max())
        pixel_gap = float((inputs["pixel_values"] - pil_inputs["pixel_values"]).abs().max())
        REPORT.append(f"Body SegFormer vs transformers 5 pipeline {image.shape[1]}x{image.shape[0]}: max |logit diff| "
                      f"{diff:.1e}, labels equal {torch.equal(got.maps, expected)}; vs the PIL processor (4.x path): "
                      f"max |pixel_values diff| {pixel_gap:.3f}, label agreement "
                      f"{float((got.maps == pil_labels).float().mean()):.4f}")
        assert got.labels == ATR and diff == 0.0 and torch.equal(got.maps, expected)


# -- SCHP ONNX --------------------------------------------------------------------------------------
def schp_reference(path: str, rgb: np.ndarray, size: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """SCHP's steps for one uint8 RGB image -> (labels [H,W], fusion logits [C,h,w])."""
    import onnxruntime as ort
    from torchvision import transforms

    h, w = rgb.shape[:2]
    bw, bh = w - 1.0, h - 1.0
    side = max(bw, bh)                                      # square network input: aspect ratio 1
    k = (size - 1) / side
    forward = np.array([[k, 0, (size - 1) / 2 - k * bw / 2], [0, k, (size - 1) / 2 - k * bh / 2]])
    inverse = cv2.invertAffineTransform(forward)
    warped = cv2.warpAffine(rgb[..., ::-1].copy(), forward, (size, size), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    x = transforms.Normalize(SCHP_MEAN_BGR, SCHP_STD_BGR)(transforms.ToTensor()(warped))[None]
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    fusion = session.run(None, {"input.1": x.numpy()})[1]           # OOTDiffusion's output[1][0]
    up = torch.nn.Upsample(size=[size, size], mode="bilinear", align_corners=True)(torch.from_numpy(fusion))
    hwc = up[0].permute(1, 2, 0).numpy()
    stack = np.stack([cv2.warpAffine(hwc[:, :, c], inverse, (w, h), flags=cv2.INTER_LINEAR,
                                     borderMode=cv2.BORDER_CONSTANT, borderValue=0) for c in range(n_classes)], 2)
    return np.argmax(stack, axis=2), fusion[0]


@pytest.mark.parametrize("label_set,size", [("atr", 512), ("lip", 473)])
def test_schp_matches_schp_steps(label_set, size):
    weights = model_files.load_parser(str(schp_onnx(label_set)), "body")
    ours = body_parser_from(weights, "cpu")
    assert ours.size == (size, size) and ours.fixed_batch == 1 and ours.input_name == "input.1"
    for crop in (ASTRONAUT[0:400, 100:460], ASTRONAUT[60:260, :]):
        h, w = crop.shape[:2]
        k = (size - 1) / (max(w, h) - 1)
        ref_forward = np.array([[k, 0, (size - 1) / 2 - k * (w - 1) / 2], [0, k, (size - 1) / 2 - k * (h - 1) / 2]])
        assert np.abs(schp_affine(h, w, (size, size)) - ref_forward).max() < 1e-4
        ref_labels, ref_fusion = schp_reference(str(schp_onnx(label_set)), crop, size, len(weights.labels))
        got = ours.parse(as_image(crop)).maps[0].numpy()
        fusion = ours.schp_fusion_logits(schp_network_input(crop, ours.size)[None])[0]
        diff, agree = float(np.abs(fusion - ref_fusion).max()), float((got == ref_labels).mean())
        REPORT.append(f"SCHP {label_set} vs SCHP steps {w}x{h}: max |fusion logit diff| {diff:.1e}, "
                      f"label agreement {agree:.6f}")
        assert diff < 1e-4 and agree > 0.999


PALETTE_RGB = np.array([[0, 0, 0], [230, 20, 20], [20, 20, 230], [20, 200, 40], [240, 220, 30], [150, 40, 200]],
                       np.uint8)


def colour_picture(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Rectangles of PALETTE_RGB colours (red top-left, blue bottom-right) -> (rgb, label of each pixel)."""
    labels = np.zeros((h, w), np.int64)
    labels[: h // 2, : w // 2] = 1
    labels[h // 2:, w // 2:] = 2
    labels[h // 8: h // 3, w // 2 + w // 8: w - w // 10] = 3
    labels[h // 2 + h // 8: h - h // 8, w // 12: w // 3] = 4
    labels[h // 3: h // 2 + h // 6, w // 3: w // 2 + w // 10] = 5
    return PALETTE_RGB[labels], labels


@pytest.mark.parametrize("pool", [1, 4])
@pytest.mark.parametrize("hw", [(200, 320), (330, 180), (64, 64)])
def test_schp_geometry_with_a_known_net(tmp_path, pool, hw):
    size = 512
    path = nearest_colour_onnx(tmp_path / "nearest.onnx", PALETTE_RGB[:, ::-1], size, SCHP_MEAN_BGR, SCHP_STD_BGR,
                               pool=pool)
    weights = model_files.ParserWeights("onnx", str(path), tuple(f"c{i}" for i in range(len(PALETTE_RGB))), "atr")
    rgb, expected = colour_picture(*hw)
    got = BodyParser(weights, "cpu").parse(as_image(rgb)).maps[0].numpy()
    margin = 1 + int(np.ceil(pool * (max(hw) - 1) / (size - 1)))      # pixels a logit cell spans, plus one
    edges = cv2.dilate((cv2.Laplacian(expected.astype(np.float32), cv2.CV_32F) != 0).astype(np.uint8),
                       np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)) > 0
    REPORT.append(f"SCHP geometry {hw[1]}x{hw[0]} pool {pool}: interior exact "
                  f"{bool((got == expected)[~edges].all())}, overall agreement {float((got == expected).mean()):.4f}")
    assert (got == expected)[~edges].all() and (got == expected).mean() > 0.95


@pytest.mark.parametrize("batch", ["N", 2])
def test_schp_exports_with_other_batch_dims_run_batched(batch):
    weights = model_files.load_parser(str(schp_onnx("atr", batch=batch)), "body")
    ours = BodyParser(weights, "cpu")
    assert ours.fixed_batch == (None if batch == "N" else 2)
    images = [ASTRONAUT[0:256, 0:256], ASTRONAUT[100:356, 150:406], ASTRONAUT[256:512, 256:512]]
    together = ours.parse(as_image(*images)).maps
    single = torch.cat([BodyParser(weights, "cpu").parse(as_image(i)).maps for i in images])
    assert (together == single).float().mean() > 0.999


# -- inputs ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["segformer", "schp"])
def test_batches_odd_images_and_caching(backend, segformer_weights, atr_weights):
    weights = segformer_weights if backend == "segformer" else atr_weights
    parser = body_parser_from(weights, "cpu")
    assert body_parser_from(weights, torch.device("cpu")) is parser
    images = [ASTRONAUT[0:200, 0:300], ASTRONAUT[200:400, 100:400], ASTRONAUT[300:500, 212:512]]
    batch = parser.parse(as_image(*images))
    assert batch.maps.shape == (3, 200, 300) and batch.maps.dtype == torch.int64
    for i, image in enumerate(images):
        assert (batch.maps[i] == parser.parse(as_image(image)).maps[0]).float().mean() > 0.999
    rgb = as_image(images[0])
    rgba = torch.cat([rgb, torch.rand(1, 200, 300, 1)], -1)
    assert torch.equal(parse_body(weights, rgba)[0].maps, parser.parse(rgb).maps)
    gray = rgb.mean(-1, keepdim=True)
    assert torch.equal(parse_body(weights, gray)[0].maps, parser.parse(gray.expand(-1, -1, -1, 3)).maps)
    for h, w in ((1, 1), (3, 5), (20, 20), (700, 90)):
        label_map, _ = parse_body(weights, torch.rand(2, h, w, 3))
        assert label_map.maps.shape == (2, h, w) and 0 <= int(label_map.maps.min()) <= int(label_map.maps.max()) < 18
        assert body_parts(label_map).stacked().shape == (2, 5, h, w)


def test_errors_name_node_input_and_batch_index(atr_weights):
    image = torch.rand(4, 32, 32, 3)
    image[2, 5, 5, 1] = float("nan")
    with pytest.raises(InputError) as err:
        parse_body(atr_weights, image, node="PartID Body Parts")
    assert err.value.batch_index == 2 and "PartID Body Parts, input 'image', batch index 2" in str(err.value)
    face = model_files.load_parser(str(parsers.segformer_face_folder()), "face")
    with pytest.raises(InputError, match=r"input 'parser'.*expected a body parser, got a face parser"):
        parse_body(face, torch.rand(1, 32, 32, 3))
    with pytest.raises(InputError, match=r"input 'parser'.*expected a body parser, got str"):
        parse_body("parsing_atr.onnx", torch.rand(1, 32, 32, 3))
    with pytest.raises(InputError, match=r"input 'image'.*5 channels"):
        parse_body(atr_weights, torch.rand(1, 32, 32, 5))


# -- label selection -------------------------------------------------------------------------------
def test_select_labels():
    from partid.models.label_select import SELECTABLE, input_id, select_labels

    ids = [i for i, _ in SELECTABLE]
    assert len(ids) == len(set(ids)) == 38 and ids[:3] == ["background", "hat", "hair"]
    assert {"upper_clothes", "glove", "jumpsuits", "skin", "l_brow", "neck_l"} <= set(ids)
    maps = torch.from_numpy(atr_map())
    atr = LabelMap(maps, ATR, "onnx:parsing_atr.onnx")
    face = select_labels(atr, {"hat": True, "hair": True, "sunglasses": True, "face": True, "glove": False})
    assert torch.equal(face, body_parts(atr).masks["face"])
    assert torch.equal(select_labels(atr, {"bag": True}, invert=True), 1 - (maps == 16).float())
    assert torch.equal(select_labels(atr, {}), torch.zeros(2, 36, 40))
    for off_label in ("glove", "skin"):
        with pytest.raises(InputError) as err:
            select_labels(atr, {off_label: True, "hat": True})
        msg = str(err.value)
        assert f"input '{off_label}'" in msg and "onnx:parsing_atr.onnx" in msg and "is not in this label map" in msg
    assert "parsing_lip.onnx" in str(pytest.raises(InputError, select_labels, atr, {"coat": True}).value)
    seg_face = LabelMap(torch.zeros(1, 4, 4, dtype=torch.int64), tuple(n for n in ("background", "skin", "nose")))
    assert select_labels(seg_face, {"background": True}).sum() == 16
    assert input_id("Upper-clothes") == "upper_clothes" and normalise("upper_clothes") == normalise("Upper-clothes")


def test_label_map_within_a_mask_is_background_outside_it():
    """LabelMap.within on a hand-made map: labels kept where the (resized) mask is >= 0.5, background elsewhere,
    one mask for a batch or one per image; a map whose label 0 is not the background is refused."""
    from partid.models.labels import ATR
    from partid.models.parsing import LabelMap

    maps = torch.tensor([[[4, 4, 5, 5], [4, 4, 5, 5]], [[9, 9, 9, 9], [1, 1, 1, 1]]])
    lm = LabelMap(maps, ATR, "hand-made")
    left = torch.tensor([[1.0, 0.6, 0.4, 0.0]]).expand(2, 4)
    assert lm.within(left).maps.tolist() == [[[4, 4, 0, 0], [4, 4, 0, 0]], [[9, 9, 0, 0], [1, 1, 0, 0]]]
    per_image = torch.stack([torch.ones(2, 4), torch.tensor([[0.0] * 4, [1.0] * 4])])
    assert lm.within(per_image).maps.tolist() == [maps[0].tolist(), [[0, 0, 0, 0], [1, 1, 1, 1]]]
    assert lm.within(torch.ones(1, 8, 8)).maps.tolist() == maps.tolist()             # resized, all inside
    with pytest.raises(ValueError, match=r"\[3, 2, 4\] for 2 image"):
        lm.within(torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match="not the background"):
        LabelMap(maps, ("hat",) + ATR[1:], "x").within(left)
