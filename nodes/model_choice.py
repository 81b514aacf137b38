"""Turn a loader's combo choice into a file path: catalog name or file on disk, download if allowed."""
from __future__ import annotations

import folder_paths

import comfy.utils

from ..models import catalog, download, locate
from ..models.errors import InputError, ModelFileError
from .folders import search_folders

WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".sft", ".onnx")


def choices(kind: str, folder_key: str) -> list[str]:
    """Catalog names first (so shared workflows validate before the file exists), then other files."""
    entries = catalog.of_kind(kind)
    # Files that a catalog name stands for are not listed again (a name of another kind sharing the folder
    # included: the evaluation folder holds the CLIP and the DINO models, each offered by its own combo).
    known = {f"{e.name}/{n}" if e.is_pack else n for e in catalog.CATALOG if e.folder == folder_key
             for n in e.filenames}
    files = []
    if folder_key in folder_paths.folder_names_and_paths:
        for f in folder_paths.get_filename_list(folder_key):
            parts = f.replace("\\", "/").split("/")
            if f.lower().endswith(WEIGHT_SUFFIXES) and parts[-1] not in known and "/".join(parts[-2:]) not in known:
                files.append(f)
    return [e.name for e in entries] + sorted(files)


def resolve(node: str, input_name: str, choice: str, kind: str, folder_key: str, allow_download: bool) -> str:
    """Full path of the chosen model (for packs, their folder). Raises a ModelFileError that says where to put it."""
    entry = next((e for e in catalog.of_kind(kind) if e.name == choice), None)
    folders = search_folders(folder_key)
    if entry is None:
        path = folder_paths.get_full_path(folder_key, choice) if folder_key in folder_paths.folder_names_and_paths else None
        if path is None:
            raise InputError(node, input_name, f"'{choice}' is not in {', '.join(folders) or folder_key}.",
                             "refresh the node list (R) or pick another file.")
        return path
    found = locate.find(entry, folders) or locate.find_in_hf_cache(entry)
    if found is not None:
        return found
    if not download.download_allowed(allow_download):
        raise locate.missing_error(entry, folders, node)
    if not folders:
        raise locate.missing_error(entry, folders, node)
    bar = comfy.utils.ProgressBar(100)
    try:
        path = download.download(entry, folders[0],
                                 progress=lambda n, total: bar.update_absolute(n * 100 // max(total, 1), 100))
    except ModelFileError as exc:
        by_hand = f"place {', '.join(entry.filenames)} by hand in {download.target_folder(entry, folders[0])}"
        raise exc.at_input(node, input_name, f"{by_hand} (from {entry.source})." if not entry.repo_id else
                           f"run again when the Hub is reachable, or {by_hand}.") from exc
    return path if not entry.is_pack else download.target_folder(entry, folders[0])
