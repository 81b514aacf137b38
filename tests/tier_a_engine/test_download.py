"""Optional download through the real huggingface_hub client, against a loopback Hub."""
from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest
from fixtures_builders.fake_hub import FakeHub

from partid.models import catalog, download, locate
from partid.models.errors import ModelFileError

PAYLOAD = b"face-parser-weights" * 4096


def _entry(**changes):
    base = catalog.by_name("bisenet_face_parsing")
    return dataclasses.replace(base, **changes)


@pytest.fixture()
def hub():
    server = FakeHub({("JackAILab/ConsistentID", "face_parsing.pth"): PAYLOAD,
                      ("levihsu/OOTDiffusion", "checkpoints/humanparsing/parsing_atr.onnx"): b"onnx" * 100})
    yield server
    server.close()


def test_download_verifies_digest_records_revision_and_reports_progress(tmp_path, hub):
    seen = []
    path = download.download(_entry(), str(tmp_path), endpoint=hub.url, progress=lambda n, t: seen.append((n, t)))
    assert open(path, "rb").read() == PAYLOAD and path == str(tmp_path / "face_parsing.pth")
    assert seen and seen[-1] == (len(PAYLOAD), len(PAYLOAD))
    lock = json.loads((tmp_path / download.LOCK_NAME).read_text())
    assert lock["bisenet_face_parsing"]["revision"] == hub.commit
    assert lock["bisenet_face_parsing"]["sha256"]["face_parsing.pth"] == hashlib.sha256(PAYLOAD).hexdigest()
    # Every request after the first resolution names the frozen commit, not "main".
    assert all(hub.commit in p for _m, p in hub.requests[1:])
    assert locate.find(_entry(), [str(tmp_path)]) == path


def test_nested_repo_file_lands_under_the_catalog_name(tmp_path, hub):
    path = download.download(catalog.by_name("schp_atr_onnx"), str(tmp_path), endpoint=hub.url)
    assert path == str(tmp_path / "parsing_atr.onnx")
    assert not (tmp_path / ".partid-download").exists()


def test_pinned_catalog_digest_mismatch_deletes_the_file(tmp_path, hub):
    entry = _entry(sha256={"face_parsing.pth": "0" * 64})
    with pytest.raises(ModelFileError) as err:
        download.download(entry, str(tmp_path), endpoint=hub.url)
    assert "expected " + "0" * 64 in str(err.value) and "deleted" in str(err.value)
    assert not (tmp_path / "face_parsing.pth").exists()


def test_corrupted_transfer_fails_against_the_hub_digest(tmp_path):
    bad = FakeHub({("JackAILab/ConsistentID", "face_parsing.pth"): PAYLOAD}, corrupt=True)
    try:
        with pytest.raises(ModelFileError, match="has sha256"):
            download.download(_entry(), str(tmp_path), endpoint=bad.url)
    finally:
        bad.close()


def test_offline_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelFileError) as err:
        download.download(_entry(), str(tmp_path), endpoint="http://127.0.0.1:9")
    msg = str(err.value)
    assert "could not download" in msg and "offline" in msg and str(tmp_path) in msg and "non-commercial" in msg


def test_unreachable_hub_gives_a_clear_error(tmp_path):
    with pytest.raises(ModelFileError, match="could not download bisenet_face_parsing"):
        download.download(_entry(), str(tmp_path), endpoint="http://127.0.0.1:9")


def test_models_not_on_the_hub_say_where_to_get_them(tmp_path):
    with pytest.raises(ModelFileError) as err:
        download.download(catalog.by_name("buffalo_l"), str(tmp_path))
    assert "github.com/deepinsight/insightface" in str(err.value) and "non-commercial" in str(err.value)


def test_download_is_off_by_default(monkeypatch):
    monkeypatch.delenv(download.ENV_ALLOW, raising=False)
    assert not download.download_allowed()
    assert download.download_allowed(True)
    monkeypatch.setenv(download.ENV_ALLOW, "1")
    assert download.download_allowed()


def test_missing_error_names_folders_files_source_and_licence(tmp_path):
    entry = catalog.by_name("consistentid_sd15")
    folders = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert locate.find(entry, folders) is None
    msg = str(locate.missing_error(entry, folders, "PartID ConsistentID Loader"))
    for needle in (*folders, "ConsistentID-v1.bin", "huggingface.co/JackAILab/ConsistentID", "Licence",
                   "PARTID_ALLOW_DOWNLOAD", "PartID ConsistentID Loader"):
        assert needle in msg


def test_pack_search_finds_nested_folders(tmp_path):
    entry = catalog.by_name("segformer_b2_clothes")
    nested = tmp_path / "models" / entry.name
    nested.mkdir(parents=True)
    for name in entry.filenames:
        (nested / name).write_text("{}")
    assert locate.find(entry, [str(tmp_path)]) == str(nested)


def test_a_partial_pack_is_not_found_and_the_error_names_what_it_lacks(tmp_path):
    """config.json alone (what an interrupted copy leaves) used to count as the installed pack, and the loader
    then failed a node later with a bare transformers error."""
    entry = catalog.by_name("segformer_face_parsing")
    folder = tmp_path / entry.name
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert locate.find(entry, [str(tmp_path)]) is None
    msg = str(locate.missing_error(entry, [str(tmp_path)], "PartID Face Parser Loader"))
    assert f"Incomplete (an interrupted download or copy?): {folder} lacks model.safetensors, " \
           "preprocessor_config.json." in msg
    (folder / "preprocessor_config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"x")      # weights under another name transformers reads
    assert locate.find(entry, [str(tmp_path)]) == str(folder)


def test_an_interrupted_pack_download_leaves_nothing_that_counts_as_installed(tmp_path):
    entry = catalog.by_name("segformer_face_parsing")
    files = {("jonathandinu/face-parsing", "config.json"): b'{"model_type": "segformer"}',
             ("jonathandinu/face-parsing", "preprocessor_config.json"): b"{}"}
    broken = FakeHub(files)                                # model.safetensors: 404 mid-pack
    try:
        with pytest.raises(ModelFileError, match="could not download segformer_face_parsing"):
            download.download(entry, str(tmp_path), endpoint=broken.url)
    finally:
        broken.close()
    assert not (tmp_path / entry.name / "config.json").exists() and locate.find(entry, [str(tmp_path)]) is None
    whole = FakeHub({**files, ("jonathandinu/face-parsing", "model.safetensors"): PAYLOAD})
    try:
        first = download.download(entry, str(tmp_path), endpoint=whole.url)
    finally:
        whole.close()
    assert first == str(tmp_path / entry.name / "config.json")
    assert locate.find(entry, [str(tmp_path)]) == str(tmp_path / entry.name)
    assert (tmp_path / entry.name / "model.safetensors").read_bytes() == PAYLOAD


def test_a_damaged_lock_file_is_named_with_its_fix(tmp_path, hub):
    (tmp_path / download.LOCK_NAME).write_text("{not json")
    with pytest.raises(ModelFileError) as err:
        download.download(_entry(), str(tmp_path), endpoint=hub.url)
    assert download.LOCK_NAME in str(err.value) and "Fix: delete it" in str(err.value)


def test_every_catalog_entry_is_complete():
    for entry in catalog.CATALOG:
        assert entry.filenames and entry.licence and entry.source and entry.folder in catalog.FOLDERS
        # Packs fetch every file they hold; a single file fetches one, saved under its first (canonical) name.
        expected = 0 if not entry.repo_id else (len(entry.filenames) if entry.is_pack else 1)
        assert len(entry.repo_files) == expected, entry.name


def test_models_already_in_the_hugging_face_cache_are_used_in_place(tmp_path, monkeypatch):
    """A user who ran the model with diffusers/transformers has it in the HF cache: found there (read only)
    rather than downloaded again; a pack counts only when all its files are cached."""
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    commit = "ab" * 20

    def cache(repo_id, files):
        repo = tmp_path / "hub" / ("models--" + repo_id.replace("/", "--"))
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        for name in files:
            path = repo / "snapshots" / commit / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
        return repo / "snapshots" / commit

    assert locate.find_in_hf_cache(_entry()) is None
    snap = cache("JackAILab/ConsistentID", ["face_parsing.pth"])
    assert locate.find_in_hf_cache(_entry()) == str(snap / "face_parsing.pth")
    pack = catalog.by_name("segformer_face_parsing")
    cache(pack.repo_id, ["config.json", "model.safetensors"])                 # preprocessor_config.json missing
    assert locate.find_in_hf_cache(pack) is None
    snap = cache(pack.repo_id, ["preprocessor_config.json"])
    assert locate.find_in_hf_cache(pack) == str(snap)
    assert locate.find_in_hf_cache(catalog.by_name("buffalo_l")) is None      # not a Hub model
    assert "Hugging Face cache was searched too" in str(locate.missing_error(_entry(), [str(tmp_path)]))
