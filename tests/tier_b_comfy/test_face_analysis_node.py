"""PartID Face Analysis run by the real ComfyUI on the loader's output (random-weight buffalo_l, seed 0)."""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from fixtures_builders.photos import group_photo

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "face_analysis_reference.npz"
OPTIONS = dict(det_thresh=0.2, min_face_size=0, face_select="index", face_index=0, on_no_face="error",
               color_order="BGR")


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


@pytest.fixture(scope="module")
def analyzer(comfy, model_dirs):
    (models,), _ = comfy.run(node(comfy, "PartIDFaceAnalysisLoader"), pack="buffalo_l", provider="auto")
    return models


@pytest.fixture(scope="module")
def photo():
    return group_photo()


def as_image(*frames: np.ndarray) -> torch.Tensor:
    return torch.stack([torch.from_numpy(f).float() / 255.0 for f in frames])


def test_node_schema(comfy):
    assert "PartIDFaceAnalysis" in comfy.added
    info = node(comfy, "PartIDFaceAnalysis").GET_NODE_INFO_V1()
    assert info["display_name"] == "PartID Face Analysis"
    assert list(info["input"]["required"]) == ["analyzer", "image", "det_thresh", "min_face_size", "face_select",
                                               "face_index", "on_no_face", "color_order"]
    assert info["output"] == ["PARTID_FACES", "PARTID_FACE_EMBEDS", "INT", "IMAGE", "IMAGE"]
    assert info["output_name"] == ["faces", "embeddings", "face_count", "preview", "images"]
    color = info["input"]["required"]["color_order"][1]
    assert color["options"] == ["BGR", "RGB"] and "ConsistentID SD1.5" in color["tooltip"]


def test_group_photo_matches_insightface(comfy, analyzer, photo):
    (faces, embeds, count, preview, kept), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer,
                                                         image=as_image(photo), **OPTIONS)
    assert torch.equal(kept, as_image(photo))
    ref = np.load(REFERENCE)
    run = "buffalo_l__t1__BGR__0"
    assert count == len(ref[run + "__score"]) == 5 and faces.present == [True] and faces.selected == [0]
    assert embeds.shape == (1, 512) and embeds.dtype == torch.float32
    if hashlib.sha256(photo.tobytes()).hexdigest() == json.loads(str(ref["meta"]))["rgb_sha256"]["t1"]:
        want = ref[run + "__embedding"][0] / np.linalg.norm(ref[run + "__embedding"][0])
        assert np.abs(embeds[0].numpy() - want).max() < 1e-5
        assert np.abs(np.array([f.bbox for f in faces.faces[0]]) - ref[run + "__bbox"]).max() < 1e-2
    assert preview.shape == (1, 886, 1280, 3) and preview.dtype == torch.float32
    x1, y1 = np.round(faces.faces[0][0].bbox[:2]).astype(int)
    assert preview[0, y1, x1].tolist() != as_image(photo)[0, y1, x1].tolist()      # the box is drawn


@pytest.mark.parametrize("face_select,face_index", [("largest", 0), ("left-to-right", 2)])
def test_face_select_picks_the_same_face_as_the_engine_rule(comfy, analyzer, photo, face_select, face_index):
    options = dict(OPTIONS, face_select=face_select, face_index=face_index)
    (faces, embeds, *_), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer,
                                         image=as_image(photo), **options)
    boxes = np.array([f.bbox for f in faces.faces[0]])
    key = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) if face_select == "largest" else \
        -(boxes[:, 0] + boxes[:, 2])
    assert faces.selected[0] == sorted(range(len(boxes)), key=lambda i: -key[i])[face_index]
    assert np.allclose(embeds[0].numpy(), faces.faces[0][faces.selected[0]].normed_embedding)


def _gray(photo):
    return np.full_like(photo, 128)      # the random detector's best score here is 0.2003, on the padding


def test_bypass_is_visible_downstream(comfy, analyzer, photo):
    options = dict(OPTIONS, det_thresh=0.201, on_no_face="bypass")
    (faces, embeds, count, preview, kept), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer,
                                                         image=as_image(photo, _gray(photo)), **options)
    assert torch.equal(kept, as_image(photo, _gray(photo)))
    assert faces.present == [True, False] and faces.source_indices == [0, 1] and count == 2
    assert embeds.shape == (2, 512) and not embeds[1].any() and embeds[0].norm() == pytest.approx(1.0, abs=1e-5)
    assert preview.shape[0] == 2


def test_skip_drops_the_image_and_logs_it(comfy, analyzer, photo, caplog):
    options = dict(OPTIONS, det_thresh=0.201, on_no_face="skip")
    with caplog.at_level(logging.WARNING):
        (faces, embeds, count, preview, kept), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer,
                                                             image=as_image(_gray(photo), photo), **options)
    assert faces.source_indices == [1] and faces.skipped == [0] and embeds.shape == (1, 512)
    assert torch.equal(kept, as_image(photo))                   # the kept images pair row for row
    assert "batch index 0" in caplog.text and "on_no_face=skip" in caplog.text
    assert preview.shape[0] == 2                                # the preview shows every input image


def test_no_face_error_names_node_input_and_batch_index(comfy, analyzer, photo):
    with pytest.raises(Exception) as err:
        comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer, image=as_image(photo, photo, _gray(photo)),
                  **dict(OPTIONS, det_thresh=0.201))
    msg = str(err.value)
    assert "PartID Face Analysis" in msg and "'image'" in msg and "batch index 2" in msg
    assert "lower det_thresh" in msg and "on_no_face=skip" in msg


def test_rgba_input_and_a_wrong_analyzer(comfy, analyzer, photo):
    rgba = torch.cat([as_image(photo), torch.ones(1, *photo.shape[:2], 1)], dim=-1)
    (faces, _, count, *_), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer, image=rgba, **OPTIONS)
    assert count == 5
    with pytest.raises(Exception, match="connect PartID Face Analysis Loader"):
        comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer="buffalo_l", image=rgba, **OPTIONS)


def test_face_boxes_give_the_detections_as_masks_and_json(comfy, analyzer, photo):
    """PartID Face Boxes: the chosen box (and every box) as a MASK at the image's size, and the boxes, five points
    and scores as JSON, equal to the faces output they come from."""
    (faces, *_), _ = comfy.run(node(comfy, "PartIDFaceAnalysis"), analyzer=analyzer,
                               image=as_image(photo, _gray(photo)), **dict(OPTIONS, det_thresh=0.201, on_no_face="bypass"))
    boxes = node(comfy, "PartIDFaceBoxes")
    (chosen, text), _ = comfy.run(boxes, faces=faces)
    (every, _), _ = comfy.run(boxes, faces=faces, which="all", grow=0.1)
    h, w = photo.shape[:2]
    assert chosen.shape == every.shape == (2, h, w) and not chosen[1].any()    # no face in the grey image
    x1, y1, x2, y2 = faces.faces[0][faces.selected[0]].bbox
    ys, xs = torch.nonzero(chosen[0], as_tuple=True)
    assert abs(int(xs.min()) - x1) <= 1 and abs(int(xs.max()) + 1 - x2) <= 1
    assert abs(int(ys.min()) - y1) <= 1 and abs(int(ys.max()) + 1 - y2) <= 1
    assert every[0].sum() > chosen[0].sum() and (every[0] >= chosen[0]).all()
    record = json.loads(text)
    image0 = record["images"][0]
    assert [r["batch_index"] for r in record["images"]] == [0, 1] and image0["chosen"] == faces.selected[0]
    assert len(image0["faces"]) == len(faces.faces[0]) and record["images"][1]["faces"] == []
    assert np.allclose(image0["faces"][0]["box"], faces.faces[0][0].bbox, atol=0.01)
    assert np.allclose(image0["faces"][0]["points"], faces.faces[0][0].kps, atol=0.01)
    with pytest.raises(ValueError, match="PartID Face Boxes, input 'faces'"):
        comfy.run(boxes, faces="not faces")
