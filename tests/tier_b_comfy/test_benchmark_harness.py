"""benchmarks/run.py in CPU mode on the tiny models, in the real ComfyUI: every configuration is built
through PartID's apply functions and sampled, and the markdown, JSON and README block it writes are valid.

No timing is asserted (the tiny numbers mean nothing); what is checked is that each configuration really
patched the model it was timed on, and that the files describe this run.
"""
from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from partid_rig import COMFYUI, REPO

BENCH = REPO / "benchmarks"


@pytest.fixture(scope="module")
def bench_run(comfy):
    if str(BENCH) not in sys.path:
        sys.path.append(str(BENCH))        # run.py imports harness and bench_models as siblings
    spec = importlib.util.spec_from_file_location("partid_benchmark_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_cpu_run_writes_markdown_json_and_readme_block(bench_run, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n\nintro\n\n<!-- benchmark table -->\nold table\n<!-- /benchmark table -->\n\noutro\n")
    out = tmp_path / "out"
    result = bench_run.main(["--device", "cpu", "--tiny", "--out", str(out), "--readme", str(readme),
                             "--sizes", "64", "--batches", "1", "--steps", "2", "--repeats", "1",
                             "--scaling-sizes", "64", "--scaling-tokens", "4,256",
                             "--threads", "1"])   # 1 thread: far faster than 2 on a busy 2-core machine

    data = json.loads((out / "benchmark.json").read_text())
    version = (COMFYUI and open(f"{COMFYUI}/comfyui_version.py").read())
    assert f'"{data["machine"]["comfyui"]}"' in version
    assert data["machine"]["torch"] and data["machine"]["cpu"] and data["machine"]["device"] == "cpu"
    rows = {(r["base"], r["configuration"]): r for r in data["sampling"]}
    assert len(rows) == 9 and result["sampling"] == data["sampling"]
    for row in rows.values():
        assert math.isfinite(row["step_ms"]) and row["step_ms"] > 0 and row["peak_mib"] > 0
    assert rows[("sd15", "plain")]["ratio"] == 1.0
    # each configuration patched the model it was timed on (tiny SD1.5: 7 cross-attentions; tiny SDXL: 11)
    blocks = {"sd15": 7, "sdxl": 11}
    for (base, name), row in rows.items():
        if name == "plain":
            assert row["attn2_patches"] == 0 and row["weight_patches"] == 0
            continue
        assert row["attn2_patches"] == blocks[base], name
        lora = name.startswith(("ConsistentID", "both"))
        assert (row["weight_patches"] > 0) == lora, name
        assert row["identity_groups"] == (2 if name.startswith(("both", "two")) else 1), name
    assert rows[("sdxl", "Visual Persona")]["id_tokens"] == "1024"
    assert [r["id_tokens"] for r in data["scaling"]] == [0, 4, 256]

    markdown = (out / "benchmark.md").read_text()
    assert markdown.startswith("# PartID benchmark\n") and "tiny models" in markdown
    table = [line for line in markdown.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| configuration | base | size | batch |")
    assert all(line.count("|") == table[0].count("|") for line in table[:10])
    for base, name in rows:
        assert f"| {name} | {base} | 64 | 1 | 2 |" in markdown

    text = readme.read_text()
    assert text.startswith("# Title\n\nintro\n\n<!-- benchmark table -->\n") and text.endswith(
        "<!-- /benchmark table -->\n\noutro\n")
    assert "old table" not in text and "| configuration | base |" in text


def test_visual_persona_preprocess_stage_runs_on_the_nodes(bench_run, model_dirs):
    """The VP preprocessing stage (GPU-only in run.py: DINOv2-g on a CPU would not fit beside the UNet) on a
    tiny DINOv2 and a reduced decoder: it parses, encodes, reports its stages, and releases the encoders."""
    import harness
    import torch
    from fixtures_builders.photos import astronaut
    from fixtures_builders.random_weights import random_state
    from fixtures_builders.visual_persona import decoder_state

    from partid.models import formats, model_files
    from partid.models.layouts.dinov2 import DINOv2Config, dinov2_hub_layout
    from partid.models.layouts.visual_persona import DecoderConfig

    _, nodes, pack = harness.start_comfy("cpu")
    bm = sys.modules["bench_models"]
    dino = model_files.DINOv2Weights("hub", "tiny_dinov2.pth", 64, 2, 14, "mlp",
                                     state_dict=random_state(dinov2_hub_layout(DINOv2Config(64, 2, 2)), 3))
    dec = DecoderConfig(layers=1, heads=8, width=2048, encoder_width=64, mlp_ratio=0.25)
    adapter = model_files.AdapterWeights(formats.VISUAL_PERSONA_SDXL, "tiny_vp.bin",
                                         {"image_proj": decoder_state(dec, seed=1, dtype=torch.float32)})
    photo = torch.from_numpy(astronaut()).float()[None] / 255.0
    identity, stages, memory = bm.visual_persona_preprocess(nodes, pack, photo, adapter, dino, "cpu", 1)
    assert identity.groups == bm.VP_PARTS and identity.cond.shape == (1, 4 * 256, 2048)
    assert list(stages) == ["body parts (SegFormer-B2)", "Visual Persona encode (DINOv2-g + decoder)"]
    assert all(ms > 0 for ms in stages.values()) and memory == {}      # GPU memory figures: cuda only
    managed = pack(".nodes.managed")
    assert not managed.is_loaded(dino, "_partid_dinov2") and not managed.is_loaded(adapter, "_partid_vp_decoder")


def test_consistentid_preprocess_stage_runs_on_the_nodes(bench_run, comfy, model_dirs, sd15_clip_vae):
    """run.py's ConsistentID preprocessing on the tiny SD1.5 UNet: face analysis, regions, CLIP-H encode, text
    fusion and apply, each timed; the tokens it hands to the sampling rows are the nodes' outputs."""
    import harness
    import torch
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.photos import astronaut
    from fixtures_builders.random_weights import random_state

    from partid.models.layouts.consistentid import consistentid_layout

    _, nodes, pack = harness.start_comfy("cpu")
    bm = sys.modules["bench_models"]
    comfy.folder_paths.add_model_folder_path("clip_vision", str(link_clip_vision(Path(model_dirs)).parent))
    (clip_vision,) = nodes.CLIPVisionLoader().load_clip("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    base = bm.build_base("sd15", True, "cpu", pack)
    adapter = bm.consistentid_adapter(base, True, nodes, pack)
    adapter.groups["FacialEncoder"] = random_state(consistentid_layout("sd15")["FacialEncoder"], 2, torch.float32)
    photo = torch.from_numpy(astronaut()).float()[None] / 255.0
    embeds, states, stages = bm.consistentid_preprocess(nodes, pack, photo, clip_vision, base, adapter, "cpu", 1,
                                                        clip=sd15_clip_vae[0])
    assert list(stages) == ["face analysis (buffalo_l)", "face regions (BiSeNet @512)",
                            "ConsistentID encode (CLIP-H)", "text fusion (text encodes + FacialEncoder)",
                            "apply (ProjPlus ID tokens + patches)"]
    assert all(ms > 0 for ms in stages.values())
    assert embeds.shape == (1, 512) and states.states.shape == (1, 257, 1280)


def test_training_benchmark_writes_markdown_json_and_readme_block(bench_run, tmp_path):
    """benchmarks/training.py on the tiny UNet: all three trainers run, ratios are against ComfyUI's Train LoRA."""
    spec = importlib.util.spec_from_file_location("partid_benchmark_training", BENCH / "training.py")
    training = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(training)
    readme = tmp_path / "README.md"
    readme.write_text("# T\n<!-- training benchmark -->\nold\n<!-- /training benchmark -->\nend\n")
    result = training.main(["--tiny", "--repeats", "1", "--out", str(tmp_path / "out"), "--readme", str(readme),
                            "--threads", "1"])
    data = json.loads((tmp_path / "out" / "training.json").read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    assert [r["trainer"] for r in data["rows"]] == [training.PARTID, training.COMFY, training.OFFICIAL]
    # (An N-step minus 1-step time on tiny models is noise and may come out negative: only its form is checked.)
    assert all(math.isfinite(r["step_s"]) and len(r["step_s_all"]) == 1 for r in data["rows"])
    assert data["rows"][1]["ratio"] == 1.0 and data["machine"]["comfyui"] and data["machine"]["torch"]
    text = readme.read_text()
    assert "old" not in text and f"| sd15 | 64x64 | {training.COMFY} |" in text and text.endswith("end\n")
