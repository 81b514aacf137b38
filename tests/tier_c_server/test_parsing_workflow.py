"""Issue 3 end to end: real photos (the astronaut, insightface's group photo t1.jpg) through /prompt in a real ComfyUI server.

The headless runner uploads the photo, the server runs face parsing + regions and face analysis, and
the region MASK outputs come back as images; they must equal what the engine computes in-process
from the same photo and the same random-weight files.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from fixtures_builders import parsers
from fixtures_builders.photos import astronaut, group_photo
from partid_rig import REPO
from PIL import Image

WORKFLOW = REPO / "workflows" / "api" / "partid_parsing_api.json"
REGIONS = ("face", "eyes", "ears", "nose", "mouth")
PARTS = ("full_body", "face", "upper", "lower", "shoes")


def expected_region_masks(photo: np.ndarray) -> dict[str, np.ndarray]:
    from partid.models import model_files
    from partid.models.face_parsing import face_parser_from
    from partid.models.face_regions import face_regions

    parser = face_parser_from(model_files.load_parser(str(parsers.bisenet_pth()), "face"), "cpu", torch.float32)
    rgb = torch.from_numpy(photo).float().div(255).unsqueeze(0)
    found = face_regions(parser.parse(rgb, resolution=512), "ConsistentID")
    return {name: found.masks[name][0].numpy() for name in REGIONS}


def expected_part_masks(photo: np.ndarray) -> dict[str, np.ndarray]:
    from fixtures_builders.schp_onnx import schp_onnx

    from partid.models import model_files
    from partid.models.body_parsing import body_parser_from
    from partid.models.body_parts import body_parts

    parser = body_parser_from(model_files.load_parser(str(schp_onnx("atr")), "body"), "cpu", torch.float32)
    rgb = torch.from_numpy(photo).float().div(255).unsqueeze(0)
    found = body_parts(parser.parse(rgb))
    return {name: found.masks[name][0].numpy() for name in PARTS}


@pytest.mark.parametrize("photo_of", [astronaut, group_photo], ids=["astronaut", "insightface-t1"])
def test_parsing_chain_runs_on_real_photos_through_prompt(partid_server, tmp_path, photo_of):
    photo = photo_of()
    ref = tmp_path / "reference.png"
    Image.fromarray(photo).save(ref)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", REPO.name, "run", str(WORKFLOW), "--image", str(ref),
                           "--server", partid_server.url.split("//")[1], "--out", str(out)],
                          cwd=REPO.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected = expected_region_masks(photo)
    for name in REGIONS:
        (png,) = list(out.rglob(f"region_{name}_*.png"))
        got = np.asarray(Image.open(png).convert("L")).astype(np.float32) / 255.0
        assert got.shape == photo.shape[:2]
        assert np.array_equal(got, expected[name]), name
    assert any(expected[name].any() for name in REGIONS), "random BiSeNet found no region at all"
    expected_parts = expected_part_masks(photo)
    for name in PARTS:
        (png,) = list(out.rglob(f"part_{name}_*.png"))
        got = np.asarray(Image.open(png).convert("L")).astype(np.float32) / 255.0
        assert np.array_equal(got, expected_parts[name]), name
    assert expected_parts["full_body"].any(), "random SCHP parser found no body at all"
    assert Image.open(next(out.rglob("body_parts_preview_*.png"))).size == (photo.shape[1], photo.shape[0])
    preview = Image.open(next(out.rglob("face_regions_preview_*.png")))
    assert preview.size == (photo.shape[1], photo.shape[0])
    faces = Image.open(next(out.rglob("faces_preview_*.png")))
    assert faces.size == (photo.shape[1], photo.shape[0])
