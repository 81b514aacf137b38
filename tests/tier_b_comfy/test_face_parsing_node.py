"""PartID Face Regions inside the real ComfyUI, fed by the real loader node, on real photos."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from fixtures_builders.photos import astronaut
from partid_rig import TESTS
from skimage import data

REGIONS = ("face", "eyes", "ears", "nose", "mouth")
NODE = "PartIDFaceRegions"


def as_image(*arrays) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.ascontiguousarray(a)).float().div(255) for a in arrays])


@pytest.fixture(scope="module")
def node(comfy):
    return comfy.nodes.NODE_CLASS_MAPPINGS[NODE]


@pytest.fixture(scope="module")
def bisenet(comfy, model_dirs):
    (parser,), _ = comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS["PartIDFaceParserLoader"], parser="bisenet_face_parsing")
    return parser


def run(comfy, node, parser, image, mode="ConsistentID", resolution=512):
    result, _ = comfy.run(node, parser=parser, image=image, mode=mode, resolution=resolution)
    assert len(result) == 7
    return dict(zip(REGIONS + ("label_map", "preview"), result))


def check_shapes(out, b, h, w, binary=False):
    """Masks cut at the parse size and resized to the photo carry soft 8-bit edges, as the official ones do;
    `binary`: the photo is at the parse size, so nothing was resized."""
    for region in REGIONS:
        mask = out[region]
        assert mask.shape == (b, h, w) and mask.dtype == torch.float32
        levels = mask.unique() * 255
        assert bool((levels == levels.round()).all()) and 0 <= levels.min() and levels.max() <= 255
        if binary:
            assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert out["label_map"].maps.shape == (b, h, w) and len(out["label_map"].labels) == 19
    assert out["preview"].shape == (b, h, w, 3) and 0 <= out["preview"].min() and out["preview"].max() <= 1


def test_node_is_registered_with_its_schema(comfy, node):
    assert NODE in comfy.added
    info = node.GET_NODE_INFO_V1()
    assert info["display_name"] == "PartID Face Regions"
    assert info["output"] == ["MASK"] * 5 + ["PARTID_LABEL_MAP", "IMAGE"]
    assert info["output_name"] == list(REGIONS) + ["label_map", "preview"]
    required = info["input"]["required"]
    assert required["parser"][0] == "PARTID_FACE_PARSER" and required["image"][0] == "IMAGE"
    assert required["mode"][1]["options"] == ["ConsistentID", "union"]
    assert required["resolution"][1]["options"] == [512, 1280]


def test_astronaut_bisenet_matches_the_official_parse(comfy, node, bisenet):
    """The 400x360 crop of the parity fixture: the node's map is the official 512 map brought back by nearest."""
    from partid.models.face_regions import face_regions
    from partid.models.labels import BISENET_FACE

    with np.load(TESTS / "fixtures" / "face_parsing_reference.npz") as ref:
        official = torch.from_numpy(ref["crop512_argmax"].astype(np.int64))
    crop = astronaut()[0:400, 100:460]
    out = run(comfy, node, bisenet, as_image(crop))
    check_shapes(out, 1, 400, 360)
    rows = ((torch.arange(400) + 0.5) * 512 / 400).floor().long()
    cols = ((torch.arange(360) + 0.5) * 512 / 360).floor().long()
    agree = (out["label_map"].maps[0] == official[rows][:, cols]).float().mean()
    assert agree > 0.9999 and out["label_map"].labels == BISENET_FACE
    again = face_regions(out["label_map"], "ConsistentID")
    assert all(torch.equal(out[r], again.masks[r]) for r in REGIONS)
    assert out["face"].sum() > 0        # the random-weight parse still holds skin


def test_full_astronaut_union_and_1280_and_core_mask_nodes(comfy, node, bisenet):
    image = as_image(astronaut())
    union = run(comfy, node, bisenet, image, mode="union")
    check_shapes(union, 1, 512, 512, binary=True)
    consistent = run(comfy, node, bisenet, image)
    for region in REGIONS:   # union keeps a superset of the labels
        assert bool((union[region] >= consistent[region]).all())
    sdxl = run(comfy, node, bisenet, image, resolution="1280")       # a string from an edited workflow
    check_shapes(sdxl, 1, 512, 512)
    from comfy_extras import nodes_mask   # ComfyUI's own MASK consumers take the outputs as they are

    (as_rgb,), _ = comfy.run(nodes_mask.MaskToImage, mask=consistent["face"])
    assert as_rgb.shape == (1, 512, 512, 3)
    (grown,), _ = comfy.run(nodes_mask.GrowMask, mask=consistent["face"], expand=2, tapered_corners=True)
    assert grown.shape == (1, 512, 512) and bool((grown >= consistent["face"]).all())


def test_rgba_gray_tiny_nonsquare_and_mixed_batch(comfy, node, bisenet):
    photo = astronaut()[0:300, 80:480]
    rgb = as_image(photo)
    rgba = torch.cat([rgb, torch.rand(1, 300, 400, 1)], dim=-1)
    plain, with_alpha = run(comfy, node, bisenet, rgb), run(comfy, node, bisenet, rgba)
    check_shapes(with_alpha, 1, 300, 400)
    # alpha ignored, as the official PIL .convert("RGB")
    assert torch.equal(plain["label_map"].maps, with_alpha["label_map"].maps)
    gray = rgb.mean(dim=-1, keepdim=True)
    check_shapes(run(comfy, node, bisenet, gray), 1, 300, 400)
    check_shapes(run(comfy, node, bisenet, as_image(astronaut()[100:120, 200:220])), 1, 20, 20)
    check_shapes(run(comfy, node, bisenet, as_image(astronaut()[0:512, 0:200])), 1, 512, 200)
    cat, coffee = data.chelsea()[0:300, 0:400], data.coffee()[0:300, 0:400]
    batch = run(comfy, node, bisenet, as_image(photo, cat, np.flipud(photo), coffee))
    check_shapes(batch, 4, 300, 400)
    single = run(comfy, node, bisenet, as_image(cat))
    assert (batch["label_map"].maps[1] == single["label_map"].maps[0]).float().mean() > 0.999


def test_segformer_parser_through_the_node(comfy, node, model_dirs):
    from partid.models.labels import SEGFORMER_FACE

    (parser,), _ = comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS["PartIDFaceParserLoader"],
                             parser="segformer_face_parsing")
    out = run(comfy, node, parser, as_image(astronaut()[0:300, 80:480]), mode="union", resolution=1280)
    check_shapes(out, 1, 300, 400, binary=True)    # SegFormer's masks are cut at the photo's size
    assert out["label_map"].labels == SEGFORMER_FACE and out["label_map"].source.startswith("segformer")


def test_errors_name_node_input_and_batch_index(comfy, node, bisenet, model_dirs):
    image = as_image(astronaut()[0:64, 0:64], astronaut()[64:128, 64:128])
    with pytest.raises(Exception) as err:
        run(comfy, node, bisenet, image, mode="both")
    assert "PartID Face Regions, input 'mode'" in str(err.value) and "ConsistentID, union" in str(err.value)
    with pytest.raises(Exception) as err:
        run(comfy, node, bisenet, image, resolution=768)
    assert "PartID Face Regions, input 'resolution'" in str(err.value) and "512, 1280" in str(err.value)
    bad = image.clone()
    bad[1, 3, 3, 0] = float("nan")
    with pytest.raises(Exception) as err:
        run(comfy, node, bisenet, bad)
    assert "PartID Face Regions, input 'image', batch index 1" in str(err.value)
    (body,), _ = comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS["PartIDBodyParserLoader"], parser="segformer_b2_clothes")
    with pytest.raises(Exception) as err:
        run(comfy, node, body, image)
    assert "input 'parser'" in str(err.value) and "body parser (atr labels)" in str(err.value)
    with pytest.raises(Exception) as err:
        run(comfy, node, bisenet, torch.rand(1, 32, 32, 5))
    assert "input 'image'" in str(err.value) and "5 channels" in str(err.value)


def test_face_parser_is_a_model_comfyui_manages(comfy, node, bisenet):
    """The built BiSeNet is in ComfyUI's loaded-model list (so VRAM pressure and "Unload models" reach it),
    is built once, and after ComfyUI unloads it the next run loads it again with the same result."""
    import comfy.model_management as mm

    from partid.nodes import managed

    image = as_image(astronaut()[:200, 100:300])
    first = run(comfy, node, bisenet, image)
    kept = bisenet._partid_face_parser
    assert managed.is_loaded(bisenet, "_partid_face_parser")
    assert kept.patcher.model.net is kept.engine.net and kept.patcher.load_device == mm.get_torch_device()
    mm.unload_all_models()                              # what "Unload models" / POST /free runs
    assert not managed.is_loaded(bisenet, "_partid_face_parser")
    again = run(comfy, node, bisenet, image)
    assert bisenet._partid_face_parser is kept and managed.is_loaded(bisenet, "_partid_face_parser")
    assert torch.equal(again["label_map"].maps, first["label_map"].maps)
    assert managed.offload(bisenet, "_partid_face_parser") and not managed.is_loaded(bisenet, "_partid_face_parser")
