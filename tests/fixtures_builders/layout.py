"""Lay the cached random-weight files out as a user's ComfyUI/models folder (symlinks, no copies)."""
from __future__ import annotations

import os
from pathlib import Path

from . import adapters, parsers, schp_onnx
from .cache import cached
from .insightface_packs import build_pack


def _link(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists():
        os.symlink(src, dest)


def populate_models_dir(root: Path, with_checkpoint: bool = True, with_sdxl: bool = True) -> Path:
    root = Path(root)
    if with_checkpoint:
        from .sd_models import sd15_checkpoint

        _link(sd15_checkpoint(), root / "checkpoints" / "partid_random_sd15.safetensors")
    _link(parsers.bisenet_pth(), root / "face_parsing" / "face_parsing.pth")
    _link(parsers.segformer_face_folder(), root / "face_parsing" / "segformer_face_parsing")
    _link(parsers.segformer_clothes_folder(), root / "body_parsing" / "segformer_b2_clothes")
    for label_set in ("atr", "lip"):
        _link(schp_onnx.schp_onnx(label_set), root / "body_parsing" / f"parsing_{label_set}.onnx")
    for pack in ("buffalo_l", "antelopev2"):
        built = cached(f"insightface/models/{pack}", lambda p, pack=pack: build_pack(str(p), pack))
        _link(built, root / "insightface" / "models" / pack)
    _link(adapters.consistentid_bin("sd15"), root / "identity_adapters" / "ConsistentID-v1.bin")
    if with_sdxl:
        _link(adapters.consistentid_bin("sdxl"), root / "identity_adapters" / "ConsistentID_SDXL-v1.bin")
    _link(adapters.visual_persona_bin(), root / "identity_adapters" / "weight.bin")
    _link(parsers.dinov2_hub_pth("vits14"), root / "dinov2" / "dinov2_vits14_pretrain.pth")
    return root


def populate_full_models_dir(root: Path) -> Path:
    """Everything the example workflows name, under the file names they use (the official ones): the random
    SD1.5 and SDXL checkpoints as v1-5-pruned-emaonly / sd_xl_base_1.0, ConsistentID SD1.5 and SDXL, Visual
    Persona, DINOv2 ViT-g/14 (dinov2_vitg14), parsers and insightface packs."""
    from .sd_models import sd15_checkpoint, sdxl_checkpoint

    root = populate_models_dir(root, with_checkpoint=True, with_sdxl=True)
    _link(sd15_checkpoint(), root / "checkpoints" / "v1-5-pruned-emaonly.safetensors")
    _link(sdxl_checkpoint(), root / "checkpoints" / "sd_xl_base_1.0.safetensors")
    _link(parsers.dinov2_hub_pth("vitg14"), root / "dinov2" / "dinov2_vitg14_pretrain.pth")
    return root
