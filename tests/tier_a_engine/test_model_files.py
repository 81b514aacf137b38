"""Loading every model kind from files in the official formats; wrong kinds refused by name."""
from __future__ import annotations


import pytest
import torch
from fixtures_builders import adapters, parsers
from fixtures_builders.insightface_packs import build_pack

from partid.models import formats, model_files
from partid.models.errors import ModelFileError
from partid.models.labels import ATR, BISENET_FACE, SEGFORMER_FACE


@pytest.fixture(scope="module")
def cid_sd15():
    return str(adapters.consistentid_bin("sd15"))


@pytest.fixture(scope="module")
def cid_sdxl():
    return str(adapters.consistentid_bin("sdxl"))


def test_consistentid_sd15_and_sdxl_are_recognised(cid_sd15, cid_sdxl):
    sd15 = model_files.load_adapter(cid_sd15, "ConsistentID")
    assert sd15.format.name == "ConsistentID SD1.5" and sd15.format.context_dim == 768
    assert set(sd15.groups) == {"image_proj", "FacialEncoder", "adapter_modules"}
    assert sd15.parameter_count() == 33581568 + 105772288 + 44679168  # 184 M, as the official file
    sdxl = model_files.load_adapter(cid_sdxl, "ConsistentID")
    # The SDXL file spells the group image_proj_model; it is exposed under the canonical name.
    assert sdxl.format.name == "ConsistentID SDXL" and "image_proj" in sdxl.groups
    assert sdxl.parameter_count() == 217125888 + 125124608 + 526581760  # 869 M


def test_base_mismatch_is_refused_with_a_fix(cid_sdxl):
    weights = model_files.load_adapter(cid_sdxl, "ConsistentID")
    with pytest.raises(ModelFileError) as err:
        model_files.check_base(weights, 768, "BaseModel")
    msg = str(err.value)
    assert "ConsistentID SDXL" in msg and "SD1.5" in msg and "Fix:" in msg
    model_files.check_base(weights, 2048, "SDXL")


def test_visual_persona_file_in_consistentid_loader_is_named():
    vp = str(adapters.visual_persona_bin())
    with pytest.raises(ModelFileError, match="is a Visual Persona SDXL checkpoint, not ConsistentID"):
        model_files.load_adapter(vp, "ConsistentID")
    assert model_files.load_adapter(vp, "Visual Persona").format.base == "sdxl"


def test_damaged_consistentid_is_refused_with_the_key(tmp_path, cid_sd15):
    state = torch.load(cid_sd15, weights_only=True)
    state["adapter_modules"]["5.to_k_ip.weight"] = torch.zeros(320, 1024)
    bad = tmp_path / "bad.bin"
    torch.save(state, bad)
    with pytest.raises(ModelFileError) as err:
        model_files.load_adapter(str(bad), "ConsistentID")
    assert "adapter_modules.5.to_k_ip.weight has shape [320, 1024], expected [640, 768]" in str(err.value)


def test_safetensors_conversion_with_prefixes_is_recognised(tmp_path):
    from safetensors.torch import save_file

    from partid.models.weights import flatten

    vp = torch.load(str(adapters.visual_persona_bin()), weights_only=True)
    path = tmp_path / "visual_persona.safetensors"
    save_file(flatten(vp), str(path))
    assert model_files.load_adapter(str(path), "Visual Persona").format.name == "Visual Persona SDXL"


def test_face_parsers_by_label_names():
    bisenet = model_files.load_parser(str(parsers.bisenet_pth()), "face")
    assert bisenet.backend == "bisenet" and bisenet.labels == BISENET_FACE
    seg = model_files.load_parser(str(parsers.segformer_face_folder() / "model.safetensors"), "face")
    assert seg.backend == "segformer" and seg.labels == SEGFORMER_FACE and seg.label_set == "segformer_face"


def test_a_segformer_folder_without_its_weights_is_refused_by_the_loader(tmp_path):
    """config.json alone (an interrupted copy) loaded, and the first parse failed a node later with a bare
    transformers OSError; the loader now names the folder and the fix."""
    import shutil

    folder = tmp_path / "face-parsing"
    folder.mkdir()
    shutil.copy(parsers.segformer_face_folder() / "config.json", folder / "config.json")
    with pytest.raises(ModelFileError) as err:
        model_files.load_parser(str(folder), "face")
    assert "has config.json but no weights" in str(err.value) and "Fix: copy or download" in str(err.value)


def test_body_parser_and_cross_kind_refusals(cid_sd15):
    clothes = parsers.segformer_clothes_folder()
    body = model_files.load_parser(str(clothes), "body")
    assert body.labels == ATR and body.label_set == "atr"
    with pytest.raises(ModelFileError, match="It is a body parser"):
        model_files.load_parser(str(clothes), "face")
    with pytest.raises(ModelFileError, match="It is a face parser"):
        model_files.load_parser(str(parsers.segformer_face_folder()), "body")
    with pytest.raises(ModelFileError, match="none of the formats"):
        model_files.load_parser(cid_sd15, "face")


def test_onnx_body_parser_class_count(tmp_path):
    # An insightface recogniser is an ONNX file but not a parser: refused with what was found.
    build_pack(str(tmp_path / "buffalo_l"), "buffalo_l", include_optional=False)
    with pytest.raises(ModelFileError, match="expected one image input|not a parser export"):
        model_files.load_parser(str(tmp_path / "buffalo_l" / "w600k_r50.onnx"), "body")


def test_onnx_parser_without_declared_output_shapes(tmp_path):
    # Exports made with dynamic axes often declare no output shapes: the class count then comes from
    # ONNX shape inference over the real graph (here: our SCHP-signature export with its shapes erased).
    import onnx
    from fixtures_builders.schp_onnx import schp_onnx

    for label_set, n in (("atr", 18), ("lip", 20)):
        model = onnx.load(str(schp_onnx(label_set)))
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
        del model.graph.value_info[:]
        path = tmp_path / f"parsing_{label_set}_noshape.onnx"
        onnx.save(model, str(path))
        assert all(not o.type.tensor_type.HasField("shape") for o in onnx.load(str(path)).graph.output)
        weights = model_files.load_parser(str(path), "body")
        assert (weights.label_set, len(weights.labels)) == (label_set, n)


def test_dinov2_hub_layout_and_refusal(cid_sd15):
    dino = model_files.load_dinov2(str(parsers.dinov2_hub_pth("vits14")))
    assert (dino.embed_dim, dino.depth, dino.patch_size, dino.ffn, dino.size_name) == (384, 12, 14, "mlp", "ViT-S/14")
    with pytest.raises(ModelFileError, match="It is a ConsistentID SD1.5 checkpoint"):
        model_files.load_dinov2(cid_sd15)


def test_identify_reports_closest_formats(tmp_path):
    with pytest.raises(ModelFileError) as err:
        formats.identify({"foo": torch.zeros(1)}, formats.ADAPTER_FORMATS, "x.bin")
    msg = str(err.value)
    assert "x.bin" in msg and "ConsistentID SD1.5" in msg and "missing group" in msg


def test_bisenet_checkpoint_loads_strictly_into_our_network():
    from partid.models.bisenet import BiSeNet

    state = torch.load(str(parsers.bisenet_pth()), weights_only=True)
    BiSeNet(19).load_state_dict(state, strict=True)
