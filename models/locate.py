"""Find a catalog model on disk, or explain exactly where it should be."""
from __future__ import annotations

import os

from .catalog import TRANSFORMERS_WEIGHTS, ModelFile
from .errors import ModelFileError


def candidates(entry: ModelFile, folders: list[str]) -> list[str]:
    """Every path where `entry`'s first file may live, in search order."""
    out = []
    for folder in folders:
        if entry.is_pack:
            for sub in (entry.name, os.path.join("models", entry.name),
                        os.path.join("models", entry.name, entry.name)):
                out.append(os.path.join(folder, sub, entry.filenames[0]))
        else:
            out.extend(os.path.join(folder, name) for name in entry.filenames)
    return out


def pack_missing(entry: ModelFile, folder: str) -> list[str]:
    """The files of pack `entry` that `folder` lacks (its weights may be under any name transformers reads)."""
    def here(name: str) -> bool:
        names = TRANSFORMERS_WEIGHTS if name == "model.safetensors" else (name,)
        return any(os.path.isfile(os.path.join(folder, n)) for n in names)

    return [name for name in entry.filenames if not here(name)]


def find(entry: ModelFile, folders: list[str]) -> str | None:
    """The first existing path (for packs: the first pack folder holding every file), else None."""
    for path in candidates(entry, folders):
        if os.path.isfile(path):
            if not entry.is_pack:
                return path
            if not pack_missing(entry, os.path.dirname(path)):
                return os.path.dirname(path)
    return None


def find_in_hf_cache(entry: ModelFile) -> str | None:
    """The entry's files in the Hugging Face cache (~/.cache/huggingface/hub, or HF_HUB_CACHE), where a user who
    ran the model elsewhere already has them: read in place, never written. For packs the snapshot folder (its
    files keep the repo's names), else the file; None unless every file is there."""
    if not entry.repo_id:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    paths = []
    for repo_file in entry.repo_files:
        try:
            path = try_to_load_from_cache(entry.repo_id, repo_file, revision=entry.revision)
        except Exception:       # an unreadable cache is the same as none
            return None
        if not isinstance(path, str) or not os.path.isfile(path):
            return None
        paths.append(path)
    if not entry.is_pack:
        return paths[0]
    folder = os.path.dirname(paths[0])
    return folder if not pack_missing(entry, folder) else None


def incomplete(entry: ModelFile, folders: list[str]) -> list[tuple[str, list[str]]]:
    """Pack folders that exist with their first file but lack others: (folder, missing files)."""
    if not entry.is_pack:
        return []
    found = [os.path.dirname(p) for p in candidates(entry, folders) if os.path.isfile(p)]
    return [(f, missing) for f in found if (missing := pack_missing(entry, f))]


def missing_error(entry: ModelFile, folders: list[str], node: str = "") -> ModelFileError:
    where = "\n  ".join(folders) if folders else "(no folder registered)"
    what = f"the folder '{entry.name}/' holding {', '.join(entry.filenames)}" if entry.is_pack \
        else " or ".join(entry.filenames)
    prefix = f"[PartID] {node}: " if node else "[PartID] "
    hint = "" if not entry.repo_id else (
        f" (The Hugging Face cache was searched too, for {entry.repo_id}.) Or let PartID download it: set the "
        "node's 'download' input to true, or PARTID_ALLOW_DOWNLOAD=1 in the environment.")
    partial = "".join(f"\nIncomplete (an interrupted download or copy?): {f} lacks {', '.join(m)}."
                      for f, m in incomplete(entry, folders))
    return ModelFileError(
        f"{prefix}{entry.description or entry.name} not found. Expected {what} in one of:\n  {where}{partial}\n"
        f"Get it from {entry.source}. Licence: {entry.licence}.{hint}")
