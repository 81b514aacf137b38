"""ComfyUI side of training: attention patches on a cloned ModelPatcher, LoRA weight wrappers,
per-transformer-block gradient checkpointing, and one denoising forward.

- Patches: an attn2 (or attn1) replace patch per chosen block calls ComfyUI's own attention for the
  text part, exactly as CrossAttention.forward would, then the engine hooks (models/training/
  attention_hooks.py) add the trainable identity branch and record maps. A patch already in the slot
  (another pack's, or PartID's inference patch) computes the text part instead, so it keeps working.
- LoRA: each LoRA'd projection gets a weight wrapper (`ModelPatcher.add_weight_wrapper`, what
  TrainLoraNode uses), so ComfyUI casts, offloads and applies the trainable delta itself.
- Inference mode: nodes run under torch.inference_mode(); weights loaded then are inference tensors
  that autograd cannot save. `materialise_inference_weights` swaps them for normal tensors with the
  same values (once; the model is shared, the values do not change).
- Gradient checkpointing: whole-block checkpointing breaks block-keyed patches because the shared
  transformer_options dict changes while the UNet runs (REFERENCE 1.3); each BasicTransformerBlock is
  checkpointed with a snapshot of its own transformer_options instead.
"""
from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint

from ..models.attention.decoupled import token_grid
from ..models.attention.unet_keys import cross_attention_blocks_of_module
from ..models.training.attention_hooks import LoraDelta, TrainingHooks
from .attention_patch import base_attention


class TrainingAttentionPatch:
    """attn1/attn2 replace patch for one block while training (and for recording at sampling time)."""

    partid_training_attention = True

    def __init__(self, block, hooks: TrainingHooks, attention: str, previous=None):
        self.block, self.hooks, self.attention, self.previous = tuple(block), hooks, attention, previous

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        out = base_attention(self.previous, q, k, v, extra_options)
        grid = None
        if self.hooks.recorder.enabled:   # recording off: no grid, no maps, only the identity branch
            grid = token_grid(q.shape[1], extra_options.get("activations_shape"), extra_options.get("original_shape"))
        if self.attention == "attn2":
            return self.hooks.cross(self.block, q, k, heads, out, grid)
        self.hooks.self_attention(self.block, q, k, heads, grid)
        return out

    def __deepcopy__(self, memo):
        # Clones share the hooks (trainable weights, recorder): a training run owns one set.
        return TrainingAttentionPatch(self.block, self.hooks, self.attention, self.previous)

    def to(self, device_or_dtype):
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self


def install_training_patches(patcher, hooks: TrainingHooks, cross_blocks, self_blocks=()) -> None:
    """attn2 patches on `cross_blocks` (identity branch + recording), attn1 on `self_blocks` (recording)."""
    options = patcher.model_options.get("transformer_options", {}).get("patches_replace", {})
    for attention, keys in (("attn2", cross_blocks), ("attn1", self_blocks)):
        current = options.get(attention, {})
        for key in keys:
            existing = current.get(tuple(key), current.get(tuple(key[:2])))
            patch = TrainingAttentionPatch(key, hooks, attention, existing)
            if attention == "attn2":
                patcher.set_model_attn2_replace(patch, *key)
            else:
                patcher.set_model_attn1_replace(patch, *key)


def all_blocks(patcher):
    return cross_attention_blocks_of_module(patcher.get_model_object("diffusion_model"))


def add_lora_wrappers(patcher, lora_by_key: dict) -> int:
    for key, (down, up) in lora_by_key.items():
        patcher.add_weight_wrapper(key, LoraDelta(down, up))
    return len(lora_by_key)


def materialise_inference_weights(module: torch.nn.Module) -> int:
    """Replace inference-mode parameters/buffers with normal tensors of the same values. Returns the count."""
    count = 0
    with torch.inference_mode(False):
        for sub in module.modules():
            for name, p in list(sub._parameters.items()):
                if p is not None and p.is_inference():
                    sub._parameters[name] = torch.nn.Parameter(p.clone(), requires_grad=False)
                    count += 1
            for name, b in list(sub._buffers.items()):
                if b is not None and b.is_inference():
                    sub._buffers[name] = b.clone()
                    count += 1
    return count


@contextlib.contextmanager
def checkpointed_transformer_blocks(diffusion_model: torch.nn.Module, enabled: bool = True):
    """Checkpoint every BasicTransformerBlock (non-reentrant, transformer_options snapshot); restore after."""
    if not enabled:
        yield
        return
    from comfy.ldm.modules.attention import BasicTransformerBlock

    blocks = [m for m in diffusion_model.modules() if isinstance(m, BasicTransformerBlock)]
    for m in blocks:
        original = m.forward

        def forward(x, context=None, transformer_options={}, _original=original):
            snapshot = dict(transformer_options)   # the UNet rewrites "block" etc. before the recompute
            return torch.utils.checkpoint.checkpoint(
                lambda x_, c_: _original(x_, context=c_, transformer_options=snapshot), x, context,
                use_reentrant=False)

        m.forward = forward
    try:
        yield
    finally:
        for m in blocks:
            m.__dict__.pop("forward", None)


def denoise(patcher, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, y: torch.Tensor | None = None
            ) -> torch.Tensor:
    """x0 prediction of the patched model for one positive-only batch (ComfyUI's apply_model)."""
    options = dict(patcher.model_options.get("transformer_options", {}))
    options["cond_or_uncond"] = [0]
    options["sigmas"] = sigma
    kwargs = {} if y is None else {"y": y}
    return patcher.model.apply_model(x_t, sigma, c_crossattn=context, transformer_options=options, **kwargs)
