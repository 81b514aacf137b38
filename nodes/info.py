"""Model Info: shows what a PartID loader actually loaded (format, base model, labels, providers)."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..models.describe import describe
from . import types


class ModelInfo(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDModelInfo", display_name="PartID Model Info", category="PartID/utils",
            description="Shows the format, base model and contents of anything a PartID loader produced.",
            inputs=[io.MultiType.Input("model", types=[types.FaceParser, types.BodyParser, types.FaceAnalyzer,
                                                       types.ConsistentIDAdapter, types.VisualPersonaAdapter,
                                                       types.DINOv2])],
            outputs=[io.String.Output("info")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model):
        text = describe(model)
        return io.NodeOutput(text, ui=ui.PreviewText(text))


NODES = [ModelInfo]
