"""PartID's test rig: three tiers, chosen by folder.

- tier_a_engine: the engine (models/) with torch only; always runs.
- tier_b_comfy: real ComfyUI imported in-process (tiny UNet in a ModelPatcher, a random full-size
  SD1.5 checkpoint through CheckpointLoaderSimple, the pack loaded by ComfyUI's own loader).
- tier_c_server: a real ComfyUI server started headless with PartID as a custom node.
- tier_d_browser: that server with its real frontend, in headless Chromium driven by playwright-core.

B and C run whenever ComfyUI is found ($COMFYUI_PATH, the grandparent folder, ~/ComfyUI); D when
ComfyUI, Chromium and playwright-core are found (`find_browser`). The run prints which tiers ran and
fails when ComfyUI is present but B or C ran no test, or D ran none while the browser is there or
$PARTID_REQUIRE_BROWSER=1 (.ci/run sets it when ComfyUI is present).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))  # for partid_rig and fixtures_builders; appended so it never shadows ComfyUI

from partid_rig import COMFYUI, REPORT  # noqa: E402  (also registers the `partid` package)


def _return_freed_memory_to_the_os() -> None:
    """glibc keeps freed heap for reuse: after the SD1.5 tier-B files the whole-suite process held ~4 GB it
    no longer used (no tensor alive), beside the ~15 GB SDXL server of tier C on a 24 GB machine. Blocks of
    1 MiB and more (every weight tensor) are then mmapped, so freeing them returns the memory at once."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)      # M_MMAP_THRESHOLD
    except (OSError, AttributeError):                      # not glibc
        pass


_return_freed_memory_to_the_os()

TIERS = {"tier_a_engine": "A (engine)", "tier_b_comfy": "B (ComfyUI in-process)",
         "tier_c_server": "C (ComfyUI server)", "tier_d_browser": "D (browser)"}
PLAYWRIGHT_DIR = Path(os.environ.get("PARTID_PLAYWRIGHT_DIR", Path.home() / ".cache" / "partid-ci" / "npm"))


def find_browser() -> dict[str, str | None]:
    """Chromium ($PARTID_CHROMIUM, else chromium on PATH), node, and the folder holding playwright-core."""
    chromium = os.environ.get("PARTID_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    has_playwright = (PLAYWRIGHT_DIR / "node_modules" / "playwright-core" / "package.json").is_file()
    return {"chromium": chromium, "node": shutil.which("node"),
            "playwright_dir": str(PLAYWRIGHT_DIR) if has_playwright else None}


BROWSER = find_browser()
BROWSER_MISSING = [k for k, v in BROWSER.items() if not v]
_passed: dict[str, int] = {k: 0 for k in TIERS}
_ran: dict[str, int] = {k: 0 for k in TIERS}


def _tier_of(nodeid: str) -> str | None:
    return next((t for t in TIERS if f"/{t}/" in f"/{nodeid}"), None)


def pytest_collection_modifyitems(config, items):
    if COMFYUI is None:
        skip = pytest.mark.skip(reason="ComfyUI not found ($COMFYUI_PATH, ../.., ~/ComfyUI)")
        for item in items:
            if _tier_of(item.nodeid) in ("tier_b_comfy", "tier_c_server", "tier_d_browser"):
                item.add_marker(skip)
    elif BROWSER_MISSING:
        skip = pytest.mark.skip(reason=f"no {', '.join(BROWSER_MISSING)} for tier D (see .ci/run)")
        for item in items:
            if _tier_of(item.nodeid) == "tier_d_browser":
                item.add_marker(skip)


def pytest_runtest_logreport(report):
    tier = _tier_of(report.nodeid)
    if tier and report.when == "call":
        _ran[tier] += 1
        _passed[tier] += report.passed


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    tr = terminalreporter
    tr.section("PartID test tiers")
    tr.write_line(f"ComfyUI: {COMFYUI or 'not found'}")
    tr.write_line(f"browser: {BROWSER['chromium'] or 'no chromium'}, playwright-core: {BROWSER['playwright_dir'] or 'not found'}")
    for tier, label in TIERS.items():
        state = f"{_passed[tier]} passed of {_ran[tier]} run" if _ran[tier] else "did not run"
        tr.write_line(f"tier {label}: {state}")
    for line in REPORT:
        tr.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    # Only a whole-suite run must prove B and C ran (a single file run may pick one tier).
    if COMFYUI is None or session.config.getoption("-k") or session.config.args not in ([], ["tests"], [str(TESTS)]):
        return
    must = ["tier_b_comfy", "tier_c_server"]
    if not BROWSER_MISSING or os.environ.get("PARTID_REQUIRE_BROWSER") == "1":
        must.append("tier_d_browser")
    missing = [TIERS[t] for t in must if _ran[t] == 0]
    if missing and session.exitstatus == 0:
        sys.stderr.write(f"\nComfyUI is present at {COMFYUI} but tier(s) {', '.join(missing)} ran no test.\n")
        session.exitstatus = 1


@pytest.fixture(scope="session")
def browser_tools() -> dict[str, str | None]:
    """Tier D: paths of chromium, node and the playwright-core folder (the tier is skipped without them)."""
    return BROWSER
