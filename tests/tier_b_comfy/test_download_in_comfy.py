"""A loader node downloads a missing catalog model when allowed, with ComfyUI's progress bar."""
from __future__ import annotations

import pytest
from fixtures_builders import parsers
from fixtures_builders.fake_hub import FakeHub


@pytest.fixture()
def empty_face_parsing_folder(comfy, tmp_path):
    fp = comfy.folder_paths
    saved = fp.folder_names_and_paths["face_parsing"]
    fp.folder_names_and_paths["face_parsing"] = ([str(tmp_path)], saved[1])
    yield tmp_path
    fp.folder_names_and_paths["face_parsing"] = saved


def test_loader_downloads_when_allowed_and_reports_progress(comfy, empty_face_parsing_folder, monkeypatch):
    from comfy import utils as comfy_utils  # not `import comfy.utils`: that would shadow the fixture

    hub = FakeHub({("JackAILab/ConsistentID", "face_parsing.pth"): parsers.bisenet_pth().read_bytes()})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)  # a mirror, as users in some regions set it
    monkeypatch.delenv("PARTID_ALLOW_DOWNLOAD", raising=False)
    progress = []
    monkeypatch.setattr(comfy_utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None: progress.append(value))
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDFaceParserLoader"]
    try:
        with pytest.raises(Exception) as err:  # off by default: the error says where to put it and how to allow it
            comfy.run(loader, parser="bisenet_face_parsing")
        assert str(empty_face_parsing_folder) in str(err.value) and "download" in str(err.value)
        assert hub.requests == []
        (weights,), _ = comfy.run(loader, parser="bisenet_face_parsing", download=True)
    finally:
        hub.close()
    assert weights.backend == "bisenet"
    assert (empty_face_parsing_folder / "face_parsing.pth").is_file()
    assert (empty_face_parsing_folder / "partid-models.lock.json").is_file()
    assert progress and progress[-1] == 100
    # Present now: a second load never touches the network.
    count = len(hub.requests)
    comfy.run(loader, parser="bisenet_face_parsing", download=True)
    assert len(hub.requests) == count


def test_a_failed_download_names_the_loader_and_its_input(comfy, empty_face_parsing_folder, monkeypatch):
    hub = FakeHub({})                                          # the Hub answers, but not with this file
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    loader = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDFaceParserLoader"]
    try:
        with pytest.raises(Exception) as err:
            comfy.run(loader, parser="bisenet_face_parsing", download=True)
    finally:
        hub.close()
    msg = str(err.value)
    assert "PartID Face Parser Loader, input 'parser'" in msg and "could not download bisenet_face_parsing" in msg
    assert msg.count("Fix:") == 1 and str(empty_face_parsing_folder) in msg.split("Fix:")[1]
