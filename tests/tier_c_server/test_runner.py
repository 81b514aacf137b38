"""Headless runner (cli/) against a REAL ComfyUI server, with core nodes only.

One ComfyUI (started through cli.server.ComfyServer, --cpu, in-memory DB, empty
front-end root, temp input/output dirs) serves every test in this module; the runner
is run as `python -m <repo_dir> run ...` from the repo's parent, exactly as users do.
Skipped only when no ComfyUI checkout is found (find_comfyui() is None).
"""
import importlib
import importlib.util
import json
import os
import random
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from pathlib import Path

import pytest

# The repo root is the folder holding cli/ (works from tests/ or a tests/<tier>/ subfolder).
REPO = next(p for p in Path(__file__).resolve().parents if (p / "cli" / "runner.py").is_file())


def _load_cli(name):
    """Import cli.<name> without putting the repo root on sys.path.

    The repo root holds folders like nodes/ and models/ that would shadow ComfyUI's
    modules, and the repo folder's name varies, so load cli/ under a private alias.
    """
    alias = "_partid_cli_under_test"
    if alias not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            alias, REPO / "cli" / "__init__.py", submodule_search_locations=[str(REPO / "cli")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[alias] = module
        spec.loader.exec_module(module)
    return importlib.import_module(f"{alias}.{name}")


comfy_server = _load_cli("server")
wf = _load_cli("workflow")


# ---- helpers -------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_png(path: Path, width: int, height: int, rgb=(200, 30, 30)) -> Path:
    """Minimal RGB PNG with the standard library (no PIL needed in the test)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    raw = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def png_size(path: Path):
    head = Path(path).read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def basic_workflow(width=64, height=32, batch=2, prefix="basic"):
    # A random colour makes each run unique, so ComfyUI's cache cannot skip execution.
    return {
        "1": {"class_type": "EmptyImage", "_meta": {"title": "Empty"},
              "inputs": {"width": width, "height": height, "batch_size": batch,
                         "color": random.randrange(1, 0xFFFFFF)}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def slow_workflow(blurs=30):
    """Several seconds of CPU work split over many nodes (interrupts act between nodes)."""
    nodes = {"1": {"class_type": "EmptyImage", "inputs": {
        "width": 1024, "height": 1024, "batch_size": 1, "color": random.randrange(1, 0xFFFFFF)}}}
    for i in range(2, blurs + 2):
        nodes[str(i)] = {"class_type": "ImageBlur",
                         "inputs": {"image": [str(i - 1), 0], "blur_radius": 31, "sigma": 5.0}}
    nodes["99"] = {"class_type": "PreviewImage", "inputs": {"images": [str(blurs + 1), 0]}}
    return nodes


def runner_cmd(workflow, tmp_path, port, *extra):
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(workflow))
    return [sys.executable, "-m", REPO.name, "run", str(path), "--server", f"127.0.0.1:{port}",
            "--out", str(tmp_path / "out"), *extra]


def run_cli(workflow, tmp_path, port, *extra, timeout=180, env=None):
    return subprocess.run(runner_cmd(workflow, tmp_path, port, *extra), cwd=REPO.parent, env=env,
                          capture_output=True, text=True, timeout=timeout)


def get_json(srv, path):
    with urllib.request.urlopen(srv.url + path, timeout=10) as resp:
        return json.loads(resp.read())


def prompt_id_from(stderr: str) -> str:
    return stderr.split("queued prompt ", 1)[1].split()[0]


def isolated_dirs_args(root: Path):
    """Keep the ComfyUI checkout untouched: frontend, input, output, temp, user in root."""
    args = ["--database-url", "sqlite:///:memory:"]
    for flag, name in (("--front-end-root", "frontend"), ("--input-directory", "input"),
                       ("--output-directory", "output"), ("--temp-directory", "temp"),
                       ("--user-directory", "user")):
        (root / name).mkdir(parents=True, exist_ok=True)
        args += [flag, str(root / name)]
    return args


@pytest.fixture(scope="module")
def comfy(tmp_path_factory):
    path = comfy_server.find_comfyui()
    if path is None:
        pytest.skip("no ComfyUI checkout found (set COMFYUI_PATH)")
    root = tmp_path_factory.mktemp("comfyui")
    args = ["--cpu", "--disable-api-nodes", "--disable-all-custom-nodes", *isolated_dirs_args(root)]
    srv = comfy_server.ComfyServer(path, "127.0.0.1", free_port(), args, log_path=root / "comfyui.log")
    srv.root = root
    with srv:
        yield srv


# ---- no server needed ----------------------------------------------------------------

def test_ui_format_workflow_exits_2(tmp_path):
    res = run_cli({"nodes": [], "links": [], "version": 0.4}, tmp_path, free_port(), "--no-start")
    assert res.returncode == 2, res.stderr
    assert "Save (API)" in res.stderr


def test_set_unknown_node_or_input_exits_2_listing_valid_ones(tmp_path):
    res = run_cli(basic_workflow(), tmp_path, free_port(), "--no-start", "--set", "Nope.width=1")
    assert res.returncode == 2
    assert "1 (EmptyImage, 'Empty')" in res.stderr and "3 (SaveImage)" in res.stderr
    res = run_cli(basic_workflow(), tmp_path, free_port(), "--no-start", "--set", "Empty.wdth=1")
    assert res.returncode == 2
    assert "batch_size, color, height, width" in res.stderr


def test_no_server_and_no_comfyui_exits_7(tmp_path):
    env = dict(os.environ, COMFYUI_PATH=str(tmp_path / "nowhere"))
    res = run_cli(basic_workflow(), tmp_path, free_port(), env=env)
    assert res.returncode == 7, res.stderr
    assert "COMFYUI_PATH" in res.stderr


def test_workflow_edits():
    w = {"4": {"class_type": "CLIPTextEncode", "inputs": {"text": "old", "clip": ["9", 1]}},
         "5": {"class_type": "CLIPTextEncode", "inputs": {"text": "neg", "clip": ["9", 1]}},
         "6": {"class_type": "ConditioningCombine", "inputs": {"conditioning_1": ["4", 0], "conditioning_2": ["4", 0]}},
         "7": {"class_type": "KSampler", "inputs": {"positive": ["6", 0], "negative": ["5", 0], "seed": 1}},
         "10": {"class_type": "LoadImage", "inputs": {"image": "a.png"}},
         "2": {"class_type": "LoadImage", "inputs": {"image": "b.png"}}}
    assert wf.apply_prompt(w, "a cat") == [("4", "text")]  # followed through ConditioningCombine
    assert w["4"]["inputs"]["text"] == "a cat" and w["5"]["inputs"]["text"] == "neg"
    w["5"]["_meta"] = {"title": "My Positive Prompt"}  # a titled node wins over link tracing
    assert wf.apply_prompt(w, "dog") == [("5", "text")]
    assert wf.apply_images(w, ["x.png", "y.png"]) == ["2", "10"]  # numeric, not string order
    assert (w["2"]["inputs"]["image"], w["10"]["inputs"]["image"]) == ("x.png", "y.png")
    with pytest.raises(wf.WorkflowError):
        wf.apply_images(w, ["1", "2", "3"])
    assert wf.apply_set(w, "7.seed=42") == ("7", "seed", 42)
    assert wf.apply_set(w, "7.seed=abc")[2] == "abc"
    assert wf.apply_set(w, 'My Positive Prompt.text="1.5"')[2] == "1.5"


# ---- against the real server -------------------------------------------------------

def test_basic_run_downloads_pngs(comfy, tmp_path):
    res = run_cli(basic_workflow(64, 32, batch=2), tmp_path, comfy.port)
    assert res.returncode == 0, res.stderr
    files = sorted((tmp_path / "out").glob("basic_*.png"))
    assert len(files) == 2 and all(png_size(f) == (64, 32) for f in files)
    assert res.stdout.split() == [str(f) for f in files]
    assert "executing node 3 (SaveImage)" in res.stderr and "\x1b[" not in res.stderr


def test_set_changes_output_size(comfy, tmp_path):
    res = run_cli(basic_workflow(batch=1), tmp_path, comfy.port, "--set", "Empty.width=80", "--set", "1.height=48")
    assert res.returncode == 0, res.stderr
    (png,) = (tmp_path / "out").glob("*.png")
    assert png_size(png) == (80, 48)


def test_images_uploaded_into_load_image_nodes_in_id_order(comfy, tmp_path):
    w = {"10": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
         "2": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}},
         "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "from2"}},
         "4": {"class_type": "SaveImage", "inputs": {"images": ["10", 0], "filename_prefix": "from10"}}}
    first = write_png(tmp_path / "first.png", 20, 10)
    second = write_png(tmp_path / "second.png", 30, 15, rgb=(1, 2, 3))
    res = run_cli(w, tmp_path, comfy.port, "--image", str(first), "--image", str(second))
    assert res.returncode == 0, res.stderr
    assert (comfy.root / "input" / "first.png").is_file()
    assert png_size(next((tmp_path / "out").glob("from2_*.png"))) == (20, 10)
    assert png_size(next((tmp_path / "out").glob("from10_*.png"))) == (30, 15)


def test_rejected_prompt_exits_3_and_server_keeps_serving(comfy, tmp_path):
    bad = basic_workflow()
    del bad["1"]["inputs"]["height"]
    res = run_cli(bad, tmp_path, comfy.port)
    assert res.returncode == 3, res.stderr
    assert "node 1 (EmptyImage)" in res.stderr
    assert "Required input is missing" in res.stderr and "'height'" in res.stderr
    res = run_cli({"1": {"class_type": "NoSuchNode", "inputs": {}}}, tmp_path, comfy.port)
    assert res.returncode == 3 and "NoSuchNode" in res.stderr
    res = run_cli(basic_workflow(batch=1), tmp_path, comfy.port)
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_execution_error_exits_4(comfy, tmp_path):
    garbage = tmp_path / "broken.png"
    garbage.write_bytes(b"this is not a png")  # passes validation (file exists), fails in PIL
    w = {"1": {"class_type": "LoadImage", "inputs": {"image": "x"}},
         "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "never"}}}
    res = run_cli(w, tmp_path, comfy.port, "--image", str(garbage))
    assert res.returncode == 4, res.stderr
    assert "node 1 (LoadImage)" in res.stderr and "UnidentifiedImageError" in res.stderr
    assert "traceback" in res.stderr


def test_timeout_exits_6_and_cancels_the_prompt(comfy, tmp_path):
    res = run_cli(slow_workflow(), tmp_path, comfy.port, "--timeout", "1.5")
    assert res.returncode == 6, res.stderr
    pid = prompt_id_from(res.stderr)
    deadline = time.monotonic() + 120
    while not (entry := get_json(comfy, f"/history/{pid}").get(pid)) and time.monotonic() < deadline:
        time.sleep(0.5)  # the node running at timeout finishes, then the interrupt applies
    assert entry, "prompt still running: the runner did not interrupt it"
    assert "execution_interrupted" in [m[0] for m in entry["status"]["messages"]]


def test_interrupt_exits_5(comfy, tmp_path):
    proc = subprocess.Popen(runner_cmd(slow_workflow(), tmp_path, comfy.port), cwd=REPO.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120
    while not any("executing node 2" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.05)
    pid = prompt_id_from("".join(lines))
    req = urllib.request.Request(comfy.url + "/interrupt", data=json.dumps({"prompt_id": pid}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).close()
    assert proc.wait(timeout=120) == 5, "".join(lines)
    reader.join(5)
    assert "interrupted" in "".join(lines)


def test_runner_starts_and_stops_its_own_server(comfy, tmp_path):
    port = free_port()
    env = dict(os.environ, COMFYUI_PATH=comfy.comfy_path)
    server_args = shlex.join(["--disable-all-custom-nodes", *isolated_dirs_args(tmp_path / "own")])
    res = run_cli(basic_workflow(16, 8, batch=1), tmp_path, port, "--server-args", server_args, env=env)
    assert res.returncode == 0, res.stderr
    assert "starting ComfyUI" in res.stderr
    assert png_size(next((tmp_path / "out").glob("*.png"))) == (16, 8)
    assert not comfy_server.server_answers("127.0.0.1", port), "self-started server left running"
    assert not list(Path(tempfile.gettempdir()).glob(f"comfyui-{port}-*.log")), "log kept after success"
