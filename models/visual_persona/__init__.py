"""Visual Persona (cvlab-kaist/Visual-Persona, d393d09): its part images, its body-partitioned decoder
(`image_proj`), and the token pipeline between them. The DINOv2 encoder is models/dinov2.py."""
from .decoder import VISUAL_PERSONA, DecoderConfig, PartDecoder, decoder_layout, select_parts
from .part_images import CLIP_MEAN, CLIP_STD, PART_NAMES, PartImages, part_images, vp_mask_from_png
from .tokens import SELECTED_PARTS, encode_parts, part_tokens, unconditional_tokens

__all__ = ["CLIP_MEAN", "CLIP_STD", "DecoderConfig", "PART_NAMES", "PartDecoder", "PartImages", "SELECTED_PARTS",
           "VISUAL_PERSONA", "decoder_layout", "encode_parts", "part_images", "part_tokens", "select_parts",
           "unconditional_tokens", "vp_mask_from_png"]
