"""A training set from a folder: images, captions, optional identity ids; per-image work cached on disk.

Layout (all optional except the images):
    folder/anyname.png            image (png, jpg, jpeg, webp; subfolders included)
    folder/anyname.txt            its caption (default: the `default_caption`)
    folder/anyname_mask.png       its region mask (read by the caller's prepare; never a sample)
    folder/identities.json        {"relative/path.png": "id", ...}; or, without it,
                                  `identity_from_folder`: the first subfolder names the identity
Paired (cross-image) training as Visual Persona does: the identity features of a sample come
from another image of the same identity (chosen per step from the sample's seed), the target
image being the one denoised; an identity with one image pairs with itself.

`prepare(image_path, sample) -> {name: tensor}` (parsing, face analysis, masks, latents, text:
whatever the caller needs) runs once per image; results are stored as safetensors under `cache_dir`,
keyed by the image's content hash, its caption and `prepare_key` (a string naming the models and
settings), so a changed image, caption or parser recomputes and nothing else does.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

log = logging.getLogger("partid.training")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def module_fingerprint(module: torch.nn.Module) -> str:
    """A cheap, stable id of a network's weights for cache keys: its class, tensor count and the names, shapes
    and leading values of three of its tensors (first, middle, last)."""
    state = module.state_dict()
    names = list(state)
    digest = hashlib.sha1(f"{type(module).__name__}|{len(names)}".encode())
    for name in sorted({names[0], names[len(names) // 2], names[-1]}) if names else ():
        t = state[name]
        digest.update(f"{name}{tuple(t.shape)}".encode())
        digest.update(t.detach().flatten()[:64].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Sample:
    path: str            # relative to the folder
    caption: str
    identity: str


def scan_folder(folder: str, default_caption: str = "a photo of a person", identity_from_folder: bool = True
                ) -> list[Sample]:
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"training folder not found: {folder}")
    ids_file = root / "identities.json"
    ids = json.loads(ids_file.read_text(encoding="utf-8")) if ids_file.is_file() else None
    samples = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not p.stem.endswith("_mask") and ".partid_cache" not in p.parts):
        rel = path.relative_to(root).as_posix()
        caption_file = path.with_suffix(".txt")
        caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.is_file() else default_caption
        if ids is not None:
            identity = str(ids.get(rel, rel))
        elif identity_from_folder and len(path.relative_to(root).parts) > 1:
            identity = path.relative_to(root).parts[0]
        else:
            identity = rel
        samples.append(Sample(rel, caption, identity))
    if not samples:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return samples


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# Part of every cache key: raise it when what the prepare functions compute changes, so caches written
# by an older PartID are recomputed (2: ConsistentID region masks cut at the parse size, then resized;
# 3: a *_mask.png also applies with fused regions, CLIP-H states with the official preprocessing everywhere;
# 4: images and masks read with their EXIF orientation and 16-bit gray scaled, as Load Image reads them).
CACHE_FORMAT = 4


class CachedDataset:
    """Samples of a folder with their prepared tensors (computed once, then read from the cache)."""

    def __init__(self, folder: str, prepare: Callable[[str, Sample], dict], prepare_key: str, cache_dir: str | None = None,
                 samples: list[Sample] | None = None, **scan_options):
        self.folder = folder
        self.samples = samples if samples is not None else scan_folder(folder, **scan_options)
        self.prepare, self.prepare_key = prepare, prepare_key
        self.cache_dir = cache_dir or os.path.join(folder, ".partid_cache")
        self._memory: dict[int, dict] = {}
        self.computed = 0        # how many images were prepared (not read from cache) in this process
        by_identity: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            by_identity.setdefault(s.identity, []).append(i)
        self.by_identity = by_identity

    def __len__(self) -> int:
        return len(self.samples)

    def cache_path(self, index: int) -> str:
        path = os.path.join(self.folder, self.samples[index].path)
        sample = self.samples[index]
        key = hashlib.sha256(f"{file_digest(path)}|{sample.caption}|{self.prepare_key}|{CACHE_FORMAT}".encode()).hexdigest()[:32]
        return os.path.join(self.cache_dir, f"{key}.safetensors")

    def item(self, index: int) -> dict:
        cached = self._memory.get(index)
        if cached is not None:
            return cached
        from safetensors.torch import load_file, save_file

        path = self.cache_path(index)
        if os.path.isfile(path):
            data = load_file(path)
        else:
            with torch.no_grad():   # preparation never trains; frozen encoders may hold inference tensors
                prepared = self.prepare(os.path.join(self.folder, self.samples[index].path), self.samples[index])
            data = {k: v.detach().cpu().contiguous() for k, v in prepared.items()}
            os.makedirs(self.cache_dir, exist_ok=True)
            tmp = f"{path}.{os.getpid()}.tmp"
            save_file(data, tmp)
            os.replace(tmp, path)   # atomic: concurrent ranks may prepare the same image
            self.computed += 1
        self._memory[index] = data
        return data

    def prepare_all(self, rank: int = 0, world: int = 1, progress: Callable[[int, int], None] | None = None) -> None:
        """Fill the cache; with several processes each prepares its own shard (index % world == rank)."""
        mine = [i for i in range(len(self)) if i % world == rank]
        for n, i in enumerate(mine):
            self.item(i)
            if progress is not None:
                progress(n + 1, len(mine))

    def reference_index(self, index: int, seed: int, paired: bool) -> int:
        """The image whose identity features condition sample `index` (itself unless paired)."""
        if not paired:
            return index
        others = [j for j in self.by_identity[self.samples[index].identity] if j != index]
        return random.Random(seed).choice(others) if others else index
