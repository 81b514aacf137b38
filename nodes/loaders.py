"""Loader nodes: one per model kind, each returning a PartID type and refusing files of another kind."""
from __future__ import annotations

from comfy_api.latest import io

from ..models import model_files
from ..models.errors import ModelFileError
from . import types
from .model_choice import choices, resolve
from .validate import require_choice

CATEGORY = "PartID/loaders"


def download_input():
    return io.Boolean.Input("download", default=False, optional=True,
                            tooltip="Allow downloading a missing catalog model from the Hugging Face Hub "
                                    "(also enabled by PARTID_ALLOW_DOWNLOAD=1).")


WRONG_KIND_FIX = "choose a file of the right kind."


def _load(node: str, input_name: str, choice: str, kind: str, folder: str, download: bool, read):
    """Resolve the choice to a file (downloading when allowed), read it, and name the node on failure."""
    path = resolve(node, input_name, choice, kind, folder, download)
    try:
        return io.NodeOutput(read(path))
    except ModelFileError as exc:
        raise exc.at_input(node, input_name, WRONG_KIND_FIX) from exc


class FaceParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDFaceParserLoader", display_name="PartID Face Parser Loader", category=CATEGORY,
            description="Loads a 19-class face parser: BiSeNet (ConsistentID's face_parsing.pth / 79999_iter.pth) "
                        "or a SegFormer folder (jonathandinu/face-parsing).",
            inputs=[io.Combo.Input("parser", options=choices("face_parser", "face_parsing")), download_input()],
            outputs=[types.FaceParser.Output()],
        )

    @classmethod
    def execute(cls, parser, download=False):
        return _load("PartID Face Parser Loader", "parser", parser, "face_parser", "face_parsing", download,
                     lambda path: model_files.load_parser(path, "face"))


class BodyParserLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDBodyParserLoader", display_name="PartID Body Parser Loader", category=CATEGORY,
            description="Loads an ATR/LIP body parser: SegFormer (mattmdjaga/segformer_b2_clothes) or an SCHP ONNX export.",
            inputs=[io.Combo.Input("parser", options=choices("body_parser", "body_parsing")), download_input()],
            outputs=[types.BodyParser.Output()],
        )

    @classmethod
    def execute(cls, parser, download=False):
        return _load("PartID Body Parser Loader", "parser", parser, "body_parser", "body_parsing", download,
                     lambda path: model_files.load_parser(path, "body"))


PACKS = ("buffalo_l", "antelopev2")
PROVIDERS = ("auto", "cuda", "cpu")


class FaceAnalysisLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDFaceAnalysisLoader", display_name="PartID Face Analysis Loader", category=CATEGORY,
            description="Loads an insightface pack (detector + ArcFace) with onnxruntime. ConsistentID was trained "
                        "with buffalo_l.",
            inputs=[io.Combo.Input("pack", options=list(PACKS), default="buffalo_l"),
                    io.Combo.Input("provider", options=list(PROVIDERS), default="auto")],
            outputs=[types.FaceAnalyzer.Output()],
        )

    @classmethod
    def execute(cls, pack, provider="auto"):
        from ..models import face_analysis_pack  # noqa: imports onnxruntime lazily
        from .folders import search_folders

        require_choice("PartID Face Analysis Loader", "pack", pack, PACKS)
        require_choice("PartID Face Analysis Loader", "provider", provider, PROVIDERS)
        try:
            return io.NodeOutput(face_analysis_pack.open_pack(search_folders("insightface"), pack, provider))
        except ModelFileError as exc:
            raise exc.at_input("PartID Face Analysis Loader", "pack", WRONG_KIND_FIX) from exc


class _AdapterLoader(io.ComfyNode):
    FAMILY = ""

    @classmethod
    def load(cls, node_name, adapter, model, download):
        def read(path):
            weights = model_files.load_adapter(path, cls.FAMILY)
            if model is not None:
                unet_config = model.model.model_config.unet_config
                model_files.check_base(weights, unet_config.get("context_dim"), type(model.model).__name__)
            return weights

        return _load(node_name, "adapter", adapter, "adapter", "identity_adapters", download, read)


class ConsistentIDLoader(_AdapterLoader):
    FAMILY = "ConsistentID"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDConsistentIDLoader", display_name="PartID ConsistentID Loader", category=CATEGORY,
            description="Loads ConsistentID-v1.bin (SD1.5) or ConsistentID_SDXL-v1.bin unchanged. Connect the model "
                        "to have a mismatched base refused here.",
            inputs=[io.Combo.Input("adapter", options=[c for c in choices("adapter", "identity_adapters")
                                                       if not c.startswith("visual_persona")]),
                    io.Model.Input("model", optional=True), download_input()],
            outputs=[types.ConsistentIDAdapter.Output()],
        )

    @classmethod
    def execute(cls, adapter, model=None, download=False):
        return cls.load("PartID ConsistentID Loader", adapter, model, download)


class VisualPersonaLoader(_AdapterLoader):
    FAMILY = "Visual Persona"

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDVisualPersonaLoader", display_name="PartID Visual Persona Loader", category=CATEGORY,
            description="Loads Visual Persona's weight.bin (or its safetensors conversion) unchanged. SDXL only.",
            inputs=[io.Combo.Input("adapter", options=[c for c in choices("adapter", "identity_adapters")
                                                       if not c.startswith("consistentid")]),
                    io.Model.Input("model", optional=True), download_input()],
            outputs=[types.VisualPersonaAdapter.Output()],
        )

    @classmethod
    def execute(cls, adapter, model=None, download=False):
        return cls.load("PartID Visual Persona Loader", adapter, model, download)


class DINOv2Loader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDDINOv2Loader", display_name="PartID DINOv2 Loader", category=CATEGORY,
            description="Loads DINOv2 (torch-hub *_pretrain.pth or a transformers folder). Visual Persona uses ViT-g/14.",
            inputs=[io.Combo.Input("dinov2", options=choices("dinov2", "dinov2")), download_input()],
            outputs=[types.DINOv2.Output()],
        )

    @classmethod
    def execute(cls, dinov2, download=False):
        return _load("PartID DINOv2 Loader", "dinov2", dinov2, "dinov2", "dinov2", download, model_files.load_dinov2)


NODES = [FaceParserLoader, BodyParserLoader, FaceAnalysisLoader, ConsistentIDLoader, VisualPersonaLoader, DINOv2Loader]
