"""`python -m <pack> evaluate`: pairing rules, manifest, and a run over real photos that writes CSV + summary."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from fixtures_builders import photos
from fixtures_builders.evaluation import link_evaluation_models
from fixtures_builders.layout import populate_models_dir
from partid.models.evaluation import metrics, pairing, setup


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (8, 8)).save(folder / name)
    return folder


def test_folder_pairing_by_name(tmp_path):
    refs = _touch(tmp_path / "refs", "alice.png", "alice_b.jpg", "bob.png")
    gens = _touch(tmp_path / "gens", "alice_001.png", "alice_b_2.png", "bob.png", "bob-seed3.webp")
    (gens / "bob.txt").write_text("a man\n")
    (tmp_path / "prompts.json").write_text(json.dumps({"alice_001.png": "a woman", "alice_b_2": "a hat"}))
    pairs = {p.generation.name: p for p in pairing.pair_folders(refs, gens, tmp_path / "prompts.json")}
    assert {g: p.reference.name for g, p in pairs.items()} == {
        "alice_001.png": "alice.png", "alice_b_2.png": "alice_b.jpg", "bob.png": "bob.png", "bob-seed3.webp": "bob.png"}
    assert {g: p.prompt for g, p in pairs.items()} == {
        "alice_001.png": "a woman", "alice_b_2.png": "a hat", "bob.png": "a man", "bob-seed3.webp": None}
    _touch(gens, "carol_1.png")
    with pytest.raises(ValueError, match="no reference for carol_1.png"):
        pairing.pair_folders(refs, gens)


def test_single_reference_pairs_with_everything_and_csv_prompts(tmp_path):
    refs = _touch(tmp_path / "refs", "me.jpg")
    gens = _touch(tmp_path / "gens", "x.png", "y.png")
    (tmp_path / "p.csv").write_text("generation,prompt\nx.png,\"a photo, at night\"\n")
    pairs = pairing.pair_folders(refs, gens, tmp_path / "p.csv")
    assert [(p.reference.name, p.generation.name, p.prompt) for p in pairs] == [
        ("me.jpg", "x.png", "a photo, at night"), ("me.jpg", "y.png", None)]


def test_manifest_paths_are_relative_to_it(tmp_path):
    _touch(tmp_path / "a", "r.png")
    _touch(tmp_path / "b", "g.png")
    (tmp_path / "m.csv").write_text("reference,generation,prompt\na/r.png,b/g.png,hello\n")
    (pair,) = pairing.read_manifest(tmp_path / "m.csv")
    assert pair.reference == tmp_path / "a" / "r.png" and pair.prompt == "hello"
    (tmp_path / "bad.csv").write_text("reference,generation\na/r.png,b/missing.png\n")
    with pytest.raises(ValueError, match="line 2"):
        pairing.read_manifest(tmp_path / "bad.csv")


def test_manifest_from_a_spreadsheet_takes_prompts_from_the_row_then_the_file_then_a_sidecar(tmp_path, caplog):
    _touch(tmp_path / "a", "r.png")
    _touch(tmp_path / "b", "g1.png", "g2.png", "g3.png")
    (tmp_path / "b" / "g3.txt").write_text("from the sidecar\n")
    (tmp_path / "p.json").write_text(json.dumps({"g2": "from the file", "g9.png": "a typo"}))
    # Excel's "CSV UTF-8" starts with a byte-order mark, which must not hide the first column's name.
    (tmp_path / "m.csv").write_bytes("reference,generation,prompt\na/r.png,b/g1.png,from the row\n"
                                     "a/r.png,b/g2.png,\na/r.png,b/g3.png,\n".encode("utf-8-sig"))
    with caplog.at_level("WARNING", logger="partid.models.evaluation.pairing"):
        pairs = pairing.read_manifest(tmp_path / "m.csv", tmp_path / "p.json")
    assert [p.prompt for p in pairs] == ["from the row", "from the file", "from the sidecar"]
    assert "g9.png" in caplog.text and "g2" not in caplog.text.split("generations:")[-1]


def test_manifest_rows_and_images_are_checked_before_any_model_loads(tmp_path):
    _touch(tmp_path / "a", "r.png")
    (tmp_path / "m.csv").write_text("reference,generation\na/r.png\n")
    with pytest.raises(ValueError, match="line 2: no generation path"):
        pairing.read_manifest(tmp_path / "m.csv")
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "m.csv").write_text("reference,generation\na/r.png,a/r.png\na/r.png,a/broken.png\n")
    with pytest.raises(ValueError, match=r"line 3: .*broken.png is not a readable image"):
        pairing.read_manifest(tmp_path / "m.csv")
    refs = _touch(tmp_path / "refs", "x.png")
    gens = _touch(tmp_path / "gens", "x_1.png")
    (gens / "x_2.png").write_bytes(b"")
    with pytest.raises(ValueError, match="x_2.png is not a readable image"):
        pairing.pair_folders(refs, gens)


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    models = populate_models_dir(root / "models", with_checkpoint=False, with_sdxl=False)
    link_evaluation_models(models)
    # Only buffalo_l present: FaceSim must fall back to the conditioning pack and say so. Its random detector
    # scores a blank image 0.2 and the astronaut 0.28-0.32, hence det-thresh 0.25.
    (models / "insightface" / "models" / "antelopev2").unlink()
    astro = photos.astronaut()
    refs, gens = root / "refs", root / "gens"
    refs.mkdir()
    gens.mkdir()
    Image.fromarray(astro).save(refs / "astro.png")
    Image.fromarray(np.ascontiguousarray(astro[:, ::-1])).save(gens / "astro_mirrored.png")
    Image.fromarray(np.zeros((200, 160, 3), np.uint8)).save(gens / "astro-black.png")
    (root / "prompts.json").write_text(json.dumps({"astro_mirrored": "an astronaut"}))
    return root


def test_evaluate_command_writes_csv_and_summary(run_dirs, capsys):
    from partid.cli import runner

    out = run_dirs / "out"
    code = runner.main(["evaluate", "--references", str(run_dirs / "refs"), "--generations", str(run_dirs / "gens"),
                        "--prompts", str(run_dirs / "prompts.json"), "--out", str(out),
                        "--models", str(run_dirs / "models"), "--det-thresh", "0.25"])
    assert code == 0
    printed = capsys.readouterr().out
    assert str(out / "metrics.csv") in printed and "| face_sim |" in printed
    with open(out / "metrics.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == metrics.COLUMNS
        rows = {r["generation"].rsplit("/", 1)[-1]: r for r in reader}
    assert set(rows) == {"astro_mirrored.png", "astro-black.png"}
    assert all(r["reference"].endswith("astro.png") for r in rows.values())
    assert rows["astro-black.png"]["face_sim"] == "0.000000" and rows["astro-black.png"]["face_in_generation"] == "0"
    assert rows["astro-black.png"]["clip_t"] == "" and rows["astro_mirrored.png"]["clip_t"] != ""
    for row in rows.values():
        for m in ("clip_i", "dino"):
            assert row[m] != ""
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 2 and set(summary["models"]) == set(metrics.METRICS)
    assert "buffalo_l" in summary["models"]["face_sim"] and any("conditioned" in n for n in summary["notes"])
    for m in metrics.METRICS:
        values = [float(r[m]) for r in rows.values() if r[m] != ""]
        s = summary["metrics"][m]
        assert s["count"] == len(values)
        if values:   # the CSV keeps 6 decimals
            assert s["mean"] == pytest.approx(np.mean(values), abs=1e-6)
            assert s["std"] == pytest.approx(np.std(values), abs=1e-6)
    assert summary["metrics"]["clip_t"]["count"] == 1
    for m in ("fgis", "part_sim"):       # a pair left out of a computed metric is explained in the notes
        gaps = summary["pairs"] - summary["metrics"][m]["count"]
        assert (gaps > 0) == any(n.startswith(f"{m} is empty for {gaps} pair(s)") for n in summary["notes"])
    assert "| face_sim |" in (out / "summary.md").read_text()


def test_command_row_equals_the_engine_on_the_same_files(run_dirs):
    models = setup.open_models(str(run_dirs / "models"), det_thresh=0.25)
    ref, gen = (pairing.load_rgb(run_dirs / p) for p in ("refs/astro.png", "gens/astro_mirrored.png"))
    want = metrics.evaluate_pair(models, ref, gen, "an astronaut")
    with open(run_dirs / "out" / "metrics.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["generation"].endswith("astro_mirrored.png"))
    for column in metrics.METRICS + metrics.REGION_COLUMNS + metrics.PART_COLUMNS:
        if math.isnan(want[column]):
            assert row[column] == ""
        else:
            assert float(row[column]) == pytest.approx(want[column], abs=1e-6), column


def test_bad_usage_exits_2(tmp_path):
    from partid.cli import runner

    assert runner.main(["evaluate", "--generations", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    _touch(tmp_path / "g", "a.png")
    assert runner.main(["evaluate", "--references", str(tmp_path / "g"), "--generations", str(tmp_path / "g"),
                        "--out", str(tmp_path / "o"), "--clip", str(tmp_path / "nope")]) == 2
    (tmp_path / "m.csv").write_text("reference,generation\ng/a.png,g/a.png\n")
    assert runner.main(["evaluate", "--manifest", str(tmp_path / "m.csv"), "--references", str(tmp_path / "g"),
                        "--out", str(tmp_path / "o")]) == 2
    # No metric model anywhere (a mistyped --models): exit 2, not an all-empty metrics.csv and success.
    assert runner.main(["evaluate", "--references", str(tmp_path / "g"), "--generations", str(tmp_path / "g"),
                        "--out", str(tmp_path / "empty"), "--models", str(tmp_path / "no_such_folder")]) == 2
    assert not (tmp_path / "empty" / "metrics.csv").exists()
    for flags in (["--det-thresh", "0"], ["--device", "nonsense"]):     # checked before any model loads
        assert runner.main(["evaluate", "--references", str(tmp_path / "g"), "--generations", str(tmp_path / "g"),
                            "--out", str(tmp_path / "o"), *flags]) == 2
    (tmp_path / "g" / "a_2.png").write_bytes(b"not an image")    # a broken generation: no traceback, exit 2
    assert runner.main(["evaluate", "--references", str(_touch(tmp_path / "r", "a.png")), "--generations",
                        str(tmp_path / "g"), "--out", str(tmp_path / "o")]) == 2
