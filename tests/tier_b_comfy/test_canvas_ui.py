"""The UI outputs PartID's canvas extension (web/partid.js) reads, from the nodes run by the real ComfyUI.

Parsing nodes send their preview IMAGE as a temp PNG (as core PreviewImage does) and a legend: each
legend colour must be the colour the preview IMAGE shows for that label, its share the label's pixel
share in the label map, its group the region / part mask the label's pixels land in. Select Labels
marks the switched-on labels; Visual Persona Apply lists the parts with their weights.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture(scope="module")
def astronaut():
    return torch.from_numpy(data.astronaut()).float().div(255)[None]


@pytest.fixture(scope="module")
def temp_dir(comfy, tmp_path_factory):
    old = comfy.folder_paths.get_temp_directory()
    new = tmp_path_factory.mktemp("comfy_temp")
    comfy.folder_paths.set_temp_directory(str(new))
    yield new
    comfy.folder_paths.set_temp_directory(old)


def check_preview_file(temp_dir: Path, ui: dict, preview: torch.Tensor):
    (saved,) = ui["images"]
    assert saved["type"] == "temp"
    png = np.asarray(Image.open(temp_dir / saved["subfolder"] / saved["filename"]).convert("RGB"))
    expected = (preview[0].numpy() * 255.0).clip(0, 255)
    assert png.shape == expected.shape and np.abs(png.astype(np.float32) - expected).max() <= 1.0


def check_legend(ui: dict, label_map, preview: torch.Tensor, photo: torch.Tensor, masks: dict):
    """Legend colour == the preview's colour at the label's pixels; share; group mask holds the pixels."""
    legend = ui["partid_legend"]
    assert legend, "a random-weight parser still labels every pixel"
    colours = ((preview[0] - 0.4 * photo[0]) / 0.6).clamp(0, 1)    # the preview blends 60 % colour over the photo
    maps = label_map.maps[0]
    for entry in legend:
        where = maps == label_map.labels.index(entry["label"])
        assert abs(where.float().mean().item() - entry["share"]) < 1e-4
        shown = colours[where].mean(0) * 255.0
        wanted = torch.tensor([int(entry["color"][i:i + 2], 16) for i in (1, 3, 5)], dtype=torch.float32)
        assert (shown - wanted).abs().max() < 1.5, (entry, shown)
        if entry["group"]:
            assert bool((masks[entry["group"]][0][where] > 0).all()), entry
    assert len({e["label"] for e in legend}) == len(legend)
    assert {e["label"] for e in legend} == {label_map.labels[i] for i in torch.unique(maps).tolist()}


def test_face_regions_send_preview_and_legend(comfy, model_dirs, temp_dir, astronaut):
    (parser,), _ = comfy.run(node(comfy, "PartIDFaceParserLoader"), parser="bisenet_face_parsing")
    result, ui = comfy.run(node(comfy, "PartIDFaceRegions"), parser=parser, image=astronaut, mode="union")
    masks = dict(zip(("face", "eyes", "ears", "nose", "mouth"), result[:5]))
    label_map, preview = result[5], result[6]
    check_preview_file(temp_dir, ui, preview)
    check_legend(ui, label_map, preview, astronaut, masks)
    groups = {g["name"]: g for g in ui["partid_groups"]}
    assert list(groups) == ["face", "eyes", "ears", "nose", "mouth"]
    for name, mask in masks.items():
        assert groups[name]["found"] == int(mask.amax() > 0) and groups[name]["of"] == 1


@pytest.mark.parametrize("choice", ["schp_atr_onnx", "schp_lip_onnx"])
def test_body_parts_and_select_labels_send_legends(comfy, model_dirs, temp_dir, astronaut, choice):
    (parser,), _ = comfy.run(node(comfy, "PartIDBodyParserLoader"), parser=choice)
    result, ui = comfy.run(node(comfy, "PartIDBodyParts"), parser=parser, image=astronaut)
    masks = dict(zip(("full_body", "face", "upper", "lower", "shoes"), result[:5]))
    label_map, preview = result[5], result[6]
    check_preview_file(temp_dir, ui, preview)
    check_legend(ui, label_map, preview, astronaut, masks)
    assert [g["name"] for g in ui["partid_groups"]][0] == "full_body"

    picked = ui["partid_legend"][:2]                      # switch on two labels the map has, by legend id
    (mask,), sel_ui = comfy.run(node(comfy, "PartIDSelectLabels"), label_map=label_map,
                                **{e["id"]: True for e in picked})
    assert {e["id"] for e in sel_ui["partid_legend"] if e["on"]} == {e["id"] for e in picked}
    assert sel_ui["partid_invert"] == [False]
    covered = sum(e["share"] for e in sel_ui["partid_legend"] if e["on"])
    assert abs(mask.mean().item() - covered) < 1e-3       # the legend ids are the node's real widget ids


def test_visual_persona_apply_lists_active_parts(comfy, monkeypatch):
    from partid.models.identity_tokens import IdentityTokens

    apply_cls = node(comfy, "PartIDVisualPersonaApply")
    module = sys.modules[apply_cls.__module__]
    # The node's checks and patching run for real elsewhere (test_visual_persona_nodes); here the
    # identity and adapter are small, so the patched model itself is not the point.
    monkeypatch.setattr(module, "check_inputs", lambda *a: None)
    monkeypatch.setattr(module, "apply_visual_persona", lambda model, *a: model)
    ident = IdentityTokens(torch.zeros(2, 6, 8), torch.zeros(1, 6, 8), ("face", "upper", "lower"), (2, 2, 2),
                           (1.0, 0.0, 0.5), "visual_persona")
    (_model,), ui = comfy.run(apply_cls, model="model", adapter=None, identity=ident, weight=0.7, end_at=0.5)
    rows = {r["name"]: r for r in ui["partid_active"]}
    assert [rows[p]["on"] for p in ("face", "upper", "lower")] == [True, False, True]
    assert rows["lower"]["detail"] == "x0.5" and rows["references"]["detail"] == "2"
    assert rows["steps"]["detail"] == "0-0.5 of sampling" and rows["mask"]["on"] is False


def test_an_empty_mask_or_window_is_said_and_shown_off(comfy, monkeypatch, caplog):
    """A mask with no pixel on (a Select Labels with nothing switched on) or start_at == end_at leaves the model
    unchanged in effect: the node now says so in the log and its canvas shows the mask chip off."""
    from partid.models.identity_tokens import IdentityTokens

    apply_cls = node(comfy, "PartIDVisualPersonaApply")
    module = sys.modules[apply_cls.__module__]
    monkeypatch.setattr(module, "check_inputs", lambda *a: None)
    monkeypatch.setattr(module, "apply_visual_persona", lambda model, *a: model)
    ident = IdentityTokens(torch.zeros(1, 2, 8), torch.zeros(1, 2, 8), ("face",), (2,), (1.0,), "visual_persona")
    with caplog.at_level("WARNING", logger="partid"):
        (_model,), ui = comfy.run(apply_cls, model="model", adapter=None, identity=ident, mask=torch.zeros(1, 8, 8),
                                  start_at=0.4, end_at=0.4)
    rows = {r["name"]: r for r in ui["partid_active"]}
    assert rows["mask"]["on"] is False and rows["mask"]["detail"] == "empty: acts nowhere"
    assert rows["steps"]["on"] is False
    assert "the mask is empty (all zero)" in caplog.text and "start_at equals end_at (0.4)" in caplog.text
