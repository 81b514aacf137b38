"""PartID in a real headless ComfyUI server: listed by /object_info, run through /prompt and the runner."""
from __future__ import annotations

import json
import struct
import subprocess
import sys

from partid_rig import REPO, REPORT, get_json, post_json

# Node id -> (output types, required input names): the contract workflows are written against.
EXPECTED = {
    "PartIDFaceParserLoader": (["PARTID_FACE_PARSER"], {"parser"}),
    "PartIDBodyParserLoader": (["PARTID_BODY_PARSER"], {"parser"}),
    "PartIDFaceAnalysisLoader": (["PARTID_FACE_ANALYZER"], {"pack", "provider"}),
    "PartIDConsistentIDLoader": (["PARTID_CONSISTENTID"], {"adapter"}),
    "PartIDVisualPersonaLoader": (["PARTID_VISUAL_PERSONA"], {"adapter"}),
    "PartIDDINOv2Loader": (["PARTID_DINOV2"], {"dinov2"}),
    "PartIDModelInfo": (["STRING"], {"model"}),
}
WORKFLOW = REPO / "workflows" / "api" / "partid_model_check_api.json"


def test_object_info_lists_every_partid_node(partid_server):
    info = get_json(partid_server, "/object_info")
    partid = sorted(k for k in info if k.startswith("PartID"))
    REPORT.append(f"tier C server {partid_server.url} listed {len(partid)} PartID nodes: {', '.join(partid)}")
    assert set(EXPECTED) <= set(partid)
    for node_id, (outputs, required) in EXPECTED.items():
        assert info[node_id]["output"] == outputs, node_id
        assert required <= set(info[node_id]["input"]["required"]), node_id
        assert info[node_id]["category"].startswith("PartID")
    # The catalog names are offered even for files not yet downloaded, so shared workflows validate.
    assert "dinov2_vitg14" in info["PartIDDINOv2Loader"]["input"]["required"]["dinov2"][1]["options"]


def test_example_workflow_runs_through_the_headless_runner(partid_server, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", REPO.name, "run", str(WORKFLOW), "--server", partid_server.url.split("//")[1],
           "--set", "Checkpoint.ckpt_name=partid_random_sd15.safetensors", "--set", "Latent.width=64",
           "--set", "Latent.height=64", "--set", "Sampler.steps=1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    pngs = list(out.rglob("*.png"))
    assert len(pngs) == 1
    assert struct.unpack(">II", pngs[0].read_bytes()[16:24]) == (64, 64)
    texts = [t for ts in json.loads((out / "text_outputs.json").read_text()).values() for t in ts]
    assert any("ConsistentID SD1.5" in t for t in texts) and any("bisenet" in t for t in texts)
    assert any("buffalo_l" in t for t in texts)


def test_malformed_prompt_gets_node_errors_and_the_server_keeps_serving(partid_server):
    bad = json.loads(WORKFLOW.read_text())
    # Every output must be invalid for a 400 (ComfyUI queues the valid outputs of a partly broken prompt).
    bad["1"]["inputs"]["ckpt_name"] = "missing.safetensors"
    for node_id, name in (("10", "parser"), ("12", "adapter"), ("14", "pack")):
        del bad[node_id]["inputs"][name]
    status, body = post_json(partid_server, "/prompt", {"prompt": bad})
    assert status == 400, json.dumps(body)[:3000]
    errors = body["node_errors"]
    print("node_errors:", json.dumps(errors)[:2000])
    assert set(errors) >= {"1", "10", "12", "14"}
    assert errors["12"]["class_type"] == "PartIDConsistentIDLoader"
    assert any(e["type"] == "value_not_in_list" for e in errors["1"]["errors"])
    assert all(e["type"] == "required_input_missing" for n in ("10", "12", "14") for e in errors[n]["errors"])
    stats = get_json(partid_server, "/system_stats")
    assert "system" in stats
    assert "PartIDModelInfo" in get_json(partid_server, "/object_info/PartIDModelInfo")


def test_bad_value_fails_at_execution_with_node_input_and_fix(partid_server, tmp_path):
    """ComfyUI 0.3.64 does not check V3 combo values before running, so the node itself must say what is wrong."""
    wf = {"1": {"class_type": "PartIDFaceAnalysisLoader", "inputs": {"pack": "buffalo_s", "provider": "auto"}},
          "2": {"class_type": "PartIDModelInfo", "inputs": {"model": ["1", 0]}}}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(wf))
    proc = subprocess.run([sys.executable, "-m", REPO.name, "run", str(path), "--server",
                           partid_server.url.split("//")[1], "--out", str(tmp_path / "out")],
                          cwd=REPO.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    for needle in ("PartID Face Analysis Loader", "'pack'", "buffalo_s", "Fix:"):
        assert needle in proc.stderr
