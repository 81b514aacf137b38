"""Parser and encoder files in their official formats, random weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from partid.models.bisenet import BiSeNet
from partid.models.labels import ATR, SEGFORMER_FACE
from partid.models.layouts.dinov2 import DINOV2_SIZES, dinov2_hub_layout

from .cache import cached
from .random_weights import random_state


def bisenet_pth() -> Path:
    """face_parsing.pth / 79999_iter.pth: a plain torch.save'd state dict (fp32)."""
    def build(path):
        torch.manual_seed(0)
        net = BiSeNet(19)
        for m in net.modules():  # random running stats, so batch-norm is not an identity
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
        torch.save(net.state_dict(), path)

    return cached("face_parsing/face_parsing.pth", build)


# Configurations of the two released SegFormers (transformers SegformerConfig fields that differ
# from its defaults): jonathandinu/face-parsing is SegFormer-B5, segformer_b2_clothes is B2.
SEGFORMER_B5 = {"depths": [3, 6, 40, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768}
SEGFORMER_B2 = {"depths": [3, 4, 6, 3], "hidden_sizes": [64, 128, 320, 512], "decoder_hidden_size": 768}


def _segformer_folder(path: Path, arch: dict, labels: tuple[str, ...]) -> None:
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    torch.manual_seed(0)
    config = SegformerConfig(**arch, num_labels=len(labels), id2label={i: n for i, n in enumerate(labels)},
                             label2id={n: i for i, n in enumerate(labels)})
    SegformerForSemanticSegmentation(config).save_pretrained(path, safe_serialization=True)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "do_normalize": True, "do_resize": True, "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "size": {"height": 512, "width": 512},
        "image_processor_type": "SegformerImageProcessor"}))


def segformer_face_folder() -> Path:
    return cached("face_parsing/segformer_face_parsing", lambda p: _segformer_folder(p, SEGFORMER_B5, SEGFORMER_FACE))


def segformer_clothes_folder() -> Path:
    return cached("body_parsing/segformer_b2_clothes", lambda p: _segformer_folder(p, SEGFORMER_B2, ATR))


def dinov2_hub_pth(size: str = "vits14") -> Path:
    """dinov2_<size>_pretrain.pth in the torch-hub layout (fp32, as released)."""
    def build(path):
        torch.save(random_state(dinov2_hub_layout(DINOV2_SIZES[size]), seed=3, dtype=torch.float32), path)

    return cached(f"dinov2/dinov2_{size}_pretrain.pth", build)
