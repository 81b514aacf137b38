"""Decoupled identity attention inside the real ComfyUI: tiny SD1.5/SDXL-layout UNets in ModelPatchers,
and the full SD1.5 / SDXL layouts built on the meta device (shapes and keys, no weights)."""
from __future__ import annotations

import math
import re

import pytest
import torch
from fixtures_builders.sd_models import SDXL_UNET



@pytest.fixture(scope="module")
def ap(comfy):
    from partid.nodes import attention_patch

    return attention_patch


@pytest.fixture
def sd15(comfy):
    from fixtures_builders.sd_models import tiny_sd15_patcher

    patcher = tiny_sd15_patcher()
    return patcher


def blocks_of(patcher):
    from partid.models.attention.unet_keys import cross_attention_blocks_of_module

    return cross_attention_blocks_of_module(patcher.model.diffusion_model)


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def make_source(ap, patcher, seed=0, zero_values=False, tokens=4):
    """Random to_k_ip/to_v_ip for every block; distinct cond (index 0) and uncond (index 1) tokens."""
    weights = {}
    for i, b in enumerate(blocks_of(patcher)):
        wk = rand(b.inner_dim, b.context_dim, seed=seed + 2 * i, scale=4 / b.context_dim ** 0.5)
        wv = rand(b.inner_dim, b.context_dim, seed=seed + 2 * i + 1, scale=4 / b.context_dim ** 0.5)
        weights[b.key] = (wk, torch.zeros_like(wv) if zero_values else wv)
    ctx = blocks_of(patcher)[0].context_dim
    cond, uncond = rand(1, tokens, ctx, seed=seed + 500), rand(1, tokens, ctx, seed=seed + 501)
    return ap.IdentitySource({0: cond, 1: uncond}, weights)


def attn2(patcher):
    return patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


class Spy:
    """Wraps a patch: records each call's inputs, options and output."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        self.calls.append((q, k, v, dict(extra_options), out))
        return out


def spy_all(patcher):
    spies = {}
    for key, patch in list(attn2(patcher).items()):
        spies[key] = Spy(patch)
        patcher.set_model_attn2_replace(spies[key], *key)
    return spies


def sample(patcher, steps=2, cfg=4.0, seed=0, size=16):
    import comfy.sample

    pos = [[rand(1, 77, 768, seed=10), {}]]
    neg = [[rand(1, 77, 768, seed=11), {}]]
    latent = torch.zeros(1, 4, size, size)
    noise = rand(1, 4, size, size, seed=seed)
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "normal", pos, neg, latent)


def forward(patcher, x, context, order, sigma=1.0):
    """One UNet call with an explicit cond/uncond chunk order, as calc_cond_batch makes it."""
    to = dict(patcher.model_options["transformer_options"], cond_or_uncond=list(order))
    sigmas = torch.full((x.shape[0],), float(sigma))
    to["sigmas"] = sigmas
    with torch.no_grad():
        return patcher.model.apply_model(x, sigmas, c_crossattn=context, transformer_options=to)


def naive_attention(q, k, v, heads):
    b, tq, inner = q.shape
    d = inner // heads
    s = torch.einsum("bqhd,bkhd->bhqk", q.view(b, tq, heads, d), k.view(b, -1, heads, d)) / d ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", s.softmax(-1), v.view(b, -1, heads, d)).reshape(b, tq, inner)


def install(ap, patcher, source, **options):
    patched = patcher.clone()
    ap.install_identity_group(patched, ap.IdentityGroup(source, **options))
    return patched


# --- keys: config enumeration == module walk == comfy's own unet_to_diffusers ------------------------------------

@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_keys_match_comfy_unet_to_diffusers_and_the_built_model(comfy, name):
    import comfy.supported_models
    import comfy.utils
    from fixtures_builders.sd_models import SD15_UNET
    from partid.models.attention.unet_keys import cross_attention_blocks, cross_attention_blocks_of_module

    cls, cfg, count = {"sd15": (comfy.supported_models.SD15, SD15_UNET, 16),
                       "sdxl": (comfy.supported_models.SDXL, SDXL_UNET, 70)}[name]
    model = cls(cfg).get_model({}, device="meta")  # full size, no memory
    unet_config = model.model_config.unet_config
    from_config = cross_attention_blocks(unet_config)
    from_module = cross_attention_blocks_of_module(model.diffusion_model)
    fields = lambda b: (b.key, b.path, b.inner_dim, b.context_dim, b.n_heads)  # noqa: E731
    assert [fields(b) for b in from_config] == [fields(b) for b in from_module] and len(from_module) == count
    middle = [("middle", 0, d) for d in range(cfg["transformer_depth_middle"])]
    assert [b.key for b in from_module if b.key[0] == "middle"] == middle
    comfy_map = {d[: -len(".attn2.to_k.weight")]: c[: -len(".attn2.to_k.weight")]
                 for d, c in comfy.utils.unet_to_diffusers(unet_config).items() if d.endswith(".attn2.to_k.weight")}
    assert {b.diffusers_path: b.path for b in from_config} == comfy_map


@pytest.mark.parametrize("name", ["sd15", "sdxl"])
def test_install_and_lora_cover_the_full_size_models(comfy, ap, name):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SD15_UNET
    from partid.models.layouts.consistentid import adapter_modules_layout
    from partid.models.layouts.unet_attention import SD15, SDXL

    cls, cfg, layout, count = {"sd15": (comfy.supported_models.SD15, SD15_UNET, SD15, 16),
                               "sdxl": (comfy.supported_models.SDXL, SDXL_UNET, SDXL, 70)}[name]
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(cls(cfg).get_model({}, device="meta"), cpu, cpu)
    adapter = {k: torch.empty(s, device="meta") for k, s in adapter_modules_layout(layout).items()}
    weights = ap.ip_weights_by_block(patcher, layout, adapter)
    source = ap.IdentitySource({0: torch.zeros(1, 4, layout.context_dim)}, weights)
    keys = ap.install_identity_group(patcher, ap.IdentityGroup(source))
    assert len(keys) == count and set(attn2(patcher)) == set(keys) and ("middle", 0, 0) in keys
    patched = ap.add_adapter_lora(patcher, adapter, layout)
    assert len(patched) == count * 2 * 4  # q, k, v, out of every attn1 and attn2
    sd15_on_sdxl = SD15 if name == "sdxl" else SDXL
    with pytest.raises(ValueError, match="another base model"):
        ap.ip_weights_by_block(patcher, sd15_on_sdxl, adapter)


# --- (a) (b) exactness and the formula ---------------------------------------------------------------------------

def test_weight_zero_or_zero_values_leave_sampling_bit_identical(ap, sd15):
    plain = sample(sd15)
    assert torch.equal(sample(install(ap, sd15, make_source(ap, sd15), weight=0.0)), plain)
    assert torch.equal(sample(install(ap, sd15, make_source(ap, sd15, zero_values=True), weight=1.0)), plain)
    assert not torch.allclose(sample(install(ap, sd15, make_source(ap, sd15), weight=1.0)), plain)


def test_patched_block_equals_hand_computed_ip_adapter_formula(ap, sd15):
    source = make_source(ap, sd15)
    patched = install(ap, sd15, source, weight=0.8)
    spies = spy_all(patched)
    x = rand(2, 4, 16, 16, seed=3)
    forward(patched, x, rand(2, 77, 768, seed=4), order=[1, 0])
    key = ("middle", 0, 0)
    q, k, v, eo, out = spies[key].calls[0]
    heads = eo["n_heads"]
    wk, wv = source.block_weights[key]
    ids = torch.cat([source.tokens[1], source.tokens[0]])  # chunk 0 is uncond here
    ref = naive_attention(q, k, v, heads) + 0.8 * naive_attention(q, ids @ wk.T, ids @ wv.T, heads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# --- (c) every block fires, the middle one included ----------------------------------------------------------------

def test_every_block_fires_once_per_model_call_including_middle(ap, sd15):
    patched = install(ap, sd15, make_source(ap, sd15))
    spies = spy_all(patched)
    sample(patched, steps=1)
    assert {key: len(s.calls) for key, s in spies.items()} == {b.key: 1 for b in blocks_of(sd15)}
    assert ("middle", 0, 0) in spies
    assert sorted(spies[("middle", 0, 0)].calls[0][3]["cond_or_uncond"]) == [0, 1]


def test_tiny_sdxl_layout_fires_all_70_blocks(comfy, ap):
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    from fixtures_builders.sd_models import init_random_

    # SDXL's real depths and 2048 context at 32 base channels (SDXL fixes 64-wide heads)
    model = init_random_(comfy.supported_models.SDXL(dict(SDXL_UNET, model_channels=32)).get_model({}, device="cpu"), 0)
    cpu = torch.device("cpu")
    patcher = comfy.model_patcher.ModelPatcher(model, cpu, cpu)
    assert len(blocks_of(patcher)) == 70
    patched = install(ap, patcher, make_source(ap, patcher))
    spies = spy_all(patched)
    pos = [[rand(1, 77, 2048, seed=1), {"pooled_output": rand(1, 1280, seed=2)}]]
    neg = [[rand(1, 77, 2048, seed=3), {"pooled_output": rand(1, 1280, seed=4)}]]
    out = comfy.sample.sample(patched, rand(1, 4, 8, 8), 1, 4.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))
    assert torch.isfinite(out).all()
    assert sum(len(s.calls) for s in spies.values()) == 70 and all(len(s.calls) == 1 for s in spies.values())
    assert sum(1 for key in spies if key[0] == "middle") == 10


# --- (d) cond/uncond order ---------------------------------------------------------------------------------------

def test_identity_tokens_follow_cond_or_uncond_whatever_the_order(ap, sd15):
    patched = install(ap, sd15, make_source(ap, sd15), weight=1.0)
    a, b = rand(1, 4, 16, 16, seed=5), rand(1, 4, 16, 16, seed=6)
    ctx_a, ctx_b = rand(1, 77, 768, seed=7), rand(1, 77, 768, seed=8)
    cond_first = forward(patched, torch.cat([a, b]), torch.cat([ctx_a, ctx_b]), [0, 1])
    uncond_first = forward(patched, torch.cat([b, a]), torch.cat([ctx_b, ctx_a]), [1, 0])
    torch.testing.assert_close(uncond_first, cond_first.flip(0), atol=1e-5, rtol=1e-5)
    alone_cond = forward(patched, a, ctx_a, [0])                 # cfg 1: a single chunk
    alone_uncond = forward(patched, b, ctx_b, [1])
    torch.testing.assert_close(alone_cond[0], cond_first[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone_uncond[0], cond_first[1], atol=1e-5, rtol=1e-5)
    three = forward(patched, torch.cat([b, a, a]), torch.cat([ctx_b, ctx_a, ctx_a]), [1, 0, 2])  # 2: no tokens -> cond
    torch.testing.assert_close(three[2], cond_first[0], atol=1e-5, rtol=1e-5)
    # the tokens really differ per chunk: latent a given the uncond tokens gives another result
    assert not torch.allclose(forward(patched, a, ctx_a, [1]), alone_cond, atol=1e-3)


class RoleSpy:
    """Wraps the PartID patch of one block: per chunk, which prompt it carries (by its context) and which
    identity tokens it got (its identity term against the cond and the uncond tokens, computed naively)."""

    def __init__(self, inner, source, key, prompts):
        self.inner, self.source, self.key, self.prompts, self.seen = inner, source, key, prompts, set()

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules import attention as comfy_attention

        out = self.inner(q, k, v, extra_options)
        heads = extra_options["n_heads"]
        identity = out - comfy_attention.optimized_attention(q, k, v, heads)
        order = extra_options["cond_or_uncond"]
        per = q.shape[0] // len(order)
        wk, wv = self.source.block_weights[self.key]
        for chunk in range(len(order)):
            rows = slice(chunk * per, (chunk + 1) * per)
            first = float(k[rows][0, 0, 0])
            prompt = min(self.prompts, key=lambda name: abs(self.prompts[name] - first))
            used = [name for name, t in (("cond", self.source.tokens[0]), ("uncond", self.source.tokens[1]))
                    if torch.allclose(identity[rows], naive_attention(q[rows], (t @ wk.T).expand(per, -1, -1),
                                                                      (t @ wv.T).expand(per, -1, -1), heads),
                                      atol=1e-4)]
            self.seen.add((prompt, tuple(used)))
        return out


def test_each_prompt_gets_the_tokens_of_its_role_under_every_core_guider(ap, sd15):
    """DualCFG passes [negative, middle, positive], PerpNeg [positive, negative, empty], SAG re-runs the negative
    alone (index 0): cond_or_uncond is a position, not a role. Positive and middle prompts must get the cond
    tokens, negative and empty ones the uncond tokens (before: DualCFG's negative and PerpNeg's empty prompt got
    the identity, and SAG's re-run of the negative too)."""
    import comfy.samplers
    from comfy_extras import nodes_custom_sampler, nodes_perpneg, nodes_sag

    key = ("middle", 0, 0)
    source = make_source(ap, sd15)
    contexts = {name: rand(1, 77, 768, seed=seed) for name, seed in
                (("positive", 21), ("middle", 22), ("negative", 23), ("empty", 24))}
    conds = {name: [[ctx, {}]] for name, ctx in contexts.items()}
    expected = {"positive": ("cond",), "middle": ("cond",), "negative": ("uncond",), "empty": ("uncond",)}

    def run(make_guider, sag=False):
        patched = install(ap, sd15, source, weight=1.0)
        if sag:
            patched = nodes_sag.SelfAttentionGuidance.execute(patched, 0.5, 2.0)[0]
        # the block's k carries the prompt: to_k of its context, told apart by the first value
        wk = next(m for n, m in sd15.model.diffusion_model.named_modules()
                  if n.startswith("middle_block") and n.endswith("attn2.to_k")).weight.detach()
        prompts = {name: float((ctx[0, 0] @ wk.T)[0]) for name, ctx in contexts.items()}
        spy = RoleSpy(attn2(patched)[key], source, key, prompts)
        patched.set_model_attn2_replace(spy, *key)
        guider = make_guider(patched)
        sigmas = comfy.samplers.calculate_sigmas(sd15.get_model_object("model_sampling"), "normal", 2)
        guider.sample(rand(1, 4, 16, 16, seed=0), torch.zeros(1, 4, 16, 16), comfy.samplers.sampler_object("euler"),
                      sigmas, seed=0, disable_pbar=True)
        return spy.seen

    def cfg(p):
        g = comfy.samplers.CFGGuider(p)
        g.set_conds(conds["positive"], conds["negative"])
        g.set_cfg(4.0)
        return g

    def dual(p):
        g = nodes_custom_sampler.Guider_DualCFG(p)
        g.set_conds(conds["positive"], conds["middle"], conds["negative"])
        g.set_cfg(4.0, 2.0)
        return g

    def perpneg(p):
        g = nodes_perpneg.Guider_PerpNeg(p)
        g.set_conds(conds["positive"], conds["negative"], conds["empty"])
        g.set_cfg(4.0, 1.0)
        return g

    for name, make, sag, prompts in (("CFG", cfg, False, {"positive", "negative"}),
                                     ("DualCFG", dual, False, {"positive", "middle", "negative"}),
                                     ("PerpNeg", perpneg, False, {"positive", "negative", "empty"}),
                                     ("CFG + SAG", cfg, True, {"positive", "negative"})):
        seen = run(make, sag)
        assert seen == {(p, expected[p]) for p in prompts}, (name, seen)


def test_the_window_follows_a_model_sampling_node_placed_after_the_apply_node(ap, sd15):
    """start_at/end_at are percents of the model's schedule: resolved again when sampling starts, so a
    ModelSamplingContinuousEDM (or zsnr ModelSamplingDiscrete) after the apply node moves the window with it, as
    core ControlNet's percents move (they were fixed at the apply node: 12 of 20 karras steps instead of 14)."""
    from comfy_extras import nodes_model_advanced

    hi, lo = ap.sigma_window(sd15, 0.0, 0.5)
    patched = install(ap, sd15, make_source(ap, sd15), weight=1.0, sigma_start=hi, sigma_end=lo, percents=(0.0, 0.5))
    after = nodes_model_advanced.ModelSamplingContinuousEDM().patch(patched, "v_prediction", 120.0, 0.002)[0]
    group = attn2(after)[("middle", 0, 0)].groups[0]
    assert (group.sigma_start, group.sigma_end) == (hi, lo)
    sample(after, steps=2)
    assert (group.sigma_start, group.sigma_end) == ap.sigma_window(after, 0.0, 0.5) != (hi, lo)
    assert attn2(patched)[("middle", 0, 0)].groups[0].sigma_end == lo      # the model before it keeps its own


def test_a_short_key_patch_added_after_partid_is_reported(ap, sd15, caplog):
    """IPAdapter-style packs register SD1.5 blocks under (name, id); ComfyUI looks up PartID's (name, id, depth)
    first, so theirs never runs when added after PartID: said at sampling start. Added before, PartID wraps it."""
    calls = []

    def foreign(q, k, v, extra_options):
        calls.append(1)
        from comfy.ldm.modules import attention as comfy_attention

        return comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])

    source = make_source(ap, sd15)
    after = install(ap, sd15, source)
    after.set_model_attn2_replace(foreign, "middle", 0)
    with caplog.at_level("WARNING", logger="partid"):
        sample(after, steps=1)
    assert not calls and "does not run: put PartID's apply node after the other identity node" in caplog.text
    caplog.clear()
    before = sd15.clone()
    before.set_model_attn2_replace(foreign, "middle", 0)
    with caplog.at_level("WARNING", logger="partid"):
        sample(install(ap, before, source), steps=1)
    assert calls and "does not run" not in caplog.text


def test_an_area_conditioning_sees_the_mask_cropped_to_its_area(ap, sd15, comfy):
    """Two people: the identity's mask is the left half; a second prompt is an area on the right half. ComfyUI
    runs the area prompt on the latent cropped to that area, so there the identity must add nothing (the whole
    mask used to be squeezed into the crop: the identity acted on the crop's left half)."""
    from comfy import sample as comfy_sample      # not `import comfy.sample`: that would shadow the fixture
    from comfy.ldm.modules import attention as comfy_attention

    mask = torch.zeros(1, 128, 256)
    mask[:, :, :128] = 1.0
    patched = install(ap, sd15, make_source(ap, sd15), weight=1.0, mask=mask)
    key = ("input", 1, 0)
    spy = Spy(attn2(patched)[key])
    patched.set_model_attn2_replace(spy, *key)
    right = comfy.nodes.ConditioningSetArea().append([[rand(1, 77, 768, seed=13), {}]], width=128, height=128, x=128,
                                                     y=0, strength=1.0)[0]
    positive = [[rand(1, 77, 768, seed=12), {}]] + right
    comfy_sample.sample(patched, rand(1, 4, 16, 32, seed=0), 1, 4.0, "euler", "normal", positive,
                        [[rand(1, 77, 768, seed=11), {}]], torch.zeros(1, 4, 16, 32))
    seen = {}
    for q, k, v, options, out in spy.calls:
        h, w = options["activations_shape"][-2:]
        identity = (out - comfy_attention.optimized_attention(q, k, v, options["n_heads"])).abs().mean(-1)
        seen.setdefault((h, w), []).append(identity.view(-1, h, w))
    whole, area = torch.cat(seen[(16, 32)]), torch.cat(seen[(16, 16)])
    assert float(whole[..., :16].mean()) > 0.1 and float(whole[..., 16:].abs().max()) < 1e-6
    assert float(area.abs().max()) < 1e-6


# --- (e) K/V once per run ----------------------------------------------------------------------------------------

def test_identity_keys_values_are_projected_once_per_run_not_per_step(ap, sd15):
    source = make_source(ap, sd15)
    patched = install(ap, sd15, source, mask=torch.ones(1, 128, 128), sigma_start=1e9, sigma_end=0.0)
    spies = spy_all(patched)
    sample(patched, steps=4)
    n_blocks = len(blocks_of(sd15))
    assert sum(len(s.calls) for s in spies.values()) == 4 * n_blocks
    assert source.projection_count == n_blocks * 2  # cond and uncond tokens, each once per block
    group = spies[("middle", 0, 0)].inner.groups[0]
    assert group._mask_cache and group._gate[0] is not None
    # ComfyUI calls patch.to(offload device) when it offloads the model: the caches are released
    spies[("middle", 0, 0)].inner.to(torch.device("meta"))
    assert source._cache == {} and group._mask_cache == {} and group._gate[0] is None
    sample(patched, steps=2)
    assert source.projection_count == n_blocks * 4  # the next run projects once again


# --- (f) clones ----------------------------------------------------------------------------------------------------

def test_clone_shares_weights_and_has_its_own_options(ap, sd15):
    source = make_source(ap, sd15)
    original = install(ap, sd15, source, weight=1.0)
    clone = original.clone()
    key = ("middle", 0, 0)
    p1, p2 = attn2(original)[key], attn2(clone)[key]
    assert p1 is not p2 and p1.groups[0] is not p2.groups[0]
    assert p2.groups[0].source is source
    assert attn2(clone)[("input", 1, 0)].groups[0] is p2.groups[0]  # one group per clone, shared by its blocks
    wk1, wk2 = p1.groups[0].source.block_weights[key][0], p2.groups[0].source.block_weights[key][0]
    assert wk1.data_ptr() == wk2.data_ptr()
    p2.groups[0].weight = 0.0
    assert p1.groups[0].weight == 1.0
    assert torch.equal(sample(clone), sample(sd15)) and not torch.equal(sample(original), sample(sd15))


# --- (g) stacking ------------------------------------------------------------------------------------------------

def test_stacks_on_a_foreign_patch_and_on_another_identity(ap, sd15):
    from comfy.ldm.modules import attention as comfy_attention

    calls = []

    def foreign(q, k, v, extra_options):  # another pack's patch: here it doubles the text attention
        calls.append(extra_options["block"])
        return 2 * comfy_attention.optimized_attention(q, k, v, extra_options["n_heads"])

    base = sd15.clone()
    for b in blocks_of(sd15):
        base.set_model_attn2_replace(foreign, b.key[0], b.key[1])  # (name, id): the fallback key form
    src1, src2 = make_source(ap, sd15, seed=0), make_source(ap, sd15, seed=100)
    one = install(ap, base, src1, weight=0.5)
    two = one.clone()
    ap.install_identity_group(two, ap.IdentityGroup(src2, weight=0.7))
    key = ("middle", 0, 0)
    patch = attn2(two)[key]
    assert patch.previous is foreign and [g.source for g in patch.groups] == [src1, src2]
    assert len(attn2(one)[key].groups) == 1  # the first model keeps one identity
    spies = spy_all(two)
    forward(two, rand(2, 4, 16, 16), rand(2, 77, 768, seed=1), [0, 1])
    assert len(calls) == len(blocks_of(sd15))
    q, k, v, eo, out = spies[key].calls[0]
    heads, ref = eo["n_heads"], 2 * naive_attention(q, k, v, eo["n_heads"])
    for src, w in ((src1, 0.5), (src2, 0.7)):
        wk, wv = src.block_weights[key]
        ids = torch.cat([src.tokens[0], src.tokens[1]])
        ref = ref + w * naive_attention(q, ids @ wk.T, ids @ wv.T, heads)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


# --- (h) start/end gating ------------------------------------------------------------------------------------------

def test_sigma_window_gates_the_identity(ap, sd15):
    assert ap.sigma_window(sd15, 0.0, 1.0) == (999999999.9, 0.0)
    hi, lo = ap.sigma_window(sd15, 0.2, 0.6)
    assert hi > lo > 0
    patched = install(ap, sd15, make_source(ap, sd15), weight=1.0, sigma_start=hi, sigma_end=lo)
    x, ctx = rand(2, 4, 16, 16), rand(2, 77, 768, seed=1)
    for sigma in (hi * 1.5, lo * 0.5):
        assert torch.equal(forward(patched, x, ctx, [0, 1], sigma), forward(sd15, x, ctx, [0, 1], sigma))
    mid = math.sqrt(hi * lo)
    assert not torch.allclose(forward(patched, x, ctx, [0, 1], mid), forward(sd15, x, ctx, [0, 1], mid))


# --- (i) LoRA weight patches ---------------------------------------------------------------------------------------

def test_adapter_lora_patches_equal_w_plus_up_down(ap, sd15):
    from partid.models.layouts.consistentid import adapter_modules_layout
    from partid.models.layouts.unet_attention import UNetAttentionConfig

    tiny = UNetAttentionConfig("tiny_sd15", 768, down=(("down_blocks.0", 32, 1, 1), ("down_blocks.1", 64, 1, 1)),
                               up=(("up_blocks.0", 64, 2, 1), ("up_blocks.1", 32, 2, 1)), mid=("mid_block", 64, 1, 1))
    adapter = {k: rand(*s, seed=i, scale=0.01) for i, (k, s) in enumerate(adapter_modules_layout(tiny).items())}
    before = {k: v.clone() for k, v in sd15.model.state_dict().items()}
    patched = sd15.clone()
    keys = ap.add_adapter_lora(patched, adapter, tiny)
    assert len(keys) == len(blocks_of(sd15)) * 2 * 4
    patched.patch_model()
    try:
        after = patched.model.state_dict()
        from partid.models.attention.unet_keys import processor_targets

        for index, target in processor_targets(tiny, sd15.model.model_config.unet_config).items():
            for proj in ("to_q", "to_k", "to_v", "to_out"):
                w = target.weight_key(proj)
                up, down = adapter[f"{index}.{proj}_lora.up.weight"], adapter[f"{index}.{proj}_lora.down.weight"]
                torch.testing.assert_close(after[w], before[w] + up @ down, atol=1e-6, rtol=1e-5)
        untouched = [k for k in before if not re.search(r"attn[12]\.to_(q|k|v|out\.0)\.weight$", k)]
        assert all(torch.equal(after[k], before[k]) for k in untouched)
    finally:
        patched.unpatch_model()
    assert all(torch.equal(sd15.model.state_dict()[k], before[k]) for k in before)


# --- (j) masks -------------------------------------------------------------------------------------------------------

def test_mask_limits_the_identity_to_its_region(ap, sd15):
    from comfy.ldm.modules import attention as comfy_attention

    mask = torch.zeros(1, 128, 128)
    mask[:, :, :64] = 1.0  # left half of the image, at pixel resolution
    patched = install(ap, sd15, make_source(ap, sd15), weight=1.0, mask=mask)
    spies = spy_all(patched)
    forward(patched, rand(2, 4, 16, 16), rand(2, 77, 768, seed=1), [1, 0])
    for key, spy in spies.items():
        q, k, v, eo, out = spy.calls[0]
        h, w = eo["activations_shape"][-2:]
        text = comfy_attention.optimized_attention(q, k, v, eo["n_heads"])
        contribution = (out - text).view(2, h, w, -1)
        right, left = contribution[:, :, w // 2 + 1:], contribution[:, :, : w // 2 - 1]
        assert torch.all(right == 0), key
        assert left.abs().mean() > 1e-3, key
        # without activations_shape (older ComfyUI) the grid comes from original_shape
        eo_old = {k2: v2 for k2, v2 in eo.items() if k2 != "activations_shape"}
        torch.testing.assert_close(spy.inner(q, k, v, eo_old), out)
