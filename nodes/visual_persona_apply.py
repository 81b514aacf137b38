"""ComfyUI glue for Visual Persona's UNet side: its body-part tokens in every SDXL cross-attention.

The released pipeline adds `scale * attention(q, to_k_ip(tokens), to_v_ip(tokens))` to the text
attention of all 70 SDXL attn2 layers, scale 0.7, every step; negative side: the unconditional tokens.
Here it is the shared decoupled-attention patch (nodes/attention_patch.py) with `weight` as the scale,
the identity's per-part weights as the per-token scale (a part of weight 0 is left out), a sigma
window from start_at/end_at and an optional mask. Several references are attended jointly.
Applying the node again adds another identity group (two people, each limited by a mask), and
identities of other adapters (ConsistentID) stack the same way.

A weight file with a `unet` group (a fine-tuned UNet, diffusers keys) is loaded into the UNet by the
released loader (`pipe.unet.load_state_dict(state_dict["unet"])`); here those tensors become ComfyUI
"set" weight patches on the clone, mapped with ComfyUI's own diffusers -> UNet key table, so the base
checkpoint stays shared and untouched. A key or shape this UNet does not have is refused by name.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..models.errors import InputError
from ..models.identity_tokens import IdentityTokens
from ..models.layouts.unet_attention import SDXL, UNetAttentionConfig
from . import canvas_ui, types
from .identity_tokens import require_identity
from .attention_patch import IdentityGroup, IdentitySource, install_identity_group, ip_weights_by_block, sigma_window
from .validate import (VISUAL_PERSONA_BASE_FIX, check_identity_mask, check_window, require_adapter, require_base_model,
                       window_tooltips)
from .visual_persona_encode import SOURCE

NODE = "PartID Visual Persona Apply"
WINDOW = window_tooltips("identity attention")


def check_inputs(model, adapter, identity) -> None:
    require_adapter(NODE, adapter, "Visual Persona", ("ip_adapter",))
    require_base_model(NODE, model, adapter, "model", VISUAL_PERSONA_BASE_FIX)
    require_identity(NODE, "identity", identity)
    if identity.source != SOURCE:
        raise InputError(NODE, "identity", f"these identity tokens come from '{identity.source}', not Visual Persona.",
                         "apply them with their own adapter's apply node.")
    ip = adapter.groups["ip_adapter"]
    width = next(iter(ip.values())).shape[1] if ip else None
    if width is not None and identity.width != width:
        raise InputError(NODE, "identity", f"the tokens are {identity.width} wide; this adapter projects "
                         f"{width}-wide tokens.", "encode the identity with the same Visual Persona adapter.")


def fine_tuned_unet_patches(model, unet_state: dict) -> dict:
    """The adapter's `unet` group as ComfyUI "set" patches {model key: ("set", (tensor,))}; InputError on a misfit."""
    import comfy.utils

    to_comfy = comfy.utils.unet_to_diffusers(model.model.model_config.unet_config)     # diffusers key -> UNet key
    shapes = {k: tuple(v.shape) for k, v in model.model.state_dict().items() if k.startswith("diffusion_model.")}
    patches, misfits = {}, []
    for key, tensor in unet_state.items():
        target = f"diffusion_model.{to_comfy[key]}" if key in to_comfy else None
        if shapes.get(target) != tuple(tensor.shape):
            misfits.append(f"{key} {tuple(tensor.shape)}" + ("" if target in shapes else " (no such weight)"))
        else:
            patches[target] = ("set", (tensor,))
    if misfits:
        raise InputError(NODE, "adapter", f"its 'unet' group (a fine-tuned UNet the released loader puts in place of "
                         f"the model's weights) does not fit this UNet: {len(misfits)} of {len(unet_state)} tensors, "
                         f"e.g. {'; '.join(misfits[:3])}.", "connect the SDXL checkpoint this adapter was trained on, "
                         "or use a weight file without a 'unet' group.")
    return patches


def apply_visual_persona(model, adapter, identity: IdentityTokens, weight: float = 0.7, start_at: float = 0.0,
                         end_at: float = 1.0, mask: torch.Tensor | None = None,
                         layout: UNetAttentionConfig = SDXL):
    """A patched clone of `model` (tests pass tiny SDXL-like layouts)."""
    patched = model.clone()
    if adapter.groups.get("unet"):
        patches = fine_tuned_unet_patches(patched, adapter.groups["unet"])
        patched.add_patches(patches, 1.0, 1.0)
        logging.info("[PartID] %s: the adapter's fine-tuned UNet replaces %d UNet weights.", NODE, len(patches))
    tokens = identity.for_attention()
    if tokens is None:
        logging.warning("[PartID] %s: every part of the identity has weight 0: no identity attention is added.", NODE)
        return patched
    cond, uncond, scale = tokens
    try:
        weights = ip_weights_by_block(patched, layout, adapter.groups["ip_adapter"])
        source = IdentitySource({0: cond, 1: uncond}, weights)
        sigma_start, sigma_end = sigma_window(patched, start_at, end_at)
        install_identity_group(patched, IdentityGroup(source, weight, sigma_start, sigma_end, mask=mask, node=NODE,
                                                      token_scale=scale, percents=(start_at, end_at)))
    except ValueError as exc:
        raise InputError(NODE, "model", str(exc) + ".", "connect an SDXL 1.0 model (Visual Persona's base).") from exc
    return patched


class VisualPersonaApply(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDVisualPersonaApply", display_name=NODE, category="PartID/Visual Persona",
            description="Applies Visual Persona identity tokens to an SDXL model through its to_k_ip/to_v_ip on all 70 "
                        "cross-attention layers, as the released pipeline does (scale 0.7). Apply again with another "
                        "identity and a mask for a second person.",
            inputs=[io.Model.Input("model", tooltip="An SDXL 1.0 model."),
                    types.VisualPersonaAdapter.Input("adapter", tooltip="From PartID Visual Persona Loader."),
                    types.Identity.Input("identity", tooltip="From PartID Visual Persona Encode (or Identity Weights)."),
                    io.Float.Input("weight", default=0.7, min=-1.0, max=5.0, step=0.05,
                                   tooltip="Scale of the identity attention (released scripts: 0.7)."),
                    io.Float.Input("start_at", default=0.0, min=0.0, max=1.0, step=0.01, tooltip=WINDOW[0]),
                    io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01, tooltip=WINDOW[1]),
                    io.Mask.Input("mask", optional=True, tooltip="Where this identity acts (white). Default: everywhere.")],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, adapter, identity, weight=0.7, start_at=0.0, end_at=1.0, mask=None):
        check_window(NODE, start_at, end_at)
        check_inputs(model, adapter, identity)
        check_identity_mask(NODE, mask)
        patched = apply_visual_persona(model, adapter, identity, weight, start_at, end_at, mask)
        parts = [(g, weight != 0 and w != 0, f"x{w:g}") for g, w in zip(identity.groups, identity.weights)]
        ui = canvas_ui.active_ui([*parts, ("references", True, str(identity.references)),
                                  *canvas_ui.window_and_mask(weight, start_at, end_at, mask)])
        return io.NodeOutput(patched, ui=ui)


NODES = [VisualPersonaApply]
