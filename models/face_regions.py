"""Facial region masks from a face label map, as ConsistentID selects them; and a coloured preview.

ConsistentID (`masks_for_unique_values` + `get_prepare_facemask`, official SD1.5 and SDXL pipelines):
every label present in the map is filled along its external contours (`cv2.findContours(RETR_EXTERNAL,
CHAIN_APPROX_SIMPLE)`, each contour drawn with `cv2.FILLED`), so holes inside a label are covered: the
"face" (skin) mask spans eyes, nose and mouth. Labels are visited in BiSeNet index order and only the
first of each left/right (or upper/lower) pair is kept, so the regions are: face = skin, eyes = l_eye
else r_eye, ears = l_ear else r_ear, nose, mouth = u_lip else l_lip ("mouth", the inner mouth label, is
never used). A region whose labels are absent is missing (an all-zero mask here).

Mode "union" keeps both eyes, both ears and the whole mouth (mouth + u_lip + l_lip), each region's
labels filled together.

Labels are looked up by name, so BiSeNet and SegFormer maps give the same regions. Where the label
map keeps the parse at the parser's own size (`LabelMap.parse_maps`: BiSeNet's 512 or 1280 square),
masks are filled there and each is resized to the image's size with PIL bicubic on its 8-bit form,
as the official `fetch_mask_raw_image` resizes its masks to the photo: the masks then carry the
official soft edges, and the region images built from them are the official ones pixel for pixel.
Otherwise (SegFormer, or a map already at the parse size) masks are filled at the map's size.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from PIL import Image

from .labels import normalise
from .parsing import LabelMap

REGIONS = ("face", "eyes", "ears", "nose", "mouth")
MODES = ("ConsistentID", "union")
# region -> candidate labels in the official visiting order (BiSeNet index order).
CONSISTENTID_CANDIDATES = {"face": ("skin",), "eyes": ("l_eye", "r_eye"), "ears": ("l_ear", "r_ear"),
                           "nose": ("nose",), "mouth": ("u_lip", "l_lip")}
UNION_LABELS = {"face": ("skin",), "eyes": ("l_eye", "r_eye"), "ears": ("l_ear", "r_ear"),
                "nose": ("nose",), "mouth": ("mouth", "u_lip", "l_lip")}

# Preview colours by label name, in legend order (face top to bottom, then surroundings).
PALETTE = {
    "background": (0, 0, 0), "skin": (255, 178, 128), "l_brow": (150, 75, 0), "r_brow": (215, 135, 40),
    "l_eye": (0, 90, 255), "r_eye": (0, 200, 255), "eye_g": (230, 230, 230), "l_ear": (120, 0, 210),
    "r_ear": (210, 90, 255), "ear_r": (255, 215, 0), "nose": (0, 200, 80), "mouth": (110, 0, 40),
    "u_lip": (255, 0, 90), "l_lip": (200, 0, 160), "neck": (185, 120, 95), "neck_l": (255, 255, 0),
    "cloth": (70, 90, 170), "hair": (90, 50, 25), "hat": (0, 140, 140),
}
LEGEND_ORDER = tuple(PALETTE)
_PALETTE = {normalise(k): v for k, v in PALETTE.items()}


@dataclass
class FaceRegions:
    """`masks[region]` float [B,H,W] in 0..1 (multiples of 1/255; {0,1} when filled at the map's own
    size); `chosen[b][region]` the labels used (empty: missing)."""

    masks: dict[str, torch.Tensor]
    chosen: list[dict[str, tuple[str, ...]]] = field(default_factory=list)
    mode: str = "ConsistentID"

    def present(self, region: str) -> torch.Tensor:
        return torch.tensor([bool(c[region]) for c in self.chosen], dtype=torch.bool)


def fill_external_contours(binary: np.ndarray) -> np.ndarray:
    """uint8 {0,255} [H,W] -> the same mask with every external contour filled, as the official code."""
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    mask = np.zeros_like(binary)
    for contour in contours:
        cv2.drawContours(mask, [contour], -1, 255, thickness=cv2.FILLED)
    return mask


def resize_u8(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [h, w] -> uint8 [height, width] with PIL's bicubic ("L" image), as the official code resizes
    its parse-size masks to the photo; unchanged when the size already matches."""
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask).resize((width, height), resample=Image.BICUBIC))


def _indices(label_map: LabelMap) -> dict[str, int]:
    return {normalise(name): i for i, name in enumerate(label_map.labels)}


def _presence(maps: torch.Tensor, n_labels: int) -> torch.Tensor:
    """[B,H,W] int -> [B,n_labels] bool: which labels occur in each image."""
    flat = maps.reshape(maps.shape[0], -1).clamp(0, n_labels - 1)
    return torch.zeros(maps.shape[0], n_labels, dtype=torch.bool).scatter_(1, flat.cpu(), True)


def face_regions(label_map: LabelMap, mode: str = "ConsistentID") -> FaceRegions:
    """The five region masks of every image in the label map (see the module docstring)."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    index = _indices(label_map)
    missing = sorted(n for n in {n for names in UNION_LABELS.values() for n in names} if normalise(n) not in index)
    if missing:
        raise KeyError(f"the label map ({label_map.source or 'unknown parser'}) has no label(s) "
                       f"{', '.join(missing)}: it is not a face parse")
    b, h, w = label_map.maps.shape
    maps = (label_map.maps if label_map.parse_maps is None else label_map.parse_maps).cpu()
    present = _presence(maps, len(label_map.labels)).numpy()
    arrays = maps.numpy()
    out = {r: np.zeros((b, h, w), dtype=np.uint8) for r in REGIONS}
    chosen = []
    for i in range(b):
        picked = {}
        for region in REGIONS:
            if mode == "ConsistentID":
                first = next((n for n in CONSISTENTID_CANDIDATES[region] if present[i, index[normalise(n)]]), None)
                names = (first,) if first else ()
            else:
                names = tuple(n for n in UNION_LABELS[region] if present[i, index[normalise(n)]])
            picked[region] = names
            if names:
                binary = np.isin(arrays[i], [index[normalise(n)] for n in names]).astype(np.uint8) * 255
                out[region][i] = resize_u8(fill_external_contours(binary), h, w)
        chosen.append(picked)
    masks = {r: torch.from_numpy(out[r]).float().div_(255) for r in REGIONS}
    return FaceRegions(masks, chosen, mode)


def colour_of(name: str) -> tuple[int, int, int]:
    """Fixed colour by label name; names outside the face palette get a stable colour from their name."""
    key = normalise(name)
    if key in _PALETTE:
        return _PALETTE[key]
    h = zlib.crc32(key.encode())
    return (64 + h % 192, 64 + (h >> 8) % 192, 64 + (h >> 16) % 192)


def legend(labels) -> list[tuple[str, tuple[int, int, int]]]:
    """(name, colour) of the given labels, face-palette labels first in LEGEND_ORDER, then the rest."""
    rank = {normalise(n): i for i, n in enumerate(LEGEND_ORDER)}
    ordered = sorted(labels, key=lambda n: (rank.get(normalise(n), len(rank)), list(labels).index(n)))
    return [(n, colour_of(n)) for n in ordered]


def preview(label_map: LabelMap, image: torch.Tensor | None = None, opacity: float = 0.6) -> torch.Tensor:
    """Coloured label map [B,H,W,3] float; over `image` ([B,H,W,3] at the map's size) when given."""
    lut = torch.tensor([colour_of(n) for n in label_map.labels], dtype=torch.float32) / 255.0
    colours = lut[label_map.maps.cpu().clamp(0, len(lut) - 1)]
    if image is None:
        return colours
    return (image.float().cpu() * (1.0 - opacity) + colours * opacity).clamp(0, 1)
