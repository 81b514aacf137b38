"""ComfyUI glue for face parsing (models/face_parsing.py and models/face_regions.py do the work)."""
from __future__ import annotations

import logging

from comfy_api.latest import io

from ..models import face_regions as regions
from ..models.errors import InputError
from ..models.face_parsing import BISENET_RESOLUTIONS
from ..models.images import to_rgb_batch
from ..models.labels import BODY_LABEL_SETS, FACE_LABEL_SETS
from ..models.model_files import ParserWeights
from . import canvas_ui, managed, types
from .validate import require_choice

NODE = "PartID Face Regions"


def _check_parser(parser) -> ParserWeights:
    # Duck-typed: the same class can be imported under two module names (ComfyUI's loader and `partid`).
    if getattr(parser, "label_set", None) not in FACE_LABEL_SETS or not hasattr(parser, "backend"):
        label_set = getattr(parser, "label_set", None)
        kind = f"a body parser ({label_set} labels)" if label_set in BODY_LABEL_SETS else type(parser).__name__
        raise InputError(NODE, "parser", f"expected a face parser, got {kind}.",
                         "connect 'PartID Face Parser Loader' (BiSeNet face_parsing.pth or a SegFormer face folder).")
    if parser.backend not in ("bisenet", "segformer"):
        raise InputError(NODE, "parser", f"{parser.path} is a '{parser.backend}' face parser, which this node "
                         "does not run.", "load BiSeNet face_parsing.pth / 79999_iter.pth or the SegFormer "
                         "jonathandinu/face-parsing folder instead.")
    return parser


class FaceRegions(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDFaceRegions", display_name=NODE, category="PartID/face",
            description="Parses faces (BiSeNet as ConsistentID does, or SegFormer) and gives ConsistentID's five "
                        "facial region masks, each label filled along its outer contour (holes covered). BiSeNet "
                        "masks are cut at its 512/1280 parse and resized to the photo (soft edges), as the "
                        "official code does before it encodes the regions.",
            inputs=[
                types.FaceParser.Input("parser", tooltip="From PartID Face Parser Loader."),
                io.Image.Input("image", tooltip="One or more face photos; RGBA (alpha ignored) and grayscale work."),
                io.Combo.Input("mode", options=list(regions.MODES), default="ConsistentID",
                               tooltip="ConsistentID: as the official code, one eye (left, else right), one ear "
                                       "(left, else right), the upper lip (else lower) as mouth. union: both eyes, "
                                       "both ears, the whole mouth (inner mouth and both lips)."),
                io.Combo.Input("resolution", options=list(BISENET_RESOLUTIONS), default=512,
                               tooltip="BiSeNet input size: 512 as ConsistentID SD1.5, 1280 as its SDXL pipeline. "
                                       "SegFormer always uses its processor's size (512)."),
            ],
            outputs=[
                io.Mask.Output("face", display_name="face"),
                io.Mask.Output("eyes", display_name="eyes"),
                io.Mask.Output("ears", display_name="ears"),
                io.Mask.Output("nose", display_name="nose"),
                io.Mask.Output("mouth", display_name="mouth"),
                types.LabelMap.Output("label_map", display_name="label_map"),
                io.Image.Output("preview", display_name="preview"),
            ],
        )

    @classmethod
    def execute(cls, parser, image, mode="ConsistentID", resolution=512):
        weights = _check_parser(parser)
        require_choice(NODE, "mode", mode, regions.MODES)
        if isinstance(resolution, str) and resolution.strip().isdigit():
            resolution = int(resolution)
        require_choice(NODE, "resolution", resolution, BISENET_RESOLUTIONS)
        rgb, _ = to_rgb_batch(image, NODE, "image")
        engine = managed.face_parser(weights)
        label_map = engine.parse(rgb, resolution=resolution)
        found = regions.face_regions(label_map, mode)
        for i, chosen in enumerate(found.chosen):
            missing = [r for r in regions.REGIONS if not chosen[r]]
            if missing:  # not an error: ConsistentID feeds missing regions as zeros
                logging.info("[PartID] %s: batch index %d has no %s (empty mask).", NODE, i, ", ".join(missing))
        masks = [found.masks[r] for r in regions.REGIONS]
        preview = regions.preview(label_map, rgb)
        # The preview and its legend also go to the canvas (web/partid.js), as core PreviewImage does.
        ui = canvas_ui.face_ui(label_map, found, canvas_ui.preview_images(preview))
        return io.NodeOutput(*masks, label_map, preview, ui=ui)


NODES = [FaceRegions]
