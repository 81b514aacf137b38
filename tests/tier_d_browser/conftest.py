"""Tier D: a real ComfyUI server with its real frontend (comfyui_frontend_package) and PartID, for a browser."""
from __future__ import annotations

import io
import os

import pytest
import requests
from partid_rig import COMFYUI, REPO, free_port

PACK_NAME = "PartID"


@pytest.fixture(scope="session")
def browser_server(tmp_path_factory):
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.layout import populate_models_dir
    from fixtures_builders.photos import astronaut
    from PIL import Image

    from partid.cli.server import ComfyServer

    root = tmp_path_factory.mktemp("partid_browser_server")
    models = populate_models_dir(root / "models", with_sdxl=False)
    link_clip_vision(models)
    custom = root / "custom_nodes"
    custom.mkdir()
    os.symlink(REPO, custom / PACK_NAME)
    folders = ["checkpoints", "face_parsing", "body_parsing", "insightface", "identity_adapters", "dinov2",
               "clip_vision"]
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("partid_tests:\n  base_path: " + str(models) + "\n"
                    + "".join(f"  {f}: {f}\n" for f in folders) + f"  custom_nodes: {custom}\n")
    # No --front-end-root: ComfyUI serves the frontend package it depends on, as for a user.
    args = ["--cpu", "--disable-api-nodes", "--extra-model-paths-config", str(yaml),
            "--database-url", "sqlite:///:memory:"]
    for flag, name in (("--input-directory", "input"), ("--output-directory", "output"),
                       ("--temp-directory", "temp"), ("--user-directory", "user")):
        (root / name).mkdir()
        args += [flag, str(root / name)]
    server = ComfyServer(COMFYUI, "127.0.0.1", free_port(), args, log_path=root / "comfyui.log")
    server.root = root
    with server:
        # A returning user (no first-run template dialog over the canvas); nothing over the canvas in the
        # screenshots (minimap, stats, zoom menu, workflow tabs); text drawn at every zoom.
        settings = {"Comfy.TutorialCompleted": True, "Comfy.Minimap.Visible": False, "Comfy.Graph.CanvasInfo": False,
                    "Comfy.Graph.CanvasMenu": False, "Comfy.Workflow.WorkflowTabsPosition": "Sidebar",
                    "LiteGraph.Canvas.MinFontSizeForLOD": 0}
        requests.post(f"{server.url}/settings", json=settings, timeout=30).raise_for_status()
        png = io.BytesIO()
        Image.fromarray(astronaut()).save(png, format="PNG")
        requests.post(f"{server.url}/upload/image", files={"image": ("reference.png", png.getvalue(), "image/png")},
                      data={"overwrite": "true"}, timeout=30).raise_for_status()
        yield server
