"""Tier D: PartID in ComfyUI's real frontend, in headless Chromium (walkthrough.cjs drives it).

One walkthrough per session: every UI workflow in workflows/ loads into the canvas (its
template thumbnail is taken, and the frontend's own graphToPrompt, as "Save (API)", must give its
API twin in workflows/api/); the parsing workflow (workflows/api/, through the frontend's API
loading), with two PartID Select Labels added, is queued; the PartID legends must show what the server sent; clicking legend labels must switch the
Select Labels toggles, and the second run's masks on the server must be made of exactly those labels.

Screenshots are kept in partid_out/tier_d_browser/ ($PARTID_ARTIFACTS_DIR). To refresh the README's
pictures and the template thumbnails:
    PARTID_SCREENSHOTS_DIR=docs/images PARTID_TEMPLATE_PREVIEWS_DIR=workflows python -m pytest tests/tier_d_browser
"""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import requests
from partid_rig import REPO, REPORT, get_json
from PIL import Image


HERE = Path(__file__).resolve().parent
PACK_NAME = "PartID"   # the custom_nodes folder name (tier_d_browser/conftest.py)
WORKFLOWS = REPO / "workflows"      # UI format: ComfyUI's template browser lists them
API_WORKFLOWS = REPO / "workflows" / "api"
# The parsing workflow plus what a user adds to pick labels: Select Labels on each label map, shown.
EXTRA_NODES = {
    "50": ("PartIDSelectLabels", "Pick body labels", {"label_map": ["31", 5]}),
    "51": ("MaskToImage", None, {"mask": ["50", 0]}),
    "52": ("PreviewImage", "Body labels mask", {"images": ["51", 0]}),
    "53": ("PartIDSelectLabels", "Pick face labels", {"label_map": ["3", 5]}),
    "54": ("MaskToImage", None, {"mask": ["53", 0]}),
    "55": ("PreviewImage", "Face labels mask", {"images": ["54", 0]}),
}
CLICKS = [("31", "50"), ("3", "53")]          # (parsing node, the Select Labels it feeds)


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.json"))


def as_load_spec(path: Path) -> dict:
    data = json.loads(path.read_text())
    key = "graph" if "nodes" in data and "links" in data else "api"
    return {"name": path.stem, key: data}


def walkthrough_workflow() -> dict:
    api = json.loads((API_WORKFLOWS / "partid_parsing_api.json").read_text())
    for node_id, (class_type, title, inputs) in EXTRA_NODES.items():
        api[node_id] = {"class_type": class_type, "inputs": inputs, **({"_meta": {"title": title}} if title else {})}
    return {"name": "partid_parsing_walkthrough", "api": api, "clicks": CLICKS, "focus_parse": ["31"], "focus_loaded": ["1", "2", "3", "53", "54", "55"],
            "focus_face": ["3"], "focus_toggled": ["31", "50"], "focus_result": ["50", "51", "52"],
            "first": ["3", "31", "53", "50", "54", "51", "55", "52"],
            "previews": ["52", "55"]}


@pytest.fixture(scope="module")
def walk(browser_server, browser_tools, tmp_path_factory):
    out = Path(os.environ.get("PARTID_ARTIFACTS_DIR", REPO / "partid_out" / "tier_d_browser"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    spec = {"url": browser_server.url, "chromium": browser_tools["chromium"], "out_dir": str(out),
            "playwright_dir": browser_tools["playwright_dir"], "timeout_ms": 60_000,
            "thumbnails": [as_load_spec(p) for p in workflow_files()], "walkthrough": walkthrough_workflow()}
    spec_file = tmp_path_factory.mktemp("walk") / "spec.json"
    spec_file.write_text(json.dumps(spec))
    proc = subprocess.run([browser_tools["node"], str(HERE / "walkthrough.cjs"), str(spec_file)],
                          capture_output=True, text=True, timeout=300)
    seen = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}
    (out / "walkthrough.json").write_text(json.dumps(seen, indent=1))
    assert proc.returncode == 0 and "fatal" not in seen, (seen.get("fatal"), proc.stderr[-3000:],
                                                         Path(browser_server.log_path).read_text()[-3000:])
    publish(out)
    return seen, out


def publish(out: Path):
    """Copy the screenshots / thumbnails where the documented env vars ask (the README, the template browser)."""
    docs = os.environ.get("PARTID_SCREENSHOTS_DIR")
    if docs:
        Path(docs).mkdir(parents=True, exist_ok=True)
        for png in out.glob("0*.png"):
            shutil.copy(png, Path(docs) / f"walkthrough_{png.name}")
    thumbs = os.environ.get("PARTID_TEMPLATE_PREVIEWS_DIR")
    if thumbs:
        for path in workflow_files():     # template cards are small: 700 px wide is plenty
            image = Image.open(out / f"{path.stem}.jpeg")
            image.resize((700, round(700 * image.height / image.width)), Image.LANCZOS).save(
                Path(thumbs) / f"{path.stem}.jpg", quality=85)


def history(server, prompt_id: str) -> dict:
    return get_json(server, f"/history/{prompt_id}")[prompt_id]["outputs"]


def panel(panels: list[dict], node_id: str) -> dict:
    (found,) = [p for p in panels if p["node"] == node_id]
    return found


def rgb(hex_colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)))


def test_extension_loads_without_errors(walk):
    seen, _ = walk
    ours = [s for s in seen["extension_scripts"] if s["url"].lower().endswith("/partid/partid.js")]
    assert ours and all(s["status"] in (200, 304) for s in ours), seen["extension_scripts"]
    assert seen["registered"] == 1
    ours = [e for e in seen["console_errors"] + [{"text": t} for t in seen["page_errors"]]
            if "partid" in json.dumps(e).lower()]
    assert not ours, ours
    REPORT.append(f"tier D: browser console errors (none from PartID): {len(seen['console_errors'])}")


def test_panels_show_before_and_after_a_run(walk, browser_server):
    seen, _ = walk
    before = {p["node"]: p for p in seen["panels_before_run"]}
    assert {"3", "31", "50", "53"} <= set(before) and all("Run" in p["text"] for p in before.values())
    # the nodes in view show their panel, tall enough for its line of text
    assert before["3"]["visible"] and before["53"]["visible"] and before["3"]["height"] >= 12
    assert not any(p["labels"] for p in before.values()), "no legend before the parser has run"
    assert seen["first_run"]["ok"], seen["first_run"]
    outputs = history(browser_server, seen["first_run"]["prompt_id"])
    for parse_id in ("3", "31"):
        sent = outputs[parse_id]["partid_legend"]
        shown = panel(seen["panels_after_run"], parse_id)["labels"]
        assert [(s["id"], rgb(s["color"])) for s in sent] == [(c["id"], c["colour"]) for c in shown]
        assert outputs[parse_id]["images"], "the parsing node sends its preview"
        # the Select Labels below shows the same labels, from its own run
        select_id = dict(CLICKS)[parse_id]
        assert [c["id"] for c in panel(seen["panels_after_run"], select_id)["labels"]] == [s["id"] for s in sent]


def test_legend_clicks_switch_select_labels_and_the_run_uses_them(walk, browser_server):
    seen, _ = walk
    for click in seen["clicked"]:
        assert click["before"] is False and click["after"] is True, click
    assert seen["select_legend_click"]["after_first"] is False and seen["select_legend_click"]["after_second"] is True
    assert seen["second_run"]["ok"], seen["second_run"]
    outputs = history(browser_server, seen["second_run"]["prompt_id"])
    for click, preview_id in zip(seen["clicked"], ("52", "55")):
        legend = outputs[click["select"]]["partid_legend"]
        assert [e["id"] for e in legend if e["on"]] == [click["id"]]
        (img,) = outputs[preview_id]["images"]
        png = requests.get(f"{browser_server.url}/view", params=img, timeout=30).content
        mask = np.asarray(Image.open(io.BytesIO(png)).convert("L")).astype(np.float32) / 255.0
        share = next(e["share"] for e in legend if e["on"])
        assert abs(mask.mean() - share) < 1e-3, (click, mask.mean(), share)   # exactly the clicked label's pixels
        on = [c["id"] for c in panel(seen["panels_after_second_run"], click["select"])["labels"] if c["on"]]
        assert on == [click["id"]]
    assert all(p["imgs"] >= 1 and p["w"] > 0 for p in seen["preview_images"]), seen["preview_images"]


def test_screenshots_are_kept(walk):
    seen, out = walk
    names = ["01_graph_loaded", "02_legend_after_run", "02b_face_legend_after_run", "03_labels_toggled",
             "04_finished_run"]
    for name in names:
        image = np.asarray(Image.open(out / f"{name}.png").convert("RGB")).astype(np.float32)
        assert image.shape[0] > 400 and image.std() > 10, name     # a drawn canvas, not a blank page
    for path in workflow_files():
        assert Image.open(out / f"{path.stem}.jpeg").format == "JPEG"
    REPORT.append(f"tier D: screenshots in {out}")


def test_template_browser_serves_every_workflow_with_its_thumbnail(browser_server):
    listed = get_json(browser_server, "/api/workflow_templates")
    names = sorted(p.stem for p in workflow_files())
    assert sorted(listed.get(PACK_NAME, [])) == names
    for name in names:
        # the frontend asks for `<name>.jpg` beside the workflow (useTemplateWorkflows, mediaSubtype "jpg")
        resp = requests.get(f"{browser_server.url}/api/workflow_templates/{PACK_NAME}/{name}.jpg", timeout=30)
        assert resp.status_code == 200, f"workflows/{name}.jpg is missing: regenerate " \
                                        "with PARTID_TEMPLATE_PREVIEWS_DIR=workflows (module docstring)"
        assert resp.headers["Content-Type"] == "image/jpeg"



# The frontend's prompt and the API twin must be the same prompt. Equivalence, decided for 1.27.10:
# - node ids and class_type must match exactly; `_meta` (titles) is not compared, the server ignores it.
#   The frontend leaves out virtual nodes (our Note), muted and bypassed nodes: a twin must not have them.
# - inputs are compared strictly, name by name: an input the frontend sends and the twin omits is a
#   difference even when its value is the node's default, because the twin is what "Save (API)" writes
#   from this canvas (the frontend sends every widget, optional ones included), and vice versa.
# - links: [node id as a string, output slot], as the frontend writes them.
# - the frontend wraps a list-valued widget as {"__value__": [...]} (the server unwraps it): unwrapped here.
# - values must have the same JSON type (true is not 1) and be equal (1.0 == 1: JSON has one number type).
ABSENT = "<absent>"


def same_value(got, want) -> bool:
    if isinstance(got, dict) and set(got) == {"__value__"}:
        got = got["__value__"]
    if isinstance(got, bool) or isinstance(want, bool) or isinstance(got, str) or isinstance(want, str):
        return type(got) is type(want) and got == want
    return got == want


def prompt_differences(frontend: dict, twin: dict) -> list[str]:
    """Every way the frontend's prompt differs from the API twin: node ids, class_type, each input."""
    diffs = [f"node {i}: only in the frontend's prompt ({frontend[i]['class_type']})" for i in frontend.keys() - twin]
    diffs += [f"node {i}: only in the API twin ({twin[i]['class_type']})" for i in twin.keys() - frontend]
    for node_id in sorted(frontend.keys() & twin.keys(), key=int):
        ours, theirs = frontend[node_id], twin[node_id]
        if ours["class_type"] != theirs["class_type"]:
            diffs.append(f"node {node_id}: class_type {ours['class_type']!r} in the frontend, "
                         f"{theirs['class_type']!r} in the API twin")
            continue
        for name in sorted(ours["inputs"].keys() | theirs["inputs"].keys()):
            got, want = ours["inputs"].get(name, ABSENT), theirs["inputs"].get(name, ABSENT)
            if not same_value(got, want):
                diffs.append(f"node {node_id} ({ours['class_type']}) input {name!r}: "
                             f"frontend {json.dumps(got)}, API twin {json.dumps(want)}")
    return diffs


def test_every_ui_workflow_makes_its_api_twin_in_the_frontend(walk):
    """The canvas (not our converter) reads each UI workflow: its graphToPrompt must give the API twin."""
    seen, _ = walk
    failures, inputs = {}, 0
    for path in workflow_files():
        twin = json.loads((API_WORKFLOWS / f"{path.stem}_api.json").read_text())
        frontend = seen["api_prompts"][path.stem]
        inputs += sum(len(node["inputs"]) for node in frontend.values())
        diffs = prompt_differences(frontend, twin)
        if diffs:
            failures[f"workflows/{path.name} vs workflows/api/{path.stem}_api.json"] = diffs
    assert not failures, "the frontend's prompt differs from the API twin:\n" + json.dumps(failures, indent=1)
    REPORT.append(f"tier D: {len(workflow_files())} UI workflows through the frontend's graphToPrompt = their API "
                  f"twins ({inputs} inputs)")
