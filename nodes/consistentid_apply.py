"""ComfyUI glue for ConsistentID's UNet side: ID tokens into every cross-attention, LoRA on every attention.

What the official pipelines do (attention.py, Consistent_IPAttProcessor / Consistent_AttProcessor):
every attn1 and attn2 carries a rank-128 LoRA on to_q/to_k/to_v/to_out (scale 1.0, always on),
and every attn2 adds `scale * attention(q, to_k_ip(id), to_v_ip(id))` to the text attention before
to_out, with the 4 ProjPlus ID tokens (scale 1.0, all steps). The negative side gets ProjPlus of a
zero ArcFace and CLIP-H of a zero input.

Here: the LoRA goes in as ComfyUI weight patches (nodes/attention_patch.add_adapter_lora), the ID
branch as the shared decoupled-attention patch (install_identity_group), with `weight` as the IP
scale, a sigma window from start_at/end_at and an optional mask; the LoRA is not gated by them, as
officially. The ID tokens are computed here once, on the model's device and dtype
(models/consistentid/identity.py). Other attention patches on the model are kept and stack.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..models.consistentid import ProjPlus
from ..models.consistentid import identity as cid_identity
from ..models.errors import InputError
from ..models.layouts.unet_attention import UNETS, UNetAttentionConfig
from . import canvas_ui, managed, types
from .attention_patch import (IdentityGroup, IdentitySource, add_adapter_lora, install_identity_group,
                              ip_weights_by_block, sigma_window)
from .face_analysis import SKIPPED_ATTR
from .validate import (CONSISTENTID_BASE_FIX, check_identity_mask, check_window, require_adapter, require_base_model,
                       require_choice, window_tooltips)

NODE = "PartID ConsistentID Apply"
WINDOW = window_tooltips("ID-token attention", (", as the official", ", as the official"))
_CACHE_ATTR = "_partid_proj_plus"     # managed.Managed (ProjPlus) kept on the adapter object


def proj_plus_for(adapter, device: torch.device, dtype: torch.dtype) -> ProjPlus:
    """The adapter's ProjPlus loaded on device/dtype: built once per adapter object, under model management."""
    return managed.managed(adapter, _CACHE_ATTR, lambda at: ProjPlus.from_adapter(adapter, dtype=dtype, device=at),
                           dtype, load_device=device)


def check_inputs(model, adapter, embeddings, image_states) -> UNetAttentionConfig:
    """The adapter's UNet layout; InputError naming the input for anything that cannot work."""
    base = require_adapter(NODE, adapter, "ConsistentID", bases=UNETS)
    require_base_model(NODE, model, adapter, "adapter", CONSISTENTID_BASE_FIX)
    if not isinstance(embeddings, torch.Tensor) or embeddings.ndim not in (1, 2) or embeddings.shape[-1] != 512:
        shape = list(embeddings.shape) if isinstance(embeddings, torch.Tensor) else type(embeddings).__name__
        raise InputError(NODE, "embeddings", f"expected ArcFace embeddings [N, 512], got {shape}.",
                         "connect the embeddings output of PartID Face Analysis.")
    if not all(hasattr(image_states, a) for a in ("states", "uncond_states")) or hasattr(image_states, "present"):
        raise InputError(NODE, "image_states", "this input is not PartID ConsistentID image states.",
                         "connect the image_states output of PartID ConsistentID Encode.")
    skipped, rows, refs = getattr(embeddings, SKIPPED_ATTR, ()), embeddings.shape[0] if embeddings.ndim == 2 else 1, \
        image_states.states.shape[0]
    if skipped and rows != refs:      # a 1-row broadcast would silently give one person's face to another image
        raise InputError(NODE, "embeddings", f"PartID Face Analysis (on_no_face=skip) dropped batch index(es) "
                         f"{', '.join(map(str, skipped))}, so its {rows} embedding row(s) no longer pair with the "
                         f"{refs} reference image(s) of image_states.", "feed Face Analysis' images output (the "
                         "kept images) to Face Regions and ConsistentID Encode, or choose on_no_face=bypass.")
    return UNETS[base]


def apply_consistentid(model, adapter, embeddings, image_states, weight: float = 1.0, start_at: float = 0.0,
                       end_at: float = 1.0, mask: torch.Tensor | None = None, lora: bool = True,
                       combine: str = "average", layout: UNetAttentionConfig | None = None):
    """A patched clone of `model`. `layout` defaults to the adapter's base (tests pass tiny layouts)."""
    layout = layout or UNETS[adapter.format.base]
    modules = adapter.groups["adapter_modules"]
    # ComfyUI may store weights in fp16 but compute in fp32 (manual cast: CPUs, GPUs without safe fp16):
    # the tokens follow the compute dtype, as the attention they enter does.
    device = torch.device(model.load_device)
    dtype = getattr(model.model, "manual_cast_dtype", None) or model.model_dtype()
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        dtype = torch.float16 if device.type != "cpu" else torch.float32   # fp8 UNets: tokens in fp16
    try:
        cond, uncond = cid_identity.id_tokens(proj_plus_for(adapter, device, dtype), embeddings,
                                              image_states.states, image_states.uncond_states, combine)
    except ValueError as exc:
        raise InputError(NODE, "embeddings", str(exc) + ".", "give one embedding per reference image, or one "
                         "of either.") from exc
    patched = model.clone()
    try:
        weights = ip_weights_by_block(patched, layout, modules)
        if lora:
            add_adapter_lora(patched, modules, layout)
        source = IdentitySource({0: cond, 1: uncond}, weights)
        sigma_start, sigma_end = sigma_window(patched, start_at, end_at)
        install_identity_group(patched, IdentityGroup(source, weight, sigma_start, sigma_end, mask=mask, node=NODE,
                                                      percents=(start_at, end_at)))
    except ValueError as exc:
        raise InputError(NODE, "model", str(exc) + ".", "connect the base model the adapter was made for.") from exc
    return patched


class ConsistentIDApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDConsistentIDApply", display_name=NODE, category="PartID/ConsistentID",
            description="Applies ConsistentID to a model: its LoRA on every attention and its 4 ID tokens (ArcFace + "
                        "whole-reference CLIP-H through ProjPlus) in every cross-attention, as the official pipelines "
                        "do. Use with PartID ConsistentID Text Fusion for the facial-region tokens.",
            inputs=[
                io.Model.Input("model"),
                types.ConsistentIDAdapter.Input("adapter", tooltip="From PartID ConsistentID Loader."),
                types.FaceEmbeds.Input("embeddings", tooltip="ArcFace embeddings from PartID Face Analysis "
                                       "(buffalo_l, L2-normed, as the official pipelines use)."),
                types.CIDImageStates.Input("image_states", tooltip="From PartID ConsistentID Encode."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=5.0, step=0.05,
                               tooltip="Scale of the ID-token attention (official 1.0)."),
                io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=WINDOW[0]),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=WINDOW[1]),
                io.Boolean.Input("lora", default=True, tooltip="The adapter's rank-128 LoRA on every attention (official: "
                                 "on). Not limited by start_at/end_at or the mask."),
                io.Combo.Input("combine", options=list(cid_identity.COMBINE), default="average",
                               tooltip="Several references: average their ID tokens, or concatenate them "
                                       "(attended jointly). One reference: no difference."),
                io.Mask.Input("mask", optional=True, tooltip="Where the ID tokens act (white). Default: everywhere."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, adapter, embeddings, image_states, weight=1.0, start_at=0.0, end_at=1.0, lora=True,
                combine="average", mask=None):
        require_choice(NODE, "combine", combine, cid_identity.COMBINE)
        check_window(NODE, start_at, end_at)
        check_inputs(model, adapter, embeddings, image_states)
        check_identity_mask(NODE, mask)
        empty = cid_identity.zero_embedding_rows(embeddings)
        if empty:
            logging.warning("[PartID] %s: embeddings row(s) %s are zero (no face found); their ID tokens carry "
                            "only the CLIP image, as the official pipelines do without a face.", NODE, empty)
        patched = apply_consistentid(model, adapter, embeddings, image_states, weight, start_at, end_at, mask, lora,
                                     combine)
        refs = embeddings.shape[0] if embeddings.ndim == 2 else 1
        ui = canvas_ui.active_ui([("ID tokens", weight != 0, f"weight {weight:g}, {refs} reference(s), {combine}"),
                                  ("LoRA", bool(lora), "on every attention" if lora else "off"),
                                  *canvas_ui.window_and_mask(weight, start_at, end_at, mask)])
        return io.NodeOutput(patched, ui=ui)


NODES = [ConsistentIDApply]
