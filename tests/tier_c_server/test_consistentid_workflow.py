"""The ConsistentID SD1.5 example workflow (workflows/api/consistentid_sd15_api.json) through the headless
runner against a real ComfyUI server: the astronaut uploaded with --image, the random full-size SD1.5,
random ConsistentID SD1.5 adapter, CLIP-ViT-H/14, buffalo_l and BiSeNet; 64x64, 2 steps."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

from fixtures_builders.photos import astronaut
from PIL import Image
from partid_rig import REPO, REPORT, get_json

WORKFLOW = REPO / "workflows" / "api" / "consistentid_sd15_api.json"


def test_workflow_nodes_are_served(partid_server):
    info = get_json(partid_server, "/object_info")
    for node in json.loads(WORKFLOW.read_text()).values():
        assert node["class_type"] in info, node["class_type"]
    clip_names = info["CLIPVisionLoader"]["input"]["required"]["clip_name"][0]
    assert "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors" in clip_names


def test_consistentid_workflow_runs_through_the_headless_runner(partid_server, tmp_path):
    reference = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(reference)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", REPO.name, "run", str(WORKFLOW), "--server", partid_server.url.split("//")[1],
           "--image", str(reference), "--prompt", "a photo of an astronaut",
           "--set", "Checkpoint.ckpt_name=partid_random_sd15.safetensors", "--set", "Latent.width=64",
           "--set", "Latent.height=64", "--set", "Sampler.steps=2",
           # random-weight detector: a low threshold, and no failure if it still finds nothing
           "--set", "Face analysis.det_thresh=0.2", "--set", "Face analysis.on_no_face=bypass",
           "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO.parent, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pngs = list(out.rglob("*.png"))
    assert len(pngs) == 1
    assert struct.unpack(">II", pngs[0].read_bytes()[16:24]) == (64, 64)
    REPORT.append(f"ConsistentID SD1.5 workflow through the runner: {pngs[0].name} (64x64, 2 steps)")
