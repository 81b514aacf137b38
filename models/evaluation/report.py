"""Writing the per-pair CSV and the summary (mean, std, count per metric; the models used)."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from .metrics import COLUMNS, METRICS, REGION_COLUMNS, PART_COLUMNS, SCALES

CSV_NAME, JSON_NAME, MARKDOWN_NAME = "metrics.csv", "summary.json", "summary.md"


def _cell(value) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return "" if value is None else str(value)


def rows_csv(rows: list[dict]) -> str:
    """One line per pair, every column of metrics.COLUMNS; an empty cell = not computed / not present."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in COLUMNS])
    return out.getvalue()


def write_csv(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(rows_csv(rows), encoding="utf-8")
    return path


def summarise(rows: list[dict], models_used: dict[str, str], notes: list[str] | None = None) -> dict:
    """Per metric (and per region/part column): mean and population std (ddof 0) over the pairs where it
    was computed, and that count."""
    stats = {}
    for column in METRICS + REGION_COLUMNS + PART_COLUMNS:
        values = np.array([r[column] for r in rows if isinstance(r.get(column), float) and not math.isnan(r[column])])
        stats[column] = {"mean": float(values.mean()) if values.size else None,
                         "std": float(values.std()) if values.size else None, "count": int(values.size)}
    return {"pairs": len(rows), "metrics": stats, "models": models_used,
            "scales": {m: SCALES.get(m, "cosine") for m in METRICS},
            "notes": list(notes or []) + _gap_notes(rows, models_used, stats)}


def _gap_notes(rows: list[dict], models_used: dict[str, str], stats: dict) -> list[str]:
    """Why a computed metric has fewer values than pairs (an empty cell is otherwise unexplained)."""
    computed = {m for m, why in models_used.items() if not str(why).startswith("not computed")}
    out = []
    no_ref_face = sum(1 for r in rows if r.get("face_in_reference") == 0)
    if "face_sim" in computed and no_ref_face:
        out.append(f"face_sim is empty for {no_ref_face} pair(s) whose reference has no detected face.")
    for metric, what in (("fgis", "facial region"), ("part_sim", "body part")):
        gaps = len(rows) - stats[metric]["count"]
        if metric in computed and gaps:
            out.append(f"{metric} is empty for {gaps} pair(s) with no {what} found in both images: a generation "
                       f"that lost them is left out of {metric} (face_sim counts a lost face as 0).")
    return out


def summary_markdown(summary: dict) -> str:
    lines = [f"PartID evaluation: {summary['pairs']} pair(s)", "",
             "| metric | mean | std | count | scale | model |", "|---|---|---|---|---|---|"]
    for metric in METRICS:
        s = summary["metrics"][metric]
        mean = "" if s["mean"] is None else f"{s['mean']:.4f}"
        std = "" if s["std"] is None else f"{s['std']:.4f}"
        lines.append(f"| {metric} | {mean} | {std} | {s['count']} | {summary['scales'][metric]} | "
                     f"{summary['models'][metric]} |")
    detail = [c for c in REGION_COLUMNS + PART_COLUMNS if summary["metrics"][c]["count"]]
    if detail:
        lines += ["", "| region / part | mean | std | count |", "|---|---|---|---|"]
        for c in detail:
            s = summary["metrics"][c]
            lines.append(f"| {c} | {s['mean']:.4f} | {s['std']:.4f} | {s['count']} |")
    if summary["notes"]:
        lines += [""] + [f"Note: {n}" for n in summary["notes"]]
    return "\n".join(lines) + "\n"


def write_summary(summary: dict, folder: str | Path) -> tuple[Path, Path]:
    folder = Path(folder)
    json_path, md_path = folder / JSON_NAME, folder / MARKDOWN_NAME
    json_path.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    md_path.write_text(summary_markdown(summary), encoding="utf-8")
    return json_path, md_path
