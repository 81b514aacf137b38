"""Random-weight models, identity inputs and PartID configurations for benchmarks/run.py.

Everything is built from the test fixtures (tests/fixtures_builders): SD1.5 / SDXL UNets of the real
configs (ComfyUI's own model classes, random weights), the official-layout ConsistentID and Visual
Persona files loaded through PartID's loader nodes, CLIP-ViT-H, BiSeNet, the body parser and the
insightface packs for preprocessing. `tiny=True` swaps in the small-channel UNets of the tier B tests
(SD1.5: its attention layout over 32 channels; SDXL: its levels, one transformer per attention) and adapters sized for them, so the
whole harness runs in seconds (the smoke test); tiny numbers mean nothing.

PartID is driven as ComfyUI loaded it (`pack(".nodes.x")`), through the same functions the apply
nodes call (apply_consistentid, apply_visual_persona; layouts passed only for the tiny UNets).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

import harness

TINY_CH = 32
# SDXL's levels and widths over 32 channels, one transformer per attention (11 cross-attention blocks, not 70).
TINY_SDXL = dict(model_channels=TINY_CH, transformer_depth=[0, 0, 1, 1, 1, 1], transformer_depth_middle=1,
                 transformer_depth_output=[0, 0, 0, 1, 1, 1, 1, 1, 1])
IP_ADAPTER_TOKENS = 16          # IP-Adapter Plus: 16 resampler tokens per image
VP_PARTS = ("face", "upper", "lower", "shoes")   # released scripts: 4 parts x 256 tokens


@dataclass
class Base:
    """One base model and what its configurations need."""

    name: str                     # sd15 | sdxl
    model: object                 # ComfyUI ModelPatcher
    layout: object                # PartID UNetAttentionConfig of the model
    conds: tuple                  # (positive, negative) ComfyUI conditioning
    context_dim: int
    extras: dict = field(default_factory=dict)


def tiny_layout(base: str, pack):
    ua = pack(".models.layouts.unet_attention")
    c = TINY_CH
    if base == "sd15":
        return ua.UNetAttentionConfig("tiny_sd15", 768, down=(("down_blocks.0", c, 1, 1), ("down_blocks.1", 2 * c, 1, 1)),
                                      up=(("up_blocks.0", 2 * c, 2, 1), ("up_blocks.1", c, 2, 1)),
                                      mid=("mid_block", 2 * c, 1, 1))
    return ua.UNetAttentionConfig("tiny_sdxl", 2048, down=(("down_blocks.1", 2 * c, 2, 1), ("down_blocks.2", 4 * c, 2, 1)),
                                  up=(("up_blocks.0", 4 * c, 3, 1), ("up_blocks.1", 2 * c, 3, 1)),
                                  mid=("mid_block", 4 * c, 1, 1))


def build_base(name: str, tiny: bool, device: str, pack, dtype: torch.dtype | None = None) -> Base:
    """A random UNet of the real config (or the tiny one) in a ModelPatcher; dtype default: fp16 on cuda, else fp32."""
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SD15_UNET, SDXL_UNET, TINY_SD15_UNET, init_random_

    if name == "sd15":
        config = comfy.supported_models.SD15(TINY_SD15_UNET if tiny else SD15_UNET)
    else:
        config = comfy.supported_models.SDXL(dict(SDXL_UNET, **TINY_SDXL) if tiny else SDXL_UNET)
    config.set_inference_dtype(dtype or (torch.float16 if device == "cuda" else torch.float32), None)
    model = init_random_(config.get_model({}, device="cpu"), 0)
    patcher = comfy.model_patcher.ModelPatcher(model, mm.get_torch_device(), mm.unet_offload_device())
    ctx = 768 if name == "sd15" else 2048
    gen = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(1, 77, ctx, generator=gen), torch.randn(1, 77, ctx, generator=gen)
    extra = {"pooled_output": torch.randn(1, 1280, generator=gen)} if name == "sdxl" else {}
    layout = tiny_layout(name, pack) if tiny else pack(".models.layouts.unet_attention").UNETS[name]
    return Base(name, patcher, layout, ([[pos, dict(extra)]], [[neg, dict(extra)]]), ctx)


# -- identity modules ----------------------------------------------------------------------------------

def consistentid_adapter(base: Base, tiny: bool, nodes, pack):
    """Full size: the official-layout random file through PartID ConsistentID Loader; tiny: sized for the UNet."""
    if not tiny:
        name = {"sd15": "consistentid_sd15", "sdxl": "consistentid_sdxl"}[base.name]   # catalog names
        return harness.run_node(nodes, "PartIDConsistentIDLoader", adapter=name, model=base.model)[0]
    from fixtures_builders.random_weights import random_state

    lay = pack(".models.layouts.consistentid")
    formats, model_files = pack(".models.formats"), pack(".models.model_files")
    groups = {"image_proj": random_state(lay.image_proj_layout(base.context_dim), 0, torch.float32), "FacialEncoder": {},
              "adapter_modules": random_state(lay.adapter_modules_layout(base.layout), 1, torch.float32)}
    fmt = formats.ADAPTER_FORMATS[0 if base.name == "sd15" else 1]
    return model_files.AdapterWeights(fmt, f"tiny_{base.name}_consistentid.bin", groups)


def visual_persona_adapter(base: Base, tiny: bool, nodes, pack):
    if not tiny:
        return harness.run_node(nodes, "PartIDVisualPersonaLoader", adapter="visual_persona", model=base.model)[0]
    from fixtures_builders.random_weights import random_state

    formats, model_files = pack(".models.formats"), pack(".models.model_files")
    vp = pack(".models.layouts.visual_persona")
    groups = {"image_proj": {}, "ip_adapter": random_state(vp.ip_adapter_layout(base.layout, 2048), 2, torch.float32)}
    return model_files.AdapterWeights(formats.VISUAL_PERSONA_SDXL, "tiny_visual_persona.bin", groups)


def random_consistentid_inputs(pack):
    """ArcFace embedding + CLIP-H states of one reference, random (tiny runs; the UNet cost is the same)."""
    states_cls = pack(".models.consistentid.region_images").ImageStates
    gen = torch.Generator().manual_seed(3)
    embeds = torch.nn.functional.normalize(torch.randn(1, 512, generator=gen), dim=-1)
    return embeds, states_cls(torch.randn(1, 257, 1280, generator=gen), torch.randn(257, 1280, generator=gen))


def random_identity(pack, parts=VP_PARTS, tokens_per_part: int = 256):
    """Visual Persona identity tokens of the released shape (256 per part, 2048 wide), random values."""
    tokens_cls = pack(".models.identity_tokens").IdentityTokens
    gen = torch.Generator().manual_seed(4)
    n = len(parts) * tokens_per_part
    return tokens_cls(torch.randn(1, n, 2048, generator=gen), torch.randn(1, n, 2048, generator=gen), tuple(parts),
                      (tokens_per_part,) * len(parts), (1.0,) * len(parts), "visual_persona")


def consistentid_preprocess(nodes, pack, photo, clip_vision, base: Base, adapter, device: str, repeats: int,
                            clip=None) -> tuple:
    """(embeddings, image_states, {stage: ms per reference}) through PartID's nodes on one reference photo.

    Stages: face analysis, face regions, ConsistentID Encode (CLIP-H), Text Fusion when a CLIP is given
    (its text encodes included: the positive is encoded once for both merge phases, as plain ComfyUI
    encodes it once), and Apply (ProjPlus ID tokens + the patches on a clone of the model).
    """
    (analyzer,) = harness.run_node(nodes, "PartIDFaceAnalysisLoader", pack="buffalo_l",
                                   provider="cuda" if device == "cuda" else "cpu")
    (parser,) = harness.run_node(nodes, "PartIDFaceParserLoader", parser="bisenet_face_parsing")
    resolution = 512 if base.name == "sd15" else 1280
    (faces, embeds, *_), fa, _ = harness.timed(device, lambda: harness.run_node(
        nodes, "PartIDFaceAnalysis", analyzer=analyzer, image=photo, det_thresh=0.2, on_no_face="bypass"), repeats)
    masks, fr, _ = harness.timed(device, lambda: harness.run_node(
        nodes, "PartIDFaceRegions", parser=parser, image=photo, resolution=resolution), repeats)
    masks = dict(zip(("face", "eyes", "ears", "nose", "mouth"), masks[:5]))
    (regions, states), enc, _ = harness.timed(device, lambda: harness.run_node(
        nodes, "PartIDConsistentIDEncode", clip_vision=clip_vision, image=photo, **masks), repeats)
    stages = {"face analysis (buffalo_l)": fa * 1000,
              f"face regions (BiSeNet @{resolution})": fr * 1000, "ConsistentID encode (CLIP-H)": enc * 1000}
    if clip is not None:
        _, fuse, _ = harness.timed(device, lambda: harness.run_node(
            nodes, "PartIDConsistentIDText", clip=clip, adapter=adapter, regions=regions,
            text="a photo of an astronaut", negative="blurry"), repeats)
        stages["text fusion (text encodes + FacialEncoder)"] = fuse * 1000
    apply_consistentid = pack(".nodes.consistentid_apply").apply_consistentid     # what the Apply node runs
    _, apply, _ = harness.timed(device, lambda: apply_consistentid(base.model, adapter, embeds, states,
                                                                   layout=base.layout), repeats)
    stages["apply (ProjPlus ID tokens + patches)"] = apply * 1000
    return embeds, states, stages


def sd15_text_encoder():
    """ComfyUI's CLIP object of the tests' random SD1.5 checkpoint (CLIP-L only: no second UNet, no VAE)."""
    import comfy.sd
    from fixtures_builders.sd_models import sd15_checkpoint

    return comfy.sd.load_checkpoint_guess_config(str(sd15_checkpoint()), output_vae=False, output_clip=True,
                                                 output_model=False)[1]


def dinov2_g_random(pack):
    """DINOv2 ViT-g/14 weights (1.1 B parameters, hub layout), random, in memory: no file is written."""
    from fixtures_builders.random_weights import random_state

    dl, model_files = pack(".models.layouts.dinov2"), pack(".models.model_files")
    cfg = dl.DINOV2_SIZES["vitg14"]
    state = random_state(dl.dinov2_hub_layout(cfg), 3, dtype=torch.float16)
    return model_files.DINOv2Weights("hub", "dinov2_vitg14_pretrain.pth (random)", cfg.embed_dim, cfg.depth, 14,
                                     "swiglu", state_dict=state)


def visual_persona_preprocess(nodes, pack, photo, adapter, dinov2, device: str, repeats: int) -> tuple:
    """(identity, {stage: ms per reference}, {what: GPU MiB}): body parts (SegFormer-B2) + Visual Persona Encode
    (DINOv2-g + decoder); the memory of the encoders kept loaded vs offloaded after encoding (cuda only)."""
    (parser,) = harness.run_node(nodes, "PartIDBodyParserLoader", parser="segformer_b2_clothes")
    masks, bp, _ = harness.timed(device, lambda: harness.run_node(nodes, "PartIDBodyParts", parser=parser, image=photo),
                                 repeats)
    masks = dict(zip(("full_body", "face", "upper", "lower", "shoes"), masks[:5]))
    for part in VP_PARTS:          # random parsers label little: make sure every part is encoded (the real cost)
        if float(masks[part].sum()) == 0:
            masks[part] = masks[part].clone()
            masks[part][..., : photo.shape[1] // 4, :] = 1.0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        baseline = torch.cuda.memory_allocated()
    (identity,), enc, _ = harness.timed(device, lambda: harness.run_node(
        nodes, "PartIDVisualPersonaEncode", dinov2=dinov2, adapter=adapter, image=photo, **masks), repeats)
    encode_module = pack(".nodes.visual_persona_encode")
    memory = {}
    if device == "cuda":    # issue 5: GPU memory DINOv2 + decoder keep after encoding, and after offloading them
        memory["VP encode peak (GPU MiB above what was loaded before)"] = (torch.cuda.max_memory_allocated()
                                                                          - baseline) / 2 ** 20
        memory["kept loaded after VP encode (GPU MiB)"] = (torch.cuda.memory_allocated() - baseline) / 2 ** 20
    encode_module.release(dinov2, adapter)   # the offload_dinov2 option; also: they are not the UNet's cost
    if device == "cuda":
        memory["kept after VP encode with offload_dinov2 (GPU MiB)"] = (torch.cuda.memory_allocated()
                                                                       - baseline) / 2 ** 20
    return identity, {"body parts (SegFormer-B2)": bp * 1000, "Visual Persona encode (DINOv2-g + decoder)": enc * 1000}, memory


# -- configurations ----------------------------------------------------------------------------------

@dataclass
class Config:
    name: str
    base: str
    tokens: str                        # identity tokens per cross-attention, as a reader sees them
    build: Callable[[], object] | None  # -> patched ModelPatcher; None: plain
    preprocess: str | None = None      # key into the preprocessing results


def ip_adapter_style(base: Base, pack, n_tokens: int = IP_ADAPTER_TOKENS, weight: float = 1.0, mask=None):
    """`n_tokens` random tokens through PartID's decoupled attention with random to_k_ip/to_v_ip per block:
    what IP-Adapter(-Plus) computes per step (16 tokens), on the same model and machinery."""
    ap = pack(".nodes.attention_patch")
    keys = pack(".models.attention.unet_keys")
    gen = torch.Generator().manual_seed(5 + n_tokens)
    blocks = keys.cross_attention_blocks_of_module(base.model.get_model_object("diffusion_model"))
    weights = {b.key: (torch.randn(b.inner_dim, base.context_dim, generator=gen) / base.context_dim ** 0.5,
                       torch.randn(b.inner_dim, base.context_dim, generator=gen) / base.context_dim ** 0.5)
               for b in blocks}
    tokens = torch.randn(1, n_tokens, base.context_dim, generator=gen)
    patched = base.model.clone()
    source = ap.IdentitySource({0: tokens, 1: torch.zeros_like(tokens)}, weights)
    ap.install_identity_group(patched, ap.IdentityGroup(source, weight, mask=mask))
    return patched


def half_masks():
    left = torch.zeros(1, 64, 64)
    left[..., :32] = 1.0
    return left, 1.0 - left


def configurations(base: Base, inputs: dict, pack) -> list[Config]:
    """The rows of one base: plain, the IP-Adapter-style baseline, and PartID's configurations.

    inputs: "cid" -> (adapter, embeds, states); "vp" -> (adapter, identity) (SDXL only).
    """
    cid_apply = pack(".nodes.consistentid_apply").apply_consistentid
    vp_apply = pack(".nodes.visual_persona_apply").apply_visual_persona
    lay = base.layout
    rows = [Config("plain", base.name, "0", None),
            Config(f"IP-Adapter-style baseline ({IP_ADAPTER_TOKENS} tokens)", base.name, str(IP_ADAPTER_TOKENS),
                   lambda: ip_adapter_style(base, pack))]
    adapter, embeds, states = inputs["cid"]
    label = "ConsistentID SD1.5" if base.name == "sd15" else "ConsistentID SDXL"
    rows.append(Config(label, base.name, "4 (+LoRA)", lambda: cid_apply(base.model, adapter, embeds, states, layout=lay),
                       "cid"))
    if base.name != "sdxl":
        return rows
    vp_adapter, identity = inputs["vp"]
    n_vp = identity.n_tokens
    body = identity.with_weights({"face": 0.0})
    n_body = body.for_attention()[0].shape[1]
    left, right = half_masks()

    def both():
        face = cid_apply(base.model, adapter, embeds, states, layout=lay)
        return vp_apply(face, vp_adapter, body, layout=lay)

    def two_identities():
        first = vp_apply(base.model, vp_adapter, identity, mask=left, layout=lay)
        return vp_apply(first, vp_adapter, identity, mask=right, layout=lay)

    rows += [Config("Visual Persona", "sdxl", str(n_vp), lambda: vp_apply(base.model, vp_adapter, identity, layout=lay),
                    "vp"),
             Config("both (ConsistentID face + Visual Persona body)", "sdxl", f"4 + {n_body} (+LoRA)", both, "both"),
             Config("two identities with masks (Visual Persona x2)", "sdxl", f"2 x {n_vp}, masked", two_identities,
                    "two")]
    return rows
