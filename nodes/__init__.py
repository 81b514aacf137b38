"""ComfyUI glue: one module per stage. Imported only inside ComfyUI (by comfy_entrypoint)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import (body_parsing, consistentid_apply, consistentid_encode, consistentid_text, face_analysis, face_parsing,
               identity_files, identity_tokens, info, loaders, visual_persona_apply, visual_persona_encode)
from . import evaluation
from . import training
from . import training_visual_persona


class PartIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*loaders.NODES, *face_parsing.NODES, *body_parsing.NODES, *face_analysis.NODES,
                *consistentid_text.NODES, *consistentid_encode.NODES, *consistentid_apply.NODES,
                *visual_persona_encode.NODES, *identity_tokens.NODES, *identity_files.NODES,
                *visual_persona_apply.NODES, *info.NODES, *evaluation.NODES, *training.NODES,
                *training_visual_persona.NODES]
