"""ComfyUI glue for ConsistentID's text side: facial caption, markers, region-token fusion, delayed merge.

The prompt work is in models/consistentid/prompt.py (pure id lists); this module tokenises and
encodes with the CLIP it is given and fuses region tokens into the text encoder OUTPUT at the
located positions, as core PhotoMaker does (comfy_extras/nodes_photomaker.py).

What the outputs hold (official pipelines, start_merge_step 30 of 50 -> merge_at 0.6):
- positive: [plain text cond, start 0 .. merge_at] + [fused cond, merge_at .. 1] (start_percent /
  end_percent keys, as ConditioningSetTimestepRange sets them). The plain cond is the same encoding
  the fused one is made from (SD1.5: the assembled marker-free text, so every non-fused token is
  bit-identical), or for SDXL the user's prompt alone, as the SDXL pipeline encodes it.
- negative: the negative prompt's encoding with the UNCONDITIONAL region token (FacialEncoder of
  CLIP-H states of an all-zero image) fused at the POSITIVE's marker positions, whatever tokens the
  negative has there (official get_facial_embeds). SD1.5 uses it for the whole range; SDXL uses the
  plain negative before merge_at and the fused one after (official SDXL loop). Positions beyond the
  negative's length (a positive with more 77-token chunks) are not fused.
The ID tokens (ProjPlus) and the attention patch are applied elsewhere.
"""
from __future__ import annotations

import logging
import numbers

import torch
from comfy_api.latest import io

from ..models.consistentid import FacialEncoder
from ..models.consistentid import prompt as cid_prompt
from ..models.consistentid.regions import REGION_ORDER
from ..models.errors import InputError
from . import managed, types
from .validate import require_adapter, require_choice

NODE = "PartID ConsistentID Text Fusion"
_CACHE_ATTR = "_partid_facial_encoder"        # managed.Managed (FacialEncoder) kept on the adapter object


def facial_encoder_for(adapter, device: torch.device, dtype: torch.dtype) -> FacialEncoder:
    """The adapter's FacialEncoder loaded on device/dtype: built once per adapter object, under model management."""
    return managed.managed(adapter, _CACHE_ATTR,
                           lambda at: FacialEncoder.from_adapter(adapter, dtype=dtype, device=at).eval(),
                           dtype, load_device=device)


def text_device_dtype(clip) -> tuple[torch.device, torch.dtype]:
    """The CLIP's load device; its text-encoder dtype there (fp32 on the CPU, fp16 for fp8 encoders)."""
    import comfy.model_management as mm

    device = torch.device(clip.patcher.load_device)
    if device.type == "cpu":
        return device, torch.float32
    dtype = mm.text_encoder_dtype(device)
    return device, dtype if dtype in (torch.float16, torch.bfloat16, torch.float32) else torch.float16


def stream_chunks(tokens: dict, key: str) -> list[list[cid_prompt.Token]]:
    """One token stream of clip.tokenize() as id lists (embedding vectors become None)."""
    return [[t if isinstance(t, numbers.Integral) else None for t, *_ in chunk] for chunk in tokens[key]]


def content_tokenizer(clip, key: str) -> cid_prompt.Tokenize:
    """text -> content ids of one stream, tokenised exactly as the CLIP tokenises prompts."""
    return lambda text: [t for _, t in cid_prompt.content_positions(stream_chunks(clip.tokenize(text), key))]


def encode(clip, tokens) -> tuple[torch.Tensor, dict]:
    out = clip.encode_from_tokens(tokens, return_pooled=True, return_dict=True)
    return out.pop("cond"), out


def timed(cond: torch.Tensor, extras: dict, start: float, end: float) -> list:
    return [cond, {**extras, "start_percent": start, "end_percent": end}]


def merge_schedule(before: tuple[torch.Tensor, dict], after: tuple[torch.Tensor, dict], merge_at: float) -> list:
    """`before` until merge_at, `after` from it (one entry, no range, when merge_at is 0 or 1)."""
    if merge_at <= 0.0:
        return [[after[0], dict(after[1])]]
    if merge_at >= 1.0:
        return [[before[0], dict(before[1])]]
    return [timed(*before, 0.0, merge_at), timed(*after, merge_at, 1.0)]


def present_regions_of(regions) -> tuple[str, ...]:
    for name in ("states", "present", "uncond_states"):
        if not hasattr(regions, name):
            raise InputError(NODE, "regions", "this input is not PartID ConsistentID region states.",
                             "connect the regions output of PartID ConsistentID Encode.")
    rows = {regions.present_regions(b) for b in range(regions.states.shape[0])}
    if len(rows) != 1:
        raise InputError(NODE, "regions", f"the reference images have different regions ({sorted(rows)}), which "
                         "give them different captions.", "use one reference image per text node, or references "
                         "with the same visible parts.")
    return rows.pop()


def locate(clip, facial: cid_prompt.FacialPrompt, tokens: dict, key: str) -> list[int]:
    anchors = cid_prompt.marker_anchors(facial, content_tokenizer(clip, key))
    try:
        return cid_prompt.locate_markers(stream_chunks(tokens, key), anchors)
    except cid_prompt.FacialPromptError as exc:
        raise InputError(NODE, "text", exc.problem, exc.fix) from exc


class ConsistentIDTextFusion(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDConsistentIDText", display_name=NODE, category="PartID/ConsistentID",
            description="ConsistentID's text side: appends the facial caption with <|facial|> markers (unless the "
                        "text has its own), fuses each facial region's token into the text encoding after its "
                        "part word, and switches from the plain to the fused text at merge_at, as the official "
                        "pipelines do.",
            inputs=[
                io.Clip.Input("clip"),
                types.ConsistentIDAdapter.Input("adapter"),
                types.CIDRegions.Input("regions", tooltip="Region CLIP-H states (face, eye, ear, nose, lip) of the reference."),
                io.String.Input("text", multiline=True, dynamic_prompts=True,
                                tooltip="Prompt. Without <|facial|> the official caption is appended; with "
                                        "markers, each marks the word before it."),
                io.String.Input("negative", multiline=True, dynamic_prompts=True, default=""),
                io.Float.Input("merge_at", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="Where the fused text takes over, as a fraction of the sampling schedule "
                                       "(a conditioning timestep range, like ConditioningSetTimestepRange). 0.6 = "
                                       "30/50: with 50 'normal' steps the first fused step is step 30; the official "
                                       "loop's is 31 (0.62 matches it); 'karras' reaches 0.6 earlier (step 26)."),
                io.Combo.Input("pairing", options=list(cid_prompt.PAIRINGS), default="faithful",
                               tooltip="faithful: regions pair with markers by order, as the official code and its "
                                       "weights (the eye image goes to 'ears' and the ear image to 'eyes'). "
                                       "corrected: each marker gets the region its word names."),
                io.Boolean.Input("sdxl_tokenizer_compat", default=False,
                                 tooltip="SDXL only: reproduce the official SDXL pipeline's bug of feeding the "
                                         "second text encoder the literal '<|facial|>' text (misaligned tokens)."),
            ],
            outputs=[io.Conditioning.Output(display_name="positive"), io.Conditioning.Output(display_name="negative")],
        )

    @classmethod
    def execute(cls, clip, adapter, regions, text, negative="", merge_at=0.6, pairing="faithful",
                sdxl_tokenizer_compat=False):
        require_choice(NODE, "pairing", pairing, cid_prompt.PAIRINGS)
        if not 0.0 <= merge_at <= 1.0:
            raise InputError(NODE, "merge_at", f"{merge_at} is outside 0..1.", "use a fraction between 0 and 1.")
        variant = require_adapter(NODE, adapter, "ConsistentID", bases=cid_prompt.VARIANTS)
        probe = clip.tokenize("")
        expected_streams = {"l"} if variant == "sd15" else {"l", "g"}
        if set(probe) != expected_streams:
            raise InputError(NODE, "clip", f"the CLIP has text encoders {sorted(probe)}, but the adapter is "
                             f"{adapter.format.name}, which needs {sorted(expected_streams)}.",
                             "connect the CLIP of the checkpoint the adapter was made for.")
        present = present_regions_of(regions)

        try:
            facial = cid_prompt.build_facial_prompt(text, variant, present, content_tokenizer(clip, "l"))
            fused_regions = cid_prompt.pair_regions(facial.marker_regions, present, pairing)
        except cid_prompt.FacialPromptError as exc:
            raise InputError(NODE, "text", exc.problem, exc.fix) from exc
        tokens = clip.tokenize(facial.clean_text)
        positions = locate(clip, facial, tokens, "l")
        if variant == "sdxl":
            if sdxl_tokenizer_compat:  # official SDXL: tokenizer_2 never learnt <|facial|>
                tokens["g"] = clip.tokenize(facial.text)["g"]
            elif locate(clip, facial, tokens, "g") != positions:
                raise InputError(NODE, "text", "the two text encoders' tokens place the markers differently.",
                                 "remove embeddings or weights next to the <|facial|> markers.")
        pairs = [(p, r) for p, r in zip(positions, fused_regions) if r is not None]
        if len(pairs) < len(positions):
            logging.warning("[PartID] %s: %d of %d <|facial|> markers have no region to fuse (missing in the "
                            "reference).", NODE, len(positions) - len(pairs), len(positions))
        if not pairs:
            logging.warning("[PartID] %s: no facial region fused; the fused text equals the plain text.", NODE)
        fused_positions = [p for p, _ in pairs]

        cond, extras = encode(clip, tokens)
        if cond.shape[-1] != adapter.format.context_dim:
            raise InputError(NODE, "clip", f"the text encoding is {cond.shape[-1]} wide, the adapter "
                             f"({adapter.format.name}) needs {adapter.format.context_dim}.",
                             "connect the CLIP of the checkpoint the adapter was made for.")
        neg_cond, neg_extras = encode(clip, clip.tokenize(negative))

        fused, fused_neg = cond, neg_cond
        if pairs:
            encoder = facial_encoder_for(adapter, *text_device_dtype(clip))
            fused, fused_neg = encoder.fuse_prompts(cond, neg_cond, regions.states, regions.uncond_states,
                                                    [REGION_ORDER.index(r) for _, r in pairs], fused_positions)

        if variant == "sd15":
            plain, plain_extras = cond, extras
        else:
            plain, plain_extras = encode(clip, clip.tokenize(cid_prompt.plain_text(text, facial, variant)))
        positive = merge_schedule((plain, plain_extras), (fused, extras), merge_at)
        if cid_prompt.NEGATIVE_FUSED_BEFORE_MERGE[variant]:
            negative_out = [[fused_neg, dict(neg_extras)]]
        else:
            negative_out = merge_schedule((neg_cond, neg_extras), (fused_neg, neg_extras), merge_at)
        return io.NodeOutput(positive, negative_out)


NODES = [ConsistentIDTextFusion]
