"""ComfyUI glue for the evaluation metrics (models/evaluation does the work).

CLIP-I and CLIP-T come from one full CLIP folder (image and text towers): core CLIP_VISION has no text
tower, and CLIP-T must use the text tower of the same CLIP. FaceSim uses a PartID Face Analysis Loader
output (pick antelopev2 when ConsistentID's buffalo_l conditioned the generation); FGIS and the per-part
similarity use the PartID face / body parser loaders' outputs.
"""
from __future__ import annotations

import math

from comfy_api.latest import io, ui

from ..models.errors import InputError, ModelFileError
from ..models.evaluation import metrics, report, run
from ..models.evaluation.setup import choose_face_pack
from ..models.images import to_rgb_batch, to_uint8_hwc
from . import managed, types
from .loaders import WRONG_KIND_FIX, download_input
from .model_choice import choices, resolve
from .validate import require_choice

LOADER = "PartID Evaluation Models Loader"
NODE = "PartID Evaluate Pair"
EvalModels = io.Custom("PARTID_EVAL_MODELS")
MANAGED_ATTR = {"clip": "_partid_clip", "dino": "_partid_dino"}   # managed.Managed kept on the EvaluationModels
NONE = "none"                                  # a loader choice that leaves the model out (its metrics: NaN)
CONDITIONED_WITH = ("buffalo_l", "antelopev2", "unknown")


def _model_input(name: str, kind: str, metrics_of: str) -> io.Combo.Input:
    options = choices(kind, "evaluation")
    return io.Combo.Input(name, options=options + [NONE], default=options[0],
                          tooltip=f"For {metrics_of}; '{NONE}' leaves them out (NaN), e.g. without the model file.")


def _device():
    from comfy import model_management

    return model_management.get_torch_device()


class EvaluationModelsLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDEvaluationModelsLoader", display_name=LOADER, category="PartID/evaluation",
            description="Loads the CLIP (both towers, for CLIP-I and CLIP-T; openai/clip-vit-large-patch14) and the "
                        "DINO ViT-S/16 (DINO, FGIS, per-part similarity) used by PartID Evaluate Pair.",
            inputs=[_model_input("clip", "eval_clip", "CLIP-I and CLIP-T"),
                    _model_input("dino", "eval_dino", "DINO, FGIS and the per-part similarity"), download_input()],
            outputs=[EvalModels.Output(display_name="eval_models")],
        )

    @classmethod
    def execute(cls, clip, dino, download=False):
        from ..models.evaluation.clip_score import CLIPScorer
        from ..models.evaluation.dino_score import DINOScorer

        loaded = {}
        _, offload_device = managed.devices()
        for name, choice, kind, build in (("clip", clip, "eval_clip", CLIPScorer),
                                          ("dino", dino, "eval_dino", DINOScorer)):
            if choice == NONE:
                loaded[name] = None
                continue
            path = resolve(LOADER, name, choice, kind, "evaluation", download)
            try:
                loaded[name] = build(path, offload_device)
            except ModelFileError as exc:
                raise exc.at_input(LOADER, name, WRONG_KIND_FIX) from exc
        models = metrics.EvaluationModels(clip=loaded["clip"], dino=loaded["dino"])
        # Both go under ComfyUI's model management, loaded when PartID Evaluate Pair runs.
        for name, scorer in loaded.items():
            if scorer is not None:
                managed.adopt(models, MANAGED_ATTR[name], scorer, scorer.model)
        return io.NodeOutput(models)


def _frames(image, name: str) -> list:
    rgb, _ = to_rgb_batch(image, NODE, name)
    return [to_uint8_hwc(f) for f in rgb]


class EvaluatePair(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDEvaluatePair", display_name=NODE, category="PartID/evaluation", is_output_node=True,
            description="Scores generations against a reference: FaceSim (ArcFace cosine, 0 when the generation has "
                        "no face), CLIP-I and CLIP-T (100 x CLIP cosine), DINO (ViT-S CLS cosine), FGIS (DINO cosine "
                        "per facial region, averaged) and per-part similarity (DINO cosine per Visual Persona body "
                        "part, averaged). Outputs are batch means; NaN = not computed (model not connected).",
            inputs=[
                EvalModels.Input("eval_models", tooltip="From PartID Evaluation Models Loader."),
                io.Image.Input("reference", tooltip="One reference, or one per generation."),
                io.Image.Input("generation", tooltip="One or more generated images."),
                io.String.Input("prompt", multiline=True, default="",
                                tooltip="The generation prompt, for CLIP-T (empty: CLIP-T not computed)."),
                types.FaceAnalyzer.Input("analyzer", optional=True,
                                         tooltip="For FaceSim: PartID Face Analysis Loader. Use a pack other than "
                                                 "the one that conditioned the generation (antelopev2 for "
                                                 "ConsistentID, which uses buffalo_l)."),
                types.FaceParser.Input("face_parser", optional=True, tooltip="For FGIS: PartID Face Parser Loader."),
                types.BodyParser.Input("body_parser", optional=True,
                                       tooltip="For the per-part similarity: PartID Body Parser Loader (Visual "
                                               "Persona parses with SCHP ATR)."),
                io.Float.Input("det_thresh", default=0.5, min=0.01, max=1.0, step=0.01,
                               tooltip="Face detection threshold for FaceSim (insightface default 0.5)."),
                io.Combo.Input("conditioned_with", options=list(CONDITIONED_WITH), default="buffalo_l",
                               tooltip="The face pack that conditioned the generation; the table warns when "
                                       "FaceSim uses the same one."),
            ],
            outputs=[io.Float.Output(display_name=m) for m in metrics.METRICS]
            + [io.String.Output(display_name="table", tooltip="Summary (mean, std, count, model per metric) and "
                                "one CSV row per generation.")],
        )

    @classmethod
    def execute(cls, eval_models, reference, generation, prompt="", analyzer=None, face_parser=None,
                body_parser=None, det_thresh=0.5, conditioned_with="buffalo_l"):
        import comfy.utils

        from ..models.body_parsing import check_body_parser

        if not isinstance(eval_models, metrics.EvaluationModels) and not hasattr(eval_models, "models_used"):
            raise InputError(NODE, "eval_models", f"expected evaluation models, got {type(eval_models).__name__}.",
                             "connect PartID Evaluation Models Loader.")
        require_choice(NODE, "conditioned_with", conditioned_with, CONDITIONED_WITH)
        if analyzer is not None and not hasattr(analyzer, "sessions"):
            raise InputError(NODE, "analyzer", f"expected a face analyzer, got {type(analyzer).__name__}.",
                             "connect PartID Face Analysis Loader.")
        if face_parser is not None and getattr(face_parser, "label_set", None) not in ("bisenet", "segformer_face"):
            raise InputError(NODE, "face_parser", "expected a face parser.", "connect PartID Face Parser Loader.")
        refs, gens = _frames(reference, "reference"), _frames(generation, "generation")
        if len(refs) not in (1, len(gens)):
            raise InputError(NODE, "reference", f"{len(refs)} references for {len(gens)} generations.",
                             "give one reference, or one per generation.")
        device = _device()
        parsers = (managed.face_parser_held(face_parser, device) if face_parser is not None else None,
                   managed.body_parser_held(check_body_parser(body_parser, NODE, "body_parser"), device)
                   if body_parser is not None else None)
        scorers = [getattr(eval_models, attr, None) for attr in MANAGED_ATTR.values()]
        managed.load(*[k for k in (*scorers, *parsers) if k is not None])   # room made for all of them at once
        models = metrics.EvaluationModels(
            clip=eval_models.clip, dino=eval_models.dino, face=analyzer, det_thresh=det_thresh,
            face_parser=parsers[0].engine if parsers[0] else None, body_parser=parsers[1].engine if parsers[1] else None)
        if analyzer is not None and conditioned_with != "unknown":
            _, note = choose_face_pack([analyzer.name], analyzer.name, conditioned_with)
            if note:
                models.notes.append(note)
        bar = comfy.utils.ProgressBar(len(gens))
        rows = run.evaluate_images(models, refs, gens, prompt.strip() or None,
                                   progress=lambda i, n: bar.update_absolute(i, n))
        summary = report.summarise(rows, models.models_used(), models.notes)
        table = report.summary_markdown(summary) + "\n" + report.rows_csv(rows)
        means = [summary["metrics"][m]["mean"] for m in metrics.METRICS]
        values = [math.nan if v is None else float(v) for v in means]
        return io.NodeOutput(*values, table, ui=ui.PreviewText(table))


NODES = [EvaluationModelsLoader, EvaluatePair]
