"""ConsistentID training data for the fused region tokens, prepared once per image (and cached).

The official training fuses each facial region's token into the caption's text token after its part
word and trains the localisation loss on exactly those tokens (paper eq. 1). Per image this computes,
with the same engine code as the inference nodes:
- the face parse and the five official region masks (models/face_regions.py, "ConsistentID" selection);
- the region images and the whole image through CLIP-H in ONE call, official preprocessing
  (as PartID ConsistentID Encode: region_images.plan_region_images / encode_states);
- the caption with the official facial caption and `<|facial|>` markers appended, its encoding, and
  for each region slot the text position its token is fused into (as PartID ConsistentID Text Fusion:
  prompt.build_facial_prompt / pair_regions / locate_markers, token ids, never word ids);
- the region masks at latent size (the localisation targets).

Region tokens always come from the image being denoised, as in the official training (a paired run
takes only the ID tokens from the other image of the identity).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.consistentid import prompt as cid_prompt
from ..models.consistentid import region_images as ri
from ..models.consistentid.regions import REGION_ORDER, SLOT_OF_MASK, slot_positions
from ..models.face_regions import face_regions
from ..models.images import to_uint8
from ..models.training.losses import masks_on_grid


@dataclass(frozen=True)
class FacialText:
    """How the caption is marked: the checkpoint's caption variant and the region pairing policy."""

    variant: str = "sd15"                   # "sd15" | "sdxl" (caption template and "Detail:" joint)
    pairing: str = "faithful"               # prompt.PAIRINGS

    def __post_init__(self):
        if self.variant not in cid_prompt.VARIANTS:
            raise ValueError(f"variant must be one of {cid_prompt.VARIANTS}, got {self.variant!r}")
        if self.pairing not in cid_prompt.PAIRINGS:
            raise ValueError(f"pairing must be one of {cid_prompt.PAIRINGS}, got {self.pairing!r}")

    @property
    def key(self) -> str:
        return f"facial:{self.variant}:{self.pairing}"


def facial_items(clip, clip_vision, parser, image: torch.Tensor, caption: str, facial: FacialText,
                 latent_hw: tuple[int, int]) -> dict:
    """One image [1, R, R, 3]: context/pooled of the marked caption, CLIP-H states of the regions and of the
    whole image, slot positions, region masks [5, h, w] and the face mask [h, w] at latent size."""
    from .consistentid_encode import encode_states, zero_states
    from .consistentid_text import content_tokenizer, stream_chunks

    regions = face_regions(parser.parse(image), "ConsistentID")
    masks = {SLOT_OF_MASK[name]: regions.masks[name] for name in SLOT_OF_MASK}
    u8 = to_uint8(image[..., :3])
    plan = ri.plan_region_images(u8, masks)
    states = encode_states(clip_vision, plan.images, "official")
    region_states, image_states = ri.split_states(states, plan, zero_states(clip_vision).to(states.device))
    present = [name for name, here in zip(REGION_ORDER, plan.present[0].tolist()) if here]

    tokenize = content_tokenizer(clip, "l")
    marked = cid_prompt.build_facial_prompt(caption, facial.variant, present, tokenize)
    fused = cid_prompt.pair_regions(marked.marker_regions, present, facial.pairing)
    tokens = clip.tokenize(marked.clean_text)
    positions = cid_prompt.locate_markers(stream_chunks(tokens, "l"), cid_prompt.marker_anchors(marked, tokenize))
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)

    out = {"context": cond[0].float(), "clip_states": image_states[0].float(),
           "region_states": region_states[0].float(), "slot_positions": slot_positions(positions, fused),
           "region_masks": masks_on_grid([masks[r] for r in REGION_ORDER], latent_hw),
           "mask": masks_on_grid([masks["face"]], latent_hw)[0]}
    if pooled is not None:
        out["pooled"] = pooled[0].float()
    return out
