"""ComfyUI glue for ConsistentID's image side: region images + whole reference through ComfyUI's CLIP-H.

The images and their preprocessing are built in models/consistentid/region_images.py. Here:
one `CLIP_VISION.encode_image` call for every present region of every reference plus the whole
references (penultimate hidden states), and the unconditional states (CLIP-H of an all-zero tensor
in normalised pixel space, which `encode_image` cannot express: it normalises its input itself).
The unconditional states are computed once per CLIP vision model and kept on it.

preprocess "official": each image is resized and cropped to 224 as the official CLIPImageProcessor
(PIL) does, then handed to encode_image at 224 x 224 with crop=False, which then only rescales and
normalises (its 8-bit rounding is exact on 8-bit pixels): the official pixel values.
preprocess "comfy": encode_image(crop=True) on the full-size images (ComfyUI's torch resize).
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..models.consistentid import region_images as ri
from ..models.consistentid.regions import CLIP_H_WIDTH, REGION_ORDER, SLOT_OF_MASK, RegionStates
from ..models.errors import InputError
from ..models.images import as_mask_batch, to_rgb_batch, to_uint8
from . import canvas_ui, managed, types
from .validate import require_choice

NODE = "PartID ConsistentID Encode"
MASK_INPUTS = SLOT_OF_MASK          # the node's mask inputs are Face Regions' mask names
_UNCOND_ATTR = "_partid_clip_zero_states"


def check_clip_vision(clip_vision) -> None:
    if not hasattr(clip_vision, "encode_image"):
        raise InputError(NODE, "clip_vision", f"expected a CLIP_VISION model, got {type(clip_vision).__name__}.",
                         "connect Load CLIP Vision with CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors.")
    norm = getattr(getattr(getattr(clip_vision, "model", None), "vision_model", None), "post_layernorm", None)
    width = getattr(getattr(norm, "weight", None), "shape", [CLIP_H_WIDTH])[0]
    if width != CLIP_H_WIDTH or getattr(clip_vision, "image_size", 224) != ri.CLIP_SIZE:
        raise InputError(NODE, "clip_vision", f"this image encoder is {width} wide at "
                         f"{getattr(clip_vision, 'image_size', '?')} px; ConsistentID uses CLIP-ViT-H/14 "
                         f"({CLIP_H_WIDTH} wide, 224 px), for SD1.5 and SDXL alike.",
                         "load CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with Load CLIP Vision.")


def zero_states(clip_vision) -> torch.Tensor:
    """[N, 1280] penultimate states of an all-zero normalised input; computed once per model object."""
    import comfy.model_management as mm

    cached = getattr(clip_vision, _UNCOND_ATTR, None)
    if cached is not None:
        return cached
    mm.load_model_gpu(clip_vision.patcher)
    size = getattr(clip_vision, "image_size", ri.CLIP_SIZE)
    zeros = torch.zeros(1, 3, size, size, device=clip_vision.load_device)
    with torch.inference_mode():
        out = clip_vision.model(pixel_values=zeros, intermediate_output=-2)
    states = out[1][0].to(mm.intermediate_device(), torch.float32)
    setattr(clip_vision, _UNCOND_ATTR, states)
    return states


def offload_clip_vision(clip_vision) -> None:
    """Unload the CLIP vision model from its device now (the offload option)."""
    patcher = getattr(clip_vision, "patcher", None)
    if patcher is not None:
        managed.unload(patcher)


def encode_states(clip_vision, images_u8: torch.Tensor, preprocess: str) -> torch.Tensor:
    """uint8 [K, H, W, 3] -> float32 [K, N, 1280] penultimate states, in one encode_image call."""
    if preprocess == "official":
        pixels = ri.official_pixels(images_u8).float() / 255.0
        out = clip_vision.encode_image(pixels, crop=False)
    else:
        out = clip_vision.encode_image(images_u8.float() / 255.0, crop=True)
    return out["penultimate_hidden_states"].float()


class ConsistentIDEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        def mask_input(name, what):
            return io.Mask.Input(name, optional=True,
                                 tooltip=f"{what} mask (PartID Face Regions). Missing or all zero = region absent.")

        return io.Schema(
            node_id="PartIDConsistentIDEncode", display_name=NODE, category="PartID/ConsistentID",
            description="Encodes the reference for ConsistentID with CLIP-ViT-H/14: each facial region as the full "
                        "frame with everything outside the region black (no crop), and the whole reference, in one "
                        "batch; plus the unconditional states (CLIP of a zero input), as the official pipelines do.",
            inputs=[
                io.ClipVision.Input("clip_vision", tooltip="CLIP-ViT-H-14-laion2B-s32B-b79K (Load CLIP Vision)."),
                io.Image.Input("image", tooltip="The reference photo(s); the whole image goes to the ID tokens."),
                mask_input("face", "Face (skin, holes filled)"), mask_input("eyes", "Eye"),
                mask_input("ears", "Ear"), mask_input("nose", "Nose"), mask_input("mouth", "Mouth (upper lip)"),
                io.Combo.Input("preprocess", options=list(ri.PREPROCESS), default="official",
                               tooltip="official: resize/crop to 224 with PIL as the official CLIPImageProcessor "
                                       "(exact pixels). comfy: ComfyUI's CLIP vision preprocessing (torch resize; "
                                       "pixels differ, up to 2.2 normalised units on non-square photos)."),
                io.Boolean.Input("offload", default=False,
                                 tooltip="Move the CLIP vision model off the GPU right after encoding."),
            ],
            outputs=[types.CIDRegions.Output(display_name="regions",
                                             tooltip="Region CLIP-H states for PartID ConsistentID Text Fusion."),
                     types.CIDImageStates.Output(display_name="image_states",
                                                 tooltip="Whole-reference CLIP-H states for PartID ConsistentID Apply.")],
        )

    @classmethod
    def execute(cls, clip_vision, image, face=None, eyes=None, ears=None, nose=None, mouth=None,
                preprocess="official", offload=False):
        import comfy.utils

        require_choice(NODE, "preprocess", preprocess, ri.PREPROCESS)
        check_clip_vision(clip_vision)
        rgb, _ = to_rgb_batch(image, NODE)
        rgb_u8 = to_uint8(rgb)
        given = {"face": face, "eyes": eyes, "ears": ears, "nose": nose, "mouth": mouth}
        masks = {}
        for name, mask in given.items():
            if mask is not None:
                try:
                    mask = as_mask_batch(mask, rgb.shape[0])
                except ValueError as exc:
                    raise InputError(NODE, name, f"{exc}.",
                                     "give one mask, or one per image (the same batch as the image).") from exc
            masks[MASK_INPUTS[name]] = mask
        plan = ri.plan_region_images(rgb_u8, masks)
        for b in range(plan.batch):
            missing = [n for n, here in zip(MASK_INPUTS, plan.present[b].tolist()) if not here]
            if missing:
                logging.info("[PartID] %s: image %d has no %s region (absent: official zero input).",
                             NODE, b, ", ".join(missing))
        bar = comfy.utils.ProgressBar(3)
        bar.update_absolute(1)
        states = encode_states(clip_vision, plan.images, preprocess)
        bar.update_absolute(2)
        if states.shape[-1] != CLIP_H_WIDTH:
            raise InputError(NODE, "clip_vision", f"the encoder gave {states.shape[-1]}-wide states.",
                             "load CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors with Load CLIP Vision.")
        uncond = zero_states(clip_vision)
        bar.update_absolute(3)
        if offload:
            offload_clip_vision(clip_vision)
        region_states, image_states = ri.split_states(states, plan, uncond)
        names = [f"{r}: {REGION_ORDER[slot]}" for r, slot in plan.slots] + \
                [f"{r}: whole" for r in range(plan.batch)]
        return io.NodeOutput(RegionStates(region_states, plan.present, uncond),
                             ri.ImageStates(image_states, uncond, preprocess),
                             ui=canvas_ui.encode_ui(plan.images, names))


NODES = [ConsistentIDEncode]
