"""Which reference and prompt go with each generation: a manifest, or two folders paired by file name.

Manifest (`--manifest FILE.csv`): a CSV (UTF-8, with or without a byte-order mark) with a header row and
the columns `reference`, `generation` and, optionally, `prompt`; paths are relative to the manifest's
folder (or absolute). A row's own prompt comes first; without one the prompt rules below apply.

Folders (`--references DIR --generations DIR`): every image of the generations folder is one pair.
- If the references folder holds a single image, every generation pairs with it.
- Otherwise a generation pairs with the reference whose file stem equals its own stem, or else with the
  reference whose stem is the longest prefix of its stem followed by "_", "-", "." or " "
  (`alice_0001.png` and `alice-seed3.png` pair with `alice.jpg`). A generation matching no reference is
  an error that names it.
Prompts, first found wins: `--prompts FILE` (a JSON object {generation file name or stem: prompt}, or
a CSV with columns `generation`, `prompt`), then a sidecar text file `<generation stem>.txt` beside the
generation. No prompt: CLIP-T is left empty for that pair. A key of the prompts file that names no
generation is logged as a warning (a typo would otherwise leave that pair's CLIP-T empty unnoticed).
Every image is opened and checked while pairing, so an unreadable file stops the run before any model
loads, with the file (and manifest line) named.
"""
from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
SEPARATORS = ("_", "-", ".", " ")
log = logging.getLogger(__name__)


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
        data = json.loads(path.read_text(encoding="utf-8-sig"))
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise ValueError(f"{path}: expected a JSON object {{generation name: prompt}}")
        return dict(data)
    with open(path, newline="", encoding="utf-8-sig") as fh:     # -sig: CSVs saved by spreadsheets
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


def warn_unused_prompts(prompts: dict[str, str], generations: list[Path]) -> None:
    names = {g.name for g in generations} | {g.stem for g in generations}
    unused = sorted(k for k in prompts if k not in names)
    if unused:
        log.warning("the prompts file names %d image(s) that are not among the generations: %s",
                    len(unused), ", ".join(unused[:10]) + (" ..." if len(unused) > 10 else ""))


def check_image(path: Path, where: str) -> None:
    """Open and verify an image file; ValueError naming it (and `where`) when Pillow cannot read it."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:    # Pillow raises several types (UnidentifiedImageError, SyntaxError, OSError)
        raise ValueError(f"{where}{path} is not a readable image ({type(exc).__name__}: {exc}); "
                         "replace or remove the file") from exc


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
    warn_unused_prompts(prompts, gens)
    for path in refs + gens:
        check_image(path, "")
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


def read_manifest(path: str | Path, prompts_file: str | Path | None = None) -> list[Pair]:
    path = Path(path)
    base = path.parent
    with open(path, newline="", encoding="utf-8-sig") as fh:     # -sig: CSVs saved by spreadsheets
        rows = list(csv.DictReader(fh))
    if not rows or not {"reference", "generation"} <= set(rows[0]):
        raise ValueError(f"{path}: a manifest needs a header with the columns 'reference', 'generation' "
                         "(and optionally 'prompt')")
    prompts = read_prompts(prompts_file)
    pairs = []
    for i, row in enumerate(rows, start=2):
        empty = [c for c in ("reference", "generation") if not (row.get(c) or "").strip()]
        if empty:
            raise ValueError(f"{path}, line {i}: no {' and no '.join(empty)} path; every row needs both")
        ref, gen = (base / os.path.expanduser(row[c].strip()) for c in ("reference", "generation"))
        for p in (ref, gen):
            if not p.is_file():
                raise ValueError(f"{path}, line {i}: {p} does not exist")
            check_image(p, f"{path}, line {i}: ")
        pairs.append(Pair(ref, gen, (row.get("prompt") or "").strip() or prompt_for(gen, prompts)))
    warn_unused_prompts(prompts, [p.generation for p in pairs])
    return pairs


def load_rgb(path: str | Path):
    """uint8 RGB [H, W, 3] (as ComfyUI's Load Image: EXIF orientation, 16-bit gray scaled; alpha dropped)."""
    import numpy as np

    from ..images import open_image

    try:
        return np.array(open_image(path, "RGB"))
    except Exception as exc:    # checked while pairing; this covers a file changed since
        raise ValueError(f"{path} is not a readable image ({type(exc).__name__}: {exc})") from exc
