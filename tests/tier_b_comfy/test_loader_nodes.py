"""Every loader node, run by ComfyUI's execution convention on official-format files."""
from __future__ import annotations

import pytest


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


def test_face_parser_loader_catalog_and_folder_choices(comfy, model_dirs):
    cls = node(comfy, "PartIDFaceParserLoader")
    (bisenet,), _ = comfy.run(cls, parser="bisenet_face_parsing")
    assert bisenet.backend == "bisenet" and len(bisenet.labels) == 19
    (seg,), _ = comfy.run(cls, parser="segformer_face_parsing")
    assert seg.backend == "segformer"


def test_body_parser_loader_refuses_a_face_parser(comfy, model_dirs):
    import os

    cls = node(comfy, "PartIDBodyParserLoader")
    (body,), _ = comfy.run(cls, parser="segformer_b2_clothes")
    assert body.label_set == "atr"
    # A user drops a face parser into the body-parser folder.
    misplaced = model_dirs / "body_parsing" / "misplaced_face_parser"
    if not misplaced.exists():
        os.symlink(model_dirs / "face_parsing" / "segformer_face_parsing", misplaced)
    options = cls.GET_NODE_INFO_V1()["input"]["required"]["parser"][1]["options"]
    assert "schp_atr_onnx" in options and "misplaced_face_parser/model.safetensors" in options
    with pytest.raises(Exception) as err:
        comfy.run(cls, parser="misplaced_face_parser/model.safetensors")
    msg = str(err.value)
    assert "PartID Body Parser Loader" in msg and "It is a face parser" in msg


def test_face_analysis_loader_opens_the_packs(comfy, model_dirs):
    cls = node(comfy, "PartIDFaceAnalysisLoader")
    for pack in ("buffalo_l", "antelopev2"):
        (fa,), _ = comfy.run(cls, pack=pack, provider="auto")
        assert {"detection", "recognition"} <= set(fa.sessions)
        assert fa.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(Exception, match="provider 'cuda' was asked for"):
        comfy.run(cls, pack="buffalo_l", provider="cuda")


def test_consistentid_loader_checks_the_base_model(comfy, model_dirs):
    from fixtures_builders.sd_models import tiny_sd15_patcher

    cls = node(comfy, "PartIDConsistentIDLoader")
    tiny = tiny_sd15_patcher()
    (weights,), _ = comfy.run(cls, adapter="consistentid_sd15", model=tiny)
    assert weights.format.name == "ConsistentID SD1.5"
    with pytest.raises(Exception) as err:
        comfy.run(cls, adapter="consistentid_sdxl", model=tiny)
    msg = str(err.value)
    assert "PartID ConsistentID Loader" in msg and "'adapter'" in msg and "ConsistentID SDXL" in msg and "SD1.5" in msg
    with pytest.raises(Exception, match="Visual Persona SDXL checkpoint, not ConsistentID"):
        comfy.run(cls, adapter="weight.bin")


def test_visual_persona_and_dinov2_loaders_with_info_node(comfy, model_dirs):
    (vp,), _ = comfy.run(node(comfy, "PartIDVisualPersonaLoader"), adapter="visual_persona")
    (dino,), _ = comfy.run(node(comfy, "PartIDDINOv2Loader"), dinov2="dinov2_vits14_pretrain.pth")
    (text,), ui = comfy.run(node(comfy, "PartIDModelInfo"), model=vp)
    assert "Visual Persona SDXL" in text and ui.as_dict()["text"] == (text,)
    (text,), _ = comfy.run(node(comfy, "PartIDModelInfo"), model=dino)
    assert "ViT-S/14" in text


def test_missing_catalog_model_names_where_to_put_it(comfy, model_dirs, monkeypatch):
    monkeypatch.delenv("PARTID_ALLOW_DOWNLOAD", raising=False)
    with pytest.raises(Exception) as err:
        comfy.run(node(comfy, "PartIDDINOv2Loader"), dinov2="dinov2_vitg14")
    msg = str(err.value)
    assert "dinov2_vitg14_pretrain.pth" in msg and str(model_dirs / "dinov2") in msg and "Apache-2.0" in msg
