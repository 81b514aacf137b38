"""ComfyUI's HTTP + websocket protocol as the runner uses it (aiohttp, no torch/comfy).

Each step raises RunError carrying the runner's exit code (see cli/runner.py docstring).
Observed with ComfyUI 0.3.64: execution_success is sent BEFORE the history entry is
written; the final ``executing`` with ``node: None`` comes after it, so we wait for
that and still poll /history briefly.
"""
import asyncio
import json
import logging
import mimetypes
import time
from pathlib import Path

import aiohttp

from .workflow import describe, node_sort_key

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_REJECTED = 0, 1, 2, 3
EXIT_EXEC_ERROR, EXIT_INTERRUPTED, EXIT_TIMEOUT, EXIT_NO_SERVER = 4, 5, 6, 7

log = logging.getLogger("partid.cli")
PROGRESS_INTERVAL = 0.5  # s; samplers can report faster than a log is worth reading
SUCCESS_GRACE = 30.0  # s to wait for the final "executing: None" after execution_success


class RunError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# ---- formatting of ComfyUI error payloads -------------------------------------

def format_rejection(body, workflow: dict) -> str:
    if not isinstance(body, dict):
        return f"ComfyUI rejected the prompt: {body}"
    err = body.get("error") or {}
    if isinstance(err, dict):
        head = err.get("message", "unknown error")
        if err.get("details"):
            head += f" ({err['details']})"
    else:
        head = str(err)
    lines = [f"ComfyUI rejected the prompt: {head}"]
    for nid, entry in sorted((body.get("node_errors") or {}).items(), key=lambda kv: node_sort_key(kv[0])):
        kind = entry.get("class_type") or workflow.get(nid, {}).get("class_type", "?")
        lines.append(f"  node {nid} ({kind}):")
        for e in entry.get("errors", []):
            text = e.get("message", "error")
            if e.get("details"):
                text += f": {e['details']}"
            input_name = (e.get("extra_info") or {}).get("input_name")
            lines.append(f"    - {text}" + (f" [input '{input_name}']" if input_name else ""))
    return "\n".join(lines)


def format_exec_error(data: dict, workflow: dict) -> str:
    nid = str(data.get("node_id"))
    lines = [f"execution failed at node {describe(workflow, nid)}: "
             f"{data.get('exception_type', 'Exception')}: {data.get('exception_message', '').strip()}"]
    tb = "".join(data.get("traceback") or []).rstrip().splitlines()
    if tb:
        lines.append("traceback (last lines):")
        lines += ["  " + line for line in tb[-10:]]
    return "\n".join(lines)


# ---- HTTP / websocket -----------------------------------------------------------

async def upload_images(session, base: str, paths: list) -> list:
    names, seen = [], set()
    for i, path in enumerate(paths):
        p = Path(path)
        name = p.name if p.name not in seen else f"{p.stem}_{i + 1}{p.suffix}"  # overwrite=true
        seen.add(name)
        form = aiohttp.FormData()
        form.add_field("image", p.read_bytes(), filename=name,
                       content_type=mimetypes.guess_type(name)[0] or "application/octet-stream")
        form.add_field("overwrite", "true")
        async with session.post(f"{base}/upload/image", data=form) as resp:
            if resp.status != 200:
                raise RunError(EXIT_FAILURE, f"upload of {path} failed: HTTP {resp.status} {await resp.text()}")
            info = await resp.json()
        names.append(f"{info['subfolder']}/{info['name']}" if info.get("subfolder") else info["name"])
        log.info("uploaded %s as %s", path, names[-1])
    return names


async def submit(session, base: str, workflow: dict, client_id: str) -> str:
    async with session.post(f"{base}/prompt", json={"prompt": workflow, "client_id": client_id}) as resp:
        text = await resp.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        if resp.status == 400:
            raise RunError(EXIT_REJECTED, format_rejection(body, workflow))
        if resp.status != 200 or not isinstance(body, dict) or "prompt_id" not in body:
            raise RunError(EXIT_FAILURE, f"POST /prompt failed: HTTP {resp.status} {text[:500]}")
    return body["prompt_id"]


async def watch(ws, prompt_id: str, workflow: dict) -> None:
    """Log our prompt's events until it is finished; raise RunError on error/interrupt."""
    succeeded, last_progress = False, {}
    while True:
        try:
            msg = await ws.receive(timeout=SUCCESS_GRACE if succeeded else None)
        except asyncio.TimeoutError:
            return  # success seen, final "executing" late: history is polled anyway
        if msg.type == aiohttp.WSMsgType.BINARY:
            continue  # latent previews
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise RunError(EXIT_FAILURE, f"websocket closed ({msg.type.name}) before the prompt finished")
        event = json.loads(msg.data)
        kind, data = event.get("type"), event.get("data") or {}
        if data.get("prompt_id", prompt_id) != prompt_id:
            continue  # broadcasts about other clients' prompts
        if kind == "executing":
            if data.get("node") is None:
                return  # sent after the history entry is written
            log.info("executing node %s", describe(workflow, data.get("display_node") or data["node"]))
        elif kind == "progress":
            node, now = str(data.get("node")), time.monotonic()
            value, maximum = data.get("value"), data.get("max")
            if value == maximum or now - last_progress.get(node, 0.0) >= PROGRESS_INTERVAL:
                last_progress[node] = now
                log.info("progress %s/%s node %s", value, maximum, describe(workflow, node))
        elif kind == "execution_cached" and data.get("nodes"):
            log.info("cached (not re-run): %s", ", ".join(map(str, data["nodes"])))
        elif kind == "execution_error":
            raise RunError(EXIT_EXEC_ERROR, format_exec_error(data, workflow))
        elif kind == "execution_interrupted":
            raise RunError(EXIT_INTERRUPTED, f"execution interrupted at node {describe(workflow, data.get('node_id'))}")
        elif kind == "execution_success":
            succeeded = True
            log.info("execution finished")


async def fetch_history(session, base: str, prompt_id: str, workflow: dict) -> dict:
    for _ in range(100):  # the entry is written just after execution_success; poll briefly
        async with session.get(f"{base}/history/{prompt_id}") as resp:
            if resp.status != 200:
                raise RunError(EXIT_FAILURE, f"GET /history failed: HTTP {resp.status}")
            entry = (await resp.json()).get(prompt_id)
        if entry:
            break
        await asyncio.sleep(0.2)
    else:
        raise RunError(EXIT_FAILURE, f"prompt {prompt_id} finished but has no history entry")
    for kind, data in (entry.get("status") or {}).get("messages", []):  # events we may have missed
        if kind == "execution_error":
            raise RunError(EXIT_EXEC_ERROR, format_exec_error(data, workflow))
        if kind == "execution_interrupted":
            raise RunError(EXIT_INTERRUPTED, "execution interrupted")
    return entry


def _safe_relpath(subfolder: str, filename: str) -> Path:
    parts = [p for p in Path(subfolder or "").parts + Path(filename).parts if p not in ("", ".", "..", "/")]
    return Path(*[p for p in parts if not Path(p).is_absolute()])


async def download_outputs(session, base: str, entry: dict, out_dir: Path) -> list:
    saved = []
    texts = {}
    for _nid, outputs in sorted((entry.get("outputs") or {}).items(), key=lambda kv: node_sort_key(kv[0])):
        # Text shown on a node (e.g. PartID Model Info) is logged and kept beside the images.
        node_texts = [t for t in outputs.get("text", []) if isinstance(t, str)]
        if node_texts:
            texts[_nid] = node_texts
            for t in node_texts:
                log.info("node %s: %s", _nid, t)
        for items in outputs.values():
            for item in items if isinstance(items, list) else []:
                if not (isinstance(item, dict) and item.get("filename")):
                    continue  # e.g. text outputs
                if item.get("type") == "temp":
                    continue  # node previews (PreviewImage, the parsing nodes' canvas previews), not results
                params = {"filename": item["filename"], "subfolder": item.get("subfolder", ""),
                          "type": item.get("type", "output")}
                dest = out_dir / _safe_relpath(params["subfolder"], params["filename"])
                async with session.get(f"{base}/view", params=params) as resp:
                    if resp.status != 200:
                        raise RunError(EXIT_FAILURE, f"download of {params} failed: HTTP {resp.status}")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    dest.write_bytes(await resp.read())
                saved.append(dest)
    if texts:
        dest = out_dir / "text_outputs.json"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(json.dumps(texts, indent=1))
        saved.append(dest)
    return saved


async def cancel_prompt(session, base: str, prompt_id: str) -> None:
    """Best effort: drop our prompt from the queue and stop it if it is running."""
    for path, body in (("/queue", {"delete": [prompt_id]}), ("/interrupt", {"prompt_id": prompt_id})):
        try:
            async with session.post(f"{base}{path}", json=body, timeout=aiohttp.ClientTimeout(total=5)):
                pass
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
    log.warning("cancelled prompt %s on the server", prompt_id)

