"""PartID Body Parts and PartID Select Labels run by the real ComfyUI on the loader's output
(random-weight segformer_b2_clothes and SCHP parsing_atr.onnx / parsing_lip.onnx from model_dirs)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from partid.models.body_parsing import BodyParser
from partid.models.label_select import SELECTABLE
from partid.models.labels import ATR, LIP

PARTS = ("full_body", "face", "upper", "lower", "shoes")
VP_PART_INDICES = [[1, 2, 3, 11], [4, 7, 14, 15, 17], [5, 6, 8, 12, 13], [9, 10]]   # VP parse_body.py, ATR


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture(scope="module")
def astronaut():
    return torch.from_numpy(data.astronaut()).float().div(255)[None]


@pytest.fixture(scope="module")
def load(comfy, model_dirs):
    loaded = {}

    def get(choice):
        if choice not in loaded:
            (loaded[choice],), _ = comfy.run(node(comfy, "PartIDBodyParserLoader"), parser=choice)
        return loaded[choice]
    return get


def test_node_schemas(comfy):
    assert {"PartIDBodyParts", "PartIDSelectLabels"} <= comfy.added
    info = node(comfy, "PartIDBodyParts").GET_NODE_INFO_V1()
    assert info["display_name"] == "PartID Body Parts"
    assert list(info["input"]["required"]) == ["parser", "image"]
    assert info["input"]["optional"]["person_mask"][0] == "MASK"
    assert info["input"]["required"]["parser"][0] == "PARTID_BODY_PARSER"
    assert info["output"] == ["MASK"] * 5 + ["PARTID_LABEL_MAP", "IMAGE"]
    assert info["output_name"] == list(PARTS) + ["label_map", "preview"]
    select = node(comfy, "PartIDSelectLabels").GET_NODE_INFO_V1()
    assert select["display_name"] == "PartID Select Labels" and select["output"] == ["MASK"]
    assert list(select["input"]["required"]) == ["label_map", "invert"]
    toggles = select["input"]["optional"]
    assert list(toggles) == [i for i, _ in SELECTABLE]
    assert toggles["upper_clothes"][0] == "BOOLEAN" and toggles["upper_clothes"][1]["display_name"] == "Upper-clothes"
    assert "LIP body parsers" in toggles["glove"][1]["tooltip"] and "face parsers" in toggles["skin"][1]["tooltip"]


@pytest.mark.parametrize("choice,labels", [("segformer_b2_clothes", ATR), ("schp_atr_onnx", ATR),
                                           ("schp_lip_onnx", LIP)])
def test_body_parts_on_astronaut(comfy, load, astronaut, choice, labels):
    parser = load(choice)
    result, _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=parser, image=astronaut)
    *masks, label_map, preview = result
    assert label_map.labels == labels and label_map.maps.shape == (1, 512, 512)
    assert preview.shape == (1, 512, 512, 3) and 0 <= preview.min() and preview.max() <= 1
    for mask in masks:
        assert mask.shape == (1, 512, 512) and mask.dtype == torch.float32 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(sum(masks[1:]), masks[0])               # the four parts tile the full body
    maps = label_map.maps.numpy()
    if labels == ATR:                                           # Visual Persona's own index sets
        assert np.array_equal(masks[0].numpy(), 1 - np.isin(maps, [0, 16]))
        for mask, idx in zip(masks[1:], VP_PART_INDICES):
            assert np.array_equal(mask.numpy(), np.isin(maps, idx))
    direct = BodyParser(parser, "cpu").parse(astronaut)         # same engine outside ComfyUI
    assert torch.equal(direct.maps, label_map.maps)


def test_body_parts_batch_rgba(comfy, load, astronaut):
    rgba = torch.cat([astronaut[:, :256, :384], astronaut[:, 256:, 128:]])
    rgba = torch.cat([rgba, torch.ones(2, 256, 384, 1)], -1)
    result, _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=load("schp_atr_onnx"), image=rgba)
    assert result[0].shape == (2, 256, 384) and result[5].maps.shape == (2, 256, 384)


def test_person_mask_limits_every_part_to_it(comfy, load, astronaut):
    """person_mask (e.g. an RGBA cutout's alpha through core Convert Image to Mask): outside it every pixel is
    background, inside the parse is unchanged; a mask of another size is resized to the image."""
    parser = load("schp_atr_onnx")
    (*plain, plain_map, _), _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=parser, image=astronaut)
    rgba = torch.cat([astronaut, torch.zeros(1, 512, 512, 1)], -1)
    rgba[:, :, :256, 3] = 1.0                                   # opaque left half
    from comfy_extras.nodes_mask import ImageToMask                # core Convert Image to Mask

    (alpha,) = ImageToMask().image_to_mask(rgba, "alpha")
    (*masked, masked_map, _), _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=parser, image=rgba,
                                            person_mask=alpha[:, ::4, ::4])   # 128x128: resized to the image
    assert plain[0][:, :, 256:].any(), "the random parser labels some body on the right half"
    assert torch.equal(masked_map.maps[:, :, :256], plain_map.maps[:, :, :256])
    assert not masked_map.maps[:, :, 256:].any()
    for a, b in zip(plain, masked):
        assert torch.equal(b[:, :, :256], a[:, :, :256]) and not b[:, :, 256:].any()
    with pytest.raises(ValueError, match=r"PartID Body Parts, input 'person_mask'.*\[3, 8, 8\] for 1 image"):
        comfy.run(node(comfy, "PartIDBodyParts"), parser=parser, image=astronaut, person_mask=torch.ones(3, 8, 8))


def test_select_labels_toggles(comfy, load, astronaut):
    (*masks, label_map, _), _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=load("schp_atr_onnx"),
                                          image=astronaut)
    select = node(comfy, "PartIDSelectLabels")
    (face,), _ = comfy.run(select, label_map=label_map, invert=False, hat=True, hair=True, sunglasses=True,
                           face=True, glove=False)
    assert torch.equal(face, masks[1])
    (outside,), _ = comfy.run(select, label_map=label_map, invert=True, background=True, bag=True)
    assert torch.equal(outside, masks[0])
    (nothing,), _ = comfy.run(select, label_map=label_map, invert=False)
    assert nothing.shape == (1, 512, 512) and nothing.sum() == 0
    for label, parser_hint in (("glove", "parsing_lip.onnx"), ("skin", "face parser")):
        with pytest.raises(ValueError) as err:
            comfy.run(select, label_map=label_map, invert=False, **{label: True})
        msg = str(err.value)
        assert f"PartID Select Labels, input '{label}'" in msg and "onnx:parsing_atr.onnx" in msg and parser_hint in msg
    (*_, lip_map, _), _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=load("schp_lip_onnx"), image=astronaut)
    (gloves,), _ = comfy.run(select, label_map=lip_map, invert=False, glove=True, coat=True)
    assert torch.equal(gloves, ((lip_map.maps == 3) | (lip_map.maps == 7)).float())


def test_body_parts_refuses_a_face_parser(comfy, model_dirs, astronaut):
    (face,), _ = comfy.run(node(comfy, "PartIDFaceParserLoader"), parser="bisenet_face_parsing")
    with pytest.raises(ValueError, match="PartID Body Parts, input 'parser': expected a body parser, got a face"):
        comfy.run(node(comfy, "PartIDBodyParts"), parser=face, image=astronaut)


def test_segformer_is_managed_by_comfyui_and_onnx_is_not(comfy, load, astronaut):
    """SegFormer goes into ComfyUI's loaded-model list; an SCHP export runs in onnxruntime, outside it."""
    import comfy.model_management as mm

    from partid.nodes import managed

    small = astronaut[:, ::4, ::4]
    segformer, schp = load("segformer_b2_clothes"), load("schp_atr_onnx")
    first, _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=segformer, image=small)
    assert managed.is_loaded(segformer, "_partid_body_parser")
    assert segformer._partid_body_parser.patcher.model.net is segformer._partid_body_parser.engine.net
    mm.unload_all_models()
    assert not managed.is_loaded(segformer, "_partid_body_parser")
    again, _ = comfy.run(node(comfy, "PartIDBodyParts"), parser=segformer, image=small)
    assert torch.equal(again[5].maps, first[5].maps) and managed.is_loaded(segformer, "_partid_body_parser")
    comfy.run(node(comfy, "PartIDBodyParts"), parser=schp, image=small)
    assert schp._partid_body_parser.patcher is None and schp._partid_body_parser.engine.session is not None
