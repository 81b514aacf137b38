"""Shared by every benchmark script: machine description, timing, peak memory, ComfyUI start, writers.

Scripts run as `python benchmarks/<name>.py`, so `import harness` finds this file; importing it puts
tests/ on sys.path and registers the repo as package `partid` (tests/partid_rig.py). Nothing here
imports ComfyUI at import time (start_comfy does), so the writers can be used and tested alone.

Timing conventions: `timed` gives the median and best of `repeats` runs after `warmup` runs;
`interleaved` runs several candidates round-robin (a, b, c, a, b, c, ...) so a slow phase of a
shared machine hits all of them alike, and the median of each is compared. Peak memory: GPU
torch.cuda.max_memory_allocated since the last `reset_peak`; CPU the process's peak RSS (VmHWM),
reset through /proc/self/clear_refs where Linux allows it (else it is the peak since start).
"""
from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "tests") not in sys.path:
    sys.path.append(str(REPO / "tests"))   # appended, as tests/conftest.py does: never shadows ComfyUI
import partid_rig  # noqa: E402  (registers the repo as package `partid`; finds ComfyUI)

HEAVY_LOCK = "/tmp/partid-heavy.lock"   # shared-machine convention: runs over ~3 GB of RAM hold it
README_MARKER = "benchmark table"


# -- the machine -------------------------------------------------------------------------------------

def cpu_name() -> str:
    name = platform.processor()
    if not name or name in ("x86_64", "aarch64"):
        try:
            with open("/proc/cpuinfo") as info:
                name = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
        except (OSError, StopIteration):
            name = name or platform.machine()
    return name


def gpu_name() -> str | None:
    try:
        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001  (a broken driver must not stop a CPU benchmark)
        return None


def machine(device: str, threads: bool = True) -> str:
    """One line for a table cell: the GPU's name on cuda, else the CPU's (and torch's thread count)."""
    if device == "cuda":
        return gpu_name() or "CUDA device"
    return f"{cpu_name()}, {torch.get_num_threads()} threads" if threads else cpu_name()


def comfyui_version(root: str | None = None) -> str | None:
    """`__version__` of ComfyUI's comfyui_version.py (read as text: importing it is not needed)."""
    root = root or partid_rig.COMFYUI
    try:
        text = (Path(root) / "comfyui_version.py").read_text()
    except (OSError, TypeError):
        return None
    found = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", text)
    return found.group(1) if found else None


def machine_info(device: str, **extra) -> dict:
    """What a result was measured on: CPU model and cores, GPU, torch / ComfyUI / Python versions."""
    info = {"device": device, "cpu": cpu_name(), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "gpu": gpu_name() if device == "cuda" else None, "torch": torch.__version__,
            "cuda": torch.version.cuda if device == "cuda" else None, "comfyui": comfyui_version(),
            "python": platform.python_version(), "platform": platform.platform()}
    info.update(extra)
    return info


# -- timing and memory --------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def timed(device: str, fn: Callable, repeats: int, warmup: int = 1):
    """(last result, median seconds, best seconds) of `repeats` runs after `warmup` runs."""
    result = None
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return result, statistics.median(times), min(times)


def interleaved(candidates: dict[str, Callable[[], dict]], repeats: int, warmup: int = 1) -> dict[str, list[dict]]:
    """Run every candidate round-robin `repeats` times (after `warmup` rounds): {name: [its results]}."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    results: dict[str, list[dict]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            results[name].append(fn())
    return results


def median_of(results: Sequence[dict], key: str) -> float:
    return statistics.median(r[key] for r in results)


def _rss_peak_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\s+(\d+)", status.read()).group(1)) * 1024
    except (OSError, AttributeError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak(device: str) -> None:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")      # resets VmHWM to the current RSS


def peak_bytes(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device == "cuda" else _rss_peak_bytes()


def peak_label(device: str) -> str:
    return "peak GPU memory (MiB)" if device == "cuda" else "peak RSS (MiB)"


@contextlib.contextmanager
def heavy_lock(enabled: bool = True):
    """Hold the shared machine's heavy-job lock (flock on HEAVY_LOCK) for a block that needs a lot of RAM."""
    if not enabled:
        yield
        return
    with open(HEAVY_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cpu_settings(threads: int | None, flush_denormal: bool) -> None:
    """CPU: torch's thread count and flush-to-zero (see benchmarks/run.py on subnormal floats)."""
    if threads:
        torch.set_num_threads(threads)
    if flush_denormal:
        torch.set_flush_denormal(True)


# -- ComfyUI in-process ----------------------------------------------------------------------------------

def pack_module_name() -> str:
    """The module name ComfyUI's custom-node loader gives this repo (its path, dots escaped)."""
    return str(REPO).replace(".", "_x_")


def start_comfy(device: str):
    """Import the real ComfyUI and load PartID with its own custom-node loader (once per process).

    Returns (folder_paths, nodes, pack): `pack(".nodes.attention_patch")` imports a module of the
    pack as ComfyUI loaded it.
    """
    import importlib

    if partid_rig.COMFYUI is None:
        sys.exit("ComfyUI not found ($COMFYUI_PATH, ../.., ~/ComfyUI)")
    if partid_rig.COMFYUI not in sys.path:
        sys.path.insert(0, partid_rig.COMFYUI)
    import utils.extra_config  # noqa: F401  (as main.py does, before comfy/ lands on sys.path)
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = device == "cpu"
    import folder_paths
    import nodes

    name = pack_module_name()
    if name not in sys.modules and not asyncio.run(nodes.load_custom_node(str(REPO))):
        sys.exit("ComfyUI failed to load PartID")
    return folder_paths, nodes, lambda sub: importlib.import_module(name + sub)


def run_node(nodes, name: str, **inputs):
    """A node's outputs, executed as ComfyUI's executor does (V3: prepared class clone, inference mode)."""
    cls = nodes.NODE_CLASS_MAPPINGS[name]
    with torch.inference_mode():
        return cls.PREPARE_CLASS_CLONE({}).execute(**inputs).result


# -- writers ----------------------------------------------------------------------------------------

def markdown_table(columns: Sequence[str], rows: Iterable[Sequence]) -> str:
    def cell(v):
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict) -> str:
    threads = info.get("torch_threads")
    where = info.get("gpu") or (f"{info.get('cpu')} ({info.get('cpu_cores')} cores, {threads} "
                                f"thread{'' if threads == 1 else 's'})")
    extra = ", flush-denormal" if info.get("flush_denormal") else ""
    return (f"{info.get('device')} — {where}{extra}; torch {info.get('torch')}, ComfyUI {info.get('comfyui')}, "
            f"Python {info.get('python')}")


def write_results(out_dir: Path, stem: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write <stem>.md and <stem>.json into out_dir; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md, js = out_dir / f"{stem}.md", out_dir / f"{stem}.json"
    md.write_text(markdown if markdown.endswith("\n") else markdown + "\n")
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    return md, js


def replace_marked_block(text: str, block: str, marker: str = README_MARKER) -> str:
    """`text` with everything between `<!-- marker -->` and `<!-- /marker -->` replaced by `block`.

    Both markers must be there exactly once, in that order (a README without them is refused rather
    than appended to: where the table goes is the README author's choice).
    """
    start, end = f"<!-- {marker} -->", f"<!-- /{marker} -->"
    if text.count(start) != 1 or text.count(end) != 1:
        raise ValueError(f"expected exactly one '{start}' and one '{end}' line")
    if text.index(end) < text.index(start):
        raise ValueError(f"'{end}' comes before '{start}'")
    head, rest = text.split(start, 1)
    tail = rest.split(end, 1)[1]
    return f"{head}{start}\n{block.strip()}\n{end}{tail}"


def update_readme(path: Path, block: str, marker: str = README_MARKER) -> None:
    path = Path(path)
    path.write_text(replace_marked_block(path.read_text(), block, marker))
