"""Which reference and prompt go with each generation: a manifest, or two folders paired by file name.

Manifest (`--manifest FILE.csv`): a CSV with a header row and the columns `reference`, `generation` and,
optionally, `prompt`; paths are relative to the manifest's folder (or absolute).

Folders (`--references DIR --generations DIR`): every image of the generations folder is one pair.
- If the references folder holds a single image, every generation pairs with it.
- Otherwise a generation pairs with the reference whose file stem equals its own stem, or else with the
  reference whose stem is the longest prefix of its stem followed by "_", "-", "." or " "
  (`alice_0001.png` and `alice-seed3.png` pair with `alice.jpg`). A generation matching no reference is
  an error that names it.
Prompts, first found wins: `--prompts FILE` (a JSON object {generation file name or stem: prompt}, or
a CSV with columns `generation`, `prompt`), then a sidecar text file `<generation stem>.txt` beside the
generation. No prompt: CLIP-T is left empty for that pair.
"""
from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SEPARATORS = ("_", "-", ".", " ")


@dataclass(frozen=True)
class Pair:
    reference: Path
    generation: Path
    prompt: str | None = None


def images_in(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def read_prompts(path: str | Path | None) -> dict[str, str]:
    """{generation file name or stem: prompt} from a JSON object or a CSV (generation, prompt)."""
    if path is None:
        return {}
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object {{generation name: prompt}}")
        return dict(data)
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"generation", "prompt"} <= set(rows[0]):
        raise ValueError(f"{path}: a prompts CSV needs the columns 'generation' and 'prompt'")
    return {r["generation"]: r["prompt"] for r in rows}


def prompt_for(generation: Path, prompts: dict[str, str]) -> str | None:
    for key in (generation.name, generation.stem):
        if key in prompts:
            return prompts[key]
    sidecar = generation.with_suffix(".txt")
    if sidecar.is_file():
        return sidecar.read_text(encoding="utf-8").strip()
    return None


def reference_for(generation: Path, references: list[Path]) -> Path | None:
    if len(references) == 1:
        return references[0]
    stem = generation.stem
    exact = [r for r in references if r.stem == stem]
    if exact:
        return exact[0]
    prefixed = [r for r in references if any(stem.startswith(r.stem + s) for s in SEPARATORS)]
    return max(prefixed, key=lambda r: len(r.stem)) if prefixed else None


def pair_folders(references: str | Path, generations: str | Path, prompts_file: str | Path | None = None) -> list[Pair]:
    refs, gens = images_in(references), images_in(generations)
    if not refs:
        raise ValueError(f"no reference image ({', '.join(IMAGE_SUFFIXES)}) in {references}")
    if not gens:
        raise ValueError(f"no generated image ({', '.join(IMAGE_SUFFIXES)}) in {generations}")
    prompts = read_prompts(prompts_file)
    pairs, unmatched = [], []
    for gen in gens:
        ref = reference_for(gen, refs)
        if ref is None:
            unmatched.append(gen.name)
        else:
            pairs.append(Pair(ref, gen, prompt_for(gen, prompts)))
    if unmatched:
        raise ValueError(f"no reference for {', '.join(unmatched)}: name a generation after its reference "
                         f"(reference 'alice.png' -> 'alice_001.png'), or use a manifest CSV")
    return pairs


def read_manifest(path: str | Path) -> list[Pair]:
    path = Path(path)
    base = path.parent
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"reference", "generation"} <= set(rows[0]):
        raise ValueError(f"{path}: a manifest needs a header with the columns 'reference', 'generation' "
                         "(and optionally 'prompt')")
    pairs = []
    for i, row in enumerate(rows, start=2):
        ref, gen = (base / os.path.expanduser(row[c]) for c in ("reference", "generation"))
        for p in (ref, gen):
            if not p.is_file():
                raise ValueError(f"{path}, line {i}: {p} does not exist")
        pairs.append(Pair(ref, gen, (row.get("prompt") or "").strip() or None))
    return pairs


def load_rgb(path: str | Path):
    """uint8 RGB [H, W, 3] (Pillow, as ComfyUI's Load Image; alpha dropped)."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as img:
        return np.array(ImageOps.exif_transpose(img).convert("RGB"))
