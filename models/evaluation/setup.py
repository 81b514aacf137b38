"""Finding and opening the evaluation models from a ComfyUI models folder (no ComfyUI import).

Each model is looked up by its catalog entry under <models>/<folder> (models/catalog.py), unless a path
is given; "none" turns a metric off. Face analysis picks a pack other than the conditioning one
(ConsistentID conditions on buffalo_l, so FaceSim uses antelopev2's glintr100 when it is there) and
says so in the notes when it has to fall back to the conditioning pack.
"""
from __future__ import annotations

import logging
import os

from .. import catalog, locate
from ..errors import ModelFileError
from .metrics import EvaluationModels

log = logging.getLogger(__name__)

FACE_PACKS = ("antelopev2", "buffalo_l")
CONDITIONING_PACK = "buffalo_l"             # what ConsistentID's face embedding comes from
CLIP_ENTRY, DINO_ENTRY = "clip_vit_large_patch14", "dino_vits16"
FACE_PARSER_ORDER = ("bisenet_face_parsing", "segformer_face_parsing")
BODY_PARSER_ORDER = ("schp_atr_onnx", "segformer_b2_clothes", "schp_lip_onnx")   # Visual Persona parses with SCHP ATR


def folders_of(models_dir: str | None, key: str) -> list[str]:
    return [] if not models_dir else [os.path.join(models_dir, sub) for sub in catalog.FOLDERS[key].subdirs]


def find_entry(models_dir: str | None, name: str) -> str | None:
    entry = catalog.by_name(name)
    return locate.find(entry, folders_of(models_dir, entry.folder)) or locate.find_in_hf_cache(entry)


def choose_face_pack(available: list[str], requested: str = "auto",
                     conditioned_with: str = CONDITIONING_PACK) -> tuple[str | None, str | None]:
    """(pack, note). 'auto' prefers a pack other than the conditioning one; the note says when it could not."""
    if requested not in ("auto", "none") + FACE_PACKS:
        raise ValueError(f"face pack {requested!r}: expected auto, none, {', '.join(FACE_PACKS)}")
    if requested == "none":
        return None, None
    if requested == "auto":
        others = [p for p in FACE_PACKS if p in available and p != conditioned_with]
        pick = others[0] if others else (conditioned_with if conditioned_with in available else None)
        if pick is None:
            return None, f"FaceSim not computed: no insightface pack ({', '.join(FACE_PACKS)}) found."
    else:
        pick = requested
    note = None
    if pick == conditioned_with:
        note = (f"FaceSim uses {pick}, the face model that conditioned the generation ({conditioned_with}); "
                f"it favours the method. Put {', '.join(p for p in FACE_PACKS if p != pick)} in "
                "models/insightface/models/ for an independent FaceSim.")
    return pick, note


def open_models(models_dir: str | None = None, clip: str | None = None, dino: str | None = None,
                face_pack: str = "auto", conditioned_with: str = CONDITIONING_PACK, face_parser: str | None = None,
                body_parser: str | None = None, det_thresh: float = 0.5, device: str = "cpu") -> EvaluationModels:
    """Open every model found. Paths override the catalog lookup; 'none' disables a model."""
    from .. import model_files
    from ..body_parsing import body_parser_from
    from ..face_parsing import face_parser_from
    from .clip_score import CLIPScorer
    from .dino_score import DINOScorer

    models = EvaluationModels(det_thresh=det_thresh)

    def resolve(given, entry_names, what):
        if given == "none":
            return None
        if given:
            if not os.path.exists(given):
                raise ModelFileError(f"[PartID] {what}: {given} does not exist")
            return given
        for name in entry_names:
            found = find_entry(models_dir, name)
            if found:
                return found
        entry = catalog.by_name(entry_names[0])
        models.notes.append(f"{what} not found (looked for {', '.join(entry_names)} under "
                            f"{', '.join(folders_of(models_dir, entry.folder)) or 'no models folder'}; "
                            f"get it from {entry.source}); its metrics are empty.")
        return None

    if path := resolve(clip, (CLIP_ENTRY,), "CLIP"):
        models.clip = CLIPScorer(path, device)
    if path := resolve(dino, (DINO_ENTRY,), "DINO"):
        models.dino = DINOScorer(path, device)
    if path := resolve(face_parser, FACE_PARSER_ORDER, "face parser"):
        models.face_parser = face_parser_from(model_files.load_parser(path, "face"), device)
    if path := resolve(body_parser, BODY_PARSER_ORDER, "body parser"):
        models.body_parser = body_parser_from(model_files.load_parser(path, "body"), device)

    roots = folders_of(models_dir, "insightface")
    available = [p for p in FACE_PACKS if _pack_found(roots, p)]
    pack, note = choose_face_pack(available, face_pack, conditioned_with)
    if note:
        models.notes.append(note)
        log.warning("%s", note)
    if pack is not None:
        from ..face_analysis_pack import open_pack

        models.face = open_pack(roots, pack, "cpu" if str(device) == "cpu" else "auto")
    return models


def _pack_found(roots: list[str], name: str) -> bool:
    from ..insightface_pack import find_pack

    try:
        find_pack(roots, name)
        return True
    except ModelFileError:
        return False
