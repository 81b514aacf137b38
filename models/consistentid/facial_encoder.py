"""ConsistentID's FacialEncoder: one token per facial region, fused into the prompt embeddings.

Two parts, named as in the official checkpoint group `FacialEncoder`:

- `visual_projection` (officially `AttentionMLP`): a Perceiver with ONE learned query
  (`latents` [1, 1, 1024]); proj_in 1280 -> 1024, 8 layers of 16 heads x 64, proj_out 1024 -> D,
  norm_out. It turns each region image's CLIP-H penultimate states [N=257, 1280] into one D token.
- `fuse_module` (officially `FuseModule`): for a text token t and a region token r,
      x = mlp1([t ; r]) + t        mlp1: LayerNorm(2D) -> Linear(2D, D) -> GELU -> Linear(D, D)
      x = mlp2(x) + x              mlp2: LayerNorm(D)  -> Linear(D, D)  -> GELU -> Linear(D, D)
      fused = layer_norm(x)
  (mlp1 itself has no residual; the text token is added back outside it.)

Pairing of regions with prompt positions. The official code receives a boolean mask over the
prompt (True on the token just before each `<|facial|>` marker) and a mask over the 5 region
slots (first n True for n markers), and writes with `masked_scatter_` in row-major order: in
batch row b the k-th marked position, in ascending token order, receives region k (region order =
the order the region images were stacked: face, eye, ear, nose, lip). So the pairing is purely by
order; which region belongs to which word is decided when the tokens are built (a later step),
not here. Here `positions[b][k]` receives region k; to reproduce the official result pass each
row's marker positions in ascending order. (The official flattening is across the whole batch;
with its own mask builder every row has as many valid regions as markers, so per-row pairing is
the same thing.)

Unlike the official module, fusion never mutates the caller's tensor: it returns new embeddings.
(The official `masked_scatter_` writes through a view into the prompt embeddings it was given; in
the SD1.5 pipeline that is a slice of the encoded negative prompt, which is silently changed.)

Unconditional side, as the official pipelines do it (done by the caller): the negative prompt
embeddings are fused at the SAME positions as the positive prompt, with region tokens made from
CLIP-H states of all-zero tensors in the CLIP-normalised pixel space (not black images).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from ..layouts.consistentid import CLIP_H_WIDTH
from ..model_files import AdapterWeights
from .perceiver import PerceiverResampler, materialise


Positions = Sequence[Sequence[int]]


class RegionQueryResampler(PerceiverResampler):
    """Perceiver with one learned query: [M, N, 1280] region states -> [M, 1, D] region tokens."""

    def __init__(self, out_dim: int, width: int = 1024, depth: int = 8, heads: int = 16,
                 in_dim: int = CLIP_H_WIDTH):
        super().__init__(in_dim=in_dim, width=width, out_dim=out_dim, depth=depth, heads=heads)
        # Same init as the official code; the checkpoint replaces it.
        self.latents = nn.Parameter(torch.randn(1, 1, width) / width ** 0.5)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(self.latents.expand(features.shape[0], -1, -1), features)


class FuseMLP(nn.Module):
    """LayerNorm -> Linear -> GELU -> Linear, optionally residual (official `MLP`)."""

    def __init__(self, in_dim: int, out_dim: int, residual: bool):
        super().__init__()
        if residual and in_dim != out_dim:
            raise ValueError("a residual MLP needs in_dim == out_dim")
        self.residual = residual
        self.layernorm = nn.LayerNorm(in_dim)
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc2(self.act(self.fc1(self.layernorm(x))))
        return y + x if self.residual else y


def pair_indices(positions: Positions, batch: int, seq_len: int, num_regions: int,
                 device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(batch index, token position, region index) per fused token; positions[b][k] <- region k."""
    if len(positions) != batch:
        raise ValueError(f"positions has {len(positions)} rows for a batch of {batch}")
    rows: list[tuple[int, int, int]] = []
    for b, row in enumerate(positions):
        row = [int(p) for p in row]
        if len(row) > num_regions:
            raise ValueError(f"batch row {b}: {len(row)} positions but only {num_regions} region tokens")
        if len(set(row)) != len(row):
            raise ValueError(f"batch row {b}: a position appears twice in {row}")
        if any(not 0 <= p < seq_len for p in row):
            raise ValueError(f"batch row {b}: positions {row} outside the {seq_len}-token prompt")
        rows.extend((b, p, k) for k, p in enumerate(row))
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty, empty
    b_idx, t_idx, r_idx = torch.tensor(rows, dtype=torch.long, device=device).unbind(1)
    return b_idx, t_idx, r_idx


class FuseModule(nn.Module):
    """Fuses region tokens into prompt token embeddings; a pure function of its inputs."""

    def __init__(self, cross_dim: int):
        super().__init__()
        self.mlp1 = FuseMLP(2 * cross_dim, cross_dim, residual=False)
        self.mlp2 = FuseMLP(cross_dim, cross_dim, residual=True)
        self.layer_norm = nn.LayerNorm(cross_dim)

    def fuse_tokens(self, text_tokens: torch.Tensor, region_tokens: torch.Tensor) -> torch.Tensor:
        """[..., D] text tokens and matching [..., D] region tokens -> fused [..., D]."""
        x = self.mlp1(torch.cat([text_tokens, region_tokens], dim=-1)) + text_tokens
        return self.layer_norm(self.mlp2(x))

    def forward(self, prompt_embeds: torch.Tensor, region_tokens: torch.Tensor, positions: Positions) -> torch.Tensor:
        """prompt_embeds [B, T, D], region_tokens [B, R, D] -> NEW [B, T, D] (input untouched).

        Only the listed positions change; every other row is returned bit-identical.
        """
        b, t, _ = prompt_embeds.shape
        b_idx, t_idx, r_idx = pair_indices(positions, b, t, region_tokens.shape[1], prompt_embeds.device)
        dtype = self.layer_norm.weight.dtype
        fused = self.fuse_tokens(prompt_embeds[b_idx, t_idx].to(dtype), region_tokens[b_idx, r_idx].to(dtype))
        # index_put (not index_put_) returns a new tensor.
        return prompt_embeds.index_put((b_idx, t_idx), fused.to(prompt_embeds.dtype))


class FacialEncoder(nn.Module):
    """State dict keys: visual_projection.*, fuse_module.* (the official `FacialEncoder` group)."""

    def __init__(self, cross_dim: int, width: int = 1024, depth: int = 8, heads: int = 16):
        super().__init__()
        self.cross_dim = cross_dim
        self.visual_projection = RegionQueryResampler(cross_dim, width=width, depth=depth, heads=heads)
        self.fuse_module = FuseModule(cross_dim)

    @classmethod
    def from_adapter(cls, weights: AdapterWeights, dtype: torch.dtype = torch.float32,
                     device: torch.device | str = "cpu") -> FacialEncoder:
        cross_dim = weights.format.context_dim
        return materialise(lambda: cls(cross_dim), weights.groups["FacialEncoder"], dtype, device)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32,
                        device: torch.device | str = "cpu") -> FacialEncoder:
        """Built from the `FacialEncoder` group alone: width, depth and D read off the tensors, heads
        64 wide as in the official 16 x 64 (the trainer uses this; it also builds small test encoders)."""
        width = state["visual_projection.latents"].shape[-1]
        depth = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("visual_projection.layers."))
        cross_dim = state["fuse_module.layer_norm.weight"].shape[0]
        return materialise(lambda: cls(cross_dim, width=width, depth=depth, heads=max(1, width // 64)),
                           state, dtype, device)

    def encode_regions(self, region_states: torch.Tensor) -> torch.Tensor:
        """Region CLIP-H penultimate states [B, R, N, 1280] -> one token per region [B, R, D]."""
        b, r, n, c = region_states.shape
        dtype = self.fuse_module.layer_norm.weight.dtype
        tokens = self.visual_projection(region_states.reshape(b * r, n, c).to(dtype))
        return tokens.view(b, r, self.cross_dim)

    def forward(self, prompt_embeds: torch.Tensor, region_states: torch.Tensor, positions: Positions) -> torch.Tensor:
        """Encode the regions and fuse them at `positions` (see the module docstring for pairing).

        Only the first max(len(row)) region slots are encoded: slots no position receives cannot
        change the result (the official code encodes all 5 and drops the unused ones).
        """
        used = max((len(row) for row in positions), default=0)
        if used == 0:
            return prompt_embeds.clone()
        return self.fuse_module(prompt_embeds, self.encode_regions(region_states[:, :used]), positions)

    def fuse_slots(self, prompt_embeds: torch.Tensor, region_states: torch.Tensor,
                   slot_positions: torch.Tensor) -> torch.Tensor:
        """Training form of `forward`: each sample brings its own pairing.

        region_states [B, R, N, 1280]; slot_positions [B, R] long: the prompt position region slot r
        of sample b is fused into, -1 where it is not fused. Only the fused slots are encoded (one
        resampler batch for the whole micro-batch). Returns NEW [B, T, D] embeddings.
        """
        b_idx, r_idx = (slot_positions >= 0).nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return prompt_embeds.clone()
        dtype = self.fuse_module.layer_norm.weight.dtype
        tokens = self.visual_projection(region_states[b_idx, r_idx].to(dtype))[:, 0]        # [K, D]
        t_idx = slot_positions[b_idx, r_idx].to(prompt_embeds.device)
        b_idx = b_idx.to(prompt_embeds.device)
        fused = self.fuse_module.fuse_tokens(prompt_embeds[b_idx, t_idx].to(dtype), tokens)
        return prompt_embeds.index_put((b_idx, t_idx), fused.to(prompt_embeds.dtype))

    def fuse_prompts(self, cond: torch.Tensor, negative: torch.Tensor, region_states: torch.Tensor,
                     uncond_states: torch.Tensor, slots: Sequence[int], positions: Sequence[int]
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference fusion of one encoded prompt pair (the official get_facial_embeds):
        cond [1, T, D] gets each reference's region tokens (region_states [B, 5, N, 1280], slot slots[i] fused at
        positions[i]) -> [B, T, D]; negative [1, T', D] gets the UNCONDITIONAL region token (uncond_states
        [N, 1280]) at the same positions, those inside its length -> [1, T', D]. NEW tensors on the inputs'
        devices (the inputs themselves when nothing is fused)."""
        if not positions:
            return cond, negative
        device = self.fuse_module.layer_norm.weight.device
        tokens = self.encode_regions(region_states[:, list(slots)].to(device))                  # [B, k, D]
        fused = self.fuse_module(cond.to(device).expand(tokens.shape[0], -1, -1), tokens,
                                 [list(positions)] * tokens.shape[0]).to(cond.device)
        inside = [p for p in positions if p < negative.shape[1]]
        if not inside:
            return fused, negative
        uncond = self.encode_regions(uncond_states[None, None].to(device)).expand(1, len(inside), -1)
        return fused, self.fuse_module(negative.to(device), uncond, [inside]).to(negative.device)
