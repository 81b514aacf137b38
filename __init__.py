"""PartID: part-aware identity customisation (ConsistentID, Visual Persona) as native ComfyUI nodes.

ComfyUI imports this file and calls `comfy_entrypoint`. Nothing ComfyUI-specific is imported at
module level, so the engine (`models/`), the headless runner (`python -m <this folder> run ...`)
and the tests can import the package without ComfyUI.
"""

WEB_DIRECTORY = "./web"


async def comfy_entrypoint():
    from .nodes import PartIDExtension
    from .nodes.folders import register_model_folders

    # Folders must exist before get_node_list builds the loaders' file lists.
    register_model_folders()
    return PartIDExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
