"""ComfyUI glue for face analysis (models/face_analysis.py does the work) and its boxes (models/face_boxes.py)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..models import face_analysis as engine
from ..models import face_boxes
from ..models.errors import InputError
from ..models.face_previews import draw_faces
from ..models.images import from_uint8_hwc, to_rgb_batch, to_uint8_hwc
from . import types
from .validate import require_choice

NODE = engine.NODE
BOXES_NODE = "PartID Face Boxes"
SKIPPED_ATTR = "partid_skipped"   # on the embeddings tensor: input batch indices on_no_face=skip dropped

class FaceAnalysis(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDFaceAnalysis", display_name="PartID Face Analysis", category="PartID/face",
            description="Detects faces (SCRFD), aligns them on 5 points and embeds them with ArcFace, as insightface "
                        "does, with onnxruntime directly (no insightface package). One face is chosen per image.",
            inputs=[
                types.FaceAnalyzer.Input("analyzer", tooltip="From PartID Face Analysis Loader."),
                io.Image.Input("image", tooltip="One or more images; RGBA and grayscale are accepted."),
                io.Float.Input("det_thresh", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Detection score threshold (insightface default 0.5). Lower it when a face "
                                       "is missed."),
                io.Int.Input("min_face_size", default=0, min=0, max=8192,
                             tooltip="Ignore faces whose shorter box side is below this many pixels (0 keeps all)."),
                io.Combo.Input("face_select", options=list(engine.FACE_SELECT), default="largest",
                               tooltip="Which face each image gives: 'largest' box, 'index' = detector order "
                                       "(highest score first; index 0 is what ConsistentID and IP-Adapter FaceID "
                                       "use), or 'left-to-right'. face_index counts in that order."),
                io.Int.Input("face_index", default=0, min=0, max=255,
                             tooltip="0 = first face in the face_select order."),
                io.Combo.Input("on_no_face", options=list(engine.ON_NO_FACE), default="error",
                               tooltip="error: stop and name the image; skip: drop the image (logged; feed the "
                                       "images output on so references stay paired); bypass: keep it with a zero "
                                       "embedding (ConsistentID then uses only its CLIP image, as the official "
                                       "pipelines do without a face)."),
                io.Combo.Input("color_order", options=list(engine.COLOR_ORDERS), default="BGR",
                               tooltip="BGR = correct insightface input (what cv2.imread gives it). RGB = the "
                                       "ConsistentID SD1.5 inference quirk: RGB fed where insightface expects BGR. "
                                       "Use RGB only to reproduce the official SD1.5 pipeline exactly."),
            ],
            outputs=[
                types.Faces.Output(display_name="faces", tooltip="Every face of every kept image, the chosen one "
                                   "per image and per-image presence flags."),
                types.FaceEmbeds.Output(display_name="embeddings", tooltip="[images, 512] L2-normed ArcFace embedding of "
                                  "the chosen face per kept image; zero rows for bypassed images."),
                io.Int.Output(display_name="face_count", tooltip="Faces found in all kept images together."),
                io.Image.Output(display_name="preview", tooltip="Every input image with boxes and 5 points; the "
                                "chosen face in green."),
                io.Image.Output(display_name="images", tooltip="The kept images (all of them unless on_no_face=skip "
                                "dropped some), row for row with the embeddings: feed these to the parsing and "
                                "encode nodes so references stay paired."),
            ],
        )

    @classmethod
    def execute(cls, analyzer, image, det_thresh=0.5, min_face_size=0, face_select="largest", face_index=0,
                on_no_face="error", color_order="BGR"):
        import comfy.utils

        if not hasattr(analyzer, "sessions") or "detection" not in analyzer.sessions:
            raise InputError(NODE, "analyzer", f"expected a face analyzer, got {type(analyzer).__name__}.",
                             "connect PartID Face Analysis Loader.")
        rgb, _ = to_rgb_batch(image, NODE)
        frames = [to_uint8_hwc(f) for f in rgb]
        bar = comfy.utils.ProgressBar(len(frames) + 1)
        result = engine.analyze(analyzer, frames, det_thresh=det_thresh, min_face_size=min_face_size,
                                face_select=face_select, face_index=face_index, on_no_face=on_no_face,
                                color_order=color_order, progress=lambda v, total: bar.update_absolute(v, total))
        by_source = {b: k for k, b in enumerate(result.source_indices)}
        preview = torch.stack([
            from_uint8_hwc(draw_faces(frame, result.faces[by_source[b]] if b in by_source else None,
                                        result.selected[by_source[b]] if b in by_source else None))
            for b, frame in enumerate(frames)])
        embeds = torch.from_numpy(result.embeddings(normed=True))
        # The apply node refuses to pair these rows with a reference batch they no longer match (see
        # consistentid_apply.check_inputs); an attribute travels with the tensor object through the graph.
        setattr(embeds, SKIPPED_ATTR, tuple(result.skipped))
        return io.NodeOutput(result, embeds, result.face_count, preview, rgb[result.source_indices])


class FaceBoxes(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDFaceBoxes", display_name=BOXES_NODE, category="PartID/face",
            description="The boxes and five points PartID Face Analysis found, as a MASK per kept image (the chosen "
                        "face, or every face) and as JSON text (boxes, points, scores, which face was chosen).",
            inputs=[types.Faces.Input("faces", tooltip="The faces output of PartID Face Analysis."),
                    io.Combo.Input("which", options=list(face_boxes.WHICH), default="chosen",
                                   tooltip="chosen: the face each image gives its embedding; all: every face found."),
                    io.Float.Input("grow", default=0.0, min=0.0, max=2.0, step=0.05,
                                   tooltip="Enlarge each box by this fraction of its width/height on every side.")],
            outputs=[io.Mask.Output(display_name="mask", tooltip="[kept images, H, W]: 1 inside the box(es)."),
                     io.String.Output(display_name="json", tooltip="Per kept image: batch_index, size, chosen, and "
                                      "each face's box [x1, y1, x2, y2], points [[x, y] x 5] and score.")],
        )

    @classmethod
    def execute(cls, faces, which="chosen", grow=0.0):
        if not isinstance(faces, engine.FaceAnalysisResult):
            raise InputError(BOXES_NODE, "faces", f"expected PartID Face Analysis faces, got {type(faces).__name__}.",
                             "connect the faces output of PartID Face Analysis.")
        require_choice(BOXES_NODE, "which", which, face_boxes.WHICH)
        masks = face_boxes.box_masks(faces, which, grow)
        return io.NodeOutput(torch.from_numpy(masks), face_boxes.faces_json(faces))


NODES = [FaceAnalysis, FaceBoxes]
