"""A face-analysis result as plain data: box masks and a JSON record of boxes, five points and scores.

What the PartID Face Boxes node outputs, so other nodes (masks for an apply node, crops, inpainting) and
scripts can use the detections: one mask per kept image (as the embeddings), 1 inside the chosen face's
box (or every face's), optionally grown by a fraction of the box size on each side; coordinates in the
original image's pixels, x right and y down, points in the order eyes (image left first), nose, mouth
corners.
"""
from __future__ import annotations

import json

import numpy as np

from .face_analysis import Face, FaceAnalysisResult

WHICH = ("chosen", "all")


def _box_pixels(face: Face, grow: float, height: int, width: int) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (float(v) for v in face.bbox)
    dx, dy = (x2 - x1) * grow, (y2 - y1) * grow
    return (max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy))),
            min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy))))


def box_masks(result: FaceAnalysisResult, which: str = "chosen", grow: float = 0.0) -> np.ndarray:
    """[N, H, W] float32 (N kept images): 1 inside the chosen (or every) face box, grown by `grow` x its size."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    if grow < 0:
        raise ValueError(f"grow must be >= 0, got {grow}")
    if not result.image_sizes:
        return np.zeros((0, 1, 1), np.float32)
    height, width = result.image_sizes[0]
    masks = np.zeros((len(result), height, width), np.float32)
    for n, (faces, chosen, (h, w)) in enumerate(zip(result.faces, result.selected, result.image_sizes)):
        if (h, w) != (height, width):
            raise ValueError(f"kept image {n} is {h}x{w}, image 0 is {height}x{width}: one MASK batch needs one size")
        picked = faces if which == "all" else ([] if chosen is None else [faces[chosen]])
        for face in picked:
            x1, y1, x2, y2 = _box_pixels(face, grow, h, w)
            masks[n, y1:y2, x1:x2] = 1.0
    return masks


def faces_record(result: FaceAnalysisResult) -> dict:
    """JSON-ready: per kept image its input batch index, size, chosen face and every face's box, points, score."""
    images = []
    for faces, chosen, source, (h, w) in zip(result.faces, result.selected, result.source_indices,
                                             result.image_sizes):
        images.append({"batch_index": source, "height": h, "width": w, "chosen": chosen,
                       "faces": [{"box": [round(float(v), 2) for v in f.bbox],
                                  "points": [[round(float(x), 2), round(float(y), 2)] for x, y in f.kps],
                                  "score": round(float(f.det_score), 4)} for f in faces]})
    return {"pack": result.pack, "options": result.options, "skipped_batch_indices": list(result.skipped),
            "images": images}


def faces_json(result: FaceAnalysisResult) -> str:
    return json.dumps(faces_record(result))
