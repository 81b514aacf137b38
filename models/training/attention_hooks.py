"""What the training attention patches compute, with no ComfyUI import.

During training an attn2 patch returns `text + w * identity_attention(q, k_ip(tokens), v_ip(tokens))`
with trainable `to_k_ip` / `to_v_ip` and this step's (trainable) identity tokens, exactly the decoupled
attention of models/attention/decoupled.py; when the recorder wants the block it also records maps
from q and the keys (attention_maps.py). An attn1 patch only records. The ComfyUI side
(nodes/training_patch.py) computes `text` with ComfyUI's own attention and calls these.
"""
from __future__ import annotations

from typing import Hashable

import torch
from torch import nn

from ..attention.decoupled import IdentityKeysValues, identity_attention
from .attention_maps import AttentionRecorder


class IdentityBranch:
    """This step's identity tokens and each block's trainable projections.

    projections: {block key: (to_k_ip Linear, to_v_ip Linear)}; tokens: [B, Tk, C] set by the
    trainer every step (their graph reaches the trainable encoders).
    """

    def __init__(self, projections: dict, weight: float = 1.0):
        self.projections = projections
        self.weight = weight
        self.tokens: torch.Tensor | None = None

    def keys_values(self, block: Hashable, batch: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        to_k, to_v = self.projections[block]
        t = self.tokens
        if t.shape[0] != batch:   # cond/uncond chunks (sampling previews): the same tokens in each chunk
            t = t.repeat(batch // t.shape[0], 1, 1)
        t = t.to(dtype=to_k.weight.dtype)
        return to_k(t).to(dtype), to_v(t).to(dtype)


class TrainingHooks:
    """Shared by every training patch of one model: the identity branch and the recorder."""

    def __init__(self, recorder: AttentionRecorder | None = None, identity: IdentityBranch | None = None):
        self.recorder = recorder or AttentionRecorder()
        self.identity = identity

    def cross(self, block: Hashable, q: torch.Tensor, k: torch.Tensor, heads: int, text: torch.Tensor,
              grid: tuple[int, int]) -> torch.Tensor:
        out = text
        keys = {"context": k}
        if self.identity is not None and self.identity.tokens is not None and block in self.identity.projections:
            k_id, v_id = self.identity.keys_values(block, q.shape[0], q.dtype)
            extra = identity_attention(q, [IdentityKeysValues(k_id, v_id, self.identity.weight)], heads)
            if extra is not None:
                out = text + extra.to(text.dtype)
            keys["identity"] = k_id
        if self.recorder.wants(block, "cross"):
            self.recorder.record(block, q, keys, heads, grid)
        return out

    def self_attention(self, block: Hashable, q: torch.Tensor, k: torch.Tensor, heads: int,
                       grid: tuple[int, int]) -> None:
        if self.recorder.wants(block, "self"):
            self.recorder.record(block, q, {"self": k}, heads, grid)


class LoraDelta(nn.Module):
    """`W + up @ down` (the official adapters' LoRA: no alpha, scale 1) as a weight function.

    ComfyUI calls weight functions with the layer's cast weight; `move_to` lets its memory manager
    move the LoRA with the layer (TrainLoraNode's adapters follow the same protocol).
    """

    def __init__(self, down: nn.Linear, up: nn.Linear):
        super().__init__()
        self.down, self.up = down, up

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        delta = self.up.weight @ self.down.weight
        return weight + delta.to(weight.dtype)

    def passive_memory_usage(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.parameters())

    def move_to(self, device=None) -> int:
        if device is not None:
            self.to(device=device)
        return self.passive_memory_usage()
