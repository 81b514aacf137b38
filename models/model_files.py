"""Read each kind of model file into a handle the later stages build networks from.

Every function here refuses a file of the wrong kind with a message naming what the file is and
which loader reads it. Nothing here imports ComfyUI.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from . import formats
from .errors import ModelFileError
from .catalog import TRANSFORMERS_WEIGHTS
from .labels import BODY_LABEL_SETS, FACE_LABEL_SETS, label_set_of
from .layouts.dinov2 import block_count, ffn_of
from .weights import load_state_dict


@dataclass
class ParserWeights:
    """A face or body parser: a BiSeNet state dict, a transformers SegFormer folder, or an ONNX file."""

    backend: str                     # bisenet | segformer | onnx
    path: str
    labels: tuple[str, ...]
    label_set: str                   # key into labels.FACE_LABEL_SETS / BODY_LABEL_SETS
    state_dict: dict | None = None
    config: dict | None = None


@dataclass
class AdapterWeights:
    """An identity adapter checkpoint, groups under canonical names, dtype as stored."""

    format: formats.CheckpointFormat
    path: str
    groups: dict[str, dict[str, torch.Tensor]] = field(repr=False)

    @property
    def family(self) -> str:
        return self.format.family

    def parameter_count(self) -> int:
        return sum(t.numel() for g in self.groups.values() for t in g.values())


def _read_config(path: str) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _transformers_labels(config: dict) -> list[str]:
    id2label = config.get("id2label") or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def _other_parser_hint(labels: list[str], wanted: str) -> str:
    if wanted == "face" and label_set_of(labels, BODY_LABEL_SETS):
        return " It is a body parser: load it with 'PartID Body Parser Loader'."
    if wanted == "body" and label_set_of(labels, FACE_LABEL_SETS):
        return " It is a face parser: load it with 'PartID Face Parser Loader'."
    return ""


def require_transformers_weights(folder: str, accepted: tuple[str, ...] = TRANSFORMERS_WEIGHTS) -> None:
    """A transformers folder holds its weights (config.json alone is what an interrupted copy or download
    leaves): checked at load, so the loader node names the problem rather than the node that first runs it."""
    if not any(os.path.isfile(os.path.join(folder, name)) for name in accepted):
        raise ModelFileError(f"[PartID] {folder} has config.json but no weights ({' or '.join(accepted)}): an "
                             "interrupted download or copy? Fix: copy or download the folder's files again.")


def load_parser(path: str, wanted: str) -> ParserWeights:
    """`wanted` is "face" or "body"."""
    sets = FACE_LABEL_SETS if wanted == "face" else BODY_LABEL_SETS
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(folder, "config.json")
    if path.endswith((".json", ".safetensors")) or os.path.isdir(path):
        if not os.path.isfile(config_path):
            raise ModelFileError(f"[PartID] {path}: a transformers parser needs config.json beside its weights.")
        config = _read_config(config_path)
        if config.get("model_type") != "segformer":
            raise ModelFileError(f"[PartID] {config_path} describes a '{config.get('model_type')}' model; "
                                 f"the {wanted} parser loader reads SegFormer folders.")
        labels = _transformers_labels(config)
        key = label_set_of(labels, sets)
        if key is None:
            raise ModelFileError(f"[PartID] {config_path}: its {len(labels)} labels are not a known {wanted} "
                                 f"label set.{_other_parser_hint(labels, wanted)}")
        require_transformers_weights(folder)
        return ParserWeights("segformer", folder, tuple(labels), key, config=config)
    if path.endswith(".onnx"):
        from .onnx_signature import parser_classes

        n_classes = parser_classes(path)
        key = next((k for k, v in sets.items() if len(v) == n_classes), None)
        if key is None:
            raise ModelFileError(f"[PartID] {path}: an ONNX parser with {n_classes} classes is not a known "
                                 f"{wanted} parser (expected {' or '.join(str(len(v)) for v in sets.values())}).")
        return ParserWeights("onnx", path, sets[key], key)
    state = load_state_dict(path)
    if wanted != "face":
        raise ModelFileError(f"[PartID] {path}: body parsers are SegFormer folders or SCHP .onnx exports; "
                             "a .pth BiSeNet is a face parser: load it with 'PartID Face Parser Loader'.")
    formats.identify(state, (formats.BISENET_FACE_PARSING,), path)
    return ParserWeights("bisenet", path, FACE_LABEL_SETS["bisenet"], "bisenet", state_dict=state)


def load_adapter(path: str, family: str) -> AdapterWeights:
    """`family` is "ConsistentID" or "Visual Persona"; a file of the other family is refused by name."""
    state = load_state_dict(path)
    fmt = formats.identify(state, formats.ADAPTER_FORMATS, path)
    weights = AdapterWeights(fmt, path, formats.grouped(state, fmt))
    if weights.family != family:
        raise ModelFileError(f"[PartID] {os.path.basename(path)} is a {fmt.name} checkpoint, not {family}: "
                             f"load it with the {weights.family} loader.")
    return weights


def check_base(weights: AdapterWeights, context_dim: int, model_name: str) -> None:
    """Refuse an adapter made for another base model (e.g. an SDXL adapter on SD1.5)."""
    if weights.format.context_dim != context_dim:
        bases = {768: "SD1.5", 1024: "SD2.x", 2048: "SDXL"}
        raise ModelFileError(
            f"[PartID] {os.path.basename(weights.path)} is {weights.format.name} (text width "
            f"{weights.format.context_dim}) but the model is {bases.get(context_dim, model_name)} (text width "
            f"{context_dim}). Fix: pick the adapter made for this base model, or a base model of the adapter's kind.")


@dataclass
class DINOv2Weights:
    """DINOv2 ViT weights in the torch-hub layout (`*_pretrain.pth`) or a transformers folder."""

    layout: str                      # hub | transformers
    path: str
    embed_dim: int
    depth: int
    patch_size: int
    ffn: str                         # mlp | swiglu
    state_dict: dict | None = field(default=None, repr=False)
    config: dict | None = None

    @property
    def size_name(self) -> str:
        return {384: "ViT-S/14", 768: "ViT-B/14", 1024: "ViT-L/14", 1536: "ViT-g/14"}.get(self.embed_dim, "ViT")


def load_dinov2(path: str) -> DINOv2Weights:
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path) or path.endswith(".json") or (
            path.endswith(".safetensors") and os.path.isfile(os.path.join(folder, "config.json"))):
        config = _read_config(os.path.join(folder, "config.json"))
        if config.get("model_type") != "dinov2":
            raise ModelFileError(f"[PartID] {folder}/config.json describes a '{config.get('model_type')}' model, "
                                 "not DINOv2.")
        return DINOv2Weights("transformers", folder, config["hidden_size"], config["num_hidden_layers"],
                             config.get("patch_size", 14), "swiglu" if config.get("use_swiglu_ffn") else "mlp",
                             config=config)
    state = load_state_dict(path)
    cls = state.get("cls_token")
    patch = state.get("patch_embed.proj.weight")
    if cls is None or patch is None or cls.ndim != 3 or patch.ndim != 4:
        hint = ""
        try:
            fmt = formats.identify(state, formats.ADAPTER_FORMATS)
            hint = f" It is a {fmt.name} checkpoint: load it with the {fmt.family} loader."
        except ModelFileError:
            pass
        raise ModelFileError(f"[PartID] {path} is not a DINOv2 torch-hub checkpoint (no cls_token / "
                             f"patch_embed.proj.weight).{hint}")
    return DINOv2Weights("hub", path, cls.shape[-1], block_count(state), patch.shape[-1], ffn_of(state),
                         state_dict=state)
