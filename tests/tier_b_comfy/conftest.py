"""Tier B: the real ComfyUI imported in-process, with PartID loaded by ComfyUI's own custom-node loader."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    from partid_rig import COMFYUI

    if COMFYUI not in sys.path:
        sys.path.insert(0, COMFYUI)
    import utils.extra_config  # noqa: F401  (as main.py does: later ComfyUI imports put comfy/ on sys.path,
    #                                  after which 'utils' would resolve to comfy/utils.py)
    import comfy.cli_args

    comfy.cli_args.args.cpu = True  # before comfy.model_management is imported
    import folder_paths
    import nodes

    assert Path(nodes.__file__).parent == Path(COMFYUI), "ComfyUI's nodes.py must win over any other 'nodes'"
    before = set(nodes.NODE_CLASS_MAPPINGS)
    assert asyncio.run(nodes.load_custom_node(str(REPO))), "ComfyUI failed to load PartID"
    added = set(nodes.NODE_CLASS_MAPPINGS) - before
    package = sys.modules[str(REPO).replace(".", "_x_")]
    models_root = tmp_path_factory.mktemp("comfy_models")
    # Nodes that send canvas previews write temp PNGs: keep them out of the user's ComfyUI/temp.
    folder_paths.set_temp_directory(str(tmp_path_factory.mktemp("comfy_temp")))
    return SimpleNamespace(nodes=nodes, folder_paths=folder_paths, added=added, package=package,
                           models_root=models_root, run=run_node)


@pytest.fixture(scope="module")
def sd15_clip_vae(comfy, model_dirs):
    """(CLIP, VAE) of the random SD1.5 checkpoint without its UNet: light enough for no heavy lock."""
    from comfy import sd as comfy_sd

    path = comfy.folder_paths.get_full_path("checkpoints", "partid_random_sd15.safetensors")
    with torch.inference_mode():
        return comfy_sd.load_checkpoint_guess_config(path, output_vae=True, output_clip=True,
                                                     output_model=False)[1:3]


def run_node(node_cls, **inputs):
    """Execute a node class as ComfyUI's executor does: V3 via a prepared class clone, V1 via its FUNCTION."""
    if hasattr(node_cls, "PREPARE_CLASS_CLONE"):
        out = node_cls.PREPARE_CLASS_CLONE({}).execute(**inputs)
        return out.result, out.ui
    return getattr(node_cls(), node_cls.FUNCTION)(**inputs), None


@pytest.fixture(scope="session")
def model_dirs(comfy):
    """Random-weight files in the official formats, laid out as a user's ComfyUI/models would be."""
    from fixtures_builders.layout import populate_models_dir

    root = populate_models_dir(comfy.models_root)
    for key, sub in (("checkpoints", "checkpoints"), ("face_parsing", "face_parsing"),
                     ("body_parsing", "body_parsing"), ("insightface", "insightface"),
                     ("identity_adapters", "identity_adapters"), ("dinov2", "dinov2")):
        comfy.folder_paths.add_model_folder_path(key, str(root / sub))
    return root
