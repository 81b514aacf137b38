"""ComfyUI glue for Visual Persona's image side: part images -> DINOv2 -> body-partitioned decoder.

The arithmetic is models/visual_persona (part images, DINOv2 patch tokens, decoder, unconditional
tokens, as the released code at d393d09). Here: one batched DINOv2 pass over every selected part of
every reference, one batched decoder pass, and the unconditional tokens (computed once per
DINOv2/adapter pair and device, kept on the adapter object). The result is PARTID_IDENTITY
(models/identity_tokens.IdentityTokens) with one token group of 256 per part, labelled by part name.

Several references (image batch): each reference keeps its own tokens ([R, T, 2048]); a part that a
reference lacks but another has is, for that reference, the decoder's tokens of VP's zero image
(exactly its unconditional tokens), so every reference has the same token groups. A part no
reference has is left out, as VP leaves out missing parts.
"""
from __future__ import annotations

import logging
import weakref

import torch
from comfy_api.latest import io

from ..models.dinov2 import DINOv2
from ..models.errors import InputError
from ..models.identity_tokens import IdentityTokens
from ..models.images import as_mask_batch, to_rgb_batch
from ..models.visual_persona import PART_NAMES, PartDecoder, part_images, part_tokens, unconditional_tokens
from ..models.visual_persona.part_images import masks_per_reference
from . import canvas_ui, managed, types
from .validate import require_adapter

NODE = "PartID Visual Persona Encode"
SOURCE = "visual_persona"
DEFAULT_ON = {"full_body": False, "face": True, "upper": True, "lower": True, "shoes": True}  # released scripts
DINOV2_ATTR = "_partid_dinov2"            # managed.Managed kept on the DINOv2 weights object
_DECODER_ATTR = "_partid_vp_decoder"       # managed.Managed kept on the adapter
_UNCOND_ATTR = "_partid_vp_uncond"        # {(dinov2 id, parts, device, dtype): (weakref, tokens)} on the adapter


def compute_device_dtype() -> tuple[torch.device, torch.dtype]:
    import comfy.model_management as mm

    device = mm.get_torch_device()
    # The original runs DINOv2 and the decoder in fp16 on the GPU.
    return device, (torch.float16 if device.type == "cuda" else torch.float32)


def networks(dinov2_weights, adapter, dtype: torch.dtype) -> tuple[DINOv2, PartDecoder]:
    """DINOv2 and the decoder on the run device, built once per weights object, under model management."""
    encoder = managed.held(dinov2_weights, DINOV2_ATTR,
                           lambda device: DINOv2.from_weights(dinov2_weights, dtype=dtype, device=device), dtype)
    decoder = managed.held(adapter, _DECODER_ATTR,
                           lambda device: PartDecoder.from_adapter(adapter, dtype=dtype, device=device), dtype)
    managed.load(encoder, decoder)
    return encoder.engine, decoder.engine


def release(dinov2_weights, adapter) -> None:
    """Take DINOv2 and the decoder off the GPU now (the offload option; the CPU copies stay)."""
    managed.offload(dinov2_weights, DINOV2_ATTR)
    managed.offload(adapter, _DECODER_ATTR)


def check_inputs(dinov2, adapter, node: str = NODE) -> None:
    """A Visual Persona adapter and a DINOv2 whose token width its decoder takes (shared with the trainer)."""
    require_adapter(node, adapter, "Visual Persona", ("image_proj",))
    if not hasattr(dinov2, "embed_dim") or not hasattr(dinov2, "layout"):
        raise InputError(node, "dinov2", f"expected PartID DINOv2 weights, got {type(dinov2).__name__}.",
                         "connect the PartID DINOv2 Loader's output.")
    wanted = adapter.groups["image_proj"]["transformer.layers.0.cross_attn.k_proj_weight"].shape[1]
    if dinov2.embed_dim != wanted:
        raise InputError(node, "dinov2", f"this DINOv2 ({dinov2.size_name}) gives {dinov2.embed_dim}-d tokens; the "
                         f"Visual Persona decoder takes {wanted}-d tokens.",
                         "load dinov2_vitg14_pretrain.pth (DINOv2 ViT-g/14) with the PartID DINOv2 Loader.")


def check_masks(masks: dict, batch: int) -> None:
    for name, mask in masks.items():
        if mask is None:
            continue
        try:
            as_mask_batch(mask, batch)
        except ValueError as exc:
            raise InputError(NODE, name, f"{exc}.", "give one mask, or one per image (the same batch as the image).")


def encode(dinov2_weights, adapter, image: torch.Tensor, masks: dict, parts: list[int],
           offload: bool = False) -> tuple[IdentityTokens, dict]:
    """The node's work, callable without ComfyUI's executor (tests, scripts). -> (tokens, canvas UI)."""
    import comfy.utils

    rgb, _ = to_rgb_batch(image, NODE)
    check_masks(masks, rgb.shape[0])
    per_ref = masks_per_reference(masks, rgb.shape[0], tuple(rgb.shape[1:3]))
    images = part_images(list(rgb.cpu()), per_ref)
    present_any = images.present.any(0)
    used = [p for p in parts if bool(present_any[p])]
    dropped = [PART_NAMES[p] for p in parts if p not in used]
    if dropped:
        logging.info("[PartID] %s: no reference has %s: left out, as Visual Persona leaves out missing parts.",
                     NODE, ", ".join(dropped))
    if not used:
        raise InputError(NODE, "image", f"none of the selected parts ({', '.join(PART_NAMES[p] for p in parts)}) "
                         "is in any reference (their masks are empty or not connected).",
                         "connect the masks of PartID Body Parts, or select parts the person shows.")
    for r, row in enumerate(images.present.tolist()):
        lacking = [PART_NAMES[p] for p in used if not row[p]]
        if lacking:
            logging.warning("[PartID] %s: reference %d has no %s; it gets Visual Persona's empty-part tokens there.",
                            NODE, r, ", ".join(lacking))
    device, dtype = compute_device_dtype()
    bar = comfy.utils.ProgressBar(3)
    encoder, decoder = networks(dinov2_weights, adapter, dtype)
    bar.update_absolute(1)
    cond = part_tokens(encoder, decoder, images, used)                       # [R, P, 256, W]
    bar.update_absolute(2)
    cache = getattr(adapter, _UNCOND_ATTR, None)
    if cache is None:
        cache = {}
        setattr(adapter, _UNCOND_ATTR, cache)
    key = (id(dinov2_weights), tuple(used), str(device), dtype)
    hit = cache.get(key)
    if hit is None or hit[0]() is not dinov2_weights:     # a weak reference: ids are reused after collection
        hit = (weakref.ref(dinov2_weights), unconditional_tokens(encoder, decoder, used).float().cpu())  # [P, 256, W]
        cache[key] = hit
    uncond = hit[1]
    bar.update_absolute(3)
    if offload:
        release(dinov2_weights, adapter)
    crops = [(i, q) for i in range(cond.shape[0]) for q in used if bool(images.present[i, q])]   # what DINOv2 saw
    ui = canvas_ui.encode_ui(torch.stack([images.images[i, q] for i, q in crops]),
                             [f"{i}: {PART_NAMES[q]}" for i, q in crops])
    tokens = IdentityTokens.from_parts(cond, uncond, [PART_NAMES[i] for i in used], SOURCE)
    return tokens, ui


class VisualPersonaEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        masks = [io.Mask.Input(name, optional=True,
                               tooltip=f"{name.replace('_', ' ')} mask (PartID Body Parts). Missing or empty: "
                                       + ("no masking." if name == "full_body" else "the part is absent."))
                 for name in PART_NAMES]
        toggles = [io.Boolean.Input(f"use_{name}", default=DEFAULT_ON[name],
                                    tooltip=f"Feed the {name.replace('_', ' ')} part to the decoder"
                                            + (" (the released scripts never do)." if name == "full_body" else "."))
                   for name in PART_NAMES]
        return io.Schema(
            node_id="PartIDVisualPersonaEncode", display_name=NODE, category="PartID/Visual Persona",
            description="Encodes a person for Visual Persona: each body part cut from the full-body-masked photo, "
                        "padded square, 224 px, through DINOv2 ViT-g/14 and the body-partitioned decoder (256 tokens "
                        "per part), plus the unconditional tokens, as the released code does.",
            inputs=[types.DINOv2.Input("dinov2", tooltip="DINOv2 ViT-g/14 from PartID DINOv2 Loader."),
                    types.VisualPersonaAdapter.Input("adapter", tooltip="From PartID Visual Persona Loader."),
                    io.Image.Input("image", tooltip="The reference photo(s) of the person."),
                    *masks, *toggles,
                    io.Boolean.Input("offload_dinov2", default=False,
                                     tooltip="Free the GPU copies of DINOv2 and the decoder right after encoding.")],
            outputs=[types.Identity.Output(display_name="identity",
                                           tooltip="Identity tokens for PartID Visual Persona Apply.")],
        )

    @classmethod
    def execute(cls, dinov2, adapter, image, full_body=None, face=None, upper=None, lower=None, shoes=None,
                use_full_body=False, use_face=True, use_upper=True, use_lower=True, use_shoes=True,
                offload_dinov2=False):
        check_inputs(dinov2, adapter)
        toggles = (use_full_body, use_face, use_upper, use_lower, use_shoes)
        parts = [p for p, on in enumerate(toggles) if on]
        if not parts:
            raise InputError(NODE, "use_face", "no part is selected.", "switch on at least one use_* input.")
        masks = {"full_body": full_body, "face": face, "upper": upper, "lower": lower, "shoes": shoes}
        tokens, ui = encode(dinov2, adapter, image, masks, parts, offload_dinov2)
        return io.NodeOutput(tokens, ui=ui)


NODES = [VisualPersonaEncode]
