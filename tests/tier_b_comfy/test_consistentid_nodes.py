"""PartID ConsistentID Encode and Apply in the real ComfyUI, with everything else real too.

SD1.5 chain on skimage's astronaut: CheckpointLoaderSimple (random full-size SD1.5) -> PartID
ConsistentID Loader (random official-layout SD1.5 adapter) -> PartID Face Analysis (random
buffalo_l) -> PartID Face Regions (random BiSeNet) -> core Load CLIP Vision (random CLIP-ViT-H/14
in the official clip_vision layout) -> PartID ConsistentID Encode -> PartID ConsistentID Text
Fusion -> PartID ConsistentID Apply -> KSampler (64x64, 2 steps) -> VAEDecode.

CLIP-H parity: tests/fixtures/consistentid_clip_reference.pt holds what the official pipeline's code
path computes on the same random CLIP-H (transformers CLIPVisionModelWithProjection loaded strictly
from the fixture file, fp32; CLIPImageProcessorPil = transformers 4.x CLIPImageProcessor; region =
PIL Image.composite(photo, black, mask.resize(photo.size)) with the soft ellipse mask below; uncond =
hidden_states[-2] of zeros): the penultimate states of tokens 0, 1, 100, 256 of [region, whole
photo, zeros], per-image sums, and SHA-256 of the official pixel values.

The chain's nose mask is the fixture's soft ellipse (256x256, resized to the photo as the official
code resizes its masks): the random BiSeNet parse has no nose, and one CLIP-H batch then serves both.

SDXL: a small-channel SDXL-layout UNet (real depths: 70 cross-attention blocks) with a random
ConsistentID-SDXL-structured adapter sized for it samples end to end; the real random SDXL adapter
file is installed on the full-size SDXL layout built on the meta device (keys and shapes only).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fixtures_builders.photos import astronaut
from PIL import Image
from partid_rig import REPORT, TESTS

CLIP_NAME = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
REFERENCE = TESTS / "fixtures" / "consistentid_clip_reference.pt"
MASKS = ("face", "eyes", "ears", "nose", "mouth")


def soft_ellipse_mask() -> np.ndarray:
    """uint8 256x256, a soft-edged ellipse (the fixture generator uses the same formula)."""
    y, x = np.mgrid[0:256, 0:256].astype(np.float64)
    r = np.sqrt(((x - 118) / 46) ** 2 + ((y - 96) / 58) ** 2)
    return np.clip(np.round((1.25 - r) * 4 * 255), 0, 255).astype(np.uint8)


def node(comfy, name):
    return comfy.nodes.NODE_CLASS_MAPPINGS[name]


def run(comfy, name, **inputs):
    with torch.inference_mode():   # as ComfyUI's executor runs every node
        result, _ = comfy.run(node(comfy, name), **inputs)
    return result


@pytest.fixture(scope="module")
def clip_vision(comfy, model_dirs):
    from fixtures_builders.clip_vision import link_clip_vision

    folder = link_clip_vision(Path(model_dirs)).parent
    comfy.folder_paths.add_model_folder_path("clip_vision", str(folder))
    (loaded,) = comfy.nodes.CLIPVisionLoader().load_clip(CLIP_NAME)
    return loaded


@pytest.fixture(scope="module")
def photo():
    return torch.from_numpy(astronaut()).float()[None] / 255.0


@pytest.fixture(scope="module")
def chain(comfy, model_dirs, clip_vision, photo):
    model, clip, vae = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("partid_random_sd15.safetensors")[:3]
    (adapter,) = run(comfy, "PartIDConsistentIDLoader", adapter="consistentid_sd15", model=model)
    (analyzer,) = run(comfy, "PartIDFaceAnalysisLoader", pack="buffalo_l", provider="cpu")
    faces, embeds = run(comfy, "PartIDFaceAnalysis", analyzer=analyzer, image=photo, det_thresh=0.2,
                        face_select="index", on_no_face="bypass")[:2]
    (parser,) = run(comfy, "PartIDFaceParserLoader", parser="bisenet_face_parsing")
    if "PartIDFaceRegions" in comfy.nodes.NODE_CLASS_MAPPINGS:
        masks = dict(zip(MASKS, run(comfy, "PartIDFaceRegions", parser=parser, image=photo)[:5]))
    else:  # the engine directly
        from partid.models.face_parsing import face_parser_from
        from partid.models.face_regions import REGIONS, face_regions

        found = face_regions(face_parser_from(parser, "cpu").parse(photo))
        masks = dict(zip(MASKS, (found.masks[r] for r in REGIONS)))
    # The nose slot carries the parity fixture's soft ellipse at another resolution (the random BiSeNet
    # parse has no nose): one CLIP-H batch serves the chain and the official-states comparison.
    masks["nose"] = torch.from_numpy(soft_ellipse_mask()).float()[None] / 255.0
    with torch.inference_mode():
        (regions, image_states), encode_ui = comfy.run(node(comfy, "PartIDConsistentIDEncode"),
                                                       clip_vision=clip_vision, image=photo, **masks)
    positive, negative = run(comfy, "PartIDConsistentIDText", clip=clip, adapter=adapter, regions=regions,
                             text="a photo of an astronaut", negative="blurry")
    return SimpleNamespace(model=model, vae=vae, adapter=adapter, faces=faces, embeds=embeds, masks=masks,
                           regions=regions, image_states=image_states, positive=positive, negative=negative,
                           encode_ui=encode_ui)


def apply(comfy, chain, **options):
    inputs = dict(model=chain.model, adapter=chain.adapter, embeddings=chain.embeds, image_states=chain.image_states)
    return run(comfy, "PartIDConsistentIDApply", **{**inputs, **options})[0]


def sample_and_decode(comfy, chain, model, steps=2):
    with torch.inference_mode():
        latent = comfy.nodes.EmptyLatentImage().generate(64, 64, 1)[0]
        out = comfy.nodes.KSampler().sample(model, 7, steps, 5.0, "euler", "normal", chain.positive, chain.negative,
                                            latent)[0]
        return comfy.nodes.VAEDecode().decode(chain.vae, out)[0]


def attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def test_schemas(comfy):
    assert {"PartIDConsistentIDEncode", "PartIDConsistentIDApply"} <= comfy.added
    enc = node(comfy, "PartIDConsistentIDEncode")
    enc.VALIDATE_CLASS()
    info = enc.GET_NODE_INFO_V1()
    assert list(info["input"]["required"]) == ["clip_vision", "image", "preprocess", "offload"]
    assert list(info["input"]["optional"]) == list(MASKS)
    assert info["input"]["required"]["clip_vision"][0] == "CLIP_VISION"
    assert info["output"] == ["PARTID_CID_REGIONS", "PARTID_CID_IMAGE_STATES"]
    app = node(comfy, "PartIDConsistentIDApply")
    app.VALIDATE_CLASS()
    info = app.GET_NODE_INFO_V1()
    required = info["input"]["required"]
    assert list(required)[:4] == ["model", "adapter", "embeddings", "image_states"]
    assert required["embeddings"][0] == "PARTID_FACE_EMBEDS" and required["image_states"][0] == "PARTID_CID_IMAGE_STATES"
    assert required["weight"][1]["default"] == 1.0 and required["lora"][1]["default"] is True
    assert list(info["input"]["optional"]) == ["mask"] and info["output"] == ["MODEL"]


def test_clip_vision_fixture_is_detected_as_vit_h(clip_vision):
    vm = clip_vision.model.vision_model
    assert len(vm.encoder.layers) == 32 and clip_vision.image_size == 224
    assert tuple(vm.embeddings.position_embedding.weight.shape) == (257, 1280)
    assert tuple(clip_vision.model.visual_projection.weight.shape) == (1024, 1280)


def test_encode_outputs(comfy, chain, photo):
    regions, states = chain.regions, chain.image_states
    assert regions.states.shape == (1, 5, 257, 1280) and states.states.shape == (1, 257, 1280)
    expected = [bool((chain.masks[m] > 0).any()) for m in MASKS]
    assert regions.present[0].tolist() == expected and any(expected)
    assert regions.uncond_states is states.uncond_states and states.preprocess == "official"
    assert not torch.allclose(states.states[0], states.uncond_states)
    present = [s for s, here in enumerate(expected) if here]
    for s in range(5):
        if s not in present:
            assert torch.equal(regions.states[0, s], regions.uncond_states)
    if len(present) > 1:
        assert not torch.allclose(regions.states[0, present[0]], regions.states[0, present[1]])
    # The canvas preview: the present regions' crops and the whole reference, 128 px tiles in encode order.
    names = ["0: " + ("face", "eye", "ear", "nose", "lip")[s] for s in present] + ["0: whole"]
    assert chain.encode_ui["partid_crops"] == names
    (saved,) = chain.encode_ui["images"]
    png = Image.open(Path(comfy.folder_paths.get_temp_directory()) / saved["subfolder"] / saved["filename"])
    assert png.size == (128 * len(names), 128)
    whole = np.asarray(png.convert("RGB"), np.float32)[:, -128:]
    want = np.asarray(Image.fromarray((photo[0] * 255).round().byte().numpy()).resize((128, 128), Image.BILINEAR),
                      np.float32)
    assert np.abs(whole - want).mean() < 3.0
    REPORT.append(f"ConsistentID Encode preview: whole-reference tile vs PIL resize of the photo, mean abs "
                  f"{np.abs(whole - want).mean():.2f} levels")
    REPORT.append(f"ConsistentID Encode on the astronaut: regions present {dict(zip(MASKS, expected))}, "
                  f"ArcFace rows {chain.embeds.shape[0]} (face found: {chain.faces.present})")


def test_official_pixels_pass_through_encode_image_unchanged_and_comfy_preprocessing_differs(comfy, photo):
    from comfy.clip_vision import clip_preprocess

    from partid.models.consistentid import region_images as ri

    u8 = (photo * 255).round().to(torch.uint8)
    official = ri.official_pixels(u8)
    assert torch.equal(clip_preprocess(official.float() / 255.0, crop=False), ri.normalise_u8(official.numpy()))
    lines = []
    for name, crop in (("512x512", (slice(None), slice(None))), ("512x384", (slice(None), slice(64, 448)))):
        img = u8[:, crop[0], crop[1]]
        diff = (clip_preprocess(img.float() / 255.0) - ri.normalise_u8(ri.official_pixels(img).numpy())).abs()
        lines.append(f"{name}: max {diff.max():.3f}, mean {diff.mean():.4f}, >1e-3 {float((diff > 1e-3).float().mean()):.1%}")
        assert diff.max() > 0.01
    REPORT.append("CLIP preprocessing, ComfyUI clip_preprocess vs official CLIPImageProcessor (PIL), astronaut, "
                  "normalised units: " + "; ".join(lines))


def test_both_preprocessing_modes_make_one_encode_image_call(comfy, photo):
    from partid.models.consistentid import region_images as ri
    from partid.nodes.consistentid_encode import encode_states

    class Recorder:   # stands in for CLIP_VISION: records what encode_image is given
        def encode_image(self, image, crop=True):
            self.calls = [*getattr(self, "calls", []), (image.clone(), crop)]
            return {"penultimate_hidden_states": torch.zeros(image.shape[0], 257, 1280)}

    images = (torch.cat([photo, photo.flip(2)]) * 255).round().to(torch.uint8)
    rec = Recorder()
    assert encode_states(rec, images, "official").shape == (2, 257, 1280)
    assert encode_states(rec, images, "comfy").shape == (2, 257, 1280)
    (official, crop_official), (comfy_in, crop_comfy) = rec.calls
    assert official.shape == (2, 224, 224, 3) and crop_official is False
    assert torch.equal(official, ri.official_pixels(images).float() / 255.0)
    assert comfy_in.shape == (2, 512, 512, 3) and crop_comfy is True


def test_encode_matches_the_official_clip_states(chain, photo):
    from partid.models.consistentid import region_images as ri

    ref = torch.load(REFERENCE, weights_only=True)
    u8 = (photo[0] * 255).round().to(torch.uint8)
    region = ri.composite_u8(u8, ri.mask_to_u8(chain.masks["nose"][0], 512, 512))
    assert hashlib.sha256(region.numpy().tobytes()).hexdigest() == ref["region_sha256"]
    pixels = ri.normalise_u8(ri.official_pixels(torch.stack([region, u8])).numpy())
    assert [hashlib.sha256(p.numpy().tobytes()).hexdigest() for p in pixels] == ref["pixel_sha256"]

    regions, states = chain.regions, chain.image_states
    assert bool(regions.present[0, 3])
    ours = torch.stack([regions.states[0, 3], states.states[0], states.uncond_states])
    tokens = ref["tokens"]
    diff = (ours[:, tokens] - ref["states_subset"]).abs().max() / ref["states_subset"].abs().max()
    sums = (ours.double().sum((1, 2)) - ref["sum"]).abs().max() / ref["abs_sum"].max()
    REPORT.append(f"ConsistentID CLIP-H states vs official (region, whole, zeros): max rel {diff:.2e}, "
                  f"sum rel {sums:.2e}")
    assert diff < 1e-4 and sums < 1e-5


def test_chain_samples_and_weight_zero_without_lora_is_the_plain_model(comfy, chain):
    plain = sample_and_decode(comfy, chain, chain.model)
    neutral = sample_and_decode(comfy, chain, apply(comfy, chain, weight=0.0, lora=False))
    patched_model = apply(comfy, chain)
    patched = sample_and_decode(comfy, chain, patched_model)
    assert patched.shape == (1, 64, 64, 3) and torch.isfinite(patched).all()
    assert not torch.equal(patched, plain)
    assert torch.equal(neutral, plain)
    assert len(attn2(patched_model)) == 16 and not attn2(chain.model)
    REPORT.append(f"ConsistentID SD1.5 chain 64x64/2 steps: mean |patched - plain| {(patched - plain).abs().mean():.4f}")


def test_start_end_mask_and_stacking(comfy, chain):
    model = apply(comfy, chain, start_at=0.2, end_at=0.8, mask=torch.ones(1, 64, 64))
    group = next(iter(attn2(model).values())).groups[0]
    assert group.sigma_start > group.sigma_end > 0 and group.mask is not None
    cond, uncond = group.source.tokens[0], group.source.tokens[1]
    assert cond.shape == uncond.shape == (1, 4, 768) and not torch.allclose(cond, uncond)

    def foreign(q, k, v, extra_options):
        return q

    base = chain.model.clone()
    base.set_model_attn2_replace(foreign, "middle", 0, 0)
    twice = apply(comfy, chain, model=apply(comfy, chain, model=base))
    middle = attn2(twice)[("middle", 0, 0)]
    assert middle.previous is foreign and len(middle.groups) == 2


def test_wrong_base_and_wrong_inputs_are_refused_with_node_and_input(comfy, chain):
    from partid.models import formats, model_files
    from partid.models.consistentid.region_images import ImageStates

    # InputError is a ValueError; ComfyUI loaded the pack under another module name than `partid`.
    sdxl = model_files.AdapterWeights(formats.ADAPTER_FORMATS[1], "ConsistentID_SDXL-v1.bin", {})
    with pytest.raises(ValueError) as err:
        apply(comfy, chain, adapter=sdxl)
    assert type(err.value).__name__ == "InputError"
    assert "PartID ConsistentID Apply, input 'adapter'" in str(err.value) and "SD1.5" in str(err.value)
    with pytest.raises(ValueError, match="input 'image_states'"):
        apply(comfy, chain, image_states=chain.regions)
    with pytest.raises(ValueError, match=r"input 'embeddings'.*\[N, 512\]"):
        apply(comfy, chain, embeddings=torch.zeros(1, 256))
    two = ImageStates(chain.image_states.states.expand(2, -1, -1), chain.image_states.uncond_states)
    with pytest.raises(ValueError, match="input 'embeddings'.*3 face embeddings but 2 reference"):
        apply(comfy, chain, embeddings=torch.zeros(3, 512), image_states=two)
    with pytest.raises(ValueError, match="input 'clip_vision'"):
        run(comfy, "PartIDConsistentIDEncode", clip_vision=object(), image=torch.zeros(1, 64, 64, 3))


def test_embeddings_thinned_by_skip_do_not_pair_with_the_full_reference_batch(comfy, chain, photo):
    """on_no_face=skip drops a reference's embedding row; a 1-row result must not be broadcast over both reference
    images (the faceless one would get the other's face): Apply refuses and names Face Analysis' images output,
    which pairs row for row."""
    from partid.models.consistentid.region_images import ImageStates

    (analyzer,) = run(comfy, "PartIDFaceAnalysisLoader", pack="buffalo_l", provider="cpu")
    grey = torch.full_like(photo, 0.5)         # the random detector scores it 0.2003: no face at 0.201
    faces, embeds, _, _, kept = run(comfy, "PartIDFaceAnalysis", analyzer=analyzer, image=torch.cat([grey, photo]),
                                    det_thresh=0.201, on_no_face="skip")
    assert faces.skipped == [0] and embeds.shape == (1, 512) and torch.equal(kept, photo)
    two = ImageStates(chain.image_states.states.expand(2, -1, -1), chain.image_states.uncond_states)
    with pytest.raises(ValueError, match=r"input 'embeddings'.*on_no_face=skip\) dropped batch index\(es\) 0.*"
                                         r"images output"):
        apply(comfy, chain, embeddings=embeds, image_states=two)
    assert apply(comfy, chain, embeddings=embeds) is not None      # one kept image, one reference: paired


# --- SDXL -------------------------------------------------------------------------------------------------------

def sdxl_adapter(layout, seed=0):
    """A ConsistentID SDXL adapter whose adapter_modules are sized for `layout` (random weights)."""
    from fixtures_builders.random_weights import random_state

    from partid.models import formats, model_files
    from partid.models.layouts.consistentid import adapter_modules_layout, image_proj_layout

    groups = {"image_proj": random_state(image_proj_layout(2048), seed), "FacialEncoder": {},
              "adapter_modules": random_state(adapter_modules_layout(layout), seed + 1)}
    return model_files.AdapterWeights(formats.ADAPTER_FORMATS[1], "tiny_sdxl_consistentid.bin", groups)


def sdxl_layout(ch: int):
    """The SDXL attention layout at `ch` model channels (the real one has 320)."""
    from partid.models.layouts.unet_attention import UNetAttentionConfig

    return UNetAttentionConfig(f"sdxl_{ch}", 2048, down=(("down_blocks.1", 2 * ch, 2, 2), ("down_blocks.2", 4 * ch, 2, 10)),
                               up=(("up_blocks.0", 4 * ch, 3, 10), ("up_blocks.1", 2 * ch, 3, 2)),
                               mid=("mid_block", 4 * ch, 1, 10))


def test_sdxl_small_channels_samples_with_all_70_blocks(comfy):
    import comfy.model_patcher
    import comfy.sample
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid

    ch = 64
    cpu = torch.device("cpu")
    unet = init_random_(comfy.supported_models.SDXL(dict(SDXL_UNET, model_channels=ch)).get_model({}, device="cpu"), 0)
    model = comfy.model_patcher.ModelPatcher(unet, cpu, cpu)
    layout = sdxl_layout(ch)
    adapter = sdxl_adapter(layout)
    gen = torch.Generator().manual_seed(3)
    states = ImageStates(torch.randn(1, 16, 1280, generator=gen), torch.randn(16, 1280, generator=gen))  # any N
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=gen), dim=-1)
    patched = apply_consistentid(model, adapter, embeds, states, layout=layout)
    neutral = apply_consistentid(model, adapter, embeds, states, weight=0.0, lora=False, layout=layout)
    assert len(attn2(patched)) == 70 and len(patched.patches) == 70 * 2 * 4
    proj = adapter._partid_proj_plus.engine
    assert proj.shortcut is True   # the official SDXL call

    def sample(m):
        pos = [[torch.randn(1, 77, 2048, generator=torch.Generator().manual_seed(1)),
                {"pooled_output": torch.zeros(1, 1280)}]]
        neg = [[torch.zeros(1, 77, 2048), {"pooled_output": torch.zeros(1, 1280)}]]
        noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
        with torch.inference_mode():
            return comfy.sample.sample(m, noise, 1, 5.0, "euler", "normal", pos, neg, torch.zeros(1, 4, 8, 8))

    plain = sample(model)
    out = sample(patched)
    assert torch.isfinite(out).all() and not torch.equal(out, plain)
    assert torch.equal(sample(neutral), plain)


def test_id_tokens_follow_the_compute_dtype_of_a_manual_cast_model(comfy):
    """ComfyUI stores fp16 weights but computes in fp32 where fp16 is unsafe (manual cast): the ProjPlus
    tokens must be fp32 there (model_dtype() says fp16)."""
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid

    ch = 64
    cpu = torch.device("cpu")
    config = comfy.supported_models.SDXL(dict(SDXL_UNET, model_channels=ch))
    config.set_inference_dtype(torch.float16, torch.float32)
    model = comfy.model_patcher.ModelPatcher(init_random_(config.get_model({}, device="cpu"), 0), cpu, cpu)
    assert model.model_dtype() == torch.float16 and model.model.manual_cast_dtype == torch.float32
    layout = sdxl_layout(ch)
    gen = torch.Generator().manual_seed(3)
    states = ImageStates(torch.randn(1, 16, 1280, generator=gen), torch.randn(16, 1280, generator=gen))
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=gen), dim=-1)
    patched = apply_consistentid(model, sdxl_adapter(layout), embeds, states, layout=layout)
    tokens = next(iter(attn2(patched).values())).groups[0].source.tokens
    assert tokens[0].dtype == tokens[1].dtype == torch.float32


def test_sdxl_real_adapter_installs_on_the_full_size_layout(comfy, model_dirs):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders import adapters
    from fixtures_builders.sd_models import SDXL_UNET

    from partid.models import model_files
    from partid.models.consistentid.region_images import ImageStates
    from partid.nodes.consistentid_apply import apply_consistentid, check_inputs

    cpu = torch.device("cpu")
    model = comfy.model_patcher.ModelPatcher(comfy.supported_models.SDXL(SDXL_UNET).get_model({}, device="meta"),
                                             cpu, cpu)
    adapter = model_files.load_adapter(str(adapters.consistentid_bin("sdxl")), "ConsistentID")
    states = ImageStates(torch.randn(1, 16, 1280), torch.randn(16, 1280))
    embeds = torch.nn.functional.normalize(torch.randn(1, 512), dim=-1)
    assert check_inputs(model, adapter, embeds, states).name == "sdxl"
    patched = apply_consistentid(model, adapter, embeds, states)
    patches = attn2(patched)
    assert len(patches) == 70 and len(patched.patches) == 70 * 2 * 4
    cond = next(iter(patches.values())).groups[0].source.tokens[0]
    assert cond.shape == (1, 4, 2048) and torch.isfinite(cond).all()
