"""Find a catalog model on disk, or explain exactly where it should be."""
from __future__ import annotations

import os

from .catalog import ModelFile
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


def find(entry: ModelFile, folders: list[str]) -> str | None:
    """The first existing path (for packs: the pack folder), else None."""
    for path in candidates(entry, folders):
        if os.path.isfile(path):
            return os.path.dirname(path) if entry.is_pack else path
    return None


def missing_error(entry: ModelFile, folders: list[str], node: str = "") -> ModelFileError:
    where = "\n  ".join(folders) if folders else "(no folder registered)"
    what = f"the folder '{entry.name}/' holding {', '.join(entry.filenames)}" if entry.is_pack \
        else " or ".join(entry.filenames)
    prefix = f"[PartID] {node}: " if node else "[PartID] "
    hint = "" if not entry.repo_id else (
        " Or let PartID download it: set the node's 'download' input to true, or "
        "PARTID_ALLOW_DOWNLOAD=1 in the environment.")
    return ModelFileError(
        f"{prefix}{entry.description or entry.name} not found. Expected {what} in one of:\n  {where}\n"
        f"Get it from {entry.source}. Licence: {entry.licence}.{hint}")
