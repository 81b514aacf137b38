"""PartID Visual Persona Encode / Identity Weights / Concat Identity / Visual Persona Apply in the real ComfyUI.

Node-path tests use a reduced decoder (1 block, 2048 wide, as SDXL needs) fed by a tiny random DINOv2
(64 wide) built in-process: the released decoder is 523 M parameters and DINOv2 ViT-g 1.1 B, too slow
for two shared CPU cores. Apply runs on a small-channel SDXL-layout UNet (the real depths: 70
cross-attention blocks) with random ip_adapter weights sized for its blocks. The released-layout
weight.bin (random weights, full size) is checked separately: its decoder loads strictly and its 70
ip_adapter layers install on the full SDXL layout built on the meta device.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ENCODE, WEIGHTS, CONCAT, APPLY = ("PartIDVisualPersonaEncode", "PartIDIdentityWeights", "PartIDConcatIdentity",
                                  "PartIDVisualPersonaApply")
SAVE, LOAD = "PartIDSaveIdentity", "PartIDLoadIdentity"
CH = 32  # tiny SDXL base channels: blocks are 64 and 128 wide


def run(comfy, name, **inputs):
    with torch.inference_mode():   # as ComfyUI's executor runs every node
        result, _ = comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS[name], **inputs)
    return result


def rand(*shape, seed=0, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def tiny_layout():
    from partid.models.layouts.unet_attention import UNetAttentionConfig

    return UNetAttentionConfig("sdxl_tiny", 2048, down=(("down_blocks.1", 2 * CH, 2, 2), ("down_blocks.2", 4 * CH, 2, 10)),
                               up=(("up_blocks.0", 4 * CH, 3, 10), ("up_blocks.1", 2 * CH, 3, 2)),
                               mid=("mid_block", 4 * CH, 1, 10))


@pytest.fixture(scope="module")
def small(comfy):
    """(DINOv2Weights, AdapterWeights): tiny DINOv2 + reduced decoder + ip_adapter for the tiny SDXL."""
    from fixtures_builders.random_weights import random_state
    from fixtures_builders.visual_persona import decoder_state

    from partid.models import formats, model_files
    from partid.models.layouts.dinov2 import DINOv2Config, dinov2_hub_layout
    from partid.models.layouts.visual_persona import DecoderConfig, ip_adapter_layout

    cfg = DINOv2Config(64, 2, 2)
    dino = model_files.DINOv2Weights("hub", "tiny_dinov2.pth", 64, 2, 14, "mlp",
                                     state_dict=random_state(dinov2_hub_layout(cfg), 3, dtype=torch.float32))
    dec = DecoderConfig(layers=1, heads=8, width=2048, encoder_width=64, mlp_ratio=0.25)
    groups = {"image_proj": decoder_state(dec, seed=1, dtype=torch.float32),
              "ip_adapter": random_state(ip_adapter_layout(tiny_layout(), 2048), 2, dtype=torch.float32)}
    return dino, model_files.AdapterWeights(formats.VISUAL_PERSONA_SDXL, "tiny_vp.bin", groups)


def person(h=96, w=64, seed=0):
    """An RGB image batch [1, h, w, 3] and the five body masks [1, h, w] (VP order), no shoes."""
    img = torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed))
    masks = {k: torch.zeros(1, h, w) for k in ("full_body", "face", "upper", "lower", "shoes")}
    masks["face"][:, 4:24, 20:44] = 1
    masks["upper"][:, 24:60, 10:54] = 1
    masks["lower"][:, 60:90, 14:50] = 1
    masks["full_body"] = masks["face"] + masks["upper"] + masks["lower"]
    return img, masks


@pytest.fixture(scope="module")
def encoded(comfy, small):
    """(identity tokens, the node's canvas UI) of one encode."""
    dino, adapter = small
    img, masks = person()
    with torch.inference_mode():
        (ident,), ui = comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS[ENCODE], dinov2=dino, adapter=adapter, image=img,
                                 **masks)
    return ident, ui


@pytest.fixture(scope="module")
def identity(encoded):
    return encoded[0]


def test_encode_shows_the_part_crops_it_encoded(comfy, encoded):
    # The canvas preview: one 128 px tile per encoded part, in order, from the part images themselves.
    import numpy as np
    from PIL import Image

    from partid.models.visual_persona import part_images

    _ident, ui = encoded
    assert ui["partid_crops"] == ["0: face", "0: upper", "0: lower"]
    (saved,) = ui["images"]
    png = np.asarray(Image.open(Path(comfy.folder_paths.get_temp_directory()) / saved["subfolder"] / saved["filename"])
                     .convert("RGB")).astype(np.float32)
    assert png.shape == (128, 3 * 128, 3)
    img, masks = person()
    images = part_images(img[0], [masks[k][0] for k in ("full_body", "face", "upper", "lower", "shoes")])
    for tile, part in enumerate((1, 2, 3)):
        want = np.asarray(Image.fromarray(images.images[0, part].numpy()).resize((128, 128), Image.BILINEAR))
        assert np.abs(png[:, tile * 128:(tile + 1) * 128] - want).mean() < 2.0


def test_nodes_are_registered(comfy):
    assert {ENCODE, WEIGHTS, CONCAT, APPLY} <= comfy.added
    info = {n: comfy.nodes.NODE_CLASS_MAPPINGS[n].GET_NODE_INFO_V1() for n in (ENCODE, WEIGHTS, CONCAT, APPLY)}
    assert [info[n]["output"] for n in (ENCODE, WEIGHTS, CONCAT, APPLY)] == [["PARTID_IDENTITY"]] * 3 + [["MODEL"]]
    assert info[APPLY]["input"]["required"]["identity"][0] == "PARTID_IDENTITY"
    assert info[APPLY]["input"]["required"]["weight"][1]["default"] == 0.7
    assert info[ENCODE]["input"]["required"]["dinov2"][0] == "PARTID_DINOV2"
    schema = comfy.nodes.NODE_CLASS_MAPPINGS[ENCODE].GET_SCHEMA()
    defaults = {i.id: i.default for i in schema.inputs if i.id.startswith("use_")}
    assert defaults == {"use_full_body": False, "use_face": True, "use_upper": True, "use_lower": True,
                        "use_shoes": True}


def test_encode_gives_the_engine_tokens_of_present_parts(comfy, small, identity):
    from partid.models.dinov2 import DINOv2
    from partid.models.visual_persona import PartDecoder, part_images, part_tokens, unconditional_tokens

    dino, adapter = small
    assert identity.source == "visual_persona" and identity.groups == ("face", "upper", "lower")  # no shoes drawn
    assert identity.cond.shape == (1, 3 * 256, 2048) and identity.uncond.shape == (1, 3 * 256, 2048)
    assert identity.sizes == (256, 256, 256) and identity.weights == (1.0, 1.0, 1.0)
    img, masks = person()
    images = part_images(img[0], [masks[k][0] for k in ("full_body", "face", "upper", "lower", "shoes")])
    enc, dec = DINOv2.from_weights(dino), PartDecoder.from_adapter(adapter)
    ref = part_tokens(enc, dec, images, [1, 2, 3]).reshape(1, 768, 2048)
    torch.testing.assert_close(identity.cond, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(identity.uncond[0], unconditional_tokens(enc, dec, [1, 2, 3]).reshape(768, 2048),
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(identity.cond, identity.uncond, atol=1e-3)


def test_encode_networks_are_models_comfyui_manages(comfy, small, identity):
    """DINOv2 and the decoder are in ComfyUI's loaded-model list after encoding (VRAM pressure and "Unload
    models" reach them), built once; offload_dinov2 takes both out; a re-encode after ComfyUI unloaded
    them loads them again and gives the same tokens."""
    import comfy.model_management as mm

    from partid.nodes import managed

    dino, adapter = small
    img, masks = person()
    encode = comfy.nodes.NODE_CLASS_MAPPINGS[ENCODE]
    with torch.inference_mode():
        (first,), _ = comfy.run(encode, dinov2=dino, adapter=adapter, image=img, **masks)
    kept = dino._partid_dinov2, adapter._partid_vp_decoder
    assert managed.is_loaded(dino, "_partid_dinov2") and managed.is_loaded(adapter, "_partid_vp_decoder")
    mm.unload_all_models()
    assert not managed.is_loaded(dino, "_partid_dinov2") and not managed.is_loaded(adapter, "_partid_vp_decoder")
    with torch.inference_mode():
        (again,), _ = comfy.run(encode, dinov2=dino, adapter=adapter, image=img, **masks, offload_dinov2=True)
    assert (dino._partid_dinov2, adapter._partid_vp_decoder) == kept
    assert not managed.is_loaded(dino, "_partid_dinov2") and not managed.is_loaded(adapter, "_partid_vp_decoder")
    assert torch.equal(again.cond, first.cond) and torch.equal(again.cond, identity.cond)


def test_encode_toggles_two_references_and_errors(comfy, small):

    dino, adapter = small
    img, masks = person()
    (only,) = run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=img, **masks, use_full_body=True,
                  use_face=False, use_upper=False, use_lower=False, use_shoes=False, offload_dinov2=True)
    assert only.groups == ("full_body",) and only.cond.shape == (1, 256, 2048)
    # masks at another resolution (and without a batch axis) are resized to the image
    half = {k: torch.nn.functional.interpolate(m[None], scale_factor=0.5, mode="nearest")[0, 0] for k, m in masks.items()}
    (resized,) = run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=img, **half, use_upper=False, use_lower=False)
    assert resized.groups == ("face",) and resized.cond.shape == (1, 256, 2048)
    # two references; the second has no lower part: its lower tokens are VP's empty-part tokens
    img2, masks2 = person(seed=1)
    masks2["lower"].zero_()
    both = {k: torch.cat([masks[k], masks2[k]]) for k in masks}
    (two,) = run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=torch.cat([img, img2]), **both,
                 use_face=False, use_upper=False)
    assert two.groups == ("lower",) and two.cond.shape == (2, 256, 2048)
    torch.testing.assert_close(two.cond[1], two.uncond[0], atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="PartID Visual Persona Encode.*no part is selected"):
        run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=img, **masks, use_face=False, use_upper=False,
            use_lower=False, use_shoes=False)
    with pytest.raises(ValueError, match="input 'image'.*none of the selected parts"):
        run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=img, **masks, use_face=False, use_upper=False,
            use_lower=False)
    wide = type(dino)("hub", "x.pth", 384, 12, 14, "mlp")
    with pytest.raises(ValueError, match="input 'dinov2'.*ViT-g/14"):
        run(comfy, ENCODE, dinov2=wide, adapter=adapter, image=img, **masks)


def test_weights_and_concat(comfy, identity):
    from partid.models.identity_tokens import IdentityTokens, concat

    (weighted,) = run(comfy, WEIGHTS, identity=identity, face=0.5, upper=2.0, lower=0.0)
    assert weighted.weights == (0.5, 2.0, 0.0) and identity.weights == (1.0, 1.0, 1.0)
    scale = weighted.token_scale()
    assert scale.shape == (768,) and scale[0] == 0.5 and scale[300] == 2.0 and scale[700] == 0.0
    cond, uncond, flat_scale = weighted.for_attention()
    assert cond.shape == uncond.shape == (1, 512, 2048) and torch.equal(cond[0], identity.cond[0, :512])
    assert torch.equal(flat_scale, scale[:512])
    (joined,) = run(comfy, CONCAT, identity_a=weighted, identity_b=identity)
    assert joined.groups == ("face", "upper", "lower") * 2 and joined.cond.shape == (1, 1536, 2048)
    assert joined.weights == (0.5, 2.0, 0.0, 1.0, 1.0, 1.0)
    other = IdentityTokens(torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), ("id",), (4,), (1.0,), "consistentid")
    with pytest.raises(ValueError, match="PartID Concat Identity.*own apply node"):
        run(comfy, CONCAT, identity_a=identity, identity_b=other)
    two = concat(identity, IdentityTokens(torch.zeros(2, 4, 2048), torch.zeros(1, 4, 2048), ("x",), (4,), (1.0,),
                                          "visual_persona"))
    assert two.cond.shape == (2, 772, 2048) and two.uncond.shape == (1, 772, 2048)
    c, u, s = two.for_attention()
    assert c.shape == u.shape == (1, 2 * 772, 2048) and s.shape == (2 * 772,)


# --- apply -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sdxl(comfy):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    cpu = torch.device("cpu")
    unet = init_random_(comfy.supported_models.SDXL(dict(SDXL_UNET, model_channels=CH)).get_model({}, device="cpu"), 0)
    return comfy.model_patcher.ModelPatcher(unet, cpu, cpu)


def attn2(patcher):
    return patcher.model_options["transformer_options"].get("patches_replace", {}).get("attn2", {})


def apply(model, adapter, ident, **kw):
    from partid.nodes.visual_persona_apply import apply_visual_persona

    return apply_visual_persona(model, adapter, ident, layout=tiny_layout(), **kw)


def sample(m):
    import comfy.sample

    pos = [[rand(1, 77, 2048, seed=1), {"pooled_output": torch.zeros(1, 1280)}]]
    neg = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
    with torch.inference_mode():
        return comfy.sample.sample(m, rand(1, 4, 8, 8, seed=2), 1, 5.0, "euler", "normal", pos, neg,
                                   torch.zeros(1, 4, 8, 8))


def test_apply_changes_output_and_weight_zero_is_plain(comfy, sdxl, small, identity):
    _, adapter = small
    plain = sample(sdxl)
    patched = apply(sdxl, adapter, identity, weight=0.7)
    patches = attn2(patched)
    assert len(patches) == 70 and not attn2(sdxl)
    group = next(iter(patches.values())).groups[0]
    assert group.weight == 0.7 and group.source.tokens[0].shape == (1, 768, 2048)
    out = sample(patched)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(sample(apply(sdxl, adapter, identity, weight=0.0)), plain)
    # per-part weights reach the attention as the token scale; weight-0 parts are left out
    (weighted,) = run(comfy, WEIGHTS, identity=identity, face=0.5, lower=0.0)
    g = next(iter(attn2(apply(sdxl, adapter, weighted)).values())).groups[0]
    assert g.source.tokens[0].shape == (1, 512, 2048)
    assert torch.equal(g.scale_vector(), torch.tensor([0.5] * 256 + [1.0] * 256))
    (none,) = run(comfy, WEIGHTS, identity=identity, face=0.0, upper=0.0, lower=0.0)
    assert torch.equal(sample(apply(sdxl, adapter, none)), plain)


def test_saved_identity_loads_back_and_generates_the_same(comfy, sdxl, small, identity, tmp_path, monkeypatch):
    """Save Identity writes a real .safetensors into the partid_identities folder; Load Identity lists and reads
    it; the loaded tokens (weights included) patch the model to the very same output as the encoded ones."""
    from safetensors.torch import save_file

    assert {SAVE, LOAD} <= comfy.added
    monkeypatch.setitem(comfy.folder_paths.folder_names_and_paths, "partid_identities",
                        ([str(tmp_path)], {".safetensors"}))
    _, adapter = small
    (weighted,) = run(comfy, WEIGHTS, identity=identity, face=0.5, lower=0.0)
    (first,) = run(comfy, SAVE, identity=weighted, filename_prefix="astronaut/outfit")
    (second,) = run(comfy, SAVE, identity=identity, filename_prefix="astronaut/outfit")
    assert Path(first) == tmp_path / "astronaut" / "outfit_00001_.safetensors"
    assert Path(second) == tmp_path / "astronaut" / "outfit_00002_.safetensors"
    listed = comfy.folder_paths.get_filename_list("partid_identities")
    assert {"astronaut/outfit_00001_.safetensors", "astronaut/outfit_00002_.safetensors"} <= set(listed)
    schema = comfy.nodes.NODE_CLASS_MAPPINGS[LOAD].GET_SCHEMA()
    assert "astronaut/outfit_00001_.safetensors" in schema.inputs[0].options
    (loaded,) = run(comfy, LOAD, identity_file="astronaut/outfit_00001_.safetensors")
    assert torch.equal(loaded.cond, weighted.cond) and torch.equal(loaded.uncond, weighted.uncond)
    assert (loaded.groups, loaded.sizes, loaded.weights, loaded.source) == (
        weighted.groups, weighted.sizes, weighted.weights, weighted.source)
    assert torch.equal(sample(apply(sdxl, adapter, loaded)), sample(apply(sdxl, adapter, weighted)))

    with pytest.raises(ValueError, match="PartID Save Identity, input 'filename_prefix'.*leads outside"):
        run(comfy, SAVE, identity=identity, filename_prefix="../../escape")
    with pytest.raises(ValueError, match="PartID Save Identity, input 'identity'"):
        run(comfy, SAVE, identity=torch.zeros(3), filename_prefix="x")
    with pytest.raises(ValueError, match="PartID Load Identity, input 'identity_file'.*PartID Save Identity"):
        run(comfy, LOAD, identity_file="nobody.safetensors")
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match="PartID Load Identity, input 'identity_file': lora.safetensors is not a "
                                         "PartID identity file"):
        run(comfy, LOAD, identity_file="lora.safetensors")


class Spy:
    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __call__(self, q, k, v, extra_options):
        out = self.inner(q, k, v, extra_options)
        self.calls.append((q, out))
        return out


class _Stop(Exception):
    pass


def first_block_contribution(patcher, key):
    """Identity part of the first cross-attention block's output (its input is the plain model's)."""
    from comfy.ldm.modules import attention as comfy_attention

    patcher = patcher.clone()
    spy = Spy(attn2(patcher)[key])
    seen = {}

    def text_of(q, k, v, eo):
        seen["text"] = comfy_attention.optimized_attention(q, k, v, eo["n_heads"])
        seen["shape"] = eo["activations_shape"]
        spy(q, k, v, eo)
        raise _Stop   # nothing after the first block is needed

    patcher.set_model_attn2_replace(text_of, *key)
    x, ctx = rand(2, 4, 16, 16, seed=5), rand(2, 77, 2048, seed=6)
    to = dict(patcher.model_options["transformer_options"], cond_or_uncond=[1, 0])
    to["sigmas"] = torch.ones(2)
    with torch.no_grad(), pytest.raises(_Stop):
        patcher.model.apply_model(x, torch.ones(2), c_crossattn=ctx, y=torch.zeros(2, 2816), transformer_options=to)
    h, w = seen["shape"][-2:]
    return (spy.calls[0][1] - seen["text"]).view(2, h, w, -1)


def test_two_people_with_masks_affect_only_their_regions(comfy, sdxl, small, identity):
    dino, adapter = small
    img, masks = person(seed=7)
    (other,) = run(comfy, ENCODE, dinov2=dino, adapter=adapter, image=img, **masks)
    left, right = torch.zeros(1, 64, 64), torch.zeros(1, 64, 64)
    left[..., :32], right[..., 32:] = 1, 1
    one = apply(sdxl, adapter, identity, weight=1.0, mask=left)
    two = apply(one, adapter, other, weight=1.0, mask=right)
    key = ("input", 4, 0)    # the first cross-attention: same input in every model
    patch = attn2(two)[key]
    assert len(patch.groups) == 2 and len(attn2(one)[key].groups) == 1
    c1 = first_block_contribution(one, key)
    c12 = first_block_contribution(two, key)
    w = c1.shape[2]
    assert torch.all(c1[:, :, w // 2 + 1:] == 0) and c1[:, :, : w // 2 - 1].abs().mean() > 1e-4
    second = c12 - c1
    assert second[:, :, : w // 2 - 1].abs().max() < 1e-5 and second[:, :, w // 2 + 1:].abs().mean() > 1e-4


def test_stacks_with_a_consistentid_style_group(comfy, sdxl, small, identity):
    from partid.models.attention.unet_keys import cross_attention_blocks_of_module
    from partid.nodes.attention_patch import IdentityGroup, IdentitySource, install_identity_group

    _, adapter = small
    blocks = cross_attention_blocks_of_module(sdxl.model.diffusion_model)
    cid_weights = {b.key: (rand(b.inner_dim, 2048, seed=2 * i, scale=0.05), rand(b.inner_dim, 2048, seed=2 * i + 1,
                                                                                     scale=0.05))
                   for i, b in enumerate(blocks)}
    cid = IdentitySource({0: rand(1, 4, 2048, seed=40), 1: rand(1, 4, 2048, seed=41)}, cid_weights)
    base = sdxl.clone()
    install_identity_group(base, IdentityGroup(cid, 1.0))
    vp_only = apply(sdxl, adapter, identity, weight=0.7)
    stacked = apply(base, adapter, identity, weight=0.7)
    groups = attn2(stacked)[("middle", 0, 0)].groups
    assert [g.source.n_tokens for g in groups] == [4, 768] and groups[0].source is cid
    out = sample(stacked)
    assert torch.isfinite(out).all()
    assert not torch.equal(out, sample(vp_only)) and not torch.equal(out, sample(base))


def test_a_fine_tuned_unet_group_replaces_the_unet_weights_on_the_clone_only(comfy, sdxl, small, identity):
    """weight.bin's optional `unet` group (diffusers keys, loaded into the UNet by the released loader) becomes
    "set" weight patches: every UNet weight takes the file's value while the patched model is loaded, the base
    model's weights stay as they were, and a tensor that does not fit is refused naming the adapter input."""
    import comfy.model_management as mm
    import comfy.utils

    from partid.models import model_files

    _, adapter = small
    to_comfy = comfy.utils.unet_to_diffusers(sdxl.model.model_config.unet_config)
    base = {k: v.clone() for k, v in sdxl.model.state_dict().items() if k.startswith("diffusion_model.")}
    # ComfyUI's table also maps class_embedding.* onto SDXL's label_emb (as add_embedding.*): one name per weight.
    names = {}
    for d, c in sorted(to_comfy.items()):
        names.setdefault(f"diffusion_model.{c}", d)
    unet = {d: base[c] + rand(*base[c].shape, seed=i % 7, scale=0.01)
            for i, (c, d) in enumerate(names.items()) if c in base}
    assert {f"diffusion_model.{to_comfy[d]}" for d in unet} == set(base)      # a whole UNet, in diffusers keys
    tuned = model_files.AdapterWeights(adapter.format, "tuned_vp.bin", {**adapter.groups, "unet": unet})
    patched = apply(sdxl, tuned, identity)
    assert len(patched.patches) == len(base) and len(attn2(patched)) == 70
    assert not torch.equal(sample(patched), sample(apply(sdxl, adapter, identity)))
    mm.load_models_gpu([patched], force_full_load=True)
    now = patched.model.state_dict()
    assert all(torch.equal(now[f"diffusion_model.{to_comfy[d]}"], t) for d, t in unet.items())
    mm.load_models_gpu([sdxl], force_full_load=True)                         # the base again: patches taken out
    now = sdxl.model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in base.items())
    key = next(iter(unet))
    wrong = model_files.AdapterWeights(adapter.format, "tuned_vp.bin",
                                       {**adapter.groups, "unet": {**unet, key: torch.zeros(3), "not.a.weight": torch.zeros(1)}})
    with pytest.raises(ValueError, match=r"input 'adapter'.*'unet' group.*2 of .*not.a.weight.*\(no such weight\)"):
        apply(sdxl, wrong, identity)


def test_a_mask_that_does_not_fit_is_refused_naming_the_node(comfy, sdxl, small, identity):
    """A malformed MASK is refused when the node runs; a mask batch that fits no latent batch (known only when
    sampling starts) stops the first step with the node and input named, not a bare tensor error."""
    _, adapter = small
    with pytest.raises(ValueError, match=r"PartID Visual Persona Apply, input 'mask'.*\[1, 1, 8, 8\]"):
        run(comfy, APPLY, model=sdxl, adapter=adapter, identity=identity, mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"PartID Visual Persona Apply, input 'mask'.*batch 3.*latent batch is 1"):
        sample(apply(sdxl, adapter, identity, mask=torch.ones(3, 8, 8)))
    assert torch.isfinite(sample(apply(sdxl, adapter, identity, mask=torch.ones(1, 8, 8)))).all()


def test_apply_refuses_non_sdxl_models_and_wrong_inputs(comfy, small, identity):
    from fixtures_builders.sd_models import tiny_sd15_patcher

    from partid.models.identity_tokens import IdentityTokens

    dino, adapter = small
    sd15 = tiny_sd15_patcher()
    with pytest.raises(ValueError, match=r"PartID Visual Persona Apply, input 'model'.*SD1\.5.*SDXL"):
        run(comfy, APPLY, model=sd15, adapter=adapter, identity=identity)
    with pytest.raises(ValueError, match="input 'adapter'"):
        run(comfy, APPLY, model=sd15, adapter=dino, identity=identity)
    cid = IdentityTokens(torch.zeros(1, 4, 2048), torch.zeros(1, 4, 2048), ("id",), (4,), (1.0,), "consistentid")
    with pytest.raises(ValueError, match="input 'identity'.*not Visual Persona"):
        run(comfy, APPLY, model=_sdxl_meta(comfy), adapter=adapter, identity=cid)
    with pytest.raises(ValueError, match="input 'start_at'"):
        run(comfy, APPLY, model=sd15, adapter=adapter, identity=identity, start_at=0.9, end_at=0.1)


def _sdxl_meta(comfy):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET

    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(comfy.supported_models.SDXL(SDXL_UNET).get_model({}, device="meta"), cpu, cpu)


# --- the released layout, full size ----------------------------------------------------------------------------

def test_released_weight_bin_loads_strictly_and_maps_onto_full_sdxl(comfy, model_dirs):
    from fixtures_builders import adapters

    from partid.models import model_files
    from partid.models.identity_tokens import IdentityTokens
    from partid.models.visual_persona import VISUAL_PERSONA, PartDecoder

    adapter = model_files.load_adapter(str(adapters.visual_persona_bin()), "Visual Persona")
    decoder = PartDecoder.from_adapter(adapter)
    assert decoder.config == VISUAL_PERSONA
    assert sum(p.numel() for p in decoder.parameters()) > 520e6
    assert len(adapter.groups["ip_adapter"]) == 140
    ident = IdentityTokens(torch.zeros(1, 1024, 2048), torch.zeros(1, 1024, 2048), ("face", "upper", "lower", "shoes"),
                           (256,) * 4, (1.0,) * 4, "visual_persona")
    model = _sdxl_meta(comfy)
    (patched,) = run(comfy, APPLY, model=model, adapter=adapter, identity=ident)
    patches = attn2(patched)
    assert len(patches) == 70 and sum(1 for k in patches if k[0] == "middle") == 10
    weights = next(iter(patches.values())).groups[0].source.block_weights
    assert {tuple(w[0].shape) for w in weights.values()} == {(640, 2048), (1280, 2048)}
