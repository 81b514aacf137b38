"""Tier C: a real ComfyUI server started headless on 127.0.0.1 with PartID as a custom node.

Two sessions:
- `partid_server`: SD1.5 and the parsers (light; every tier C run uses it);
- `partid_sdxl_server`: the random full-size SDXL base, ConsistentID SDXL, Visual Persona and DINOv2
  ViT-g/14 as well, for the SDXL workflows. Its ComfyUI stores the UNet and text encoders in fp8, the
  VAE in bf16 and frees node outputs as soon as they are used (the flags a user with little memory
  would use), so one SDXL session stays well under the machine's memory. Tests that run SDXL prompts
  use `sdxl_heavy`: the same server with the heavy-job lock (/tmp/partid-heavy.lock) held from their
  first test until the server has stopped, as every process that needs several GB does; it reports the
  server's peak resident memory (VmHWM).
"""
from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

import pytest
from partid_rig import COMFYUI, REPO, REPORT, free_port

PACK_NAME = "PartID"
FOLDERS = ["checkpoints", "face_parsing", "body_parsing", "insightface", "identity_adapters", "dinov2", "clip_vision"]
# ComfyUI flags that keep the full-size SDXL session small on a CPU (see the module docstring).
# --fp8_e4m3fn-unet / --fp8_e4m3fn-text-enc: weights stored in fp8, computed in ComfyUI's manual-cast dtype
# (measured peak of the four SDXL workflows: 18.0 GiB with --bf16-unet --bf16-text-enc, 16.0 with the fp8
# UNet, 15.4 with both in fp8). --cache-none: ComfyUI frees each node's output as soon as every node using
# it has run (DINOv2 right after the encode, not at the end of sampling); the price is that each prompt
# loads the checkpoint again.
SDXL_MEMORY_FLAGS = ["--fp8_e4m3fn-unet", "--fp8_e4m3fn-text-enc", "--bf16-vae", "--cache-none"]
HEAVY_LOCK = "/tmp/partid-heavy.lock"
LIGHT_SERVERS: list = []   # the running SD1.5 session(s): stopped before the SDXL session loads its models


def start_server(root: Path, models: Path, extra_args=()):
    """A ComfyServer (not started) for `models`, PartID linked in as a custom node, empty user/io folders."""
    from partid.cli.server import ComfyServer

    # ComfyUI's own way of adding a custom-node folder: an extra_model_paths.yaml entry.
    custom = root / "custom_nodes"
    custom.mkdir()
    os.symlink(REPO, custom / PACK_NAME)
    yaml = root / "extra_model_paths.yaml"
    yaml.write_text("partid_tests:\n  base_path: " + str(models) + "\n"
                    + "".join(f"  {f}: {f}\n" for f in FOLDERS) + f"  custom_nodes: {custom}\n")
    args = ["--cpu", "--disable-api-nodes", "--extra-model-paths-config", str(yaml),
            "--database-url", "sqlite:///:memory:", *extra_args]
    for flag, name in (("--front-end-root", "frontend"), ("--input-directory", "input"),
                       ("--output-directory", "output"), ("--temp-directory", "temp"), ("--user-directory", "user")):
        (root / name).mkdir()
        args += [flag, str(root / name)]
    server = ComfyServer(COMFYUI, "127.0.0.1", free_port(), args, log_path=root / "comfyui.log")
    server.root = root
    return server


def lock_held_by_an_ancestor(path: str) -> bool:
    """True when a process above this one (e.g. `flock /tmp/partid-heavy.lock pytest ...`) holds the lock:
    taking it again from here would wait forever."""
    inode = os.stat(path).st_ino
    holders = {int(f[4]) for f in (line.split() for line in Path("/proc/locks").read_text().splitlines())
               if len(f) > 5 and f[1] != "->" and f[5].rsplit(":", 1)[-1] == str(inode)}
    pid = os.getpid()
    while pid > 1:
        if pid in holders:
            return True
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines() if line.startswith("PPid:")))
    return False


def peak_rss_gib(pid: int) -> float:
    """The process's peak resident set (VmHWM) in GiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


@pytest.fixture(scope="session")
def partid_server(tmp_path_factory):
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.layout import populate_models_dir

    root = tmp_path_factory.mktemp("partid_server")
    models = populate_models_dir(root / "models", with_sdxl=False)
    link_clip_vision(models)  # CLIP-ViT-H/14 for ConsistentID (core Load CLIP Vision)
    with start_server(root, models) as server:
        LIGHT_SERVERS.append(server)
        yield server


def free_memory_for_sdxl() -> None:
    """Before the SDXL session runs prompts: stop the SD1.5 server (its loaded checkpoint, CLIP-H and parsers
    hold ~6 GB; every test that uses it sorts before the SDXL files, so a whole-suite run needs it no more)
    and give back what tier B left in this process (ComfyUI's loaded models, freed heap)."""
    import ctypes
    import gc
    import sys

    for server in LIGHT_SERVERS:
        if server.running():
            server.stop()
    if "comfy.model_management" in sys.modules:
        sys.modules["comfy.model_management"].unload_all_models()
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:   # not glibc
        pass


@pytest.fixture(scope="session")
def partid_sdxl_server(tmp_path_factory):
    """Every model file the example workflows name, under the names they use. Light until a prompt runs:
    tests that run SDXL prompts take `sdxl_heavy` instead."""
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.layout import populate_full_models_dir

    root = tmp_path_factory.mktemp("partid_sdxl_server")
    models = populate_full_models_dir(root / "models")
    link_clip_vision(models)
    with start_server(root, models, SDXL_MEMORY_FLAGS) as server:
        yield server


@pytest.fixture(scope="session")
def sdxl_heavy(partid_sdxl_server):
    """`partid_sdxl_server` with the heavy-job lock held until the server has stopped; reports its peak RSS."""
    server = partid_sdxl_server
    with open(HEAVY_LOCK, "a") as lock:
        waited = time.monotonic()
        if not lock_held_by_an_ancestor(HEAVY_LOCK):
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        waited = time.monotonic() - waited
        free_memory_for_sdxl()
        started = time.monotonic()
        try:
            yield server
        finally:
            peak = peak_rss_gib(server.process.pid) if server.running() else float("nan")
            server.stop()   # the models leave memory before the lock is released
            REPORT.append(f"SDXL server session ({' '.join(SDXL_MEMORY_FLAGS)}): peak RSS {peak:.2f} GiB, "
                          f"{time.monotonic() - started:.0f} s with the heavy lock (waited {waited:.0f} s for it)")
