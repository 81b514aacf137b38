"""The SDXL example workflows end to end (issues 4 and 5): real photos uploaded by the headless runner,
POST /prompt on one real ComfyUI server session with the random full-size SDXL base (official single-file
layout), ConsistentID SDXL, Visual Persona with DINOv2 ViT-g/14, CLIP-ViT-H, buffalo_l, BiSeNet and the
SCHP ATR parser; 64x64 latents, 2 steps, one server session for all four workflows.

Random weights cannot make a face or a body, so what is checked is that every workflow, unchanged but
for size, steps and the face detector's threshold, validates, runs every node and saves its image; the
run times and the server's peak memory go to the report.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest
from fixtures_builders.photos import astronaut, group_photo
from partid_rig import REPO, REPORT
from PIL import Image

API_DIR = REPO / "workflows" / "api"
SMALL = ["--set", "Latent.width=64", "--set", "Latent.height=64", "--set", "Sampler.steps=2"]
# Random-weight detector: a low threshold, and no failure if it still finds nothing.
FACE = ["--set", "Face analysis.det_thresh=0.2", "--set", "Face analysis.on_no_face=bypass"]
CASES = {
    "consistentid_sdxl": (("astronaut",), FACE),
    "visual_persona_sdxl": (("astronaut",), []),
    "face_and_body_sdxl": (("astronaut",), FACE),
    "two_people_sdxl": (("astronaut", "insightface-t1"), []),
}
PHOTOS = {"astronaut": astronaut, "insightface-t1": group_photo}


@pytest.mark.parametrize("name", list(CASES))
def test_sdxl_workflow_runs_on_cpu(sdxl_heavy, tmp_path, name):
    photos, extra = CASES[name]
    images = []
    for photo in photos:
        path = tmp_path / f"{photo}.png"
        Image.fromarray(PHOTOS[photo]()).save(path)
        images += ["--image", str(path)]
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", REPO.name, "run", str(API_DIR / f"{name}_api.json"),
           "--server", sdxl_heavy.url.split("//")[1], *images, *SMALL, *extra, "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO.parent, capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    pngs = list((out / "PartID").glob(f"{name}_*.png"))   # the Save node's image (previews are temp files)
    assert len(pngs) == 1
    assert struct.unpack(">II", pngs[0].read_bytes()[16:24]) == (64, 64)
    REPORT.append(f"{name}: {' + '.join(photos)} through the runner on the SDXL server in {seconds:.0f} s "
                  "(64x64, 2 steps, CPU)")


@pytest.mark.skipif(os.environ.get("PARTID_FULL_SDXL") != "1",
                    reason="VP training on the full-size SDXL server: set PARTID_FULL_SDXL=1 (server peak 20.4 GiB)")
def test_visual_persona_training_workflow_runs_on_cpu(sdxl_heavy, tmp_path):
    """workflows/api/visual_persona_train_api.json unchanged but for 1 step at 64 px and training the ID key/value
    only: the real photos in the server's input/training_images (two identities), SCHP ATR parts, DINOv2 ViT-g/14
    part tokens, the full-size SDXL (fp8 weights, as this server stores them) with gradient checkpointing; the
    saved file reloads with the trained group changed and the decoder kept. (The workflow's decoder + id_kv is
    850 M fp32 parameters with AdamW: 13.6 GB, which with DINOv2-g and SDXL does not fit this 24 GB machine.)
    Opt-in: the server peaks at 20.4 GiB, which fits a 24 GB machine alone (a standalone tier-C run: 96-128 s) but
    not beside the ~7 GB a whole-suite pytest process holds by then (measured: the CI run thrashed)."""
    from fixtures_builders import visual_persona

    from partid.models import model_files

    folder = sdxl_heavy.root / "input" / "training_images"
    for person, photo in (("astronaut", astronaut()), ("group", group_photo()[:300, :300])):
        (folder / person).mkdir(parents=True)
        Image.fromarray(photo).save(folder / person / "photo.png")
        (folder / person / "photo.txt").write_text(f"a photo of the {person}")
    out = tmp_path / "out"
    name = "partid_ci_vp_trained"
    cmd = [sys.executable, "-m", REPO.name, "run", str(API_DIR / "visual_persona_train_api.json"),
           "--server", sdxl_heavy.url.split("//")[1], "--set", "Train.steps=1", "--set", "Train.resolution=64",
           "--set", "Train.warmup_steps=0", "--set", "Train.save_every=1", "--set", "Train.learning_rate=0.001",
           "--set", "Train.train=id_kv", "--set", f"Train.output_name={name}", "--out", str(out)]
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO.parent, capture_output=True, text=True, timeout=1500)
    seconds = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr[-6000:]
    assert len(list(out.rglob("partid_train_loss*.png"))) == 1
    saved = list(sdxl_heavy.root.rglob(f"{name}.safetensors"))
    assert len(saved) == 1
    trained = model_files.load_adapter(str(saved[0]), "Visual Persona")
    original = model_files.load_adapter(str(visual_persona.visual_persona_bin()), "Visual Persona")
    changed = {g: max(float((trained.groups[g][k].float() - v.float()).abs().max()) for k, v in vals.items())
               for g, vals in original.groups.items() if g in ("image_proj", "ip_adapter")}
    assert changed["image_proj"] == 0 and changed["ip_adapter"] > 0
    REPORT.append(f"visual_persona_train (id_kv): 1 step at 64 px on the SDXL server (two identities, real photos) in "
                  f"{seconds:.0f} s; max change {', '.join(f'{k} {v:.2e}' for k, v in changed.items())}")
