"""``python -m <repo_dir> evaluate`` - score generations against their references (no server needed).

    python -m <repo_dir> evaluate --references DIR --generations DIR [--prompts FILE] --out DIR
    python -m <repo_dir> evaluate --manifest pairs.csv --out DIR

Pairing (models/evaluation/pairing.py): one reference image pairs with every generation; otherwise a
generation pairs with the reference of the same stem, or whose stem its name starts with
(``alice.png`` <- ``alice_0001.png``). A manifest CSV has the columns reference, generation[, prompt].
Prompts: a manifest row's prompt, then --prompts (JSON {generation: prompt} or CSV generation,prompt), then
``<generation>.txt`` beside the generation. Every image is checked before any model loads.

Models are found in a ComfyUI models folder (--models, default: the ComfyUI that find_comfyui finds):
evaluation/clip_vit_large_patch14/, evaluation/dino_deitsmall16_pretrain.pth, insightface/models/<pack>/,
face_parsing/, body_parsing/. A missing model leaves its metric empty (the summary says which).
Writes OUT/metrics.csv (one row per pair), OUT/summary.json and OUT/summary.md (mean, std, count per
metric; the model behind each). Exit codes: 0 done, 2 bad usage / pairing / model file / no metric model
found at all.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("partid.cli")
EXIT_OK, EXIT_USAGE = 0, 2


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="score generations: FaceSim, CLIP-I, CLIP-T, DINO, FGIS, per-part",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--manifest", help="CSV with columns reference, generation[, prompt]")
    src.add_argument("--generations", help="folder of generated images")
    p.add_argument("--references", help="folder of reference images (with --generations)")
    p.add_argument("--prompts", help="JSON {generation: prompt} or CSV generation,prompt")
    p.add_argument("--out", required=True, help="folder for metrics.csv, summary.json, summary.md")
    p.add_argument("--models", help="ComfyUI models folder (default: <ComfyUI>/models)")
    p.add_argument("--clip", help="CLIP folder (transformers layout) or 'none'")
    p.add_argument("--dino", help="DINO ViT-S torch-hub .pth or 'none'")
    p.add_argument("--face-parser", help="face parser file/folder or 'none'")
    p.add_argument("--body-parser", help="body parser file/folder or 'none'")
    p.add_argument("--face-pack", default="auto", choices=("auto", "antelopev2", "buffalo_l", "none"),
                   help="insightface pack for FaceSim; auto = one other than --conditioned-with")
    p.add_argument("--conditioned-with", default="buffalo_l", choices=("buffalo_l", "antelopev2", "unknown"),
                   help="the pack that conditioned the generations (ConsistentID: buffalo_l; Visual Persona "
                        "conditions on no face pack: unknown)")
    p.add_argument("--det-thresh", type=float, default=0.5, help="face detection threshold (default 0.5)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda (default cpu)")
    return p


def _models_dir(given: str | None) -> str | None:
    if given:
        return given
    from .server import find_comfyui

    root = find_comfyui()
    return os.path.join(root, "models") if root else None


def check_options(args) -> None:
    """The flags that need no file, checked before any image or model is read."""
    import torch

    if not 0.0 < args.det_thresh <= 1.0:
        raise ValueError(f"--det-thresh {args.det_thresh} is outside (0, 1]; insightface's default is 0.5")
    try:
        device = torch.device(args.device)
    except RuntimeError as exc:
        raise ValueError(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:1, mps)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: this machine has no usable CUDA device; use --device cpu")


def main(args) -> int:
    from ..models.errors import PartIDError
    from ..models.evaluation import pairing, run, setup
    from ..models.evaluation.report import summary_markdown

    try:
        check_options(args)
        if args.manifest:
            if args.references:
                raise ValueError("--references goes with --generations; a manifest names its references itself")
            pairs = pairing.read_manifest(args.manifest, args.prompts)
        else:
            if not args.references:
                raise ValueError("--generations needs --references")
            pairs = pairing.pair_folders(args.references, args.generations, args.prompts)
        models = setup.open_models(_models_dir(args.models), clip=args.clip, dino=args.dino,
                                   face_pack=args.face_pack, conditioned_with=args.conditioned_with,
                                   face_parser=args.face_parser, body_parser=args.body_parser,
                                   det_thresh=args.det_thresh, device=args.device)
        if all(why.startswith("not computed") for why in models.models_used().values()):
            raise ValueError("no metric can be computed: no evaluation model was found or chosen ("
                             + "; ".join(models.notes or ["check --models"]) + ")")
        summary = run.evaluate_to_folder(models, pairs, args.out,
                                         progress=lambda i, n: log.info("pair %d/%d", i, n))
    except (ValueError, OSError, PartIDError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    sys.stdout.write(summary_markdown(summary))
    for name in ("metrics.csv", "summary.json", "summary.md"):
        sys.stdout.write(os.path.join(args.out, name) + "\n")
    return EXIT_OK
