"""PartID's test rig: three tiers, chosen by folder.

- tier_a_engine: the engine (models/) with torch only; always runs.
- tier_b_comfy: real ComfyUI imported in-process (tiny UNet in a ModelPatcher, a random full-size
  SD1.5 checkpoint through CheckpointLoaderSimple, the pack loaded by ComfyUI's own loader).
- tier_c_server: a real ComfyUI server started headless with PartID as a custom node.

B and C run whenever ComfyUI is found ($COMFYUI_PATH, the grandparent folder, ~/ComfyUI). The run
prints which tiers ran and fails when ComfyUI is present but B or C ran no test.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.append(str(TESTS))  # for partid_rig and fixtures_builders; appended so it never shadows ComfyUI

from partid_rig import COMFYUI, REPORT  # noqa: E402  (also registers the `partid` package)

TIERS = {"tier_a_engine": "A (engine)", "tier_b_comfy": "B (ComfyUI in-process)",
         "tier_c_server": "C (ComfyUI server)"}
_passed: dict[str, int] = {k: 0 for k in TIERS}
_ran: dict[str, int] = {k: 0 for k in TIERS}


def _tier_of(nodeid: str) -> str | None:
    return next((t for t in TIERS if f"/{t}/" in f"/{nodeid}"), None)


def pytest_collection_modifyitems(config, items):
    if COMFYUI is None:
        skip = pytest.mark.skip(reason="ComfyUI not found ($COMFYUI_PATH, ../.., ~/ComfyUI)")
        for item in items:
            if _tier_of(item.nodeid) in ("tier_b_comfy", "tier_c_server"):
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
    for tier, label in TIERS.items():
        state = f"{_passed[tier]} passed of {_ran[tier]} run" if _ran[tier] else "did not run"
        tr.write_line(f"tier {label}: {state}")
    for line in REPORT:
        tr.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    # Only a whole-suite run must prove B and C ran (a single file run may pick one tier).
    if COMFYUI is None or session.config.getoption("-k") or session.config.args not in ([], ["tests"], [str(TESTS)]):
        return
    missing = [TIERS[t] for t in ("tier_b_comfy", "tier_c_server") if _ran[t] == 0]
    if missing and session.exitstatus == 0:
        sys.stderr.write(f"\nComfyUI is present at {COMFYUI} but tier(s) {', '.join(missing)} ran no test.\n")
        session.exitstatus = 1
