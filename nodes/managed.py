"""PartID's own networks under ComfyUI's model management, as ComfyUI holds CLIP vision.

The face and body parsers (BiSeNet, SegFormer), DINOv2, Visual Persona's decoder, ConsistentID's
ProjPlus and FacialEncoder, and the evaluation CLIP and DINO are built once per loaded-weights object
(the evaluation ones by their loader), on ComfyUI's offload device, and
wrapped in a `comfy.model_patcher.ModelPatcher`. Each use goes through `load_models_gpu`, so ComfyUI
moves the network to the GPU when a node needs it, takes it off again when the UNet (or anything
else) needs the room, and drops it on "Unload models" / `POST /free` — instead of the network sitting
on the GPU, unseen by ComfyUI's memory accounting, until the loader's output is gone.

SCHP's ONNX body parser runs in onnxruntime, which owns its memory: it is built on the run device and
left out of the model list.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass
class Managed:
    """What is kept on the weights object: the engine a node calls and the patcher ComfyUI moves."""

    key: tuple
    engine: Any
    patcher: Any          # None for engines that hold no torch module (onnxruntime sessions)


class Holder(torch.nn.Module):
    """What the ModelPatcher holds: ComfyUI sets `.device` on its model (read-only on transformers models)
    and logs the model's class name ("Requested to load PartIDBiSeNet")."""

    def __init__(self, net: torch.nn.Module):
        super().__init__()
        self.net = net


_HOLDER_CLASSES: dict[str, type] = {}


def holder(net: torch.nn.Module) -> Holder:
    name = "PartID" + type(net).__name__
    if name not in _HOLDER_CLASSES:
        _HOLDER_CLASSES[name] = type(name, (Holder,), {"__module__": __name__})
    return _HOLDER_CLASSES[name](net)


def devices(load_device=None) -> tuple[torch.device, torch.device]:
    """(run device, offload device): ComfyUI's torch device and its UNet offload device (the GPU
    itself under --highvram/--gpu-only); the given device for both when it is the CPU."""
    import comfy.model_management as mm

    load = torch.device(load_device) if load_device is not None else mm.get_torch_device()
    return load, (load if load.type == "cpu" else mm.unet_offload_device())


def held(owner, attr: str, build: Callable[[torch.device], Any], dtype: torch.dtype | None = None,
         load_device=None, module_of: Callable[[Any], torch.nn.Module | None] = lambda engine: engine,
         build_on_run_device: bool = False) -> Managed:
    """The engine built by `build(device)` for `owner` with its patcher, not loaded yet (see `load`).

    Built once per (run device, dtype) and kept on `owner` under `attr`, on the offload device (or the
    run device with `build_on_run_device`). `module_of(engine)` is the torch module ComfyUI moves
    (None: nothing to manage).
    """
    import comfy.model_patcher

    run, offload_device = devices(load_device)
    key = (str(run), dtype)
    kept = getattr(owner, attr, None)
    if getattr(kept, "key", None) != key:
        engine = build(run if build_on_run_device else offload_device)
        module = module_of(engine)
        patcher = None
        if module is not None:
            patcher = comfy.model_patcher.ModelPatcher(holder(module), load_device=run, offload_device=offload_device)
        kept = Managed(key, engine, patcher)
        setattr(owner, attr, kept)
    return kept


def adopt(owner, attr: str, engine, module: torch.nn.Module) -> Managed:
    """Put an engine already built on the offload device (see `devices`) under model management, kept on
    `owner` under `attr` (the evaluation loader builds its scorers itself)."""
    return held(owner, attr, lambda _device: engine, module_of=lambda _engine: module)


def load(*kept: Managed) -> None:
    """Load these networks on their run device together, ComfyUI making room for all of them first.

    `force_full_load`: the modules are plain torch layers, not comfy.ops, so they cannot run half-loaded.
    """
    import comfy.model_management as mm

    patchers = [k.patcher for k in kept if k.patcher is not None]
    if patchers:
        mm.load_models_gpu(patchers, force_full_load=True)


def managed(owner, attr: str, build: Callable[[torch.device], Any], dtype: torch.dtype | None = None,
            load_device=None, module_of: Callable[[Any], torch.nn.Module | None] = lambda engine: engine,
            build_on_run_device: bool = False):
    """`held(...)` loaded and ready to call: the engine."""
    kept = held(owner, attr, build, dtype, load_device, module_of, build_on_run_device)
    load(kept)
    return kept.engine


def unload(patcher) -> bool:
    """Take `patcher`'s model off its device and out of ComfyUI's loaded list now. -> whether it was loaded."""
    import comfy.model_management as mm

    found = False
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is patcher and loaded.model_unload():
            mm.current_loaded_models.pop(i)
            found = True
    if found:
        mm.soft_empty_cache()
    return found


def offload(owner, attr: str) -> bool:
    """Unload the network kept on `owner` (the nodes' offload options). -> whether it was loaded."""
    patcher = getattr(getattr(owner, attr, None), "patcher", None)
    return patcher is not None and unload(patcher)


def forget(owner, attr: str) -> None:
    """Unload the network kept on `owner` and drop it (its memory goes once nothing else holds it)."""
    offload(owner, attr)
    if hasattr(owner, attr):
        delattr(owner, attr)


class OnUse:
    """An engine that is loaded again before each use: for loops in which other models (VAE, CLIP) load in
    between and may have taken it off the GPU. `OnUse(get).parse(x)` is `get().parse(x)`."""

    def __init__(self, get: Callable[[], Any]):
        self._get = get

    def __getattr__(self, name: str):
        return getattr(self._get(), name)


def is_loaded(owner, attr: str) -> bool:
    """Whether ComfyUI currently lists the network kept on `owner` as loaded."""
    import comfy.model_management as mm

    # Duck-typed: tests import this module under a second name (ComfyUI's loader names the pack's package).
    patcher = getattr(getattr(owner, attr, None), "patcher", None)
    return patcher is not None and any(m is patcher for m in mm.loaded_models())


# -- the parsers ------------------------------------------------------------------------------------

def face_parser_held(weights, load_device=None) -> Managed:
    """The FaceParser engine for loaded face-parser weights with its patcher (not loaded yet)."""
    from ..models.face_parsing import FaceParser

    return held(weights, "_partid_face_parser", lambda device: FaceParser(weights, device),
                load_device=load_device, module_of=lambda engine: engine.net)


def body_parser_held(weights, load_device=None) -> Managed:
    """The BodyParser engine for loaded body-parser weights (SegFormer managed; ONNX built on the run device)."""
    from ..models.body_parsing import BodyParser

    onnx = weights.backend == "onnx"
    return held(weights, "_partid_body_parser", lambda device: BodyParser(weights, device),
                load_device=load_device, module_of=lambda engine: None if onnx else engine.net,
                build_on_run_device=onnx)


def face_parser(weights, load_device=None):
    """The FaceParser engine, loaded and ready to call."""
    kept = face_parser_held(weights, load_device)
    load(kept)
    return kept.engine


def body_parser(weights, load_device=None):
    """The BodyParser engine, loaded and ready to call."""
    kept = body_parser_held(weights, load_device)
    load(kept)
    return kept.engine
