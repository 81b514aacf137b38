"""Evaluating many pairs: each distinct image and prompt embedded once; CSV and summary written."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from .metrics import EvaluationModels, compare, features, prompt_embedding
from .pairing import Pair, load_rgb
from .report import summarise, write_csv, write_summary, CSV_NAME

log = logging.getLogger(__name__)


def evaluate_pairs(models: EvaluationModels, pairs: list[Pair],
                   progress: Callable[[int, int], None] | None = None) -> list[dict]:
    cache, texts, rows = {}, {}, []

    def feats(path: Path):
        key = str(Path(path).resolve())
        if key not in cache:
            cache[key] = features(models, load_rgb(path))
        return cache[key]

    for i, pair in enumerate(pairs):
        if pair.prompt not in texts:
            texts[pair.prompt] = prompt_embedding(models, pair.prompt)
        row = {"reference": str(pair.reference), "generation": str(pair.generation), "prompt": pair.prompt or ""}
        row.update(compare(feats(pair.reference), feats(pair.generation), texts[pair.prompt]))
        rows.append(row)
        cache.pop(str(Path(pair.generation).resolve()), None)   # generations are seldom shared
        if progress:
            progress(i + 1, len(pairs))
    return rows


def evaluate_to_folder(models: EvaluationModels, pairs: list[Pair], out_dir: str | Path,
                       progress: Callable[[int, int], None] | None = None) -> dict:
    """Run every pair; write metrics.csv, summary.json and summary.md into out_dir; return the summary."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = evaluate_pairs(models, pairs, progress)
    write_csv(rows, out_dir / CSV_NAME)
    summary = summarise(rows, models.models_used(), models.notes)
    write_summary(summary, out_dir)
    log.info("evaluated %d pair(s) into %s", len(rows), out_dir)
    return summary


def evaluate_images(models: EvaluationModels, references: list, generations: list, prompt: str | None = None,
                    progress: Callable[[int, int], None] | None = None) -> list[dict]:
    """uint8 RGB arrays: one reference for every generation, or one reference per generation (same count)."""
    if len(references) not in (1, len(generations)):
        raise ValueError(f"{len(references)} references for {len(generations)} generations: give one reference, "
                         "or one per generation")
    ref_feats = [features(models, r) for r in references]
    text = prompt_embedding(models, prompt)
    rows = []
    for i, gen in enumerate(generations):
        ref_index = 0 if len(references) == 1 else i
        row = {"reference": f"reference[{ref_index}]", "generation": f"generation[{i}]", "prompt": prompt or ""}
        row.update(compare(ref_feats[ref_index], features(models, gen), text))
        rows.append(row)
        if progress:
            progress(i + 1, len(generations))
    return rows
