"""The training workflow (workflows/api/consistentid_train_api.json) end to end through the headless runner.

A real ComfyUI server (tier C fixture: random full-size SD1.5 checkpoint, the official-layout random
ConsistentID-v1.bin, BiSeNet, buffalo_l, CLIP-ViT-H) trains on a folder in its input directory built
from the two real photos (the astronaut and a face of insightface's group photo, with captions). The
workflow runs unchanged but for the checkpoint name, 2 steps at 128 px and a save every step. Checked:
the run ends, the loss curve is saved as the workflow's output image, and the adapter file the node
wrote reloads through PartID's loader in the official layout with trained groups changed and the
others kept.
"""
from __future__ import annotations

import struct
import subprocess
import sys
import time

from fixtures_builders.photos import astronaut, group_photo
from partid_rig import REPO, REPORT
from PIL import Image

WORKFLOW = REPO / "workflows" / "api" / "consistentid_train_api.json"
OUTPUT_NAME = "partid_ci_trained"


def make_dataset(folder):
    folder.mkdir(parents=True)
    Image.fromarray(astronaut()).save(folder / "astronaut.png")
    (folder / "astronaut.txt").write_text("a photo of a woman in a space suit")
    group = group_photo()
    h, w = group.shape[:2]
    Image.fromarray(group[: h // 2, : w // 3]).resize((256, 256)).save(folder / "group_left.png")
    (folder / "group_left.txt").write_text("a photo of a person")


def test_training_workflow_runs_through_the_headless_runner(partid_server, tmp_path):
    from partid.models import model_files
    from fixtures_builders import adapters

    make_dataset(partid_server.root / "input" / "training_images")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", REPO.name, "run", str(WORKFLOW), "--server", partid_server.url.split("//")[1],
           "--set", "Checkpoint.ckpt_name=partid_random_sd15.safetensors", "--set", "Train.steps=2",
           "--set", "Train.resolution=128", "--set", "Train.save_every=1", "--set", "Train.warmup_steps=1",
           "--set", "Train.precision=fp32", "--set", f"Train.output_name={OUTPUT_NAME}",
           "--set", "Train.learning_rate=0.001", "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO.parent, capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    curves = list(out.rglob("partid_train_loss*.png"))
    assert len(curves) == 1
    width, height = struct.unpack(">II", curves[0].read_bytes()[16:24])
    assert width > 64 and height > 64

    saved = list(partid_server.root.rglob(f"{OUTPUT_NAME}.safetensors"))
    assert len(saved) == 1, f"adapter file not found under {partid_server.root}"
    trained = model_files.load_adapter(str(saved[0]), "ConsistentID")
    original = model_files.load_adapter(str(adapters.consistentid_bin("sd15")), "ConsistentID")
    assert trained.format.name == original.format.name
    changed = {}
    for group, tensors in original.groups.items():
        diffs = [(trained.groups[group][k].float() - v.float()).abs().max().item() for k, v in tensors.items()]
        changed[group] = max(diffs)
    # The workflow trains the official set: the regions the parser finds are fused into the captions and the
    # FacialEncoder learns through them (the random BiSeNet finds some on both photos at 128 px).
    assert changed["FacialEncoder"] > 0 and changed["image_proj"] > 0 and changed["adapter_modules"] > 0
    REPORT.append(f"training workflow (FacialEncoder, ProjPlus, ID K/V, LoRA; fused regions): 2 steps at 128 px "
                  f"on the random SD1.5 through the runner in {seconds:.0f} s; "
                  f"max change per group {', '.join(f'{k} {v:.2e}' for k, v in changed.items())}")
