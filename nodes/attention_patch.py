"""ComfyUI glue for decoupled identity attention: one attn2 replace patch per cross-attention block.

How an apply node uses it (ConsistentID and Visual Persona alike):

    model = model.clone()
    add_adapter_lora(model, sd["adapter_modules"], SD15)               # ConsistentID only
    source = IdentitySource({0: cond_tokens, 1: uncond_tokens},
                            ip_weights_by_block(model, SD15, sd["adapter_modules"]))
    start, end = sigma_window(model, start_at, end_at)
    install_identity_group(model, IdentityGroup(source, weight, start, end, mask=mask))

Design notes (see REFERENCE.md 1.1):
- the patch receives projected q/k/v and returns text attention + identity attention; ComfyUI applies
  attn2.to_out afterwards, which gives IP-Adapter's to_out(text + w * id) exactly;
- each batch chunk gets the tokens of its conditioning's role (positive / negative) and its mask cropped
  to its conditioning's area, as recorded at the start of the sampling run (nodes/sampling_run.py);
- identity keys/values are projected once per block and cached until the model is offloaded;
- ModelPatcher.clone() deep-copies patches: __deepcopy__ shares tokens, weights and the cache and
  copies only the options (weight, window, mask), so a clone can change them independently;
- a patch already in a block's slot is kept: a foreign one computes the text part, a PartID one
  has its identity groups carried over, so identities stack.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..models.attention.decoupled import (IdentityKeysValues, batch_for_chunks, crop_to_area, expand_token_scale,
                                          identity_attention, mask_to_token_grid, project_identity_tokens,
                                          token_grid, tokens_for_chunks)
from ..models.attention.unet_keys import (LORA_PROJECTIONS, BlockKey, cross_attention_blocks_of_module,
                                          processor_targets)
from ..models.layouts.unet_attention import UNetAttentionConfig
from ..models.errors import InputError
from .sampling_run import (ROLES_WRAPPER, chunk_areas, chunk_roles, is_partid_patch, record_sampling_run,
                           sigmas_of)

KeysValues = tuple[torch.Tensor, torch.Tensor]


class IdentitySource:
    """Identity tokens per conditioning index plus each block's to_k_ip / to_v_ip, with the K/V cache.

    tokens: {cond_or_uncond index: [N, Tk, C]} with N 1 or the latent batch; 0 = positive, 1 =
      negative with the standard CFG guider; indices without tokens use `fallback_index`'s.
    block_weights: {block key: (to_k_ip [inner, C], to_v_ip [inner, C])}.
    models: ModelPatchers holding the weights, if any, for ComfyUI's memory manager.
    Treat as immutable once installed (clones share it); `set_tokens` exists for tools that must
    swap tokens in place and invalidates the cache.
    """

    def __init__(self, tokens: Mapping[int, torch.Tensor], block_weights: Mapping[BlockKey, KeysValues],
                 fallback_index: int = 0, models: list | tuple = ()):
        self.block_weights = dict(block_weights)
        self.fallback_index = fallback_index
        self.memory_models = list(models)
        self.projection_count = 0  # K/V projections computed (observability: once per block per run)
        self._cache: dict[tuple[BlockKey, torch.device, torch.dtype], dict[int, KeysValues]] = {}
        self.set_tokens(tokens)

    def set_tokens(self, tokens: Mapping[int, torch.Tensor]) -> None:
        tokens = {int(i): (t.unsqueeze(0) if t.ndim == 2 else t) for i, t in tokens.items()}
        if self.fallback_index not in tokens:
            raise ValueError(f"identity tokens need an entry for index {self.fallback_index}")
        if len({t.shape[1:] for t in tokens.values()}) != 1:
            raise ValueError("identity tokens of every conditioning must have the same [tokens, width]")
        self.tokens = tokens
        self._cache.clear()

    @property
    def n_tokens(self) -> int:
        return self.tokens[self.fallback_index].shape[1]

    def keys_values(self, block: BlockKey, device: torch.device, dtype: torch.dtype) -> dict[int, KeysValues]:
        cache_key = (block, device, dtype)
        kv = self._cache.get(cache_key)
        if kv is None:
            wk, wv = self.block_weights[block]
            by_tensor: dict[int, KeysValues] = {}  # cond and uncond may share one tensor
            kv = {}
            for index, t in self.tokens.items():
                if id(t) not in by_tensor:
                    by_tensor[id(t)] = project_identity_tokens(t, wk, wv, device, dtype)
                    self.projection_count += 1
                kv[index] = by_tensor[id(t)]
            self._cache[cache_key] = kv
        return kv

    def release_cache(self, keep_device: torch.device | None = None) -> None:
        """Drop cached K/V not on `keep_device` (all when None): called when ComfyUI offloads the model."""
        for key in [k for k in self._cache if keep_device is None or not _same_device(k[1], keep_device)]:
            del self._cache[key]


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


@dataclass(eq=False)  # tensors inside: identity, not value, comparison
class IdentityGroup:
    """One identity applied to a model: its source and the options a user sets on the apply node.

    sigma_start / sigma_end: active while sigma_end <= sigma <= sigma_start (see `sigma_window`).
    percents: the (start, end) percents they came from; when set, the sigmas are resolved again at the start
      of each sampling run against the model sampling then in use (a ModelSamplingDiscrete / EDM node placed
      after the apply node changes the schedule), as core ControlNet resolves its percents.
    mask: optional MASK [M, H, W] (any resolution, M 1 or the latent batch) limiting where it acts.
    token_scale: optional scale per token group (e.g. per body part), see expand_token_scale.
    node: the apply node that made it, named in errors raised while sampling.
    """

    source: IdentitySource
    weight: float = 1.0
    sigma_start: float = math.inf
    sigma_end: float = -math.inf
    mask: torch.Tensor | None = None
    token_scale: torch.Tensor | list[float] | None = None
    node: str = "PartID apply node"
    percents: tuple[float, float] | None = None
    _mask_cache: dict = field(default_factory=dict, repr=False)
    _gate: tuple[Any, bool] = field(default=(None, True), repr=False)

    def __deepcopy__(self, memo):
        # Share the source (tokens, weights, K/V cache) and tensors; options become the clone's own.
        new = copy.copy(self)
        new._mask_cache, new._gate = {}, (None, True)
        return new

    def is_active(self, sigmas: torch.Tensor | None) -> bool:
        if sigmas is None or (self.sigma_start == math.inf and self.sigma_end == -math.inf):
            return True
        # Every block of one forward gets the same sigmas tensor: one host sync per forward, not per block.
        if self._gate[0] is not sigmas:
            sigma = float(sigmas.reshape(-1)[0])
            self._gate = (sigmas, self.sigma_end <= sigma <= self.sigma_start)
        return self._gate[1]

    def token_mask(self, n_query: int, extra_options: dict, device, dtype, chunks: int, per_chunk: int):
        if self.mask is None:
            return None
        grid = token_grid(n_query, extra_options.get("activations_shape"), extra_options.get("original_shape"))
        areas = chunk_areas(extra_options, chunks)
        try:
            if not any(areas):
                return batch_for_chunks(self._grid_mask(grid, None, device, dtype), chunks, per_chunk, "the mask")
            # A chunk of an area conditioning runs on the latent cropped to its area: the mask is cropped with it.
            return torch.cat([batch_for_chunks(self._grid_mask(grid, area, device, dtype), 1, per_chunk, "the mask")
                              for area in areas])
        except ValueError as exc:    # only the latent batch tells: raised at the first sampled step
            raise InputError(self.node, "mask", f"{exc}.", "give one mask for every image, or one mask per image "
                             "of the latent batch.") from exc

    def _grid_mask(self, grid, area, device, dtype) -> torch.Tensor:
        key = (grid, area, device, dtype)
        if key not in self._mask_cache:
            mask = self.mask if area is None else crop_to_area(self.mask, area[0], area[1])
            self._mask_cache[key] = mask_to_token_grid(mask, grid).to(device=device, dtype=dtype)
        return self._mask_cache[key]

    def release_cache(self, keep_device: torch.device) -> None:
        """Drop grid masks held on other devices and the last step's sigmas (the model was moved)."""
        self._mask_cache = {k: m for k, m in self._mask_cache.items() if _same_device(m.device, keep_device)}
        self._gate = (None, True)

    def scale_vector(self):
        if self.token_scale is None:
            return None
        return expand_token_scale(self.token_scale, self.source.n_tokens)


def base_attention(previous, q, k, v, extra_options):
    """The attention a replace patch wraps: the previously installed patch, else exactly what ComfyUI's
    CrossAttention.forward would call, so a patch that adds nothing changes nothing."""
    if previous is not None:
        return previous(q, k, v, extra_options)
    from comfy.ldm.modules import attention as comfy_attention

    return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"], transformer_options=extra_options,
                                               attn_precision=extra_options.get("attn_precision"))


class DecoupledAttentionPatch:
    """attn2 replace patch for one block: text attention (or the previous patch) + identity groups."""

    partid_decoupled_attention = True  # duck-typed marker: the pack may be imported under two names

    def __init__(self, block: BlockKey, groups: list[IdentityGroup], previous=None):
        self.block = tuple(block)
        self.groups = list(groups)
        self.previous = previous

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        text = base_attention(self.previous, q, k, v, extra_options)
        sigmas = extra_options.get("sigmas")
        active = [g for g in self.groups if g.weight != 0 and g.is_active(sigmas)]
        if not active:
            return text
        order = chunk_roles(extra_options)
        batch, n_query = q.shape[0], q.shape[1]
        chunks = len(order) if order and batch % len(order) == 0 else 1
        inputs = []
        for g in active:
            kv = g.source.keys_values(self.block, q.device, q.dtype)
            fallback = g.source.fallback_index
            keys = tokens_for_chunks({i: p[0] for i, p in kv.items()}, order, batch, fallback)
            values = tokens_for_chunks({i: p[1] for i, p in kv.items()}, order, batch, fallback)
            mask = g.token_mask(n_query, extra_options, q.device, q.dtype, chunks, batch // chunks)
            inputs.append(IdentityKeysValues(keys, values, g.weight, g.scale_vector(), mask))
        identity = identity_attention(q, inputs, heads)
        return text if identity is None else text + identity.to(text.dtype)

    def __deepcopy__(self, memo):
        return DecoupledAttentionPatch(self.block, [copy.deepcopy(g, memo) for g in self.groups],
                                       copy.deepcopy(self.previous, memo))

    def to(self, device_or_dtype):
        # ComfyUI calls to(load device), to(model dtype) when loading and to(offload device) when
        # offloading; the return value replaces the patch. Free cached K/V left on other devices.
        if isinstance(device_or_dtype, (torch.device, str)):
            device = torch.device(device_or_dtype)
            for g in self.groups:
                g.source.release_cache(keep_device=device)
                g.release_cache(keep_device=device)
        if hasattr(self.previous, "to"):
            self.previous = self.previous.to(device_or_dtype)
        return self

    def models(self):
        found = [m for g in self.groups for m in g.source.memory_models]
        if hasattr(self.previous, "models"):
            found += self.previous.models()
        return found


def sigma_window(patcher, start_percent: float, end_percent: float) -> tuple[float, float]:
    """Node-time (start, end) percents of the schedule -> (sigma_start, sigma_end) for IdentityGroup."""
    return sigmas_of(patcher.get_model_object("model_sampling"), start_percent, end_percent)


def ip_weights_by_block(patcher_or_config, layout: UNetAttentionConfig, state_dict: Mapping[str, torch.Tensor]):
    """`{index}.to_k_ip.weight` / `to_v_ip.weight` of an adapter (layouts' index order) -> {block key: (k, v)}."""
    unet_config = _unet_config(patcher_or_config)
    out = {}
    for index, target in processor_targets(layout, unet_config).items():
        if target.attn != "attn2":
            continue
        try:
            wk, wv = state_dict[f"{index}.to_k_ip.weight"], state_dict[f"{index}.to_v_ip.weight"]
        except KeyError as err:
            raise ValueError(f"adapter weights lack {err.args[0]}: not a {layout.name} IP adapter") from None
        out[target.block.key] = (wk, wv)
    return out


def _unet_config(patcher_or_config) -> dict:
    if isinstance(patcher_or_config, dict):
        return patcher_or_config
    return patcher_or_config.model.model_config.unet_config


def install_identity_group(patcher, group: IdentityGroup) -> list[BlockKey]:
    """Install `group` on every cross-attention block of `patcher` (clone it first). Returns the keys."""
    blocks = cross_attention_blocks_of_module(patcher.get_model_object("diffusion_model"))
    weights = group.source.block_weights
    for b in blocks:
        if b.key not in weights:
            raise ValueError(f"identity weights do not cover cross-attention block {b.key}: wrong base model?")
        for w in weights[b.key]:
            if w.shape[0] != b.inner_dim:
                raise ValueError(f"block {b.key} is {b.inner_dim} wide; the identity weights project to {w.shape[0]}")
        if weights[b.key][0].shape[1] != group.source.tokens[group.source.fallback_index].shape[-1]:
            raise ValueError(f"identity tokens are {group.source.tokens[group.source.fallback_index].shape[-1]} wide; "
                             f"block {b.key} projects {weights[b.key][0].shape[1]}-wide tokens")
    if group.token_scale is not None:
        group.scale_vector()  # fail at node time, not mid-sampling
    current = patcher.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for b in blocks:
        # BasicTransformerBlock looks up (name, id, depth) first, then (name, id): keep either.
        existing = current.get(b.key, current.get(b.key[:2]))
        if is_partid_patch(existing):
            patch = DecoupledAttentionPatch(b.key, list(existing.groups) + [group], existing.previous)
        else:
            patch = DecoupledAttentionPatch(b.key, [group], existing)
        patcher.set_model_attn2_replace(patch, *b.key)
    from comfy.patcher_extension import WrappersMP

    if not patcher.get_wrappers(WrappersMP.OUTER_SAMPLE, ROLES_WRAPPER):
        patcher.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, ROLES_WRAPPER, record_sampling_run)
    return [b.key for b in blocks]


def add_adapter_lora(patcher, adapter_modules: Mapping[str, torch.Tensor], layout: UNetAttentionConfig,
                     strength: float = 1.0) -> list[str]:
    """Official adapter LoRA (`{index}.{to_q|to_k|to_v|to_out}_lora.{down|up}.weight`, no alpha: scale 1)
    as weight patches on every attn1/attn2 of `patcher` (clone it first). Returns the patched keys.

    Uses ComfyUI's own LoRA path (comfy.lora.load_lora -> weight_adapter.LoRAAdapter ->
    ModelPatcher.add_patches), as LoraLoader does: the key naming `{x}_lora.up.weight` is one it
    reads natively, and weights are merged, offloaded and unpatched by ComfyUI.
    """
    import comfy.lora

    targets = processor_targets(layout, _unet_config(patcher))
    key_map = {f"{index}.{proj}": t.weight_key(proj) for index, t in targets.items() for proj in LORA_PROJECTIONS}
    present = {k[: -len("_lora.up.weight")] for k in adapter_modules if k.endswith("_lora.up.weight")}
    unknown = sorted(present - set(key_map))
    if unknown:
        raise ValueError(f"adapter LoRA layers {unknown[:3]} have no place in this model: wrong base model?")
    to_load = {k: v for k, v in key_map.items() if k in present}
    loaded = comfy.lora.load_lora(adapter_modules, to_load, log_missing=False)
    patched = patcher.add_patches(loaded, strength)
    if len(patched) != len(present):
        raise ValueError(f"only {len(patched)} of {len(present)} adapter LoRA layers could be applied")
    return patched
