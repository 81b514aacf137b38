"""The evaluation metrics of one reference/generation pair, each with the model that computes it.

    face_sim   cosine of ArcFace embeddings of the largest face in each image; 0 when the generation has
               no face, empty when the reference has none (REFERENCE.md 6). Use a face model other than
               the conditioning one (ConsistentID conditions on buffalo_l's w600k_r50: use antelopev2's
               glintr100); setup.choose_face_pack picks it and states when it could not.
    clip_i     100 x cosine of L2-normalised CLIP image embeddings, reference vs generation.
    clip_t     100 x cosine of the CLIP text embedding of the prompt and the generation's image embedding.
    dino       cosine of DINO ViT-S CLS tokens, reference vs generation.
    fgis       FGIS proxy: per facial region (face, eyes, ears, nose, mouth) the DINO cosine of the region
               crops of both images (same face parser), averaged over the regions present in both.
    part_sim   per Visual Persona body part (face, upper, lower, shoes) the DINO cosine of the part images
               of both images (same body parser), averaged over the parts present in both; the full-body
               image's cosine is reported on its own (part_full_body).

A metric whose model is not given is left empty (NaN), never guessed. Embeddings of an image are
computed once (`features`) and compared many times (`compare`), so a reference shared by many
generations is embedded once.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from .regions import PARTS, REGIONS, body_part_crops, face_region_crops

METRICS = ("face_sim", "clip_i", "clip_t", "dino", "fgis", "part_sim")
SCALES = {"clip_i": "100 x cosine", "clip_t": "100 x cosine"}     # every other metric: cosine
IDENTITY_PARTS = PARTS[1:]                                        # VP's identity parts: face, upper, lower, shoes
REGION_COLUMNS = tuple(f"fgis_{r}" for r in REGIONS)
PART_COLUMNS = tuple(f"part_{p}" for p in PARTS)
COLUMNS = ("reference", "generation", "prompt", *METRICS, *REGION_COLUMNS, *PART_COLUMNS,
           "face_in_reference", "face_in_generation")
NAN = float("nan")


def cosine(a, b) -> float:
    """Cosine of two vectors (float64); 0 when either is all zeros."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return 0.0 if na == 0 or nb == 0 else float(np.dot(a, b) / (na * nb))


def face_sim(reference: np.ndarray | None, generation: np.ndarray | None) -> float:
    """REFERENCE.md 6: 0 when the generation has no face; undefined (NaN) when the reference has none."""
    if reference is None:
        return NAN
    if generation is None:
        return 0.0
    return cosine(reference, generation)


def named_cosines(reference: dict[str, torch.Tensor], generation: dict[str, torch.Tensor],
                  names: tuple[str, ...]) -> dict[str, float]:
    """Cosine per name present in both; NaN for the others."""
    return {n: cosine(reference[n], generation[n]) if n in reference and n in generation else NAN for n in names}


def mean_present(values) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else NAN


@dataclass
class EvaluationModels:
    """Whatever models were found; a None model leaves its metric empty. `notes` end up in the summary."""

    clip: object = None                  # clip_score.CLIPScorer
    dino: object = None                  # dino_score.DINOScorer
    face: object = None                  # models.face_analysis_pack.FaceAnalysisModels
    face_parser: object = None           # models.face_parsing.FaceParser
    body_parser: object = None           # models.body_parsing.BodyParser
    det_thresh: float = 0.5
    notes: list[str] = field(default_factory=list)

    def models_used(self) -> dict[str, str]:
        """metric -> the model that computes it (or why it is not computed)."""
        def missing(what):
            return f"not computed: no {what}"

        dino = self.dino.describe() if self.dino else None
        face = None
        if self.face is not None:
            rec = os.path.basename(self.face.files.get("recognition", ""))
            face = f"insightface {self.face.name} ({rec}), largest face, det_thresh {self.det_thresh}"
        return {
            "face_sim": face or missing("face analysis pack"),
            "clip_i": self.clip.describe() if self.clip else missing("CLIP"),
            "clip_t": self.clip.describe() if self.clip else missing("CLIP"),
            "dino": dino or missing("DINO"),
            "fgis": (f"{dino} on face regions of {self.face_parser.backend}:{self.face_parser.source}"
                     if dino and self.face_parser else missing("DINO and face parser")),
            "part_sim": (f"{dino} on Visual Persona part images of {self.body_parser.source}"
                         if dino and self.body_parser else missing("DINO and body parser")),
        }


@dataclass
class ImageFeatures:
    """Everything the metrics need from one image; None = that model was not given."""

    clip: torch.Tensor | None = None
    dino: torch.Tensor | None = None
    face: np.ndarray | None = None        # L2-normed ArcFace embedding of the largest face; None = no face
    face_checked: bool = False            # a face model looked (so face None means "no face")
    regions: dict[str, torch.Tensor] | None = None
    parts: dict[str, torch.Tensor] | None = None


def _crop_embeddings(dino, crops) -> dict[str, torch.Tensor]:
    names = [n for n in crops.names if crops.present(n)]
    if not names:
        return {}
    embeds = dino.crop_embeddings(np.stack([crops.images[n] for n in names]))
    return dict(zip(names, embeds))


def features(models: EvaluationModels, rgb: np.ndarray) -> ImageFeatures:
    """Embed one uint8 RGB [H, W, 3] image with every model given."""
    out = ImageFeatures()
    if models.clip is not None:
        out.clip = models.clip.image_embeddings([rgb])[0]
    if models.dino is not None:
        out.dino = models.dino.image_embeddings([rgb])[0]
        if models.face_parser is not None:
            out.regions = _crop_embeddings(models.dino, face_region_crops(models.face_parser, rgb))
        if models.body_parser is not None:
            out.parts = _crop_embeddings(models.dino, body_part_crops(models.body_parser, rgb))
    if models.face is not None:
        from ..face_analysis import analyze

        result = analyze(models.face, [rgb], det_thresh=models.det_thresh, face_select="largest",
                         on_no_face="bypass", node="PartID Evaluate")
        face = result.selected_faces()[0]
        out.face, out.face_checked = (None if face is None else face.normed_embedding), True
    return out


def prompt_embedding(models: EvaluationModels, prompt: str | None) -> torch.Tensor | None:
    if models.clip is None or not prompt:
        return None
    return models.clip.text_embeddings([prompt])[0]


def compare(reference: ImageFeatures, generation: ImageFeatures, text: torch.Tensor | None = None) -> dict:
    """The metric columns of one pair (see COLUMNS); NaN where a model or an input is missing."""
    row = {m: NAN for m in METRICS}
    row.update({c: NAN for c in REGION_COLUMNS + PART_COLUMNS})
    row["face_in_reference"] = row["face_in_generation"] = ""
    if reference.face_checked and generation.face_checked:
        row["face_sim"] = face_sim(reference.face, generation.face)
        row["face_in_reference"] = int(reference.face is not None)
        row["face_in_generation"] = int(generation.face is not None)
    if reference.clip is not None and generation.clip is not None:
        row["clip_i"] = 100.0 * cosine(reference.clip, generation.clip)
    if text is not None and generation.clip is not None:
        row["clip_t"] = 100.0 * cosine(text, generation.clip)
    if reference.dino is not None and generation.dino is not None:
        row["dino"] = cosine(reference.dino, generation.dino)
    if reference.regions is not None and generation.regions is not None:
        per = named_cosines(reference.regions, generation.regions, REGIONS)
        row.update({f"fgis_{r}": v for r, v in per.items()})
        row["fgis"] = mean_present(per.values())
    if reference.parts is not None and generation.parts is not None:
        per = named_cosines(reference.parts, generation.parts, PARTS)
        row.update({f"part_{p}": v for p, v in per.items()})
        row["part_sim"] = mean_present(per[p] for p in IDENTITY_PARTS)
    return row


def evaluate_pair(models: EvaluationModels, reference: np.ndarray, generation: np.ndarray,
                  prompt: str | None = None) -> dict:
    """One pair from uint8 RGB arrays -> the metric columns."""
    return compare(features(models, reference), features(models, generation), prompt_embedding(models, prompt))
