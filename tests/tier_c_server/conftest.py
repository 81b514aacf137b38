"""Tier C: a real ComfyUI server started headless on 127.0.0.1 with PartID as a custom node."""
from __future__ import annotations

import os

import pytest
from partid_rig import COMFYUI, REPO, free_port

PACK_NAME = "PartID"


@pytest.fixture(scope="session")
def partid_server(tmp_path_factory):
    from fixtures_builders.layout import populate_models_dir

    from partid.cli.server import ComfyServer

    root = tmp_path_factory.mktemp("partid_server")
    models = populate_models_dir(root / "models", with_sdxl=False)
    from fixtures_builders.clip_vision import link_clip_vision

    link_clip_vision(models)  # CLIP-ViT-H/14 for ConsistentID (core Load CLIP Vision)
    # ComfyUI's own way of adding a custom-node folder: an extra_model_paths.yaml entry.
    custom = root / "custom_nodes"
    custom.mkdir()
    os.symlink(REPO, custom / PACK_NAME)
    folders = ["checkpoints", "face_parsing", "body_parsing", "insightface", "identity_adapters", "dinov2",
               "clip_vision"]
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("partid_tests:\n  base_path: " + str(models) + "\n"
                    + "".join(f"  {f}: {f}\n" for f in folders) + f"  custom_nodes: {custom}\n")
    args = ["--cpu", "--disable-api-nodes", "--extra-model-paths-config", str(yaml),
            "--database-url", "sqlite:///:memory:"]
    for flag, name in (("--front-end-root", "frontend"), ("--input-directory", "input"),
                       ("--output-directory", "output"), ("--temp-directory", "temp"), ("--user-directory", "user")):
        (root / name).mkdir()
        args += [flag, str(root / name)]
    server = ComfyServer(COMFYUI, "127.0.0.1", free_port(), args, log_path=root / "comfyui.log")
    server.root = root
    with server:
        yield server
