"""Optional model download from the Hugging Face Hub, off unless the user turns it on.

Turned on per node (an input) or globally with PARTID_ALLOW_DOWNLOAD=1. A pinned revision is
used when the catalog names one; otherwise the revision the Hub resolves on first download is
recorded in a lock file beside the models and reused. Every file is checked against a sha256:
the catalog's when known, else the Hub's own LFS digest. A user whose files are in place never
reaches this module.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Callable

from .catalog import ModelFile
from .errors import ModelFileError
from .weights import sha256_of

log = logging.getLogger("partid")

ENV_ALLOW = "PARTID_ALLOW_DOWNLOAD"
LOCK_NAME = "partid-models.lock.json"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

ProgressFn = Callable[[int, int], None]


def download_allowed(node_flag: bool = False) -> bool:
    return bool(node_flag) or os.environ.get(ENV_ALLOW, "").strip().lower() in ("1", "true", "yes", "on")


def _tqdm_forwarding(progress: ProgressFn | None):
    """A tqdm class that keeps the console bar and also reports to `progress` (ComfyUI's bar)."""
    from tqdm.auto import tqdm

    if progress is None:
        return None

    class Forwarding(tqdm):
        def update(self, n=1):
            out = super().update(n)
            if self.total:
                progress(int(self.n), int(self.total))
            return out

    return Forwarding


def _read_lock(folder: str) -> dict:
    path = os.path.join(folder, LOCK_NAME)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fh:
            lock = json.load(fh)
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"[PartID] {path} (PartID's record of downloaded revisions) is unreadable: {exc}. "
                             "Fix: delete it; the next download records the revisions again.") from exc
    return lock if isinstance(lock, dict) else {}


def _write_lock(folder: str, lock: dict) -> None:
    with open(os.path.join(folder, LOCK_NAME), "w", encoding="utf-8") as fh:
        json.dump(lock, fh, indent=1, sort_keys=True)


def target_folder(entry: ModelFile, folder: str) -> str:
    """Packs (transformers folders) get a sub-folder named after the entry; single files do not."""
    return os.path.join(folder, entry.name) if entry.is_pack else folder


def download(entry: ModelFile, folder: str, *, progress: ProgressFn | None = None,
             endpoint: str | None = None) -> str:
    """Fetch `entry` into `folder`; return the path of its first file. Raises ModelFileError."""
    if not entry.repo_id:
        raise ModelFileError(
            f"[PartID] {entry.name} cannot be downloaded automatically (it is not on the Hugging Face Hub). "
            f"Get it from {entry.source} and place {', '.join(entry.filenames)} in {target_folder(entry, folder)}. "
            f"Licence: {entry.licence}.")
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    # A mirror (HF_ENDPOINT) is honoured even when set after huggingface_hub was imported.
    endpoint = endpoint or os.environ.get("HF_ENDPOINT") or None
    dest = target_folder(entry, folder)
    os.makedirs(dest, exist_ok=True)
    lock = _read_lock(folder)
    locked = lock.get(entry.name, {})
    revision = entry.revision or locked.get("revision") or "main"
    staging = os.path.join(folder, ".partid-download")
    staged = []
    try:
        for repo_file, local_name in zip(entry.repo_files, entry.filenames):
            meta = get_hf_file_metadata(hf_hub_url(entry.repo_id, repo_file, revision=revision, endpoint=endpoint))
            # Freeze the revision the first file resolved to, so all files come from one commit.
            if revision == "main" and meta.commit_hash:
                revision = meta.commit_hash
            hub_digest = (meta.etag or "").strip('"').lower()
            expected = (entry.sha256.get(local_name) or locked.get("sha256", {}).get(local_name)
                        or (hub_digest if _SHA256.match(hub_digest) else None))
            log.info("PartID: downloading %s/%s@%s", entry.repo_id, repo_file, revision[:12])
            got = hf_hub_download(entry.repo_id, repo_file, revision=revision, local_dir=staging,
                                  endpoint=endpoint, tqdm_class=_tqdm_forwarding(progress))
            digest = sha256_of(got)
            if expected and digest != expected:
                os.remove(got)
                raise ModelFileError(
                    f"[PartID] {repo_file} from {entry.repo_id}@{revision} has sha256 {digest}, expected {expected}. "
                    "The file was deleted. Fix: retry the download; if it repeats, the upstream file changed: "
                    f"download it by hand from {entry.source}.")
            staged.append((got, os.path.join(dest, local_name)))
            locked.setdefault("sha256", {})[local_name] = digest
        # Nothing enters the models folder until every file is fetched and verified, and the first file (what
        # the search looks for: a pack's config.json) goes in last, so an interrupted download never leaves a
        # folder that counts as installed.
        for got, final in reversed(staged):
            os.replace(got, final)
    except ModelFileError:
        raise
    except Exception as exc:  # network, offline mode, missing repo: all end the same way for the user
        raise ModelFileError(
            f"[PartID] could not download {entry.name} from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}). If this machine is offline, download "
            f"{', '.join(entry.filenames)} from {entry.source} on another machine and place it in {dest}. "
            f"Licence: {entry.licence}.") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    locked.update({"repo_id": entry.repo_id, "revision": revision})
    lock[entry.name] = locked
    _write_lock(folder, lock)
    return staged[0][1]
