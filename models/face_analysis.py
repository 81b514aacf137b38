"""Face analysis with onnxruntime directly: SCRFD detection, 5-point alignment, ArcFace embeddings.

What insightface's FaceAnalysis(allowed_modules=['detection', 'recognition']) computes, without the
insightface package (whose install pulls the CPU onnxruntime and so drops CUDA, REFERENCE.md 7):

- detection (SCRFD, `detect`): the image is resized keeping its aspect ratio into the top-left corner of
  a black 640x640 canvas (cv2 bilinear, uint8), fed as (x - 127.5) / 128; per stride 8/16/32 the
  anchor centres (x, y)*stride, each repeated for 2 anchors, decode distances*stride into boxes and
  5 keypoints; scores >= det_thresh survive, are sorted by score (stable), boxes and points are divided
  by the letterbox scale, greedy NMS at IoU 0.4 (areas with insightface's +1), optional max_num ranking
  by area minus twice the squared distance to the image centre.
- alignment: least-squares similarity (Umeyama) from the 5 points to the ArcFace 112x112 template,
  cv2.warpAffine bilinear with a black border, on the original image.
- recognition: (x - 127.5) / 127.5 unless the graph normalises itself (insightface's rule: 'Sub'/'_minus'
  and 'Mul'/'_mul' among its first 8 nodes, then mean 0 / std 1); every face of every image in one
  session run (per 64 faces). Raw and L2-normed embeddings.

Channel order: insightface is fed BGR (cv2.imread) and swaps to RGB itself, so its networks see RGB.
color_order "BGR" reproduces that (the correct use). "RGB" reproduces the ConsistentID SD1.5 inference
quirk: an RGB array handed to insightface, so its networks see BGR (training used BGR input).
Parity with insightface 2.1 on random-weight packs: tests/tier_a_engine/test_face_analysis.py.
Plain numpy/cv2/onnxruntime; no ComfyUI imports.
"""
from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import InputError

log = logging.getLogger(__name__)

NODE = "PartID Face Analysis"
DET_SIZE = 640
NMS_THRESH = 0.4
REC_CHUNK = 64
FACE_SELECT = ("largest", "index", "left-to-right")
ON_NO_FACE = ("error", "skip", "bypass")
COLOR_ORDERS = ("BGR", "RGB")
# ArcFace 5-point template for 112x112 crops (eye centres, nose tip, mouth corners; image left first).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)


@dataclass
class Face:
    bbox: np.ndarray                        # [4] float32 x1, y1, x2, y2 in original pixels
    kps: np.ndarray                         # [5, 2] float32 (x, y): eyes, nose, mouth corners
    det_score: float
    embedding: np.ndarray | None = None     # [512] float32, raw recogniser output
    normed_embedding: np.ndarray | None = None
    aligned: np.ndarray | None = None       # [112, 112, 3] uint8 RGB: the aligned crop

    @property
    def area(self) -> float:
        return float((self.bbox[2] - self.bbox[0]) * (self.bbox[3] - self.bbox[1]))


@dataclass
class FaceAnalysisResult:
    """One analysed IMAGE batch. Lists run over the images kept (all but the skipped ones)."""

    faces: list[list[Face]]                 # per image, in detector order (score, highest first)
    selected: list[int | None]              # per image: index into faces, None = no face (bypass)
    source_indices: list[int]               # each image's index in the input batch
    image_sizes: list[tuple[int, int]]      # (height, width)
    skipped: list[int] = field(default_factory=list)   # input batch indices dropped by on_no_face=skip
    pack: str = ""
    options: dict = field(default_factory=dict)

    @property
    def present(self) -> list[bool]:
        return [s is not None for s in self.selected]

    def selected_faces(self) -> list[Face | None]:
        return [None if s is None else faces[s] for faces, s in zip(self.faces, self.selected)]

    def embeddings(self, normed: bool = True) -> np.ndarray:
        """[N, 512] float32, one row per kept image; zeros where no face was found (bypass)."""
        rows = [np.zeros(512, np.float32) if f is None else (f.normed_embedding if normed else f.embedding)
                for f in self.selected_faces()]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, 512), np.float32)

    @property
    def face_count(self) -> int:
        return sum(len(f) for f in self.faces)

    def __len__(self) -> int:
        return len(self.faces)


# --- detection ----------------------------------------------------------------------------------

def letterbox(img: np.ndarray, size: int = DET_SIZE) -> tuple[np.ndarray, float]:
    """Resize keeping aspect into the top-left of a black size x size canvas -> (canvas, scale)."""
    im_ratio = float(img.shape[0]) / img.shape[1]
    if im_ratio > 1.0:
        new_h, new_w = size, int(size / im_ratio)
    else:
        new_w, new_h = size, int(size * im_ratio)
    new_w, new_h = max(new_w, 1), max(new_h, 1)     # extreme aspect ratios: insightface would crash
    canvas = np.zeros((size, size, 3), np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(img, (new_w, new_h))
    return canvas, float(new_h) / img.shape[0]


def anchor_centers(height: int, width: int, stride: int, num_anchors: int = 2) -> np.ndarray:
    """[(height*width*num_anchors), 2] float32 (x, y) pixel centres, row-major, each repeated per anchor."""
    ys, xs = np.mgrid[:height, :width]
    centers = np.stack([xs, ys], axis=-1).astype(np.float32).reshape(-1, 2) * stride
    return np.repeat(centers, num_anchors, axis=0)


def distance2bbox(centers: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """(left, top, right, bottom) distances from each centre -> x1, y1, x2, y2."""
    return np.stack([centers[:, 0] - dist[:, 0], centers[:, 1] - dist[:, 1],
                     centers[:, 0] + dist[:, 2], centers[:, 1] + dist[:, 3]], axis=-1)


def distance2kps(centers: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """[N, 2K] (dx, dy) offsets from each centre -> [N, K, 2] points."""
    return dist.reshape(len(dist), dist.shape[1] // 2, 2) + centers[:, None, :]


def _head_layout(n_outputs: int) -> tuple[tuple[int, ...], int]:
    if n_outputs == 9:
        return (8, 16, 32), 2
    if n_outputs == 15:
        return (8, 16, 32, 64, 128), 1
    raise ValueError(f"SCRFD with keypoints has 9 or 15 outputs; this detector has {n_outputs} "
                     "(a model without keypoints cannot align faces).")


def decode(outputs: Sequence[np.ndarray], input_hw: tuple[int, int], threshold: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SCRFD head outputs (scores per stride, then boxes, then keypoints) -> (scores [M], boxes [M,4],
    kps [M,5,2]) above threshold, in network-input pixels, in stride-then-anchor order."""
    strides, anchors = _head_layout(len(outputs))
    fmc = len(strides)
    scores, boxes, kpss = [], [], []
    for level, stride in enumerate(strides):
        score, box, kps = (np.asarray(outputs[level + k * fmc]) for k in range(3))
        if score.ndim == 3:                          # exports with a batch axis
            score, box, kps = score[0], box[0], kps[0]
        centers = anchor_centers(input_hw[0] // stride, input_hw[1] // stride, stride, anchors)
        keep = np.where(score >= threshold)[0]
        scores.append(score[keep, 0])
        boxes.append(distance2bbox(centers[keep], box[keep] * stride))
        kpss.append(distance2kps(centers[keep], kps[keep] * stride))
    return np.concatenate(scores), np.concatenate(boxes), np.concatenate(kpss)


def nms(boxes: np.ndarray, scores: np.ndarray, thresh: float = NMS_THRESH) -> np.ndarray:
    """Greedy non-maximum suppression (box areas with the +1 pixel convention); indices, best first."""
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        w = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = w * h
        order = rest[inter / (areas[best] + areas[rest] - inter) <= thresh]
    return np.array(keep, np.int64)


def rank_max_num(boxes: np.ndarray, image_hw: tuple[int, int], max_num: int, metric: str = "default") -> np.ndarray:
    """insightface's max_num choice: the max_num largest boxes ('max'), or largest and most central."""
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    off_x = (boxes[:, 0] + boxes[:, 2]) / 2 - image_hw[1] // 2
    off_y = (boxes[:, 1] + boxes[:, 3]) / 2 - image_hw[0] // 2
    values = area if metric == "max" else area - (off_x ** 2.0 + off_y ** 2.0) * 2.0
    return np.argsort(values)[::-1][:max_num]


def detect(session, rgb: np.ndarray, threshold: float, swap_rb: bool = False, det_size: int = DET_SIZE,
           max_num: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One uint8 RGB image -> (boxes [N,4], scores [N], kps [N,5,2]) float32 in original pixels."""
    canvas, scale = letterbox(rgb, det_size)
    if swap_rb:
        canvas = canvas[..., ::-1]
    blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {session.get_inputs()[0].name: np.ascontiguousarray(blob)})
    scores, boxes, kps = decode(outputs, (det_size, det_size), threshold)
    order = np.argsort(-scores, kind="stable")
    scores, boxes, kps = scores[order], (boxes / scale)[order], (kps / scale)[order]
    keep = nms(boxes, scores)
    boxes, scores, kps = boxes[keep], scores[keep], kps[keep]
    if 0 < max_num < len(boxes):
        pick = rank_max_num(boxes, rgb.shape[:2], max_num)
        boxes, scores, kps = boxes[pick], scores[pick], kps[pick]
    return boxes.astype(np.float32), scores.astype(np.float32), kps.astype(np.float32)


# --- alignment and recognition ---------------------------------------------------------------------

def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 least-squares similarity (rotation, uniform scale, translation) taking src onto dst
    (Umeyama, PAMI 1991, eqs. 38-42). Sums run in the points' dtype, as insightface's skimage call does."""
    src, dst = np.asarray(src), np.asarray(dst)
    n, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / n
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(dim)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    rank = np.count_nonzero(s > s.max() * dim * np.finfo(float).eps)
    out = np.eye(dim + 1)
    if rank == 0:                                   # all points on one spot: translate only
        out[:dim, dim] = dst_mean - src_mean
        return out
    if rank == dim - 1:                             # collinear points (eq. 43)
        d[-1] = 1 if np.linalg.det(u) * np.linalg.det(vt) > 0 else -1
    rot = u @ np.diag(d) @ vt
    scale = 1.0 / src_c.var(axis=0).sum() * (s @ d)
    out[:dim, dim] = dst_mean - scale * (rot @ src_mean.T)
    out[:dim, :dim] = rot * scale
    return out


def alignment_matrix(kps: np.ndarray, size: int = 112) -> np.ndarray:
    """2x3 affine taking the 5 points onto the ArcFace template scaled to size (112 or 128 multiples)."""
    ratio, shift = (size / 112.0, 0.0) if size % 112 == 0 else (size / 128.0, 8.0 * size / 128.0)
    template = ARCFACE_TEMPLATE * ratio
    template[:, 0] += shift
    return similarity_transform(kps, template)[:2]


def align(img: np.ndarray, kps: np.ndarray, size: int = 112) -> np.ndarray:
    return cv2.warpAffine(img, alignment_matrix(kps, size), (size, size), borderValue=0.0)


@functools.lru_cache(maxsize=16)
def _normalisation(path: str, mtime: float) -> tuple[float, float]:
    import onnx

    names = [node.name for node in onnx.load(path, load_external_data=False).graph.node[:8]]
    has_sub = any(n.startswith(("Sub", "_minus")) for n in names)
    has_mul = any(n.startswith(("Mul", "_mul")) for n in names)
    return (0.0, 1.0) if has_sub and has_mul else (127.5, 127.5)


def recogniser_normalisation(path: str | None) -> tuple[float, float]:
    """(mean, std) the recogniser expects: insightface decides from the graph's first node names."""
    if not path or not os.path.isfile(path):
        return 127.5, 127.5
    return _normalisation(path, os.path.getmtime(path))


def embed(session, crops: np.ndarray, mean: float = 127.5, std: float = 127.5, swap_rb: bool = False) -> np.ndarray:
    """[N, S, S, 3] uint8 RGB crops -> [N, D] float32 raw embeddings, REC_CHUNK crops per run."""
    if swap_rb:
        crops = crops[..., ::-1]
    name, out = session.get_inputs()[0].name, []
    for start in range(0, len(crops), REC_CHUNK):
        blob = ((crops[start:start + REC_CHUNK].astype(np.float32) - mean) / np.float32(std)).transpose(0, 3, 1, 2)
        out.append(session.run(None, {name: np.ascontiguousarray(blob)})[0])
    return np.concatenate(out).astype(np.float32)


# --- the pipeline -----------------------------------------------------------------------------

def select_face(faces: list[Face], mode: str, index: int = 0) -> int | None:
    """Index into faces of the chosen face, None when there is no such face.

    largest: by box area (face_index counts down from the largest); index: detector order (score,
    highest first: index 0 is what ConsistentID / IP-Adapter FaceID take, faces[0]); left-to-right:
    by box centre x. Ties keep detector order, so the choice is deterministic."""
    if mode == "largest":
        order = sorted(range(len(faces)), key=lambda i: -faces[i].area)
    elif mode == "left-to-right":
        order = sorted(range(len(faces)), key=lambda i: float(faces[i].bbox[0] + faces[i].bbox[2]))
    else:
        order = list(range(len(faces)))
    return order[index] if index < len(order) else None


def _check_options(node, det_thresh, min_face_size, face_select, face_index, on_no_face, color_order):
    E = InputError
    if not 0.0 < float(det_thresh) <= 1.0:
        raise E(node, "det_thresh", f"{det_thresh} is outside (0, 1].", "use a detection threshold such as 0.5.")
    if min_face_size < 0:
        raise E(node, "min_face_size", f"{min_face_size} is negative.", "use 0 to keep every face.")
    if face_index < 0:
        raise E(node, "face_index", f"{face_index} is negative.", "use 0 for the first face.")
    for name, value, options in (("face_select", face_select, FACE_SELECT), ("on_no_face", on_no_face, ON_NO_FACE),
                                 ("color_order", color_order, COLOR_ORDERS)):
        if value not in options:
            raise E(node, name, f"'{value}' is not one of {', '.join(options)}.", "pick one of the listed values.")


def _as_uint8_images(image, node: str) -> list[np.ndarray]:
    if isinstance(image, (list, tuple)) and all(isinstance(i, np.ndarray) for i in image):
        for b, img in enumerate(image):
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3 or 0 in img.shape:
                raise InputError(node, "image", f"expected uint8 [H,W,3] arrays, got {img.dtype} {img.shape}.",
                                 "convert the image to 8-bit RGB.", batch_index=b)
        if not image:
            raise InputError(node, "image", "the batch is empty.", "connect at least one image.")
        return [np.ascontiguousarray(i) for i in image]
    from .images import to_rgb_batch, to_uint8_hwc

    rgb, _ = to_rgb_batch(image, node)
    return [to_uint8_hwc(frame) for frame in rgb]


def _no_face_problem(faces: list[Face], face_select: str, face_index: int, det_thresh: float,
                     min_face_size: int) -> tuple[str, str, str]:
    if not faces:
        return ("image", f"no face found (det_thresh {det_thresh}, min_face_size {min_face_size}).",
                "lower det_thresh (or min_face_size), or choose on_no_face=skip or bypass.")
    return ("face_index", f"this image has {len(faces)} face(s), so face_index {face_index} "
            f"({face_select}) picks none.",
            f"use a face_index below {len(faces)}, or choose on_no_face=skip or bypass.")


def analyze(models, image, det_thresh: float = 0.5, min_face_size: int = 0, face_select: str = "largest",
            face_index: int = 0, on_no_face: str = "error", color_order: str = "BGR", max_num: int = 0,
            node: str = NODE, progress: Callable[[int, int], None] | None = None) -> FaceAnalysisResult:
    """Detect, align and embed the faces of every image of a batch.

    models: models.face_analysis_pack.FaceAnalysisModels (sessions 'detection' and 'recognition').
    image: a ComfyUI IMAGE tensor [B,H,W,C] (RGBA and grayscale accepted), or a list of uint8 RGB arrays
    (sizes may differ). on_no_face: 'error' raises naming the batch index, 'skip' drops the image (logged),
    'bypass' keeps it with no selected face (present False, zero embedding)."""
    _check_options(node, det_thresh, min_face_size, face_select, face_index, on_no_face, color_order)
    images = _as_uint8_images(image, node)
    swap = color_order == "RGB"
    det, rec = models.sessions["detection"], models.sessions["recognition"]
    per_image: list[list[Face]] = []
    for b, img in enumerate(images):
        boxes, scores, kps = detect(det, img, float(det_thresh), swap_rb=swap, max_num=0)
        short = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        keep = np.flatnonzero(short >= min_face_size)
        if 0 < max_num < len(keep):
            keep = keep[rank_max_num(boxes[keep], img.shape[:2], max_num)]
        per_image.append([Face(boxes[i], kps[i], float(scores[i])) for i in keep])
        if progress:
            progress(b + 1, len(images) + 1)

    result = FaceAnalysisResult([], [], [], [], pack=getattr(models, "name", ""),
                                options=dict(det_thresh=det_thresh, min_face_size=min_face_size,
                                             face_select=face_select, face_index=face_index,
                                             on_no_face=on_no_face, color_order=color_order))
    kept_images = []
    for b, (img, faces) in enumerate(zip(images, per_image)):
        chosen = select_face(faces, face_select, face_index)
        if chosen is None and on_no_face == "error":
            raise InputError(node, *_no_face_problem(faces, face_select, face_index, det_thresh, min_face_size),
                             batch_index=b)
        if chosen is None and on_no_face == "skip":
            result.skipped.append(b)
            continue
        result.faces.append(faces)
        result.selected.append(chosen)
        result.source_indices.append(b)
        result.image_sizes.append(img.shape[:2])
        kept_images.append(img)
    if result.skipped:
        log.warning("%s: no face (or no face at face_index %d) in batch index %s; skipped (on_no_face=skip).",
                    node, face_index, ", ".join(map(str, result.skipped)))
        if not result.faces:
            raise InputError(node, "image", f"on_no_face=skip dropped every image (batch indices "
                             f"{', '.join(map(str, result.skipped))}): no face found.",
                             "lower det_thresh (or min_face_size), or choose on_no_face=bypass to keep the images.")

    size = _input_size(rec)
    crops = [align(img, f.kps, size) for img, faces in zip(kept_images, result.faces) for f in faces]
    if crops:
        mean, std = recogniser_normalisation(getattr(models, "files", {}).get("recognition"))
        raw = embed(rec, np.stack(crops), mean, std, swap_rb=swap)
        norms = np.linalg.norm(raw, axis=1, keepdims=True)
        normed = raw / np.where(norms > 0, norms, 1.0)
        for k, face in enumerate(f for faces in result.faces for f in faces):
            face.embedding, face.normed_embedding, face.aligned = raw[k], normed[k], crops[k]
    if progress:
        progress(len(images) + 1, len(images) + 1)
    return result


def _input_size(session) -> int:
    dims = session.get_inputs()[0].shape[2:4]
    return dims[0] if dims and isinstance(dims[0], int) else 112
