"""ComfyUI glue: one module per stage. Imported only inside ComfyUI (by comfy_entrypoint)."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import info, loaders


class PartIDExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [*loaders.NODES, *info.NODES]
