"""Native face analysis (models/face_analysis.py): parity with insightface, decoding, alignment, options.

Parity fixture tests/fixtures/face_analysis_reference.npz was made with the real insightface code on the
same random-weight packs our tests build (build_pack(dir, pack, seed=0), written to /tmp/ifpacks/<pack>
from the main venv), in a throw-away venv that is not part of PartID:

    python3 -m venv /tmp/ifref && /tmp/ifref/bin/pip install insightface   # got 2.1 (onnxruntime 1.32.0 CPU,
    /tmp/ifref/bin/python make_reference.py                                 #  opencv 5.0.0, skimage 0.26.0)

make_reference.py (kept here as text on purpose, not as runnable code):

    import hashlib, json, os
    import cv2, numpy as np, insightface, onnxruntime, skimage
    from insightface.app import FaceAnalysis
    from insightface.utils.face_align import estimate_norm
    from skimage import data

    T1 = os.path.join(os.path.dirname(insightface.__file__), "data/images/t1.jpg")
    bgr = {"astronaut": np.ascontiguousarray(data.astronaut()[..., ::-1]), "t1": cv2.imread(T1)}  # BGR
    THRESH = {"buffalo_l": 0.2, "antelopev2": 0.17}
    RUNS = {"buffalo_l": [("astronaut", "BGR", 0), ("t1", "BGR", 0), ("astronaut", "RGB", 0), ("t1", "BGR", 3)],
            "antelopev2": [("astronaut", "BGR", 0), ("t1", "BGR", 0)]}
    out = {}
    for pack, runs in RUNS.items():
        app = FaceAnalysis(name=f"/tmp/ifpacks/{pack}", allowed_modules=["detection", "recognition"],
                           providers=["CPUExecutionProvider"])
        app.prepare(ctx_id=-1, det_thresh=THRESH[pack], det_size=(640, 640))
        for key, order, max_num in runs:
            img = bgr[key] if order == "BGR" else np.ascontiguousarray(bgr[key][..., ::-1])  # RGB: SD1.5 quirk
            faces = app.get(img, max_num=max_num)
            run = f"{pack}__{key}__{order}__{max_num}"
            out[run + "__bbox"] = np.array([f.bbox for f in faces], np.float32).reshape(-1, 4)
            out[run + "__kps"] = np.array([f.kps for f in faces], np.float32).reshape(-1, 5, 2)
            out[run + "__score"] = np.array([f.det_score for f in faces], np.float32)
            out[run + "__M"] = np.array([estimate_norm(f.kps) for f in faces], np.float64).reshape(-1, 2, 3)
            out[run + "__embedding"] = np.array([f.embedding for f in faces], np.float32).reshape(-1, 512)
    meta = {"insightface": insightface.__version__, "onnxruntime": onnxruntime.__version__,
            "opencv": cv2.__version__, "numpy": np.__version__, "skimage": skimage.__version__,
            "fed": "BGR (cv2.imread order) unless run says RGB", "det_size": 640, "det_thresh": THRESH,
            "packs": "build_pack(dir, pack, seed=0)",
            "rgb_sha256": {k: hashlib.sha256(np.ascontiguousarray(v[..., ::-1]).tobytes()).hexdigest()
                           for k, v in bgr.items()}}
    np.savez_compressed("face_analysis_reference.npz", meta=np.array(json.dumps(meta)), **out)

insightface was fed BGR (cv2.imread order) in the "BGR" runs; the "RGB" run is the ConsistentID SD1.5 quirk.
Measured when made: boxes, points, scores and alignment matrices identical (max abs diff 0), raw
embeddings within 5e-7 (ours run all faces in one batch, insightface one face at a time).
"""
from __future__ import annotations

import hashlib
import json
import logging
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from partid.models import face_analysis as fa
from partid_rig import REPORT
from partid.models.errors import InputError
from partid.models.face_analysis_pack import open_pack
from fixtures_builders import photos
from fixtures_builders.cache import cached
from fixtures_builders.insightface_packs import build_pack

REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "face_analysis_reference.npz"


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    root = tmp_path_factory.mktemp("insightface")
    for pack in ("buffalo_l", "antelopev2"):
        built = cached(f"insightface/models/{pack}", lambda p, pack=pack: build_pack(str(p), pack))
        (root / "models" / pack).parent.mkdir(parents=True, exist_ok=True)
        (root / "models" / pack).symlink_to(built)
    return {pack: open_pack([str(root)], pack, "cpu") for pack in ("buffalo_l", "antelopev2")}


@pytest.fixture(scope="module")
def images():
    return {"astronaut": photos.astronaut(), "t1": photos.group_photo()}


# --- parity with insightface ----------------------------------------------------------------------

def _runs():
    ref = np.load(REFERENCE)
    return sorted({k.rsplit("__", 1)[0] for k in ref.files if k != "meta"})


@pytest.mark.parametrize("run", _runs())
def test_parity_with_insightface(packs, images, run):
    ref = np.load(REFERENCE)
    meta = json.loads(str(ref["meta"]))
    pack, key, order, max_num = run.split("__")
    if hashlib.sha256(images[key].tobytes()).hexdigest() != meta["rgb_sha256"][key]:
        pytest.skip(f"this JPEG decoder gives other pixels for {key} than the fixture was made from")
    result = fa.analyze(packs[pack], [images[key]], det_thresh=meta["det_thresh"][pack], color_order=order,
                        max_num=int(max_num), face_select="index")
    faces = result.faces[0]
    assert len(faces) == len(ref[run + "__score"]) > 0
    got = {"bbox": [f.bbox for f in faces], "kps": [f.kps for f in faces], "score": [f.det_score for f in faces],
           "M": [fa.alignment_matrix(f.kps) for f in faces], "embedding": [f.embedding for f in faces]}
    tolerance = {"bbox": 1e-2, "kps": 1e-2, "score": 1e-5, "M": 1e-5, "embedding": 1e-4}   # pixels / units
    diffs = {name: float(np.abs(np.array(got[name], np.float64) - ref[f"{run}__{name}"]).max()) for name in tolerance}
    REPORT.append(f"insightface {meta['insightface']} parity {run}: {len(faces)} faces, max abs diff "
                  + ", ".join(f"{name} {d:.1e}" for name, d in diffs.items()))
    for name, tol in tolerance.items():
        assert diffs[name] <= tol, f"{run} {name}: max abs diff {diffs[name]}"
    normed = np.array([f.normed_embedding for f in faces])
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-5)


# --- decoding against hand-made anchor maps ----------------------------------------------------------

def _empty_heads(size: int, strides=(8, 16, 32), anchors=2):
    rows = [(size // s) ** 2 * anchors for s in strides]
    return ([np.zeros((r, 1), np.float32) for r in rows], [np.zeros((r, 4), np.float32) for r in rows],
            [np.zeros((r, 10), np.float32) for r in rows])


def test_anchor_centres_are_row_major_and_repeated_per_anchor():
    c = fa.anchor_centers(2, 3, 16, 2)
    assert c.shape == (12, 2) and c.dtype == np.float32
    assert c[:6].tolist() == [[0, 0], [0, 0], [16, 0], [16, 0], [32, 0], [32, 0]]
    assert c[6:8].tolist() == [[0, 16], [0, 16]]


def test_decode_known_answers():
    scores, boxes, kps = _empty_heads(64)
    # stride 16 (4x4 grid), cell x=2 y=1, anchor 1 -> row (1*4 + 2)*2 + 1 = 13, centre (32, 16).
    scores[1][13] = 0.9
    boxes[1][13] = [1, 2, 3, 4]                              # in stride units: (16, 32, 48, 64) px
    kps[1][13] = [0, 0, 1, 0, 0.5, 1, -1, 2, 2, 2]
    # stride 8, row 0 (centre 0,0) just under the threshold; stride 32 row 7 exactly at it.
    scores[0][0], scores[2][7] = 0.49, 0.5
    boxes[2][7] = [0.5, 0.5, 0.5, 0.5]
    s, b, k = fa.decode(scores + boxes + kps, (64, 64), 0.5)
    assert s.tolist() == pytest.approx([0.9, 0.5])
    assert b[0].tolist() == [16, -16, 80, 80]
    assert k[0].tolist() == [[32, 16], [48, 16], [40, 32], [16, 48], [64, 48]]
    assert b[1].tolist() == [16, 16, 48, 48]                  # row 7 = cell (1, 1) anchor 1: centre (32, 32)


def test_decode_refuses_a_detector_without_keypoints():
    scores, boxes, _ = _empty_heads(64)
    with pytest.raises(ValueError, match="9 or 15 outputs"):
        fa.decode(scores + boxes, (64, 64), 0.5)


def test_letterbox_keeps_aspect_at_top_left():
    canvas, scale = fa.letterbox(np.full((100, 400, 3), 200, np.uint8))
    assert scale == 1.6 and canvas.shape == (640, 640, 3)
    assert (canvas[:160] == 200).all() and (canvas[160:] == 0).all()
    canvas, scale = fa.letterbox(np.full((5000, 5, 3), 9, np.uint8))      # would be 0 wide: kept at 1
    assert scale == 0.128 and (canvas[:, :3, 0] == [9, 0, 0]).all()


def test_nms_suppresses_overlaps_and_keeps_ties_in_order():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60], [0, 0, 10, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.7, 0.9], np.float32)
    assert fa.nms(boxes, scores).tolist() == [1, 2]            # 3 ties with 1 (IoU 0.7) and goes
    assert fa.nms(boxes, scores, thresh=0.99).tolist() == [1, 3, 2]   # 0 duplicates 3 (IoU 1)
    assert fa.nms(boxes, scores, thresh=1.0).tolist() == [1, 3, 2, 0]


# --- alignment ----------------------------------------------------------------------------------------

def test_alignment_maps_the_template_onto_itself():
    m = fa.alignment_matrix(fa.ARCFACE_TEMPLATE)
    assert np.allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-5)


def test_alignment_undoes_a_similarity_and_agrees_with_skimage():
    from skimage.transform import SimilarityTransform

    a, s = np.deg2rad(25), 2.5
    rot = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    kps = (fa.ARCFACE_TEMPLATE.astype(np.float64) @ rot.T + [300, 140]).astype(np.float32)
    m = fa.alignment_matrix(kps)
    assert np.allclose(kps @ m[:, :2].T + m[:, 2], fa.ARCFACE_TEMPLATE, atol=1e-3)
    reference = SimilarityTransform()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                    # estimate() is deprecated from skimage 0.26
        reference.estimate(kps, fa.ARCFACE_TEMPLATE)
    assert np.allclose(m, reference.params[:2], atol=1e-4)
    m128 = fa.alignment_matrix(fa.ARCFACE_TEMPLATE, size=128)
    assert np.allclose(m128[:, 2], [8, 0], atol=1e-4)          # the 128 template is shifted 8 px right


def test_aligned_crop_puts_the_eyes_on_the_template():
    img = np.zeros((300, 400, 3), np.uint8)
    kps = fa.ARCFACE_TEMPLATE * 2 + [100, 50]
    for x, y in kps[:2].round().astype(int):
        img[y - 1:y + 2, x - 1:x + 2] = 255
    crop = fa.align(img, kps)
    for x, y in fa.ARCFACE_TEMPLATE[:2].round().astype(int):
        assert crop[y, x, 0] > 100


# --- a stand-in detector: one face per bright blob, at known coordinates -------------------------------

class BlobDetector:
    """SCRFD's interface; reports the bright pixels of the letterboxed input as one face (score 0.9)."""

    names = ("448", "471", "494", "451", "474", "497", "454", "477", "500")

    def get_inputs(self):
        return [SimpleNamespace(name="input.1", shape=[1, 3, "?", "?"])]

    def get_outputs(self):
        return [SimpleNamespace(name=n) for n in self.names]

    def run(self, names, feeds):
        blob = feeds["input.1"][0]
        scores, boxes, kps = _empty_heads(blob.shape[1])
        ys, xs = np.nonzero(blob.mean(0) > 0.5)
        if len(xs):
            x1, y1, x2, y2 = xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0
            cx, cy = int((x1 + x2) / 16), int((y1 + y2) / 16)                # stride-8 cell of the centre
            row, (px, py) = (cy * (blob.shape[2] // 8) + cx) * 2, (cx * 8, cy * 8)
            scores[0][row] = 0.9
            boxes[0][row] = np.array([px - x1, py - y1, x2 - px, y2 - py]) / 8
            pts = fa.ARCFACE_TEMPLATE / 112 * [x2 - x1, y2 - y1] + [x1, y1]
            kps[0][row] = ((pts - [px, py]) / 8).ravel()
        return scores + boxes + kps


@pytest.fixture(scope="module")
def blob_models(packs):
    rec = packs["buffalo_l"]
    return SimpleNamespace(name="blob", files=rec.files, sessions={"detection": BlobDetector(),
                                                                    "recognition": rec.sessions["recognition"]})


def _square(h, w, x, y, side, value=255):
    img = np.zeros((h, w, 3), np.uint8)
    img[y:y + side, x:x + side] = value
    return img


@pytest.mark.parametrize("h,w,x,y,side", [(480, 640, 100, 200, 80), (300, 1000, 900, 20, 60),
                                          (1600, 90, 10, 1400, 50), (24, 16, 4, 8, 8), (3000, 4000, 2000, 1500, 400)])
def test_boxes_come_back_in_original_pixels(blob_models, h, w, x, y, side):
    """Non-square, tall and tiny images: the letterbox scale is undone (within one source pixel)."""
    result = fa.analyze(blob_models, [_square(h, w, x, y, side)], det_thresh=0.5)
    (face,) = result.faces[0]
    assert np.allclose(face.bbox, [x, y, x + side, y + side], atol=max(1.0, max(h, w) / 640 + 0.5))
    assert face.aligned.shape == (112, 112, 3) and face.embedding.shape == (512,)


def test_a_one_pixel_image_runs(packs):
    result = fa.analyze(packs["buffalo_l"], [np.zeros((1, 1, 3), np.uint8)], on_no_face="bypass")
    assert result.present == [False] and result.embeddings().shape == (1, 512)


def test_batch_of_different_images_equals_one_at_a_time(packs, images):
    both = fa.analyze(packs["buffalo_l"], [images["astronaut"], images["t1"]], det_thresh=0.2)
    for k, key in enumerate(("astronaut", "t1")):
        alone = fa.analyze(packs["buffalo_l"], [images[key]], det_thresh=0.2)
        assert [f.bbox.tolist() for f in both.faces[k]] == [f.bbox.tolist() for f in alone.faces[0]]
        assert np.allclose([f.embedding for f in both.faces[k]], [f.embedding for f in alone.faces[0]], atol=1e-5)
    assert both.source_indices == [0, 1] and both.image_sizes == [(512, 512), (886, 1280)]


def test_rgba_and_grayscale_tensors(packs, images):
    rgb = torch.from_numpy(images["astronaut"]).float()[None] / 255
    rgba = torch.cat([rgb, torch.rand_like(rgb[..., :1])], dim=-1)
    base = fa.analyze(packs["buffalo_l"], rgb, det_thresh=0.2)
    assert [f.bbox.tolist() for f in fa.analyze(packs["buffalo_l"], rgba, det_thresh=0.2).faces[0]] == \
           [f.bbox.tolist() for f in base.faces[0]]
    gray = rgb.mean(-1, keepdim=True)
    from_gray = fa.analyze(packs["buffalo_l"], gray, det_thresh=0.15, on_no_face="bypass")
    from_rgb_gray = fa.analyze(packs["buffalo_l"], gray.expand(-1, -1, -1, 3), det_thresh=0.15, on_no_face="bypass")
    assert [f.bbox.tolist() for f in from_gray.faces[0]] == [f.bbox.tolist() for f in from_rgb_gray.faces[0]]


def test_color_order_rgb_reverses_the_channels_the_networks_see(blob_models):
    img = np.zeros((200, 200, 3), np.uint8)
    img[50:150, 50:150] = (255, 255, 120)               # bright whatever the channel order
    bgr = fa.analyze(blob_models, [img], det_thresh=0.5)
    quirk = fa.analyze(blob_models, [img], det_thresh=0.5, color_order="RGB")
    assert np.allclose(bgr.faces[0][0].bbox, quirk.faces[0][0].bbox)
    assert np.array_equal(bgr.faces[0][0].aligned, quirk.faces[0][0].aligned)      # crops stay RGB
    assert not np.allclose(bgr.faces[0][0].embedding, quirk.faces[0][0].embedding)


# --- choosing a face ----------------------------------------------------------------------------------

def _face(x1, y1, x2, y2, score=0.9):
    return fa.Face(np.array([x1, y1, x2, y2], np.float32), np.zeros((5, 2), np.float32), score)


def test_face_select_orders():
    faces = [_face(300, 0, 340, 40), _face(0, 0, 100, 100), _face(150, 0, 250, 100), _face(500, 0, 510, 10)]
    assert fa.select_face(faces, "largest") == 1               # ties (1 and 2) keep detector order
    assert fa.select_face(faces, "largest", 1) == 2
    assert fa.select_face(faces, "index", 3) == 3
    assert [fa.select_face(faces, "left-to-right", i) for i in range(4)] == [1, 2, 0, 3]
    assert fa.select_face(faces, "left-to-right", 4) is None and fa.select_face([], "largest") is None


def test_analysis_is_deterministic(packs, images):
    a = fa.analyze(packs["antelopev2"], [images["t1"]], det_thresh=0.15, face_select="left-to-right", face_index=1)
    b = fa.analyze(packs["antelopev2"], [images["t1"]], det_thresh=0.15, face_select="left-to-right", face_index=1)
    assert a.selected == b.selected and np.array_equal(a.embeddings(), b.embeddings())
    chosen = a.selected_faces()[0]
    assert sorted(f.bbox[0] + f.bbox[2] for f in a.faces[0])[1] == chosen.bbox[0] + chosen.bbox[2]


def test_min_face_size_drops_small_boxes(blob_models):
    assert fa.analyze(blob_models, [_square(400, 400, 10, 10, 30)], min_face_size=20).face_count == 1
    result = fa.analyze(blob_models, [_square(400, 400, 10, 10, 30)], min_face_size=40, on_no_face="bypass")
    assert result.face_count == 0 and result.present == [False]


# --- no face: error, skip, bypass ---------------------------------------------------------------------

def _batch():
    return [_square(256, 256, 20, 20, 60), _square(256, 256, 0, 0, 0), _square(256, 256, 100, 90, 100),
            _square(256, 256, 0, 0, 0)]


def test_no_face_error_names_the_batch_index_and_the_fix(blob_models):
    with pytest.raises(InputError) as err:
        fa.analyze(blob_models, _batch())
    msg = str(err.value)
    assert err.value.batch_index == 1 and "batch index 1" in msg and "PartID Face Analysis" in msg
    assert "lower det_thresh" in msg and "on_no_face=skip" in msg
    with pytest.raises(InputError, match="face_index 1") as err:
        fa.analyze(blob_models, _batch()[:1], face_index=1)
    assert err.value.input_name == "face_index" and err.value.batch_index == 0


def test_skip_drops_images_and_logs_which(blob_models, caplog):
    with caplog.at_level(logging.WARNING):
        result = fa.analyze(blob_models, _batch(), on_no_face="skip")
    assert result.source_indices == [0, 2] and result.skipped == [1, 3] and result.present == [True, True]
    assert "batch index 1, 3" in caplog.text and "skip" in caplog.text
    assert result.embeddings().shape == (2, 512)
    with pytest.raises(InputError, match="dropped every image"):
        fa.analyze(blob_models, _batch()[1:2], on_no_face="skip")


def test_bypass_keeps_images_marked_absent(blob_models):
    result = fa.analyze(blob_models, _batch(), on_no_face="bypass")
    assert result.present == [True, False, True, False] and result.source_indices == [0, 1, 2, 3]
    emb = result.embeddings()
    assert emb.shape == (4, 512) and not emb[[1, 3]].any()
    assert np.allclose(np.linalg.norm(emb[[0, 2]], axis=1), 1.0, atol=1e-5)
    assert result.selected_faces()[1] is None and result.face_count == 2


@pytest.mark.parametrize("option,value,name", [({"det_thresh": 0}, 0, "det_thresh"),
                                               ({"face_select": "biggest"}, "biggest", "face_select"),
                                               ({"on_no_face": "ignore"}, "ignore", "on_no_face"),
                                               ({"color_order": "rgb"}, "rgb", "color_order"),
                                               ({"face_index": -1}, -1, "face_index")])
def test_bad_options_name_their_input(blob_models, option, value, name):
    with pytest.raises(InputError) as err:
        fa.analyze(blob_models, _batch()[:1], **option)
    assert err.value.input_name == name and str(value) in str(err.value)


def test_progress_is_reported(blob_models):
    seen = []
    fa.analyze(blob_models, _batch()[:2], on_no_face="bypass", progress=lambda v, t: seen.append((v, t)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_face_boxes_masks_and_record_on_hand_made_results():
    """models/face_boxes.py on known boxes: pixel extents (floor/ceil), growth clipped at the border, 'all' vs
    'chosen', a bypassed image (no chosen face) empty, and the JSON record of boxes, points and scores."""
    import json as _json

    from partid.models import face_boxes
    from partid.models.face_analysis import Face, FaceAnalysisResult

    kps = np.arange(10, dtype=np.float32).reshape(5, 2)
    a = Face(np.array([2.5, 3.0, 6.0, 8.2], np.float32), kps, 0.9)
    b = Face(np.array([0.0, 0.0, 2.0, 2.0], np.float32), kps + 1, 0.6)
    result = FaceAnalysisResult([[a, b], [b]], [0, None], [0, 2], [(10, 12), (10, 12)], skipped=[1], pack="buffalo_l")
    chosen = face_boxes.box_masks(result)
    assert chosen.shape == (2, 10, 12) and not chosen[1].any()
    ys, xs = np.nonzero(chosen[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (2, 5, 3, 8)        # x 2.5..6 -> 2..5, y 3..8.2 -> 3..8
    grown = face_boxes.box_masks(result, "all", grow=0.5)
    ys, xs = np.nonzero(grown[0])
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (0, 7, 0, 9)        # a: x 0.75..7.75, y 0.4..10.8 (clipped)
    assert grown[1].sum() == 9                                              # b alone: 0..3 x 0..3 after growing 1 px
    record = _json.loads(face_boxes.faces_json(result))
    assert record["skipped_batch_indices"] == [1] and [i["batch_index"] for i in record["images"]] == [0, 2]
    assert record["images"][0]["faces"][0] == {"box": [2.5, 3.0, 6.0, 8.2], "points": kps.tolist(), "score": 0.9}
    assert record["images"][1]["chosen"] is None and len(record["images"][1]["faces"]) == 1
    with pytest.raises(ValueError, match="which"):
        face_boxes.box_masks(result, "largest")
