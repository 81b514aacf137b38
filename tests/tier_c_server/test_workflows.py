"""Every shipped workflow against a live ComfyUI: workflows/api/*_api.json (what the runner posts) and
workflows/*.json (what the template browser loads), checked against /object_info of a real
server that has every model file the workflows name.

- API: every node type is served; every input name is known and every required one given; every link
  points at an existing output whose type the input accepts; every widget value is a valid combo choice,
  in its INT/FLOAT range, or of the right kind.
- UI: the same for node slots, link records ([id, from, slot, to, slot, type] agree with both ends) and
  widgets_values (as many as the frontend stores, in its order); and the UI twin, read back as the
  frontend's Save (API) does, is the same graph as its API twin (same nodes, inputs, links).
- Template browser: ComfyUI lists exactly the UI workflows for PartID, serves them, and no folder it
  scans for templates holds an API-format file (it would be listed but cannot load on the canvas).
"""
from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path

import pytest
from partid_rig import COMFYUI, REPO, REPORT, get_json

from partid.cli import ui_workflow as uw

API_DIR, UI_DIR = REPO / "workflows" / "api", REPO / "workflows"
API_FILES = sorted(API_DIR.glob("*_api.json"))
UI_FILES = sorted(UI_DIR.glob("*.json"))
INPUT_IMAGES = ("reference.png", "person_a.png", "person_b.png")   # what the workflows' LoadImage nodes name


def ui_twin(api_path: Path) -> Path:
    return UI_DIR / (api_path.name.removesuffix("_api.json") + ".json")


@pytest.fixture(scope="module")
def object_info(partid_sdxl_server):
    from fixtures_builders.photos import astronaut
    from PIL import Image

    for name in INPUT_IMAGES:   # so LoadImage's file choices hold the names the workflows use
        Image.fromarray(astronaut()).save(partid_sdxl_server.root / "input" / name)
    return get_json(partid_sdxl_server, "/object_info")


def widget_problems(where: str, name: str, spec, value) -> list[str]:
    kind, options = uw.input_type(spec), uw.input_options(spec)
    choices = uw.combo_choices(spec)
    if choices is not None:
        return [] if value in choices else [f"{where}.{name}: {value!r} is not one of {choices[:8]}"]
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}.{name}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}.{name}: {value!r} is not a string"]
    if kind in ("INT", "FLOAT"):
        wrong_kind = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_kind or (kind == "INT" and not isinstance(value, int)):
            return [f"{where}.{name}: {value!r} is not {kind}"]
        lo, hi = options.get("min", float("-inf")), options.get("max", float("inf"))
        return [] if lo <= value <= hi else [f"{where}.{name}: {value} outside [{lo}, {hi}]"]
    return []


def api_problems(api: dict, info: dict) -> list[str]:
    problems = []
    for nid, node in api.items():
        where = f"node {nid} ({node['class_type']})"
        if node["class_type"] not in info:
            problems.append(f"{where}: not served by ComfyUI")
            continue
        spec = {name: (s, optional) for name, s, optional in uw.ordered_inputs(info[node["class_type"]])}
        for name in set(node["inputs"]) - set(spec):
            problems.append(f"{where}: unknown input {name!r}")
        for name, (s, optional) in spec.items():
            value = node["inputs"].get(name)
            if value is None:
                if not optional:
                    problems.append(f"{where}: required input {name!r} missing")
            elif uw.is_link(value):
                src = api.get(str(value[0]))
                if src is None or src["class_type"] not in info or value[1] >= len(info[src["class_type"]]["output"]):
                    problems.append(f"{where}.{name}: link {value} has no such output")
                elif not uw.types_compatible(info[src["class_type"]]["output"][value[1]], uw.input_type(s)):
                    problems.append(f"{where}.{name}: {info[src['class_type']]['output'][value[1]]} "
                                    f"cannot feed {uw.input_type(s)}")
            elif not uw.is_widget(s):
                problems.append(f"{where}.{name}: a {uw.input_type(s)} input needs a link, got {value!r}")
            else:
                problems += widget_problems(where, name, s, value)
    return problems


def ui_problems(ui: dict, info: dict) -> list[str]:
    problems = []
    nodes = {n["id"]: n for n in ui["nodes"]}
    links = {entry[0]: entry for entry in ui["links"]}
    for node in ui["nodes"]:
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in uw.FRONTEND_ONLY:
            continue
        if node["type"] not in info:
            problems.append(f"{where}: not served by ComfyUI")
            continue
        spec = {name: s for name, s, _o in uw.ordered_inputs(info[node["type"]])}
        for i, slot in enumerate(node.get("inputs", [])):
            s = spec.get(slot["name"])
            if s is None or uw.input_type(s) != slot["type"]:
                problems.append(f"{where}: input slot {slot['name']}:{slot['type']} does not match {s}")
            if slot.get("link") is not None:
                link = links.get(slot["link"])
                if link is None or link[3] != node["id"] or link[4] != i:
                    problems.append(f"{where}.{slot['name']}: link {slot['link']} does not end here")
        expected = sum(1 + len(uw.extra_widget_values(n, s)) for n, s in spec.items() if uw.is_widget(s))
        if len(node.get("widgets_values", [])) != expected:
            problems.append(f"{where}: {len(node.get('widgets_values', []))} widget values, "
                            f"the frontend stores {expected}")
        outs = info[node["type"]]["output"]
        if [o["type"] for o in node.get("outputs", [])] != outs:
            problems.append(f"{where}: output slots {[o['type'] for o in node.get('outputs', [])]} != {outs}")
        for o in node.get("outputs", []):
            for lid in o.get("links") or []:
                if lid not in links or links[lid][1] != node["id"]:
                    problems.append(f"{where}: output link {lid} does not start here")
    for lid, src, src_slot, dst, dst_slot, kind in ui["links"]:
        if src not in nodes or dst not in nodes:
            problems.append(f"link {lid}: missing end node")
            continue
        out_type = nodes[src]["outputs"][src_slot]["type"]
        in_slot = nodes[dst]["inputs"][dst_slot]
        if kind != out_type or not uw.types_compatible(out_type, in_slot["type"]) or in_slot.get("link") != lid:
            problems.append(f"link {lid}: {out_type} ({kind}) -> {in_slot['name']}:{in_slot['type']} is inconsistent")
    problems += api_problems(uw.ui_to_api(ui, info), info)   # values, ranges, combos, required inputs
    return problems


def comparable(api: dict, info: dict) -> dict:
    """Nodes with their inputs and titles (a missing title is the node's display name)."""
    out = {}
    for nid, node in api.items():
        title = (node.get("_meta") or {}).get("title") or info[node["class_type"]].get("display_name")
        inputs = {k: ([str(v[0]), int(v[1])] if uw.is_link(v) else v) for k, v in node["inputs"].items()}
        out[str(nid)] = (node["class_type"], title, inputs)
    return out


def test_workflows_exist_in_both_formats():
    assert {p.name for p in API_DIR.glob("*_api.json")} >= {
        "consistentid_sd15_api.json", "consistentid_sdxl_api.json", "visual_persona_sdxl_api.json",
        "face_and_body_sdxl_api.json", "two_people_sdxl_api.json"}
    missing = [p.name for p in API_FILES if not ui_twin(p).is_file()]
    assert not missing, f"API workflows without a UI twin in workflows/: {missing}"
    orphans = {p.name for p in UI_FILES} - {ui_twin(p).name for p in API_FILES}
    assert not orphans, f"UI workflows without an API twin: {orphans}"


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_matches_object_info(object_info, path):
    problems = api_problems(json.loads(path.read_text()), object_info)
    assert not problems, "\n".join(problems)
    core = {k for k, v in object_info.items() if not v.get("python_module", "").startswith("custom_nodes")}
    kinds = {n["class_type"] for n in json.loads(path.read_text()).values()}
    assert all(k in core or k.startswith("PartID") for k in kinds), kinds - core


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_matches_object_info(object_info, path):
    ui = json.loads(path.read_text())
    assert ui.get("version") == 0.4 and all(len(n["pos"]) == 2 and len(n["size"]) == 2 for n in ui["nodes"])
    problems = ui_problems(ui, object_info)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_ui_twin_is_the_same_graph(object_info, path):
    ui = json.loads(ui_twin(path).read_text())
    api = json.loads(path.read_text())
    assert comparable(uw.ui_to_api(ui, object_info), object_info) == comparable(api, object_info)


def test_template_browser_lists_the_ui_workflows(object_info, partid_sdxl_server):
    # Which folder names ComfyUI scans, read from the running ComfyUI's own source.
    source = (Path(COMFYUI) / "app" / "custom_node_manager.py").read_text()
    scanned = re.search(r"example_workflow_folder_names = (\[[^\]]*\])", source).group(1)
    folders = json.loads(scanned.replace("'", '"'))
    assert "workflows" in folders      # our template folder (ComfyUI also scans example_workflows/ etc.)
    api_in_templates = [str(p.relative_to(REPO)) for f in folders for p in (REPO / f).glob("*.json")
                        if "nodes" not in json.loads(p.read_text())]
    assert not api_in_templates, (f"API-format files in folders ComfyUI lists as templates: {api_in_templates}; "
                                  "API workflows belong in workflows/api/")
    listed = get_json(partid_sdxl_server, "/workflow_templates").get("PartID")
    assert sorted(listed) == sorted(p.stem for p in UI_FILES)
    for name in listed:
        with urllib.request.urlopen(f"{partid_sdxl_server.url}/api/workflow_templates/PartID/{name}.json") as resp:
            assert "nodes" in json.loads(resp.read())
    REPORT.append(f"template browser lists {len(listed)} PartID workflows: {', '.join(sorted(listed))}")
