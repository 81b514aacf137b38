"""PartID ConsistentID Text Fusion in the real ComfyUI.

SD1.5: the random full-size checkpoint's CLIP (real tokenizer, random weights) and the random
official-layout ConsistentID SD1.5 adapter. SDXL: ComfyUI's own SDXLTokenizer (no SDXL weights): its
token streams, parity of its ids with the official pipeline's (tests/fixtures/
consistentid_prompt_reference.json, see tier A), and the node run on a stand-in CLIP whose
"encoder" is a fixed per-token embedding.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from fixtures_builders import adapters
from fixtures_builders.random_weights import random_state
from partid_rig import TESTS

from partid.models import formats, model_files
from partid.models.consistentid import FacialEncoder
from partid.models.consistentid import prompt as cp
from partid.models.consistentid.regions import REGION_ORDER, RegionStates
from partid.models.errors import InputError
from partid.models.layouts.consistentid import facial_encoder_layout

PART_PIECES = ["face</w>", "ears</w>", "eyes</w>", "nose</w>", "mouth</w>"]   # the caption's marker order
LONG_PROMPT = ("a highly detailed portrait photograph of a young woman standing in a sunlit wheat field at golden "
               "hour, wearing a flowing white linen dress and a straw hat, soft backlight, shallow depth of field, "
               "85mm lens, film grain, warm colour grading, gentle breeze moving her hair, distant mountains")


@pytest.fixture(scope="module")
def node(comfy):
    from partid.nodes.consistentid_text import ConsistentIDTextFusion

    return ConsistentIDTextFusion


@pytest.fixture(scope="module")
def clip(comfy, model_dirs):
    _, clip, _ = comfy.nodes.CheckpointLoaderSimple().load_checkpoint("partid_random_sd15.safetensors")
    return clip


@pytest.fixture(scope="module")
def adapter():
    return model_files.load_adapter(str(adapters.consistentid_bin("sd15")), "ConsistentID")


def make_regions(present=(True,) * 5, batch=1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return RegionStates(torch.randn(batch, 5, 257, 1280, generator=gen),
                        torch.tensor([list(present)] * batch, dtype=torch.bool),
                        torch.randn(257, 1280, generator=gen))


def run(comfy, node, clip, adapter, regions, text, **kw):
    (positive, negative), _ = comfy.run(node, clip=clip, adapter=adapter, regions=regions, text=text, **kw)
    return positive, negative


def changed_rows(a, b):
    return (a != b).any(-1).nonzero()[:, -1].tolist()


def pieces(clip, cond_positions, text):
    chunks = clip.tokenize(text)["l"]
    flat = [t for chunk in chunks for t, _ in chunk]
    return [clip.tokenizer.clip_l.inv_vocab[flat[p]] for p in cond_positions]


def reference_fusion(adapter, plain, positions, region_tokens):
    enc = FacialEncoder.from_adapter(adapter, dtype=torch.float32)
    return torch.stack([enc.fuse_module.fuse_tokens(plain[0, p], region_tokens[i]) for i, p in enumerate(positions)])


def test_schema(node):
    node.VALIDATE_CLASS()
    info = node.GET_NODE_INFO_V1()
    assert info["display_name"] == "PartID ConsistentID Text Fusion"
    assert info["output"] == ["CONDITIONING", "CONDITIONING"] and info["output_name"] == ["positive", "negative"]
    required = info["input"]["required"]
    assert required["regions"][0] == "PARTID_CID_REGIONS" and required["adapter"][0] == "PARTID_CONSISTENTID"
    assert required["merge_at"][1]["default"] == 0.6 and required["pairing"][1]["options"] == ["faithful", "corrected"]


def test_fused_positions_change_and_every_other_token_is_the_plain_encoding(comfy, node, clip, adapter):
    regions = make_regions()
    positive, negative = run(comfy, node, clip, adapter, regions, "a photo of a woman in a garden",
                             negative="blurry", merge_at=0.6, pairing="faithful")
    (plain, plain_opts), (fused, fused_opts) = positive
    text = "a photo of a woman in a gardenDetail:" + cp.mark_caption(cp.CAPTIONS["sd15"], REGION_ORDER)
    clean = text.replace(cp.FACIAL_MARKER, "")
    assert torch.equal(plain, clip.encode_from_tokens(clip.tokenize(clean)))
    positions = changed_rows(fused, plain)
    assert plain.shape == fused.shape == (1, 77, 768) and len(positions) == 5
    assert pieces(clip, positions, clean) == PART_PIECES
    # faithful: regions face, eye, ear, nose, lip onto face, ears, eyes, nose, mouth (by order)
    enc = FacialEncoder.from_adapter(adapter, dtype=torch.float32)
    tokens = enc.encode_regions(regions.states)[0]
    torch.testing.assert_close(fused[0, positions], reference_fusion(adapter, plain, positions, tokens),
                               rtol=1e-5, atol=1e-5)
    # timestep ranges as ConditioningSetTimestepRange writes them; pooled outputs kept
    assert (plain_opts["start_percent"], plain_opts["end_percent"]) == (0.0, 0.6)
    assert (fused_opts["start_percent"], fused_opts["end_percent"]) == (0.6, 1.0)
    assert "pooled_output" in plain_opts and "pooled_output" in fused_opts
    # negative: the negative prompt with the unconditional region token at the POSITIVE's positions
    assert len(negative) == 1 and "start_percent" not in negative[0][1] and "pooled_output" in negative[0][1]
    neg_plain = clip.encode_from_tokens(clip.tokenize("blurry"))
    assert changed_rows(negative[0][0], neg_plain) == positions
    uncond = enc.encode_regions(regions.uncond_states[None, None])[0, 0]
    torch.testing.assert_close(negative[0][0][0, positions],
                               reference_fusion(adapter, neg_plain, positions, uncond.expand(5, -1)),
                               rtol=1e-5, atol=1e-5)


def test_corrected_pairing_and_missing_regions(comfy, node, clip, adapter):
    regions = make_regions()
    faithful, _ = run(comfy, node, clip, adapter, regions, "a man", pairing="faithful")
    corrected, _ = run(comfy, node, clip, adapter, regions, "a man", pairing="corrected")
    plain, fa, co = faithful[0][0], faithful[1][0], corrected[1][0]
    positions = changed_rows(fa, plain)
    enc = FacialEncoder.from_adapter(adapter, dtype=torch.float32)
    tokens = enc.encode_regions(regions.states)[0]                     # slots face, eye, ear, nose, lip
    by_meaning = tokens[[0, 2, 1, 3, 4]]                               # face, ears, eyes, nose, mouth
    torch.testing.assert_close(co[0, positions], reference_fusion(adapter, plain, positions, by_meaning),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(fa[0, positions[0]], co[0, positions[0]]) and not torch.equal(fa[0, positions[1]],
                                                                                      co[0, positions[1]])
    # no ears in the reference: their clause and marker are dropped (official), 4 fused tokens
    no_ears, _ = run(comfy, node, clip, adapter, make_regions(present=(True, True, False, True, True)), "a man")
    clean = "a manDetail:" + cp.mark_caption(cp.CAPTIONS["sd15"], ["face", "eye", "nose", "lip"])
    clean = clean.replace(cp.FACIAL_MARKER, "")
    four = changed_rows(no_ears[1][0], no_ears[0][0])
    assert pieces(clip, four, clean) == ["face</w>", "eyes</w>", "nose</w>", "mouth</w>"]


def test_long_prompt_puts_the_caption_first_and_keeps_every_chunk(comfy, node, clip, adapter):
    positive, negative = run(comfy, node, clip, adapter, make_regions(), LONG_PROMPT, negative="")
    (plain, _), (fused, _) = positive
    assert plain.shape == (1, 154, 768)                                # ComfyUI chunks at 75 + 2
    clean = ("Detail:" + cp.mark_caption(cp.CAPTIONS["sd15"], REGION_ORDER) + " Caption:" + LONG_PROMPT)
    clean = clean.replace(cp.FACIAL_MARKER, "")
    assert torch.equal(plain, clip.encode_from_tokens(clip.tokenize(clean)))
    positions = changed_rows(fused, plain)
    assert positions == [7, 10, 13, 16, 20]                             # the official positions (tier A)
    assert pieces(clip, positions, clean) == PART_PIECES


def test_own_markers_beyond_the_first_chunk(comfy, node, clip, adapter):
    text = (LONG_PROMPT + ", award winning photography, sharp focus on the subject, natural skin texture, "
            "cinematic lighting, her calm eyes <|facial|> and a soft smiling mouth <|facial|>")
    positive, negative = run(comfy, node, clip, adapter, make_regions(), text, negative="ugly",
                             pairing="corrected")
    (plain, _), (fused, _) = positive
    clean = text.replace(cp.FACIAL_MARKER, "")
    positions = changed_rows(fused, plain)
    assert all(p > 77 for p in positions) and pieces(clip, positions, clean) == ["eyes</w>", "mouth</w>"]
    # the one-chunk negative has no token there: left as the plain negative
    assert torch.equal(negative[0][0], clip.encode_from_tokens(clip.tokenize("ugly")))


def test_markers_inside_weight_brackets(comfy, node, clip, adapter):
    text = "portrait of (a smiling woman:1.2), (blue eyes <|facial|>:1.3), red lips <|facial|>"
    positive, _ = run(comfy, node, clip, adapter, make_regions(), text, pairing="corrected")
    (plain, _), (fused, _) = positive
    positions = changed_rows(fused, plain)
    assert pieces(clip, positions, text.replace(cp.FACIAL_MARKER, "")) == ["eyes</w>", "lips</w>"]


def test_facial_encoder_built_once_per_adapter(comfy, node, clip, adapter):
    run(comfy, node, clip, adapter, make_regions(), "a man")
    first = adapter._partid_facial_encoder.engine
    run(comfy, node, clip, adapter, make_regions(seed=1), "a woman")
    assert adapter._partid_facial_encoder.engine is first


def test_facial_encoder_is_a_model_comfyui_manages(comfy, node, clip, adapter):
    import comfy.model_management as mm

    from partid.nodes import managed

    first = run(comfy, node, clip, adapter, make_regions(), "a man")
    assert managed.is_loaded(adapter, "_partid_facial_encoder")
    mm.unload_all_models()
    assert not managed.is_loaded(adapter, "_partid_facial_encoder")
    again = run(comfy, node, clip, adapter, make_regions(), "a man")
    assert managed.is_loaded(adapter, "_partid_facial_encoder")
    assert torch.equal(again[0][1][0], first[0][1][0])       # the fused text, before and after the unload


def test_inputs_are_checked(comfy, node, clip, adapter):
    with pytest.raises(InputError, match="pairing"):
        run(comfy, node, clip, adapter, make_regions(), "a man", pairing="by meaning")
    mixed = RegionStates(torch.zeros(2, 5, 257, 1280), torch.tensor([[True] * 5, [True] * 4 + [False]]),
                         torch.zeros(257, 1280))
    with pytest.raises(InputError, match="regions"):
        run(comfy, node, clip, adapter, mixed, "a man")
    with pytest.raises(InputError, match="part word"):
        run(comfy, node, clip, adapter, make_regions(), "a man, happy <|facial|>", pairing="corrected")
    with pytest.raises(InputError, match="follows no word"):
        run(comfy, node, clip, adapter, make_regions(), "<|facial|> a man")


# ---------------------------------------------------------------- SDXL

@pytest.fixture(scope="module")
def sdxl_tokenizer(comfy):
    import comfy.sdxl_clip

    return comfy.sdxl_clip.SDXLTokenizer()


def test_sdxl_streams_place_markers_alike_and_match_the_official_ids(sdxl_tokenizer):
    from partid.nodes.consistentid_text import stream_chunks

    cases = [c for c in json.loads((TESTS / "fixtures" / "consistentid_prompt_reference.json").read_text())["cases"]
             if c["variant"] == "sdxl"]
    assert cases
    for case in cases:
        def tokenize(text, key="l"):
            return [t for _, t in cp.content_positions(stream_chunks(sdxl_tokenizer.tokenize_with_weights(text), key))]

        facial = cp.build_facial_prompt(case["prompt"], "sdxl", case["present"], tokenize)
        assert facial.text == case["prompt_face"]
        tokens = sdxl_tokenizer.tokenize_with_weights(facial.clean_text)
        assert tokens["g"][-1][-1][0] == 0 and tokens["l"][-1][-1][0] == cp.END_ID   # clip_g pads with '!'
        found = {key: cp.locate_markers(stream_chunks(tokens, key),
                                        cp.marker_anchors(facial, lambda s, key=key: tokenize(s, key)))
                 for key in ("l", "g")}
        assert found["l"] == found["g"] == case["facial_positions"]
        n = 77 if len(tokenize(facial.clean_text)) <= 75 else 76
        assert [t for t, _ in tokens["l"][0]][:n] == case["clean_input_ids"][:n]
        # compatibility mode: the official tokenizer_2 sees the literal '<|facial|>' text
        literal = sdxl_tokenizer.tokenize_with_weights(facial.text)["g"]
        n = 77 if len(tokenize(facial.text, "g")) <= 75 else 76
        assert [t for t, _ in literal[0]][:n] == case["clean_input_ids2"][:n]


class StandInSDXLClip:
    """ComfyUI's SDXL tokenizer with a fixed per-token 'encoder' ([l 768 | g 1280], cut to the shorter)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.patcher = SimpleNamespace(load_device=torch.device("cpu"))

    def tokenize(self, text, return_word_ids=False, **kw):
        return self.tokenizer.tokenize_with_weights(text, return_word_ids, **kw)

    @staticmethod
    def embed(chunks, width, salt):
        ids = torch.tensor([t for chunk in chunks for t, *_ in chunk], dtype=torch.float32)
        return torch.sin(ids[:, None] * torch.arange(1, width + 1) * 1e-3 + salt)[None]

    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        l, g = self.embed(tokens["l"], 768, 0.0), self.embed(tokens["g"], 1280, 1.0)
        cut = min(l.shape[1], g.shape[1])
        cond, pooled = torch.cat([l[:, :cut], g[:, :cut]], -1), g[:, 0] + g[:, cut - 1]
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond


@pytest.fixture(scope="module")
def sdxl_adapter():
    fmt = next(f for f in formats.ADAPTER_FORMATS if f.family == "ConsistentID" and f.base == "sdxl")
    return model_files.AdapterWeights(fmt, "random", {"FacialEncoder": random_state(facial_encoder_layout(2048), 3)})


@pytest.mark.parametrize("compat", [False, True])
def test_sdxl_node_plain_prompt_before_merge_fused_after(comfy, node, sdxl_tokenizer, sdxl_adapter, compat):
    clip = StandInSDXLClip(sdxl_tokenizer)
    positive, negative = run(comfy, node, clip, sdxl_adapter, make_regions(), "a man in a forest",
                             negative="blurry", merge_at=0.5, sdxl_tokenizer_compat=compat)
    (plain, plain_opts), (fused, fused_opts) = positive
    # before the merge: the user's prompt alone, as the SDXL pipeline encodes it
    assert torch.equal(plain, clip.encode_from_tokens(clip.tokenize("a man in a forest")))
    text = "a man in a forest; Detail:" + cp.mark_caption(cp.CAPTIONS["sdxl"], REGION_ORDER)
    tokens = clip.tokenize(text.replace(cp.FACIAL_MARKER, ""))
    if compat:
        tokens["g"] = clip.tokenize(text)["g"]
    unfused = clip.encode_from_tokens(tokens)
    assert fused.shape == unfused.shape and fused.shape[-1] == 2048
    positions = changed_rows(fused, unfused)
    clean = text.replace(cp.FACIAL_MARKER, "")
    flat = [t for chunk in clip.tokenize(clean)["l"] for t, _ in chunk]
    assert [sdxl_tokenizer.clip_l.inv_vocab[flat[p]] for p in positions] == \
        ["face</w>", "ears</w>", "eyes</w>", "nose</w>", "mouth</w>"]
    if compat:   # the clip_g half holds other tokens at those positions (the official misalignment)
        assert not torch.equal(unfused[..., 768:], clip.encode_from_tokens(clip.tokenize(clean))[..., 768:])
    assert (plain_opts["end_percent"], fused_opts["start_percent"]) == (0.5, 0.5)
    # negative: plain until the merge, then fused at the positive's positions
    (neg_plain, n0), (neg_fused, n1) = negative
    assert torch.equal(neg_plain, clip.encode_from_tokens(clip.tokenize("blurry")))
    assert changed_rows(neg_fused, neg_plain) == positions
    assert (n0["start_percent"], n0["end_percent"], n1["start_percent"], n1["end_percent"]) == (0.0, 0.5, 0.5, 1.0)


def test_sdxl_adapter_refuses_an_sd15_clip(comfy, node, clip, sdxl_adapter):
    with pytest.raises(InputError, match="clip"):
        run(comfy, node, clip, sdxl_adapter, make_regions(), "a man")
