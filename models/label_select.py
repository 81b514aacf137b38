"""Select labels of a label map into one MASK: the ecosystem's select-node pattern (a toggle per label).

The toggles are the union, by normalised name, of every label PartID's face and body parsers know:
ATR order, then LIP's extra labels, then the face labels (BiSeNet order) that are not body labels
("background", "hat", "hair" are shared). A toggled label the map does not have is an error that
names the label, the parser that made the map and the parsers that have it.
"""
from __future__ import annotations

import torch

from .errors import InputError
from .labels import BODY_LABEL_SETS, FACE_LABEL_SETS, normalise
from .parsing import LabelMap


def input_id(name: str) -> str:
    """Widget id of a label: its normalised name with '_' ('Upper-clothes' -> 'upper_clothes')."""
    return normalise(name).replace("-", "_")


def _selectable() -> list[tuple[str, str]]:
    out, seen = [], set()
    for names in (BODY_LABEL_SETS["atr"], BODY_LABEL_SETS["lip"], FACE_LABEL_SETS["bisenet"]):
        for name in names:
            if input_id(name) not in seen:
                seen.add(input_id(name))
                out.append((input_id(name), name))
    return out


SELECTABLE = _selectable()          # [(input id, display name)]
PARSERS_BY_SET = {"atr": "SegFormer segformer_b2_clothes or SCHP parsing_atr.onnx (body)",
                  "lip": "SCHP parsing_lip.onnx (body)", "bisenet": "a face parser (BiSeNet or SegFormer)"}


def sets_with(name: str) -> list[str]:
    key = normalise(name)
    sets = {**BODY_LABEL_SETS, "bisenet": FACE_LABEL_SETS["bisenet"]}
    return [s for s, names in sets.items() if key in {normalise(n) for n in names}]


def select_labels(label_map: LabelMap, toggles: dict[str, bool], invert: bool = False,
                  node: str = "PartID Select Labels") -> torch.Tensor:
    """Float [B,H,W] mask of the toggled labels (ids as in SELECTABLE); `invert` flips it."""
    wanted = [i for i, _ in SELECTABLE if toggles.get(i)]
    unknown = sorted(set(k for k, v in toggles.items() if v) - {i for i, _ in SELECTABLE})
    if unknown:
        raise InputError(node, unknown[0], f"'{unknown[0]}' is not a label PartID knows.",
                         "update the node (right click > Fix node) or switch the toggle off.")
    have = {input_id(n): n for n in label_map.labels}
    for i in wanted:
        if i not in have:
            display = dict(SELECTABLE)[i]
            where = "; ".join(PARSERS_BY_SET[s] for s in sets_with(display))
            raise InputError(node, i, f"label '{display}' is not in this label map: it was made by "
                             f"{label_map.source or 'a parser'} whose labels are {', '.join(label_map.labels)}.",
                             f"switch '{i}' off, or parse with a parser that has it ({where}).")
    mask = label_map.mask([have[i] for i in wanted])
    return 1.0 - mask if invert else mask
