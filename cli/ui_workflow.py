"""API-format <-> UI-format ComfyUI workflows, driven by a server's ``/object_info``.

The UI format is what the browser saves and what the template browser loads (nodes with positions,
sizes, typed input/output slots, ``widgets_values``; links as
``[id, from_node, from_slot, to_node, to_slot, type]``). The API format is what ``POST /prompt``
takes (the runner's input). ``api_to_ui`` lays an API workflow out left to right by dependency
depth; ``ui_to_api`` is what the frontend's "Save (API)" does, so a UI file can be checked against
its API twin. Which inputs are widgets, and in which order their values are stored, follows the
ComfyUI frontend: every input of type INT/FLOAT/STRING/BOOLEAN/COMBO (or a list of choices) unless
``forceInput``, in ``input_order`` (required, then optional); an input with
``control_after_generate`` (and, as the frontend does it, an INT named seed / noise_seed) stores one
more value after its own ("fixed"), and an image-upload combo
one more ("image").

    python -m <repo_dir>.cli.ui_workflow API.json OUT.json (--server HOST:PORT | --object-info FILE) [--note TEXT]

Pure JSON; no torch, no comfy.
"""
import argparse
import json
import sys
import urllib.request
from pathlib import Path

from .workflow import is_link, node_sort_key

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}  # not in /object_info, nothing to run
COLUMN_WIDTH, NODE_WIDTH, ROW_HEIGHT, TITLE_HEIGHT, GAP = 420, 360, 24, 30, 40


def ordered_inputs(node_info: dict) -> list:
    """[(name, spec, optional)] in the frontend's order (hidden inputs left out)."""
    spec = node_info.get("input", {})
    order = node_info.get("input_order", {})
    out = []
    for group in ("required", "optional"):
        entries = spec.get(group) or {}
        for name in order.get(group) or list(entries):
            if name in entries:
                out.append((name, entries[name], group == "optional"))
    return out


def input_type(spec) -> str:
    kind = spec[0]
    return "COMBO" if isinstance(kind, list) else str(kind)


def input_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def combo_choices(spec):
    """The allowed values of a combo input, or None for other inputs."""
    if isinstance(spec[0], list):
        return spec[0]
    if spec[0] == "COMBO":
        return input_options(spec).get("options", [])
    return None


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput")


SEED_NAMES = ("seed", "noise_seed")   # the frontend gives these a control widget even when not declared


def extra_widget_values(name: str, spec) -> list:
    """Values the frontend stores after a widget's own value."""
    options = input_options(spec)
    if options.get("control_after_generate") or (name in SEED_NAMES and input_type(spec) == "INT"):
        return ["fixed"]
    if options.get("image_upload"):
        return ["image"]
    return []


def types_compatible(output_type: str, input_type_: str) -> bool:
    """The frontend's rule: equal, a wildcard, or one of a comma-separated list (MultiType inputs)."""
    if "*" in (output_type, input_type_):
        return True
    accepted = {t.strip() for t in input_type_.split(",")}
    return bool(accepted & {t.strip() for t in output_type.split(",")})


def _depths(api: dict) -> dict:
    depth = {}

    def visit(nid, seen=()):
        if nid in depth:
            return depth[nid]
        if nid in seen:
            raise ValueError(f"the workflow has a cycle through node {nid}")
        ups = [str(v[0]) for v in api[nid]["inputs"].values() if is_link(v)]
        depth[nid] = 1 + max((visit(u, seen + (nid,)) for u in ups), default=-1)
        return depth[nid]

    for nid in api:
        visit(nid)
    return depth


IMAGE_PREVIEW_HEIGHT = 240  # LoadImage shows the picture under its widgets
NOTE_SIZE = (400, 220)


def _node_height(n_rows: int, multiline: int, preview: bool = False) -> int:
    return TITLE_HEIGHT + ROW_HEIGHT * n_rows + 90 * multiline + 10 + (IMAGE_PREVIEW_HEIGHT if preview else 0)


def api_to_ui(api: dict, object_info: dict, note: str | None = None) -> dict:
    """A UI-format workflow with the same nodes, inputs and links as `api` (node ids kept), plus an
    optional Note node (frontend-only: not part of the API graph) above the first column."""
    depth = _depths(api)
    order = sorted(api, key=lambda nid: (depth[nid], node_sort_key(nid)))
    links, nodes, next_y = [], {}, {}
    outgoing = {}
    for nid in order:
        node = api[nid]
        kind = node["class_type"]
        if kind not in object_info:
            raise ValueError(f"node {nid}: {kind} is not served by this ComfyUI")
        info = object_info[kind]
        ui_inputs, widgets, multiline = [], [], 0
        for name, spec, _optional in ordered_inputs(info):
            value = node["inputs"].get(name)
            if is_widget(spec):
                if is_link(value):  # a widget fed by a link: socket with "widget", default kept as its value
                    ui_inputs.append({"name": name, "type": input_type(spec), "widget": {"name": name}, "link": None,
                                      "_from": value})
                    value = input_options(spec).get("default")
                elif value is None:
                    value = input_options(spec).get("default")
                widgets += [value, *extra_widget_values(name, spec)]
                multiline += bool(input_options(spec).get("multiline"))
            else:
                ui_inputs.append({"name": name, "type": input_type(spec), "link": None,
                                  **({"_from": value} if is_link(value) else {})})
        unknown = set(node["inputs"]) - {name for name, _s, _o in ordered_inputs(info)}
        if unknown:
            raise ValueError(f"node {nid} ({kind}) has inputs this ComfyUI does not know: {sorted(unknown)}")
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i}
                   for i, (t, n) in enumerate(zip(info["output"], info.get("output_name") or info["output"]))]
        rows = max(len(ui_inputs), len(outputs)) + len(widgets)
        height = _node_height(rows, multiline, kind == "LoadImage")
        col = depth[nid]
        y = next_y.get(col, 0)
        next_y[col] = y + height + GAP
        title = (node.get("_meta") or {}).get("title")
        nodes[nid] = {"id": int(nid), "type": kind, "pos": [col * COLUMN_WIDTH, y], "size": [NODE_WIDTH, height],
                      "flags": {}, "order": len(nodes), "mode": 0, "inputs": ui_inputs, "outputs": outputs,
                      "properties": {"Node name for S&R": kind}, "widgets_values": widgets}
        if title and title != info.get("display_name", kind):
            nodes[nid]["title"] = title
        outgoing[nid] = outputs
    for nid in order:
        for slot, entry in enumerate(nodes[nid]["inputs"]):
            src = entry.pop("_from", None)
            if src is None:
                continue
            src_id, src_slot = str(src[0]), int(src[1])
            if src_id not in nodes or src_slot >= len(outgoing[src_id]):
                raise ValueError(f"node {nid} input {entry['name']}: no output {src_slot} on node {src_id}")
            link_id = len(links) + 1
            out_type = outgoing[src_id][src_slot]["type"]
            links.append([link_id, int(src_id), src_slot, int(nid), slot, out_type])
            entry["link"] = link_id
            outgoing[src_id][src_slot]["links"].append(link_id)
    ui_nodes = [nodes[nid] for nid in order]
    last_id = max(int(n) for n in api)
    if note:
        last_id += 1
        ui_nodes.append({"id": last_id, "type": "Note", "pos": [0, -NOTE_SIZE[1] - GAP], "size": list(NOTE_SIZE),
                         "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [],
                         "title": "About this workflow", "properties": {"text": ""}, "widgets_values": [note],
                         "color": "#432", "bgcolor": "#653"})
    return {"last_node_id": last_id, "last_link_id": len(links),
            "nodes": ui_nodes, "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 0.8, "offset": [40, 40]}}, "version": 0.4}


def ui_to_api(ui: dict, object_info: dict) -> dict:
    """What the frontend's Save (API) produces from `ui` (frontend-only nodes and muted nodes left out)."""
    links = {entry[0]: entry for entry in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) in (2, 4):
            continue
        info = object_info[node["type"]]
        by_name = {i["name"]: i for i in node.get("inputs", [])}
        values = list(node.get("widgets_values") or [])
        inputs = {}
        for name, spec, _optional in ordered_inputs(info):
            if is_widget(spec):
                value = values.pop(0) if values else None
                for _ in extra_widget_values(name, spec):
                    values.pop(0) if values else None
                inputs[name] = value
            link_id = (by_name.get(name) or {}).get("link")
            if link_id is not None:
                _lid, src, src_slot, _dst, _dst_slot, _type = links[link_id]
                inputs[name] = [str(src), int(src_slot)]
        entry = {"class_type": node["type"], "inputs": inputs}
        if node.get("title"):
            entry["_meta"] = {"title": node["title"]}
        api[str(node["id"])] = entry
    return api


def fetch_object_info(server: str) -> dict:
    with urllib.request.urlopen(f"http://{server}/object_info", timeout=60) as resp:
        return json.loads(resp.read())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write the UI-format twin of an API-format workflow.")
    parser.add_argument("api", help="API-format workflow (input)")
    parser.add_argument("out", help="UI-format workflow (output)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--server", help="HOST:PORT of a running ComfyUI with PartID loaded")
    source.add_argument("--object-info", help="a saved /object_info JSON")
    parser.add_argument("--note", help="text of a Note node shown above the graph (default: the note of an "
                                       "existing OUT file)")
    args = parser.parse_args(argv)
    info = (fetch_object_info(args.server) if args.server
            else json.loads(Path(args.object_info).read_text(encoding="utf-8")))
    note = args.note
    if note is None and Path(args.out).is_file():  # regenerating: keep the twin's note
        old = json.loads(Path(args.out).read_text(encoding="utf-8"))
        note = next((n["widgets_values"][0] for n in old.get("nodes", []) if n.get("type") == "Note"), None)
    ui = api_to_ui(json.loads(Path(args.api).read_text(encoding="utf-8")), info, note)
    Path(args.out).write_text(json.dumps(ui, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
