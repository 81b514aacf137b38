"""insightface pack layouts, finder and validator, against random-weight packs in the official formats."""
from __future__ import annotations

import os
import shutil

import cv2
import numpy as np
import onnxruntime as ort
import pytest
from skimage import data as skdata

from partid.models import insightface_pack as ip
from partid.models.catalog import by_name
from partid.models.errors import ModelFileError
from fixtures_builders.insightface_packs import build_pack
from partid_rig import REPORT

PACK_NAMES = ("buffalo_l", "antelopev2")
DET = {"buffalo_l": "det_10g.onnx", "antelopev2": "scrfd_10g_bnkps.onnx"}
REC = {"buffalo_l": "w600k_r50.onnx", "antelopev2": "glintr100.onnx"}


@pytest.fixture(scope="module")
def packs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("insightface")
    return {name: build_pack(str(root / "models" / name), name) for name in PACK_NAMES}


@pytest.fixture
def pack_copy(packs, tmp_path):
    """A private copy of a built pack that a test may damage."""
    def make(name: str) -> str:
        return shutil.copytree(packs[name], tmp_path / name)
    return make


def session(path: str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    # The official-style fixed output declarations make onnxruntime warn at other sizes, as it
    # does for the released files; the warning is expected, keep the test log clean.
    options.log_severity_level = 3
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def astronaut(width: int, height: int) -> np.ndarray:
    """skimage's astronaut as an NCHW float blob, normalised the way insightface feeds SCRFD."""
    img = cv2.resize(skdata.astronaut(), (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    return ((img - 127.5) / 128.0).transpose(2, 0, 1)[None]


# --- layouts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PACK_NAMES)
def test_required_files_match_the_catalog(name):
    required = tuple(m.filename for m in ip.PACKS[name] if m.required)
    assert required == by_name(name).filenames
    assert {m.role for m in ip.PACKS[name]} == {
        "detection", "recognition", "landmark_3d_68", "landmark_2d_106", "genderage"}


# --- built packs: signature, determinism, size --------------------------------------------------

@pytest.mark.parametrize("name", PACK_NAMES)
def test_built_pack_validates_with_every_role(packs, name):
    roles = ip.validate_pack(packs[name], name)
    assert roles["detection"].endswith(DET[name]) and roles["recognition"].endswith(REC[name])
    assert len(roles) == 5


@pytest.mark.parametrize("name", PACK_NAMES)
def test_files_are_small_and_declare_the_official_signature(packs, name):
    for spec in ip.PACKS[name]:
        path = os.path.join(packs[name], spec.filename)
        assert os.path.getsize(path) < 2 * 1024 * 1024
        inputs, outputs = ip.read_signature(path)
        assert [(n, d) for n, _, d in inputs] == [(t.name, t.shape) for t in spec.inputs]
        assert [(n, d) for n, _, d in outputs] == [(t.name, t.shape) for t in spec.outputs]


def test_build_is_deterministic_from_the_seed(packs, tmp_path):
    again = build_pack(str(tmp_path / "same"), "buffalo_l", seed=0)
    other = build_pack(str(tmp_path / "other"), "buffalo_l", seed=1)
    for spec in ip.PACKS["buffalo_l"]:
        def read(folder):
            with open(os.path.join(folder, spec.filename), "rb") as fh:
                return fh.read()
        assert read(again) == read(packs["buffalo_l"])
        assert read(other) != read(again)


# --- built packs run on a real image --------------------------------------------------------------

@pytest.mark.parametrize("name", PACK_NAMES)
@pytest.mark.parametrize("width,height", [(640, 640), (640, 480)])
def test_detector_outputs_per_stride(packs, name, width, height):
    sess = session(os.path.join(packs[name], DET[name]))
    outs = sess.run(None, {"input.1": astronaut(width, height)})
    assert [o.name for o in sess.get_outputs()] == ["448", "471", "494", "451", "474", "497", "454", "477", "500"]
    for kind, w in enumerate(ip.SCRFD_WIDTHS):
        for level, stride in enumerate(ip.SCRFD_STRIDES):
            assert outs[kind * 3 + level].shape == ((height // stride) * (width // stride) * 2, w)
    if (width, height) == (640, 640):
        assert [o.shape[0] for o in outs[:3]] == [12800, 3200, 800]
    scores = np.concatenate(outs[:3])
    assert scores.min() >= 0.0 and scores.max() <= 1.0          # probabilities, as released
    assert all(np.isfinite(o).all() for o in outs) and (np.concatenate(outs[3:6]) >= 0).all()


def test_detector_rows_follow_scrfd_anchor_order(packs):
    """Rows are (y*W + x)*2 + anchor: a change in the bottom-right corner moves only late rows."""
    sess = session(os.path.join(packs["buffalo_l"], "det_10g.onnx"))
    blank = np.full((1, 3, 640, 640), -0.5, np.float32)
    patched = blank.copy()
    patched[..., 576:, 576:] = 0.9
    before, after = sess.run(["448"], {"input.1": blank})[0], sess.run(["448"], {"input.1": patched})[0]
    cells = np.flatnonzero(np.abs(after - before)[:, 0] > 1e-6) // 2    # stride-8 grid is 80x80
    assert cells.size and (cells // 80).min() >= 40 and (cells % 80).min() >= 40


@pytest.mark.parametrize("name", PACK_NAMES)
def test_recogniser_embeds_a_batch_of_faces(packs, name):
    sess = session(os.path.join(packs[name], REC[name]))
    crops = astronaut(512, 512)[..., 30:142, 180:292]          # 112x112 around the face
    batch = np.concatenate([crops, astronaut(112, 112)]).astype(np.float32)
    (emb,) = sess.run(None, {"input.1": batch})
    assert emb.shape == (2, 512) and np.isfinite(emb).all()
    assert not np.allclose(emb[0], emb[1])                      # depends on the image


@pytest.mark.parametrize("filename,size,width", [
    ("1k3d68.onnx", 192, 3309), ("2d106det.onnx", 192, 212), ("genderage.onnx", 96, 3)])
def test_optional_models_run(packs, filename, size, width):
    sess = session(os.path.join(packs["buffalo_l"], filename))
    raw = cv2.resize(skdata.astronaut(), (size, size)).astype(np.float32).transpose(2, 0, 1)[None]
    (out,) = sess.run(None, {"data": raw})                      # raw 0..255, normalised in-graph
    assert out.shape == (1, width) and np.isfinite(out).all()


# --- the validator refuses wrong files ---------------------------------------------------------------

@pytest.mark.parametrize("name", PACK_NAMES)
def test_swapped_detector_and_recogniser_are_refused(pack_copy, name):
    folder = pack_copy(name)
    det, rec = os.path.join(folder, DET[name]), os.path.join(folder, REC[name])
    os.replace(det, det + ".tmp")
    os.replace(rec, det)
    os.replace(det + ".tmp", rec)
    with pytest.raises(ModelFileError) as err:
        ip.validate_pack(folder, name)
    message = str(err.value)
    assert DET[name] in message and "detection" in message
    assert "1 outputs, expected 9" in message and "looks like a recognition model" in message


def test_recogniser_slot_holding_a_detector_names_the_file(pack_copy):
    folder = pack_copy("buffalo_l")
    shutil.copy(os.path.join(folder, "det_10g.onnx"), os.path.join(folder, "w600k_r50.onnx"))
    with pytest.raises(ModelFileError, match=r"w600k_r50\.onnx.*recognition.*looks like a detection model"):
        ip.validate_pack(folder, "buffalo_l")


@pytest.mark.parametrize("damage,expected", [
    (lambda b: b[: len(b) // 2], "not a readable ONNX model"),
    (lambda b: b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\n", "Git LFS pointer"),
    (lambda b: b"<!DOCTYPE html><html>rate limited</html>", "HTML"),
    (lambda b: b"", "empty"),
])
def test_broken_downloads_are_refused_with_the_reason(pack_copy, damage, expected):
    folder = pack_copy("antelopev2")
    path = os.path.join(folder, "glintr100.onnx")
    with open(path, "rb") as fh:
        content = fh.read()
    with open(path, "wb") as fh:
        fh.write(damage(content))
    with pytest.raises(ModelFileError, match="glintr100.onnx") as err:
        ip.validate_pack(folder, "antelopev2")
    assert expected in str(err.value)


def test_wrong_optional_file_is_left_out_not_fatal(pack_copy, caplog):
    folder = pack_copy("buffalo_l")
    shutil.copy(os.path.join(folder, "genderage.onnx"), os.path.join(folder, "2d106det.onnx"))
    roles = ip.validate_pack(folder, "buffalo_l")
    assert "landmark_2d_106" not in roles and "detection" in roles
    assert "2d106det.onnx" in caplog.text


# --- finding the pack -----------------------------------------------------------------------------

def test_missing_pack_error_names_folders_files_url_and_licence(tmp_path):
    roots = [str(tmp_path / "a"), str(tmp_path / "b")]
    with pytest.raises(ModelFileError) as err:
        ip.find_pack(roots, "antelopev2")
    message, entry = str(err.value), by_name("antelopev2")
    for root in roots:
        for folder in ("models/antelopev2", "antelopev2", "models/antelopev2/antelopev2"):
            assert os.path.join(root, folder) in message
    for filename in ("scrfd_10g_bnkps.onnx", "glintr100.onnx"):
        assert filename in message
    assert entry.source in message and entry.licence in message and "https://" in message


def test_nested_antelopev2_folder_is_found(packs, tmp_path):
    nested = tmp_path / "insightface" / "models" / "antelopev2" / "antelopev2"
    shutil.copytree(packs["antelopev2"], nested)
    found = ip.find_pack([str(tmp_path / "elsewhere"), str(tmp_path / "insightface")], "antelopev2")
    assert found == str(nested)
    assert ip.validate_pack(found, "antelopev2")["detection"].endswith("scrfd_10g_bnkps.onnx")


@pytest.mark.parametrize("layout", ["models/buffalo_l", "buffalo_l"])
def test_plain_layouts_are_found(packs, tmp_path, layout):
    shutil.copytree(packs["buffalo_l"], tmp_path / layout)
    assert ip.find_pack([str(tmp_path)], "buffalo_l") == str(tmp_path / layout)


def test_incomplete_pack_is_named_with_its_missing_file(pack_copy, tmp_path):
    folder = pack_copy("buffalo_l")
    os.remove(os.path.join(folder, "w600k_r50.onnx"))
    with pytest.raises(ModelFileError, match=r"det_10g\.onnx.*lacks w600k_r50\.onnx"):
        ip.find_pack([str(tmp_path)], "buffalo_l")
    with pytest.raises(ModelFileError, match="lacks w600k_r50.onnx"):
        ip.validate_pack(folder, "buffalo_l")


def test_onnx_providers_put_cuda_first_only_when_available(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert ip.onnx_providers() == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert ip.onnx_providers() == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_full_cost_pack_has_the_released_networks_size_and_the_test_graphs_answers():
    """The benchmarks' buffalo_l (fixtures_builders/insightface_full.py) against published figures: SCRFD_10G_KPS
    4.23 M parameters and SCRFD-10GF 9.98 GFLOPs at VGA (insightface detection/scrfd README), w600k_r50.onnx
    174,383,860 bytes in buffalo_l.zip. Its detector answers exactly as the test graph does."""
    import onnx

    from fixtures_builders.cache import cached
    from fixtures_builders.insightface_full import full_pack_root, macs
    from partid.models.face_analysis import letterbox
    from partid.models.face_analysis_pack import open_pack

    root = full_pack_root("buffalo_l")
    folder = root / "models" / "buffalo_l"
    det = onnx.load(str(folder / "det_10g.onnx"))
    params = sum(int(np.prod(i.dims)) for i in det.graph.initializer)
    tiny_params = sum(int(np.prod(i.dims)) for i in onnx.load(
        str(cached("insightface/models/buffalo_l", lambda p: build_pack(str(p), "buffalo_l")) / "det_10g.onnx")
    ).graph.initializer)
    gmacs = macs(det, (480, 640)) / 1e9
    rec_bytes = os.path.getsize(folder / "w600k_r50.onnx")
    REPORT.append(f"full-cost buffalo_l: detector {(params - tiny_params) / 1e6:.3f} M parameters (SCRFD_10G_KPS "
                  f"4.23 M), {gmacs:.2f} GMACs at 640x480 (SCRFD-10GF 9.98 G); w600k_r50.onnx {rec_bytes} bytes "
                  "(released 174383860)")
    assert abs((params - tiny_params) / 4.23e6 - 1) < 0.02 and abs(gmacs / 9.98 - 1) < 0.03
    assert abs(rec_bytes / 174_383_860 - 1) < 1e-3
    models = open_pack([str(root)], "buffalo_l", "cpu")          # the pack validator accepts its signatures
    assert set(models.sessions) >= {"detection", "recognition"}
    tiny = cached("insightface/models/buffalo_l", lambda p: build_pack(str(p), "buffalo_l"))
    img, _ = letterbox(np.ascontiguousarray(skdata.astronaut()))
    x = ((img.astype(np.float32) - 127.5) / 128).transpose(2, 0, 1)[None]
    want = session(str(tiny / "det_10g.onnx")).run(None, {"input.1": x})
    got = session(str(folder / "det_10g.onnx")).run(None, {"input.1": x})
    assert max(float(np.abs(a - b).max()) for a, b in zip(want, got)) < 1e-20
