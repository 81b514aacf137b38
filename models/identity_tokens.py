"""Identity tokens between an encode node and an apply node (ComfyUI type PARTID_IDENTITY).

An `IdentityTokens` holds what an adapter's decoupled cross-attention attends to, for R references:

    cond    [R, T, W]      the tokens of each reference (W: the adapter's token width, 2048 for SDXL)
    uncond  [1 or R, T, W] the negative side's tokens (Visual Persona: decoder(DINOv2(zero image)))
    groups  G labels       one per token group, in token order (Visual Persona: part names)
    sizes   G ints         tokens per group; sum(sizes) == T
    weights G floats       per-group scale (token_scale of the attention: scales each token's value)
    source  str            which adapter made them ("visual_persona"): tokens are only meaningful with
                           that adapter's own to_k_ip / to_v_ip, so `concat` refuses mixing sources.

`for_attention` gives what the apply side installs: the R references side by side as one token set
[1, R*T', W] attended jointly, groups of weight 0 left out (so they do not dilute the softmax), and
the per-token scale. Nothing here imports ComfyUI.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

import torch


@dataclass(frozen=True, eq=False)
class IdentityTokens:
    cond: torch.Tensor
    uncond: torch.Tensor
    groups: tuple[str, ...]
    sizes: tuple[int, ...]
    weights: tuple[float, ...]
    source: str

    def __post_init__(self):
        if self.cond.ndim != 3:
            raise ValueError(f"cond tokens must be [R, T, W], got {list(self.cond.shape)}")
        if self.uncond.ndim != 3 or self.uncond.shape[1:] != self.cond.shape[1:] \
                or self.uncond.shape[0] not in (1, self.cond.shape[0]):
            raise ValueError(f"uncond tokens {list(self.uncond.shape)} do not fit cond tokens {list(self.cond.shape)}")
        if not (len(self.groups) == len(self.sizes) == len(self.weights)):
            raise ValueError("groups, sizes and weights must have one entry per token group")
        if sum(self.sizes) != self.cond.shape[1]:
            raise ValueError(f"group sizes {self.sizes} do not add up to {self.cond.shape[1]} tokens")

    @classmethod
    def from_parts(cls, cond: torch.Tensor, uncond: torch.Tensor, groups, source: str) -> "IdentityTokens":
        """Per-part tokens cond [R, P, T, W] and uncond [P, T, W] (one group of T tokens per part, weight 1, in
        `groups` order) -> tokens [R, P*T, W] on the CPU in float32."""
        r, p, t, w = cond.shape
        return cls(cond.float().cpu().reshape(r, p * t, w), uncond.float().cpu().reshape(1, p * t, w),
                   tuple(groups), (t,) * p, (1.0,) * p, source)

    @property
    def references(self) -> int:
        return self.cond.shape[0]

    @property
    def width(self) -> int:
        return self.cond.shape[-1]

    @property
    def n_tokens(self) -> int:
        return self.cond.shape[1]

    def token_scale(self) -> torch.Tensor:
        """[T] float32: each group's weight repeated over its tokens."""
        return torch.repeat_interleave(torch.tensor(self.weights, dtype=torch.float32),
                                       torch.tensor(self.sizes, dtype=torch.long))

    def with_weights(self, weights: Mapping[str, float]) -> "IdentityTokens":
        """Set the weight of every group whose label is in `weights` (others unchanged)."""
        new = tuple(float(weights[g]) if g in weights else w for g, w in zip(self.groups, self.weights))
        return replace(self, weights=new)

    def for_attention(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """-> (cond [1, R*T', W], uncond [1, R*T', W], token_scale [R*T']) without zero-weight groups;
        None when every group has weight 0."""
        keep = [i for i, w in enumerate(self.weights) if w != 0]
        if not keep:
            return None
        starts = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        index = torch.cat([torch.arange(starts[i], starts[i] + self.sizes[i]) for i in keep])
        cond = self.cond[:, index]
        uncond = self.uncond[:, index].expand(self.references, -1, -1)
        scale = self.token_scale()[index].repeat(self.references)
        # Attention over R identical copies of the uncond set (same per-token scale) equals attention over one.
        return cond.reshape(1, -1, self.width), uncond.reshape(1, -1, self.width), scale


def concat(*identities: IdentityTokens) -> IdentityTokens:
    """Token groups of several identities side by side (attended jointly).

    Same source and width required; reference counts must match or be 1 (a single reference is
    shared by every reference of the other).
    """
    if not identities:
        raise ValueError("nothing to concatenate")
    first = identities[0]
    for other in identities[1:]:
        if other.source != first.source:
            raise ValueError(f"cannot join '{first.source}' and '{other.source}' identity tokens: each adapter "
                             "projects only its own tokens; apply each with its own apply node instead")
        if other.width != first.width:
            raise ValueError(f"cannot join {first.width}-wide and {other.width}-wide identity tokens")
    refs = {i.references for i in identities} - {1}
    if len(refs) > 1:
        raise ValueError(f"cannot join identities of {sorted(refs)} references: give the same number of "
                         "references (or one) to each")
    r = refs.pop() if refs else 1
    unc_r = r if any(i.uncond.shape[0] > 1 for i in identities) else 1
    cond = torch.cat([i.cond.expand(r, -1, -1) for i in identities], dim=1)
    uncond = torch.cat([i.uncond.expand(unc_r, -1, -1) for i in identities], dim=1)
    return IdentityTokens(cond, uncond, sum((i.groups for i in identities), ()), sum((i.sizes for i in identities), ()),
                          sum((i.weights for i in identities), ()), first.source)
