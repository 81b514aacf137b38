"""What an identity patch needs to know about the sampling run it is in, recorded when the run starts.

ComfyUI calls an attention patch with the batch chunks' `cond_or_uncond` (only their position in the list a
guider passes: DualCFG passes [negative, middle, positive], PerpNeg [positive, negative, empty], SAG re-runs
the negative alone as index 0) and their conditionings' `uuids`. An OUTER_SAMPLE wrapper on the patched model
(`record_sampling_run`, installed by attention_patch.install_identity_group) reads the guider at the start
of each run and leaves in transformer_options, where every model call of the run sees it:
- each conditioning's role by uuid: 1 for the negative ones ("negative", PerpNeg's "empty_negative_prompt"),
  0 for the rest ("positive", DualCFG's "middle"), so each chunk gets the tokens of its role;
- each area conditioning's area (ConditioningSetArea, a mask's bounds), since ComfyUI runs such a chunk on the
  latent cropped to the area and an identity mask must be cropped with it;
and it resolves each identity's start/end percents against the model sampling of this run.
Without the record (a model called outside a guider) chunks fall back to cond_or_uncond, standard CFG's order.
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch

log = logging.getLogger("partid")


def is_partid_patch(patch) -> bool:
    return bool(getattr(patch, "partid_decoupled_attention", False))  # duck-typed: the pack may load twice


def sigmas_of(model_sampling, start_percent: float, end_percent: float) -> tuple[float, float]:
    """(start, end) percents of a model's schedule -> (sigma_start, sigma_end)."""
    return float(model_sampling.percent_to_sigma(start_percent)), float(model_sampling.percent_to_sigma(end_percent))


ROLES_KEY = "partid_conditioning_roles"      # transformer_options: {cond uuid: 0 positive | 1 negative}
AREAS_KEY = "partid_conditioning_areas"      # transformer_options: ConditioningAreas of the run
ROLES_WRAPPER = "partid_conditioning_roles"


class ConditioningAreas:
    """The area (h, w, y, x in latent units) of each conditioning of a sampling run, by uuid, read from the
    guider's processed conds when first asked (areas given in percent are resolved by then), with the
    latent's size. Shared, never copied: it lives in transformer_options, which ComfyUI copies per call."""

    def __init__(self, guider, latent_hw: tuple[int, int]):
        self.guider, self.latent_hw = guider, tuple(latent_hw)
        self._source, self._areas = None, {}

    def __deepcopy__(self, memo):
        return self

    def of(self, uuid):
        conds = getattr(self.guider, "conds", None) or {}
        if self._source is not conds:
            self._source = conds
            self._areas = {c["uuid"]: tuple(int(v) for v in c["area"]) for items in conds.values() for c in items
                           if isinstance(c, dict) and "uuid" in c and len(c.get("area") or ()) == 4
                           and not isinstance(c["area"][0], str)}
        area = self._areas.get(uuid)
        return None if area is None else (area, self.latent_hw)


def chunk_areas(extra_options: Mapping, chunks: int) -> list:
    """Per batch chunk: (area, latent size) of its conditioning when it is an area conditioning, else None."""
    lookup, uuids = extra_options.get(AREAS_KEY), extra_options.get("uuids")
    if lookup is None or not uuids or len(uuids) != chunks:
        return [None] * chunks
    return [lookup.of(u) for u in uuids]


def conditioning_roles(conds: Mapping[str, list]) -> dict:
    """{uuid: token index} of a guider's conds: 1 for the negative ones ("negative", PerpNeg's
    "empty_negative_prompt"), 0 for the rest ("positive", DualCFG's "middle")."""
    return {c["uuid"]: 1 if "negative" in name else 0
            for name, items in conds.items() for c in items if isinstance(c, dict) and "uuid" in c}


def record_sampling_run(executor, *args, **kwargs):
    """OUTER_SAMPLE wrapper, at the start of each sampling run: puts the guider's uuid -> role map where every
    model call of the run sees it, and resolves each identity's start/end percents to this run's sigmas."""
    guider = executor.class_obj
    options = guider.model_options.setdefault("transformer_options", {})
    options[ROLES_KEY] = conditioning_roles(getattr(guider, "conds", None) or {})
    noise = args[0] if args else kwargs.get("noise")
    if isinstance(noise, torch.Tensor) and noise.ndim == 4:
        options[AREAS_KEY] = ConditioningAreas(guider, noise.shape[-2:])
    sampling = guider.model_patcher.get_model_object("model_sampling")
    attn2 = options.get("patches_replace", {}).get("attn2", {})
    for key, patch in attn2.items():
        for group in getattr(patch, "groups", ()) if is_partid_patch(patch) else ():
            if group.percents is not None:
                group.sigma_start, group.sigma_end = sigmas_of(sampling, *group.percents)
                group._gate = (None, True)
    shadowed = sorted({k[:2] for k, p in attn2.items() if len(k) == 3 and is_partid_patch(p)
                       and k[:2] in attn2 and not is_partid_patch(attn2[k[:2]]) and p.previous is not attn2[k[:2]]})
    if shadowed:    # ComfyUI looks up (name, id, depth) before (name, id): PartID's patch hides the other one
        log.warning("[PartID] another node's attention patch on %d block(s) (e.g. %s) was added after a PartID apply "
                    "node and does not run: put PartID's apply node after the other identity node (IPAdapter, "
                    "InstantID, PuLID, ...).", len(shadowed), shadowed[0])
    return executor(*args, **kwargs)


def chunk_roles(extra_options: Mapping) -> list[int] | None:
    """Each batch chunk's token index: its conditioning's recorded role, else ComfyUI's cond_or_uncond entry."""
    order = extra_options.get("cond_or_uncond")
    roles, uuids = extra_options.get(ROLES_KEY), extra_options.get("uuids")
    if order and roles and uuids and len(uuids) == len(order):
        return [roles.get(u, i) for u, i in zip(uuids, order)]
    return order
