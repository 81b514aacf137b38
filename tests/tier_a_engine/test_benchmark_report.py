"""benchmarks/harness.py's writers: the README block replacement the lead runs on README.md, the markdown
table and the JSON file, on temporary files only."""
from __future__ import annotations

import importlib.util
import json

import pytest

from partid_rig import REPO


@pytest.fixture(scope="module")
def harness():
    spec = importlib.util.spec_from_file_location("partid_benchmark_harness", REPO / "benchmarks" / "harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


README = "# PartID\n\n## Performance\n\nHow to run.\n\n<!-- benchmark table -->\n| old |\n<!-- /benchmark table -->\n\n## Next\n"


def test_marked_block_is_replaced_and_the_rest_kept(harness, tmp_path):
    path = tmp_path / "README.md"
    path.write_text(README)
    table = harness.markdown_table(["configuration", "ms/step"], [["plain", "10.0"], ["a | b", None]])
    harness.update_readme(path, "Machine: x.\n\n" + table)
    text = path.read_text()
    before, after = README.split("<!-- benchmark table -->")[0], README.split("<!-- /benchmark table -->")[1]
    assert text.startswith(before + "<!-- benchmark table -->\nMachine: x.\n\n| configuration | ms/step |\n|---|---|\n")
    assert text.endswith("\n<!-- /benchmark table -->" + after)
    assert "| old |" not in text and "| a \\| b |  |" in text     # a pipe inside a cell is escaped
    harness.update_readme(path, "Machine: x.\n\n" + table)         # regenerating gives the same file
    assert path.read_text() == text


@pytest.mark.parametrize("bad", ["no markers\n", README + "<!-- benchmark table -->\n",
                                 "<!-- /benchmark table -->\n<!-- benchmark table -->\n"])
def test_missing_duplicate_or_reversed_markers_are_refused(harness, bad):
    with pytest.raises(ValueError, match="benchmark table"):
        harness.replace_marked_block(bad, "new")


def test_results_files_round_trip(harness, tmp_path):
    info = harness.machine_info("cpu", flush_denormal=True)
    comfy_version = harness.comfyui_version()
    if harness.partid_rig.COMFYUI:
        assert f'"{comfy_version}"' in open(f"{harness.partid_rig.COMFYUI}/comfyui_version.py").read()
    md, js = harness.write_results(tmp_path / "out", "bench", "# t\n\n" + harness.markdown_table(["a"], [[1]]),
                                   {"machine": info, "rows": [{"a": 1.5}]})
    assert md.read_text() == "# t\n\n| a |\n|---|\n| 1 |\n"
    data = json.loads(js.read_text())
    assert data["rows"] == [{"a": 1.5}] and data["machine"]["cpu_cores"] >= 1 and data["machine"]["flush_denormal"]
    assert "flush-denormal" in harness.machine_line(data["machine"])


def test_append_merges_a_run_split_per_base(harness):
    import sys

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.append(str(REPO / "benchmarks"))      # run.py imports harness and bench_models as siblings
    spec = importlib.util.spec_from_file_location("partid_benchmark_run_a", REPO / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    sd15 = {"machine": {}, "settings": {"command": "run --bases sd15"}, "preprocessing": {"cid": 1.0},
            "sampling": [{"base": "sd15", "configuration": "plain", "step_ms": 1.0}], "scaling": [{"id_tokens": 4}]}
    sdxl = {"machine": {}, "settings": {"command": "run --bases sdxl --no-scaling"}, "preprocessing": {"vp": 2.0},
            "sampling": [{"base": "sdxl", "configuration": "plain", "step_ms": 2.0},
                         {"base": "sd15", "configuration": "plain", "skipped": "not run"}], "scaling": []}
    merged = run.merge_previous(sdxl, sd15)
    assert [(r["base"], r.get("step_ms")) for r in merged["sampling"]] == [("sd15", 1.0), ("sdxl", 2.0)]
    assert merged["scaling"] == [{"id_tokens": 4}] and merged["preprocessing"] == {"cid": 1.0, "vp": 2.0}
    assert merged["settings"]["commands"] == ["run --bases sd15", "run --bases sdxl --no-scaling"]


def test_append_refuses_runs_measured_differently(harness):
    import sys

    if str(REPO / "benchmarks") not in sys.path:
        sys.path.append(str(REPO / "benchmarks"))
    spec = importlib.util.spec_from_file_location("partid_benchmark_run_b", REPO / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    machine = harness.machine_info("cpu")

    def result(base, **settings):
        return {"machine": dict(machine), "settings": {"command": f"run --bases {base}", "tiny": False, "steps": 30,
                                                       "repeats": 3, **settings},
                "sampling": [{"base": base, "configuration": "plain", "step_ms": 1.0}], "preprocessing": {},
                "scaling": []}

    assert len(run.merge_previous(result("sdxl"), result("sd15"))["sampling"]) == 2
    with pytest.raises(ValueError, match=r"settings.steps: 30 then 4"):
        run.merge_previous(result("sdxl", steps=4), result("sd15"))
    other = result("sdxl")
    other["machine"]["torch"] = "0.0"
    with pytest.raises(ValueError, match=r"machine.torch"):
        run.merge_previous(other, result("sd15"))
