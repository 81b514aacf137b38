"""Decoupled identity attention math against a naive einsum reference; cross-attention key enumeration."""
from __future__ import annotations

import pytest
import torch

from fixtures_builders.sd_models import SD15_UNET, SDXL_UNET, TINY_SD15_UNET
from partid.models.attention.decoupled import (IdentityKeysValues, batch_for_chunks, expand_token_scale,
                                               identity_attention, mask_to_token_grid, project_identity_tokens,
                                               token_grid, tokens_for_chunks)
from partid.models.attention.unet_keys import (cross_attention_blocks, diffusers_transformer_paths,
                                               processor_targets)
from partid.models.layouts.unet_attention import SD15, SDXL, attention_processors

# ComfyUI's detected SDXL base config (comfy/model_detection.py); move beside SD15_UNET when shared.
SD15_FULL = dict(SD15_UNET, num_heads=8, num_head_channels=-1)  # what supported_models.SD15 adds


def naive_attention(q, k, v, heads):
    """softmax(q k^T / sqrt(d)) v per head, written out with einsum."""
    b, tq, inner = q.shape
    d = inner // heads
    qh = q.view(b, tq, heads, d)
    kh = k.view(k.shape[0], k.shape[1], heads, d)
    vh = v.view(v.shape[0], v.shape[1], heads, d)
    scores = torch.einsum("bqhd,bkhd->bhqk", qh, kh) / d ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vh).reshape(b, tq, inner)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_single_group_equals_weighted_naive_attention():
    q, k, v = rand(2, 12, 32, seed=1), rand(2, 4, 32, seed=2), rand(2, 4, 32, seed=3)
    out = identity_attention(q, [IdentityKeysValues(k, v, weight=0.7)], heads=4)
    torch.testing.assert_close(out, 0.7 * naive_attention(q, k, v, 4))


def test_groups_add_as_separate_softmaxes_with_masks_and_token_scale():
    q = rand(2, 6, 16, seed=1)
    k1, v1 = rand(1, 4, 16, seed=2), rand(1, 4, 16, seed=3)     # batch 1: shared by the whole batch
    k2, v2 = rand(2, 8, 16, seed=4), rand(2, 8, 16, seed=5)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 0.5, 1, 1, 1]], dtype=torch.float64)
    scale = expand_token_scale([2.0, 0.0], 8)                   # two parts of 4 tokens
    groups = [IdentityKeysValues(k1, v1, 1.0), IdentityKeysValues(k2, v2, 0.5, scale.double(), mask)]
    out = identity_attention(q, groups, heads=2)
    ref = naive_attention(q, k1.expand(2, -1, -1), v1.expand(2, -1, -1), 2)
    ref = ref + 0.5 * mask.unsqueeze(-1) * naive_attention(q, k2, v2 * scale.double().view(1, -1, 1), 2)
    torch.testing.assert_close(out, ref)
    # masked-out query tokens get nothing from the masked group
    only_masked = identity_attention(q, groups[1:], heads=2)
    assert torch.all(only_masked[0, 3:] == 0) and torch.all(only_masked[1, :2] == 0)


def test_no_contribution_is_none_so_text_attention_stays_exact():
    q, k = rand(1, 4, 8), rand(1, 2, 8)
    assert identity_attention(q, [], 2) is None
    assert identity_attention(q, [IdentityKeysValues(k, k, weight=0.0)], 2) is None


def test_projection_and_token_scale_helpers():
    tokens, wk, wv = rand(4, 6, seed=1).float(), rand(8, 6, seed=2).float(), rand(8, 6, seed=3).float()
    k, v = project_identity_tokens(tokens, wk, wv, dtype=torch.float16)
    assert k.shape == (1, 4, 8) and k.dtype == torch.float16
    torch.testing.assert_close(k.float(), (tokens @ wk.T).unsqueeze(0), atol=1e-2, rtol=1e-3)
    torch.testing.assert_close(v.float(), (tokens @ wv.T).unsqueeze(0), atol=1e-2, rtol=1e-3)
    assert expand_token_scale([1, 2], 4).tolist() == [1, 1, 2, 2]
    with pytest.raises(ValueError):
        expand_token_scale([1, 2, 3], 4)


def test_tokens_follow_the_chunk_order():
    cond, uncond = torch.full((1, 2, 3), 1.0), torch.full((1, 2, 3), -1.0)
    by_index = {0: cond, 1: uncond}
    out = tokens_for_chunks(by_index, [1, 0], batch=4)          # uncond first, latent batch 2
    assert out[:, 0, 0].tolist() == [-1, -1, 1, 1]
    assert tokens_for_chunks(by_index, [0], batch=2)[:, 0, 0].tolist() == [1, 1]
    assert tokens_for_chunks(by_index, [1, 0, 2], batch=3)[:, 0, 0].tolist() == [-1, 1, 1]  # 2: fallback cond
    assert tokens_for_chunks(by_index, None, batch=2)[:, 0, 0].tolist() == [1, 1]


def test_mask_resizing_and_batching():
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1.0                                       # left half
    assert token_grid(32, activations_shape=[2, 320, 4, 8]) == (4, 8)
    # without activations_shape: each downsample is ceil(size / 2): 13x21 -> 7x11 -> 4x6 -> 2x3
    assert token_grid(77, original_shape=[1, 4, 13, 21]) == (7, 11)
    assert token_grid(6, activations_shape=[1, 4, 5, 5], original_shape=[1, 4, 13, 21]) == (2, 3)
    m = mask_to_token_grid(mask, (4, 8)).view(1, 4, 8)
    assert torch.all(m[..., :4] == 1) and torch.all(m[..., 4:] == 0)
    assert batch_for_chunks(m.flatten(1), chunks=2, per_chunk=3).shape == (6, 32)
    with pytest.raises(ValueError):
        batch_for_chunks(torch.zeros(2, 5), chunks=2, per_chunk=3)
    with pytest.raises(ValueError):     # 2 masks, latent batch 1: was split between cond and uncond in chunk order
        batch_for_chunks(torch.zeros(2, 5), chunks=2, per_chunk=1)
    with pytest.raises(ValueError):
        token_grid(7, original_shape=[1, 4, 16, 16])


@pytest.mark.parametrize("config,count", [(SD15_FULL, 16), (SDXL_UNET, 70)])
def test_cross_attention_block_counts(config, count):
    blocks = cross_attention_blocks(config)
    assert len(blocks) == count and len({b.key for b in blocks}) == count
    assert any(b.key[0] == "middle" for b in blocks)
    assert {b.key[1] for b in blocks if b.key[0] == "middle"} == {0}  # never ("middle", 1, ...)


def test_sd15_and_sdxl_keys_match_the_reference_table():
    sd15 = {b.key[:2] for b in cross_attention_blocks(SD15_FULL)}
    assert sd15 == {("input", i) for i in (1, 2, 4, 5, 7, 8)} | {("middle", 0)} | {("output", i) for i in range(3, 12)}
    sdxl = cross_attention_blocks(SDXL_UNET)
    depth = {}
    for b in sdxl:
        depth[b.key[:2]] = depth.get(b.key[:2], 0) + 1
    assert depth == {("input", 4): 2, ("input", 5): 2, ("input", 7): 10, ("input", 8): 10, ("middle", 0): 10,
                     ("output", 0): 10, ("output", 1): 10, ("output", 2): 10,
                     ("output", 3): 2, ("output", 4): 2, ("output", 5): 2}
    mid = next(b for b in sdxl if b.key == ("middle", 0, 9))
    assert (mid.path, mid.inner_dim, mid.context_dim, mid.n_heads) == \
        ("middle_block.1.transformer_blocks.9", 1280, 2048, 20)
    first = cross_attention_blocks(SD15_FULL)[0]
    assert (first.path, first.inner_dim, first.n_heads, first.dim_head) == \
        ("input_blocks.1.1.transformer_blocks.0", 320, 8, 40)


@pytest.mark.parametrize("layout,config", [(SD15, SD15_FULL), (SDXL, SDXL_UNET)])
def test_processor_index_maps_to_comfy_blocks(layout, config):
    targets = processor_targets(layout, config)
    procs = attention_processors(layout)
    assert sorted(targets) == [p.index for p in procs]
    # diffusers order (down, up, mid) pairs attn1/attn2 of the same transformer block
    for p in procs:
        t = targets[p.index]
        assert t.attn == ("attn2" if p.cross else "attn1") and t.block.inner_dim == p.channels
        assert p.name.startswith(t.block.diffusers_path + ".")
    last = targets[len(procs) - 1]
    assert last.block.key[0] == "middle" and last.weight_key("to_out") == \
        f"diffusion_model.{last.block.path}.attn2.to_out.0.weight"
    first = "1" if layout is SD15 else "4"  # SDXL's first level has no transformer
    assert targets[0].weight_key("to_q") == \
        f"diffusion_model.input_blocks.{first}.1.transformer_blocks.0.attn1.to_q.weight"


def test_adapter_for_another_base_model_is_refused():
    with pytest.raises(ValueError, match="another base model"):
        processor_targets(SD15, SDXL_UNET)
    with pytest.raises(ValueError, match="another base model"):
        processor_targets(SD15, dict(TINY_SD15_UNET, num_heads=8))


def test_diffusers_paths_cover_every_block():
    paths = diffusers_transformer_paths(SD15_FULL)
    assert paths["mid_block.attentions.0.transformer_blocks.0"] == "middle_block.1.transformer_blocks.0"
    assert paths["up_blocks.1.attentions.0.transformer_blocks.0"] == "output_blocks.3.1.transformer_blocks.0"
