"""ComfyUI glue for body parsing (models/body_parsing.py, body_parts.py and label_select.py do the work)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..models import body_parts as parts
from ..models.body_parsing import parse_body
from ..models.errors import InputError
from ..models.label_select import SELECTABLE, select_labels, sets_with
from . import canvas_ui, managed, types

BODY_NODE = "PartID Body Parts"
SELECT_NODE = "PartID Select Labels"


class BodyParts(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDBodyParts", display_name=BODY_NODE, category="PartID/body",
            description="Parses people (SegFormer segformer_b2_clothes, or SCHP ATR/LIP ONNX as Visual Persona "
                        "does) and gives Visual Persona's five body-part masks: full body (all but background and "
                        "bag), face/head (hat, hair, sunglasses, face), upper (upper clothes, dress, arms, scarf), "
                        "lower (skirt, pants, belt, legs), shoes.",
            inputs=[
                types.BodyParser.Input("parser", tooltip="From PartID Body Parser Loader."),
                io.Image.Input("image", tooltip="One or more photos of a person; RGBA (alpha ignored: route it "
                                                "through core Convert Image to Mask, channel alpha, into person_mask) "
                                                "and grayscale work."),
                io.Mask.Input("person_mask", optional=True,
                              tooltip="Optional: only this area can be the person (white); everything outside "
                                      "counts as background. Pick one person of several, or use a cutout's alpha "
                                      "or a background-removal mask."),
            ],
            outputs=[
                io.Mask.Output("full_body", display_name="full_body"),
                io.Mask.Output("face", display_name="face"),
                io.Mask.Output("upper", display_name="upper"),
                io.Mask.Output("lower", display_name="lower"),
                io.Mask.Output("shoes", display_name="shoes"),
                types.LabelMap.Output("label_map", display_name="label_map"),
                io.Image.Output("preview", display_name="preview"),
            ],
        )

    @classmethod
    def execute(cls, parser, image, person_mask=None):
        label_map, rgb = parse_body(parser, image, None, BODY_NODE, engine_for=managed.body_parser)
        if person_mask is not None:
            if not isinstance(person_mask, torch.Tensor):
                raise InputError(BODY_NODE, "person_mask", f"expected a MASK, got {type(person_mask).__name__}.",
                                 "connect a MASK output.")
            try:
                label_map = label_map.within(person_mask)
            except ValueError as exc:
                raise InputError(BODY_NODE, "person_mask", f"{exc}.", "give one mask, or one per image of the "
                                 "batch.") from exc
        found = parts.body_parts(label_map)
        preview = parts.preview(label_map, rgb)
        # The preview and its legend also go to the canvas (web/partid.js), as core PreviewImage does.
        ui = canvas_ui.body_ui(label_map, found, canvas_ui.preview_images(preview))
        return io.NodeOutput(*(found.masks[p] for p in parts.PARTS), label_map, preview, ui=ui)


class SelectLabels(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        toggles = [io.Boolean.Input(i, display_name=name, default=False, optional=True,
                                    tooltip=f"Include '{name}' in the mask (a label of "
                                            f"{_parsers_with(name)}).")
                   for i, name in SELECTABLE]
        return io.Schema(
            node_id="PartIDSelectLabels", display_name=SELECT_NODE, category="PartID/parsing",
            description="One MASK from the switched-on labels of a face or body label map. Switching on a label "
                        "the map's parser does not have is an error naming both.",
            inputs=[types.LabelMap.Input("label_map", tooltip="From PartID Body Parts or PartID Face Regions."),
                    io.Boolean.Input("invert", default=False, tooltip="Everything but the selected labels."),
                    *toggles],
            outputs=[io.Mask.Output("mask", display_name="mask")],
        )

    @classmethod
    def execute(cls, label_map, invert=False, **toggles):
        mask = select_labels(label_map, toggles, bool(invert), SELECT_NODE)
        return io.NodeOutput(mask, ui=canvas_ui.select_ui(label_map, toggles, bool(invert)))


def _parsers_with(name: str) -> str:
    names = {"atr": "ATR body parsers", "lip": "LIP body parsers", "bisenet": "face parsers"}
    return " and ".join(names[s] for s in sets_with(name))


NODES = [BodyParts, SelectLabels]
