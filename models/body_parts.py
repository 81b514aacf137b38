"""Visual Persona's five body-part masks from a body label map; and a coloured preview.

Visual Persona (github.com/cvlab-kaist/Visual-Persona at d393d09, `schp/parse_body.py` `parse`, also
`model/schp/parse_body.py`; `parsing.py` saves the masks) parses with SCHP ATR and builds, by ATR
index, in this order:

    0 full body  every label but Background (0) and Bag (16)   (`1 - isin(parsing, [0, 16])`)
    1 head/face  [1, 2, 3, 11]           Hat, Hair, Sunglasses, Face
    2 upper      [4, 7, 14, 15, 17]      Upper-clothes, Dress, Left-arm, Right-arm, Scarf
    3 lower      [5, 6, 8, 12, 13]       Skirt, Pants, Belt, Left-leg, Right-leg
    4 shoes      [9, 10]                 Left-shoe, Right-shoe

PartID maps the same sets by label *name* (so any parser naming ATR labels gives the same parts).
For LIP-labelled maps (SCHP LIP, 20 labels) the shared names map as above and the four labels ATR
lacks are PartID's choice, following what ATR does with the same pixels:
    Glove -> upper (ATR's arms include the hands)      Coat -> upper (outer Upper-clothes)
    Socks -> lower (ATR labels visible socks as legs)  Jumpsuits -> upper (a one-piece, as VP's Dress)
LIP has no Bag, so its full body is every label but Background. Parts are disjoint, as in VP.

The masks here are float {0,1}. Visual Persona *reads* its saved mask PNGs with `(mask/255)
.astype(uint8)`, so only pixels equal to 255 count there (REFERENCE.md 8): that quirk belongs to
code reading VP mask files and is not applied to these masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .labels import BODY_LABEL_SETS, label_set_of, normalise
from .parsing import LabelMap

PARTS = ("full_body", "face", "upper", "lower", "shoes")          # Visual Persona's order, 0..4
VP_ATR_PARTS = {
    "face": ("Hat", "Hair", "Sunglasses", "Face"),
    "upper": ("Upper-clothes", "Dress", "Left-arm", "Right-arm", "Scarf"),
    "lower": ("Skirt", "Pants", "Belt", "Left-leg", "Right-leg"),
    "shoes": ("Left-shoe", "Right-shoe"),
}
FULL_BODY_EXCLUDES = ("Background", "Bag")
LIP_PARTS = {
    "face": ("Hat", "Hair", "Sunglasses", "Face"),
    "upper": ("Upper-clothes", "Dress", "Left-arm", "Right-arm", "Scarf", "Glove", "Coat", "Jumpsuits"),
    "lower": ("Skirt", "Pants", "Left-leg", "Right-leg", "Socks"),
    "shoes": ("Left-shoe", "Right-shoe"),
}
PART_MAPS = {"atr": VP_ATR_PARTS, "lip": LIP_PARTS}


@dataclass
class BodyParts:
    """`masks[part]` float [B,H,W] in {0,1}; `labels[part]` the label names that make it."""

    masks: dict[str, torch.Tensor]
    labels: dict[str, tuple[str, ...]]
    label_set: str

    def stacked(self) -> torch.Tensor:
        """[B,5,H,W] in Visual Persona's order."""
        return torch.stack([self.masks[p] for p in PARTS], dim=1)

    def present(self, part: str) -> torch.Tensor:
        return self.masks[part].flatten(1).amax(1) > 0


def part_labels(labels) -> tuple[str, dict[str, tuple[str, ...]]]:
    """(label set, part -> label names as the map spells them) for an ATR- or LIP-labelled map."""
    key = label_set_of(list(labels), BODY_LABEL_SETS)
    if key is None:
        raise KeyError(f"labels ({', '.join(labels)}) are neither ATR nor LIP: not a body parse")
    spelled = {normalise(n): n for n in labels}
    parts = {p: tuple(spelled[normalise(n)] for n in names) for p, names in PART_MAPS[key].items()}
    excluded = {normalise(n) for n in FULL_BODY_EXCLUDES}
    parts["full_body"] = tuple(n for n in labels if normalise(n) not in excluded)
    return key, {p: parts[p] for p in PARTS}


def body_parts(label_map: LabelMap) -> BodyParts:
    """The five Visual Persona part masks of every image in the label map, at its size and device."""
    key, names = part_labels(label_map.labels)
    index = {normalise(n): i for i, n in enumerate(label_map.labels)}
    lut = torch.zeros(len(label_map.labels), len(PARTS), dtype=torch.float32)
    for j, part in enumerate(PARTS):
        for name in names[part]:
            lut[index[normalise(name)], j] = 1.0
    flat = label_map.maps.clamp(0, len(label_map.labels) - 1).flatten()
    lut = lut.to(flat.device)
    # index_select: a plain tensor gather is ~40x slower on CPU for a 512x512 map
    masks = {p: torch.index_select(lut[:, j].contiguous(), 0, flat).view(label_map.maps.shape)
             for j, p in enumerate(PARTS)}
    return BodyParts(masks, names, key)


# -- preview -------------------------------------------------------------------------------------
def _voc_colour(i: int) -> tuple[int, int, int]:
    """Colour i of the PASCAL VOC colour map (bits of i spread over the high bits of R, G, B)."""
    r = g = b = 0
    for bit in range(8):
        r |= ((i >> (3 * bit)) & 1) << (7 - bit)
        g |= ((i >> (3 * bit + 1)) & 1) << (7 - bit)
        b |= ((i >> (3 * bit + 2)) & 1) << (7 - bit)
    return r, g, b


# Body labels by name: the VOC colour of each name's LIP index (the colours SCHP's LIP demos show);
# the two ATR-only names (Belt, Bag) take the next free VOC colours.
BODY_PALETTE = {normalise(n): _voc_colour(i) for i, n in enumerate(BODY_LABEL_SETS["lip"])}
BODY_PALETTE.update({"belt": _voc_colour(20), "bag": _voc_colour(21)})


def colour_of(name: str) -> tuple[int, int, int]:
    key = normalise(name)
    if key in BODY_PALETTE:
        return BODY_PALETTE[key]
    from .face_regions import colour_of as face_colour   # face names keep the face palette

    return face_colour(name)


def preview(label_map: LabelMap, image: torch.Tensor | None = None, opacity: float = 0.6) -> torch.Tensor:
    """Label map coloured by label name [B,H,W,3] float; over `image` ([B,H,W,3], map size) when given."""
    lut = torch.tensor([colour_of(n) for n in label_map.labels], dtype=torch.float32) / 255.0
    maps = label_map.maps.cpu().clamp(0, len(lut) - 1)
    colours = torch.index_select(lut, 0, maps.flatten()).view(*maps.shape, 3)
    if image is None:
        return colours
    return (image.float().cpu() * (1.0 - opacity) + colours * opacity).clamp(0, 1)
