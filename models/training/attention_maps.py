"""Attention maps of chosen token groups, recorded during a training forward (plain torch).

A localisation loss needs, for each chosen UNet block, "where in the image does token group g look":
one map over the block's query pixels per group. Three sources of keys (REFERENCE 2.3, 4):
- "context": positions in the text context of a cross-attention (ConsistentID's fused region tokens,
  FastComposer's subject tokens);
- "identity": identity tokens of the decoupled IP branch (ConsistentID ID tokens, Visual Persona part
  tokens, StoryMaker's per-person tokens);
- "self": key positions of a self-attention (what the released ConsistentID training code hooked).

Two normalisations:
- "pixels": softmax of the group's logits over the query pixels (each map sums to one over the image;
  scaled by the pixel count so a uniform map is 1 everywhere, which keeps the loss scale equal across
  block resolutions). REFERENCE 1.3: a softmax over the identity keys alone is constant per pixel.
- "keys": the attention probabilities the model really uses (softmax over the keys of that
  attention), summed over the group's tokens: in 0..1 per pixel, StoryMaker's formulation.
- "keys_max": those probabilities per head and token divided by their maximum over the pixels, then
  averaged over heads and tokens: the released ConsistentID code (its BalancedL1Loss(normalize=True)
  rescales each head's map that way; the loss is linear in the map, so averaging heads first is
  the same loss).

Key positions beyond an attention's keys (the released code indexes self-attention keys, i.e.
pixels, with text-token positions, which can exceed a small block's pixel count) count as absent.

Maps are computed from q and k only (a second, cheap product against the group's few keys), never
from the block's output, so recording cannot change the forward result.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Hashable, Sequence

import torch

KINDS = ("context", "identity", "self")
NORMALISATIONS = ("pixels", "keys", "keys_max")


@dataclass
class TokenGroup:
    """One recorded group.

    index: [B, n] long key positions per sample (-1 = absent; a sample with none is left out of the
      loss through `valid`). For "identity", positions among the identity tokens.
    mask: [B, H, W] target region in 0..1 at any resolution (resized to each block).
    person: which person the group belongs to (StoryMaker's per-person sum), or None.
    """

    name: str
    kind: str
    index: torch.Tensor
    mask: torch.Tensor
    person: int | None = None
    background: bool = False

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"token group kind must be one of {KINDS}, got {self.kind!r}")
        if self.index.ndim == 1:
            self.index = self.index.unsqueeze(0)

    @property
    def valid(self) -> torch.Tensor:
        return (self.index >= 0).any(dim=1)


def identity_group(n_tokens: int, masks: torch.Tensor, name: str = "id") -> TokenGroup:
    """All identity tokens as one group against masks [B, h, w] (ConsistentID's ID tokens vs the face)."""
    index = torch.arange(n_tokens, device=masks.device).expand(masks.shape[0], -1)
    return TokenGroup(name, "identity", index, masks)


def part_groups(masks: torch.Tensor, tokens_per_part: int, names: Sequence[str]) -> list[TokenGroup]:
    """One group per part: part j owns identity tokens j*T .. (j+1)*T-1 and is matched with masks[:, j]
    ([B, P, h, w]). Each part is its own person in StoryMaker's sum; a sample whose part mask is empty is
    left out of that part's loss (index -1)."""
    b = masks.shape[0]
    groups = []
    for j, name in enumerate(names):
        present = masks[:, j].flatten(1).amax(1) > 0
        index = torch.arange(j * tokens_per_part, (j + 1) * tokens_per_part, device=masks.device)
        index = index.expand(b, -1).clone()
        index[~present] = -1
        groups.append(TokenGroup(name, "identity", index, masks[:, j], person=j))
    return groups


def slot_groups(slots: torch.Tensor, masks: torch.Tensor, names: Sequence[str], kind: str) -> list[TokenGroup]:
    """One group per text slot fused in at least one sample: slots [B, S] text positions (-1 none), masks
    [B, S, h, w]; kind "context" (cross-attention) or "self" (the positions taken as self-attention keys)."""
    return [TokenGroup(name, kind, slots[:, r:r + 1], masks[:, r])
            for r, name in enumerate(names) if bool((slots[:, r] >= 0).any())]


def default_normalisation(attention: str, loc_loss: str, shared_keys: bool) -> str:
    """The map normalisation a loss expects: the released ConsistentID code's per-head max for self-attention
    maps; StoryMaker's probabilities for its MSE when the groups share the identity keys (Visual Persona's
    parts: each group's share of the same softmax); otherwise a softmax over pixels (a softmax over one group's
    identity keys alone would be constant per pixel, REFERENCE 1.3)."""
    if attention == "self":
        return "keys_max"
    return "keys" if loc_loss == "storymaker" and shared_keys else "pixels"


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, t, inner = x.shape
    return x.reshape(b, t, heads, inner // heads).transpose(1, 2)


def group_maps(q: torch.Tensor, k: torch.Tensor, heads: int, index: torch.Tensor,
               normalise: str = "pixels") -> torch.Tensor:
    """[B, Tq] map of one token group: q [B, Tq, inner], k [B, Tk, inner], index [B, n] (-1 absent).

    Computed in float32 whatever the autocast dtype (the maps are small; their softmax over
    thousands of pixels is not safe in fp16).
    """
    if normalise not in NORMALISATIONS:
        raise ValueError(f"normalise must be one of {NORMALISATIONS}, got {normalise!r}")
    b, tq, inner = q.shape
    index = index.to(q.device)
    if index.shape[0] != b:
        index = index.expand(b, -1)
    tk = k.shape[1]
    present = ((index >= 0) & (index < tk)).to(torch.float32)                 # [B, n]
    safe = index.clamp(0, tk - 1)
    with torch.autocast(q.device.type, enabled=False):
        qh = _split_heads(q.float(), heads)                                   # [B, H, Tq, d]
        scale = qh.shape[-1] ** -0.5
        if normalise == "pixels":
            picked = torch.gather(k.float(), 1, safe.unsqueeze(-1).expand(-1, -1, inner))
            logits = qh @ _split_heads(picked, heads).transpose(-1, -2) * scale   # [B, H, Tq, n]
            probs = logits.softmax(dim=2).mean(dim=1) * tq                        # over pixels, mean of heads
            weights = present / present.sum(1, keepdim=True).clamp(min=1)         # mean over present tokens
        else:
            logits = qh @ _split_heads(k.float(), heads).transpose(-1, -2) * scale  # [B, H, Tq, Tk]
            probs = torch.gather(logits.softmax(dim=-1), 3,
                                 safe[:, None, None, :].expand(-1, logits.shape[1], tq, -1))  # [B, H, Tq, n]
            if normalise == "keys_max":
                probs = probs / (probs.amax(dim=2, keepdim=True) + 1e-5)
                weights = present / present.sum(1, keepdim=True).clamp(min=1)       # mean over present tokens
            else:
                weights = present                                                   # group's probability mass
            probs = probs.mean(dim=1)                                               # [B, Tq, n]
        return (probs * weights.unsqueeze(1)).sum(-1)                               # [B, Tq]


@dataclass
class AttentionRecorder:
    """Which blocks to record and what; the maps of the current step.

    `enabled` False costs one attribute check per attention call. Under gradient checkpointing a
    block's forward runs again during backward: it computes the maps again (the recompute must save
    the same tensors as the forward, or torch.utils.checkpoint refuses it) but the first map of a
    step is kept (`clear` at each step), so the loss's tensors are never replaced or duplicated.
    Keep the recorder enabled until the step's backward is done.
    """

    blocks: set = field(default_factory=set)
    attention: str = "cross"                 # "cross" (attn2: context / identity kinds) or "self" (attn1)
    normalise: str = "pixels"
    groups: Sequence[TokenGroup] = ()
    enabled: bool = False
    maps: dict = field(default_factory=dict)  # {block key: {group name: [B, Tq]}}
    grids: dict = field(default_factory=dict)  # {block key: (h, w)}

    def clear(self) -> None:
        self.maps, self.grids = {}, {}

    def wants(self, block: Hashable, attention: str) -> bool:
        return self.enabled and attention == self.attention and block in self.blocks

    def record(self, block: Hashable, q: torch.Tensor, keys: dict[str, torch.Tensor], heads: int,
               grid: tuple[int, int]) -> None:
        """keys: {"context": k, "identity": k_id, "self": k}: whichever this attention has."""
        out = {}
        for g in self.groups:
            k = keys.get(g.kind)
            if k is None:
                continue
            out[g.name] = group_maps(q, k, heads, g.index, self.normalise)
        self.maps.setdefault(block, out)
        self.grids.setdefault(block, tuple(grid))


def middle_blocks(blocks: Sequence, count: int = 5) -> list:
    """The attention blocks of the `count` diffusers blocks in the middle of the UNet, FastComposer's choice.

    `blocks` are unet_keys.CrossAttentionBlock (with diffusers paths). Diffusers blocks in order
    down, mid, up; those with attention are listed and the middle `count` kept: SD1.5 (5 of 7):
    down_blocks.1-2, mid, up_blocks.1-2; SDXL (5 of 5): every attention block.
    """
    def group_of(b):
        parts = b.diffusers_path.split(".")
        return "mid_block" if parts[0] == "mid_block" else ".".join(parts[:2])

    order = {"down": 0, "mid": 1, "up": 2}
    names = sorted({group_of(b) for b in blocks},
                   key=lambda n: (order[n.split("_")[0]], int(n.split(".")[1]) if "." in n else 0))
    start = max(0, (len(names) - count) // 2)
    keep = set(names[start:start + count])
    return [b for b in blocks if group_of(b) in keep]
