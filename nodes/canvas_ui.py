"""What PartID's canvas extension (web/partid.js) shows on a node, sent as the node's UI output.

ComfyUI sends a node's `ui` dict with the `executed` event and keeps it in the history, as core
PreviewImage does with "images" (which the frontend draws on the node by itself). The extension
reads the `partid_*` keys: a legend of the labels a parse found (names and colours from the engine's
palettes, so the legend always matches the preview IMAGE) and the parts an apply node has active.
Every value is a list, as ComfyUI merges UI outputs list by list.
"""
from __future__ import annotations

import torch

from ..models import body_parts, face_regions
from ..models.images import image_strip
from ..models.label_select import input_id
from ..models.labels import FACE_LABEL_SETS, label_set_of, normalise


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(c) for c in rgb)


def _colour_function(labels):
    # Shared names ("hair", "hat") are coloured by the palette of the parser that made the map.
    return face_regions.colour_of if label_set_of(list(labels), FACE_LABEL_SETS) else body_parts.colour_of


def legend(label_map, group_of: dict[str, str] | None = None, selected=()) -> list[dict]:
    """One entry per label found in the map: name, Select Labels widget id, colour, pixel share, group."""
    colour, share = _colour_function(label_map.labels), label_map.pixel_shares()
    group_of = {normalise(k): v for k, v in (group_of or {}).items()}
    chosen = {input_id(n) for n in selected}
    names = [n for n, _ in face_regions.legend(label_map.labels)] if colour is face_regions.colour_of \
        else list(label_map.labels)
    index = {n: i for i, n in enumerate(label_map.labels)}
    return [{"label": n, "id": input_id(n), "color": _hex(colour(n)), "share": round(share[index[n]], 4),
             "group": group_of.get(normalise(n), ""), "on": input_id(n) in chosen}
            for n in names if share[index[n]] > 0]


def _groups(names_by_group: dict[str, tuple[str, ...]], found: torch.Tensor, batch: int) -> list[dict]:
    return [{"name": g, "labels": list(names), "found": int(found[j]), "of": batch}
            for j, (g, names) in enumerate(names_by_group.items())]


def face_ui(label_map, found: face_regions.FaceRegions, preview_images: list) -> dict:
    """Face Regions: preview, legend (label -> the region it feeds in this mode), region summary."""
    used = {r: tuple(dict.fromkeys(n for chosen in found.chosen for n in chosen[r])) for r in face_regions.REGIONS}
    group_of = {n: r for r, names in used.items() for n in names}
    present = torch.stack([found.present(r) for r in face_regions.REGIONS]).sum(1)
    return {"images": preview_images, "partid_legend": legend(label_map, group_of),
            "partid_groups": _groups(used, present, label_map.maps.shape[0])}


def body_ui(label_map, found: body_parts.BodyParts, preview_images: list) -> dict:
    """Body Parts: preview, legend (label -> its Visual Persona part), part summary."""
    group_of = {n: p for p in body_parts.PARTS[1:] for n in found.labels[p]}
    present = torch.stack([found.present(p).cpu() for p in body_parts.PARTS]).sum(1)
    return {"images": preview_images, "partid_legend": legend(label_map, group_of),
            "partid_groups": _groups(found.labels, present, label_map.maps.shape[0])}


def select_ui(label_map, toggles: dict, invert: bool) -> dict:
    """Select Labels: the map's labels with the switched-on ones marked."""
    on = [k for k, v in toggles.items() if v]
    entries = legend(label_map, selected=[n for n in label_map.labels if input_id(n) in on])
    return {"partid_legend": entries, "partid_invert": [bool(invert)]}


def active_ui(entries: list[tuple[str, bool, str]]) -> dict:
    """Apply nodes: (part, active, detail) rows."""
    return {"partid_active": [{"name": n, "on": bool(on), "detail": d} for n, on, d in entries]}


def window_and_mask(weight: float, start_at: float, end_at: float, mask) -> list[tuple[str, bool, str]]:
    empty = mask is not None and not bool((mask > 0).any())
    return [("steps", weight != 0 and end_at > start_at, f"{start_at:g}-{end_at:g} of sampling"),
            ("mask", mask is not None and not empty,
             "empty: acts nowhere" if empty else "masked" if mask is not None else "everywhere")]


def encode_ui(crops: torch.Tensor, names: list[str]) -> dict:
    """Encode nodes: the crops that went to the image encoder, in a strip, named in order."""
    return {"images": preview_images(image_strip(crops)), "partid_crops": list(names)}


def preview_images(image: torch.Tensor) -> list:
    """Save a preview IMAGE to ComfyUI's temp folder as core PreviewImage does; its UI 'images' list."""
    from comfy_api.latest import ui

    return ui.PreviewImage(image).as_dict()["images"]
