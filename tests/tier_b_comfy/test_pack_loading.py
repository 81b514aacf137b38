"""PartID inside the real ComfyUI: nodes registered, folders registered by extending, never overwriting."""
from __future__ import annotations

import os

EXPECTED_NODES = {"PartIDFaceParserLoader", "PartIDBodyParserLoader", "PartIDFaceAnalysisLoader",
                  "PartIDConsistentIDLoader", "PartIDVisualPersonaLoader", "PartIDDINOv2Loader", "PartIDModelInfo"}


def test_comfyui_loads_every_node(comfy):
    assert EXPECTED_NODES <= comfy.added
    info = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDConsistentIDLoader"].GET_NODE_INFO_V1()
    assert info["output"] == ["PARTID_CONSISTENTID"]
    kind, spec = info["input"]["required"]["adapter"]
    assert kind == "COMBO" and "consistentid_sd15" in spec["options"]
    assert not any(o.startswith("visual_persona") for o in spec["options"])


def test_model_folders_registered_with_defaults(comfy):
    fp = comfy.folder_paths
    for key, sub in (("face_parsing", "face_parsing"), ("body_parsing", "body_parsing"),
                     ("insightface", "insightface"), ("identity_adapters", "consistentid"), ("dinov2", "dinov2")):
        paths, exts = fp.folder_names_and_paths[key]
        assert os.path.join(fp.models_dir, sub) in paths
    assert ".onnx" in fp.folder_names_and_paths["insightface"][1]
    assert ".onnx" in fp.folder_names_and_paths["body_parsing"][1]


def test_extra_model_paths_entries_are_extended_not_overwritten(comfy, tmp_path):
    """Apply a real extra_model_paths.yaml with ComfyUI's own loader, then register again."""
    from utils.extra_config import load_extra_path_config

    fp = comfy.folder_paths
    saved = {k: (list(v[0]), v[1]) for k, v in fp.folder_names_and_paths.items()}
    try:
        for key in ("face_parsing", "dinov2"):
            fp.folder_names_and_paths.pop(key, None)  # as at ComfyUI start, before custom nodes
        yaml = tmp_path / "extra_model_paths.yaml"
        yaml.write_text(f"mine:\n  base_path: {tmp_path}\n  face_parsing: my_parsers\n  dinov2: my_dino\n")
        load_extra_path_config(str(yaml))
        user_dir = str(tmp_path / "my_parsers")
        assert fp.folder_names_and_paths["face_parsing"] == ([user_dir], set())
        register = comfy.package.nodes.folders.register_model_folders
        register()
        register()  # idempotent
        paths, exts = fp.folder_names_and_paths["face_parsing"]
        assert paths[0] == user_dir and paths.count(user_dir) == 1
        assert os.path.join(fp.models_dir, "face_parsing") in paths
        assert exts == set()  # the user's "any file" entry stays "any file"
        assert fp.folder_names_and_paths["dinov2"][0][0] == str(tmp_path / "my_dino")
    finally:
        fp.folder_names_and_paths.clear()
        fp.folder_names_and_paths.update({k: (v[0], v[1]) for k, v in saved.items()})
