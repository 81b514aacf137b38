"""Register PartID's model folders with ComfyUI's folder_paths, extending what exists.

extra_model_paths.yaml is applied before custom nodes load, so an entry may already exist (with
the user's own paths, and often an empty extension set): keep its paths first, add ours after,
and add our extensions to its set.
"""
from __future__ import annotations

import os

import folder_paths

from ..models.catalog import FOLDERS


def register_model_folders() -> None:
    for folder in FOLDERS.values():
        if folder.core:
            continue
        defaults = [os.path.join(folder_paths.models_dir, sub) for sub in folder.subdirs]
        existing = folder_paths.folder_names_and_paths.get(folder.key)
        if existing is None:
            folder_paths.folder_names_and_paths[folder.key] = (defaults, set(folder.extensions))
            continue
        paths, extensions = existing
        for path in defaults:
            if path not in paths:
                paths.append(path)
        # An empty set means "any file" (what extra_model_paths.yaml leaves): keep it that way.
        merged = set(extensions) | set(folder.extensions) if extensions else extensions
        folder_paths.folder_names_and_paths[folder.key] = (paths, merged)


def search_folders(key: str) -> list[str]:
    return folder_paths.get_folder_paths(key) if key in folder_paths.folder_names_and_paths else []
