"""Load and edit API-format ComfyUI workflows (``{node_id: {"class_type", "inputs"}}``).

Pure functions, no I/O besides reading the file: the runner applies
``--image``/``--prompt``/``--set`` through these before submitting.
A link in an API workflow is ``[source_node_id, output_slot]``.
"""
import json
import re
from pathlib import Path

# Conditioning is often routed through helper nodes (ControlNetApply, ConditioningCombine,
# ...) between the text encoder and the sampler; these are the inputs we follow upstream.
_CONDITIONING_INPUT = re.compile(r"^(positive|conditioning.*|cond.*)$")
_MAX_TRACE_DEPTH = 32


class WorkflowError(ValueError):
    """A problem with the workflow file or an edit request (runner exit code 2)."""


def load_workflow(path) -> dict:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise WorkflowError(f"cannot read workflow {path}: {e}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise WorkflowError(f"{path} is not valid JSON: {e}") from e
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"{path} is a UI-format workflow (it has 'nodes' and 'links'); the runner needs the "
            "API format. In ComfyUI, export it with Workflow > Export (API) / \"Save (API)\".")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]  # accept a saved /prompt request body too
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WorkflowError(f"{path} is not an API-format workflow "
                            "({node_id: {\"class_type\": ..., \"inputs\": {...}}})")
    for node in data.values():
        node.setdefault("inputs", {})
    return data


def is_link(value) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and isinstance(value[0], (str, int)) and isinstance(value[1], int))


def node_sort_key(node_id):
    """Numeric-aware order: "2" < "10", and subgraph ids like "5:3" sort after "5"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in str(node_id).split(":")]


def title_of(node: dict) -> str:
    return str((node.get("_meta") or {}).get("title", ""))


def describe(workflow: dict, node_id) -> str:
    node = workflow.get(str(node_id)) or {}
    title = title_of(node)
    kind = node.get("class_type", "?")
    return f"{node_id} ({kind}{', ' + repr(title) if title and title != kind else ''})"


# --image ---------------------------------------------------------------------

def load_image_nodes(workflow: dict) -> list:
    return sorted((nid for nid, n in workflow.items() if n.get("class_type") == "LoadImage"),
                  key=node_sort_key)


def check_image_count(workflow: dict, count: int) -> list:
    """Return the LoadImage node ids that will receive images; raise if counts do not fit."""
    targets = load_image_nodes(workflow)
    if count and not targets:
        raise WorkflowError("--image given but the workflow has no LoadImage node")
    if count > 1 and count != len(targets):
        raise WorkflowError(
            f"{count} --image arguments but {len(targets)} LoadImage node(s) "
            f"({', '.join(targets)}); give one image (used for all) or exactly one per node")
    return targets


def apply_images(workflow: dict, names: list) -> list:
    """Set uploaded names into LoadImage nodes: one name -> all, else one per node in id order."""
    targets = check_image_count(workflow, len(names))
    if not names:
        return []
    for i, nid in enumerate(targets):
        workflow[nid]["inputs"]["image"] = names[0] if len(names) == 1 else names[i]
    return targets


# --prompt --------------------------------------------------------------------

def _text_target(workflow: dict, node_id, depth: int = 0):
    """(node_id, input_name) holding the literal text behind conditioning from node_id, or None."""
    node = workflow.get(str(node_id))
    if node is None or depth > _MAX_TRACE_DEPTH:
        return None
    inputs = node["inputs"]
    text = inputs.get("text")
    if isinstance(text, str):
        return str(node_id), "text"
    if is_link(text):  # text comes from e.g. a primitive/string node
        src = workflow.get(str(text[0]), {}).get("inputs", {})
        for key in ("text", "value", "string"):
            if isinstance(src.get(key), str):
                return str(text[0]), key
    for name, value in inputs.items():
        if is_link(value) and _CONDITIONING_INPUT.match(name):
            found = _text_target(workflow, value[0], depth + 1)
            if found:
                return found
    return None


def positive_prompt_targets(workflow: dict) -> list:
    """[(node_id, input_name)] carrying the positive prompt.

    Nodes titled "...positive..." with a literal text input win; otherwise follow each
    sampler's ``positive`` link upstream to the text encoder that produces it.
    """
    titled = [(nid, "text") for nid, n in workflow.items()
              if "positive" in title_of(n).lower() and isinstance(n["inputs"].get("text"), str)]
    if titled:
        return sorted(titled, key=lambda t: node_sort_key(t[0]))
    found = []
    for node in workflow.values():
        link = node["inputs"].get("positive")
        if is_link(link):
            target = _text_target(workflow, link[0])
            if target and target not in found:
                found.append(target)
    return sorted(found, key=lambda t: node_sort_key(t[0]))


def apply_prompt(workflow: dict, text: str) -> list:
    targets = positive_prompt_targets(workflow)
    if not targets:
        raise WorkflowError("--prompt: no positive prompt node found (no node titled '...positive...' "
                            "with a text input, and no text encoder feeding a 'positive' input)")
    for nid, key in targets:
        workflow[nid]["inputs"][key] = text
    return targets


# --set -----------------------------------------------------------------------

def parse_value(raw: str):
    """JSON if it parses (numbers, booleans, lists, quoted strings), else the raw string."""
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def resolve_node(workflow: dict, ref: str) -> str:
    """A node id, else an exact _meta.title, else a case-insensitive title."""
    if ref in workflow:
        return ref
    for exact in (True, False):
        hits = [nid for nid, n in workflow.items()
                if (title_of(n) == ref if exact else title_of(n).lower() == ref.lower())]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise WorkflowError(f"--set: title {ref!r} is ambiguous, matches nodes "
                                f"{', '.join(sorted(hits, key=node_sort_key))}; use the node id")
    valid = "\n".join("  " + describe(workflow, nid) for nid in sorted(workflow, key=node_sort_key))
    raise WorkflowError(f"--set: no node with id or title {ref!r}. Nodes:\n{valid}")


def apply_set(workflow: dict, spec: str) -> tuple:
    """Apply one ``NODE.INPUT=VALUE``; returns (node_id, input, value)."""
    key, sep, raw = spec.partition("=")
    ref, dot, input_name = key.rpartition(".")  # titles may contain dots, input names do not
    if not sep or not dot or not ref or not input_name:
        raise WorkflowError(f"--set {spec!r}: expected NODE.INPUT=VALUE (NODE = node id or title)")
    nid = resolve_node(workflow, ref)
    inputs = workflow[nid]["inputs"]
    if input_name not in inputs:
        names = ", ".join(sorted(inputs)) or "(none)"
        raise WorkflowError(f"--set {spec!r}: node {describe(workflow, nid)} has no input "
                            f"{input_name!r}; its inputs are: {names}")
    value = parse_value(raw)
    inputs[input_name] = value
    return nid, input_name, value
