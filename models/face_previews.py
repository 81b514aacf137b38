"""Annotated previews of face-analysis results (boxes, five points, the chosen face highlighted)."""
from __future__ import annotations

import cv2
import numpy as np

from .face_analysis import Face

_OTHER, _SELECTED, _POINTS = (230, 60, 60), (40, 220, 60), (255, 210, 0)


def draw_faces(img: np.ndarray, faces: list[Face] | None, selected: int | None) -> np.ndarray:
    """Boxes and 5 points on a copy of a uint8 RGB image; the selected face thick and green."""
    out = img.copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    if not faces or selected is None:
        label = "skipped: no face" if faces is None else "no face" if not faces else "no face at face_index"
        cv2.putText(out, label, (4, 16 * thick), cv2.FONT_HERSHEY_SIMPLEX, 0.5 * thick, _OTHER, thick)
    for i, face in enumerate(faces or []):
        chosen = i == selected
        x1, y1, x2, y2 = np.round(face.bbox).astype(int).tolist()
        cv2.rectangle(out, (x1, y1), (x2, y2), _SELECTED if chosen else _OTHER, thick * (3 if chosen else 1))
        for x, y in np.round(face.kps).astype(int).tolist():
            cv2.circle(out, (x, y), thick * 2, _POINTS, -1)
    return out
