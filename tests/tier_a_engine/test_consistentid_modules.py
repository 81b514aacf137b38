"""ConsistentID ProjPlus / FacialEncoder: strict loads of the official layouts and measured parity.

How tests/fixtures/consistentid_modules_reference.pt was produced (once, by hand, in a scratch
folder outside the repo; the official code is not part of PartID and is not imported here):

1. Snapshot of github.com/JackAILab/ConsistentID at commit e234008 (HEAD, Dec 2025). `functions.py`
   (ProjPlusModel, FacePerceiverResampler, PerceiverAttention, AttentionMLP, FeedForward) and
   `attention.py` (FacialEncoder, FuseModule, MLP) copied unchanged into the scratch folder, with
   a stub `diffusers` package providing only the two names attention.py imports at module level
   (LoRALinearLayer, is_xformers_available -> False). torch 2.14 CPU, fp32, no grad.
2. Weights: the random official-layout files of fixtures_builders.adapters.consistentid_bin('sd15')
   and ('sdxl') (fp16), every tensor cast to fp32, loaded with strict=True into
   ProjPlusModel(cross_attention_dim=768|2048, id_embeddings_dim=512, clip_embeddings_dim=1280,
   num_tokens=4) and FacialEncoder() (SD1.5) / FacialEncoder(embedding_dim=1280, output_dim=2048,
   embed_dim=2048) (SDXL), as the official pipelines construct them. `weights_fingerprint` stores
   (sum, sum of abs) of each group in float64, so a change of the builders is detected here.
3. Inputs from torch.Generator().manual_seed(20251201), drawn in this order:
   arcface = randn(2, 512), row 0 L2-normalised (as insightface's normed_embedding), row 1 zeroed
   (the official unconditional ArcFace); region_states_q = int8(clamp(round(16 * randn(2, 3, 257,
   1280)), -127, 127)); prompt_q for sd15 = same recipe on (2, 77, 768), then sdxl on (2, 77, 2048).
   Real values are q / 16 (exact in fp32; int8 keeps the fixture under 3 MB). The whole-image CLIP
   states fed to ProjPlus are region_states[:, 0] (reused to save space: any [B, 257, 1280] does).
4. ProjPlus outputs: `proj_tokens` = model(arcface, clip, shortcut=False, scale=1.0) (the official
   SD1.5 call) and `proj_tokens_shortcut` = shortcut=True, scale=1.0 (the official SDXL call).
5. FacialEncoder: markers at positions [[5, 9, 14], [7, 20]] -> class_tokens_mask [2, 77] True
   there, valid_id_mask [2, 3] = [[T, T, T], [T, T, F]] (row 1 leaves region slot 2 unused, as
   padding slots are in the official 5-slot layout). `region_tokens` = visual_projection on the
   6 regions viewed as [6, 257, 1280]; `fused_rows` = output[class_tokens_mask] of
   FacialEncoder(prompt.clone(), region_states, mask, valid_id_mask) (row-major: row 0's three
   positions, then row 1's two). It was checked there that every other row equals the input and
   that the official call mutates the tensor it is given.

Relative difference = max |ours - reference| / max |reference|. Target 1e-4 in fp32.
"""
from __future__ import annotations

import pytest
import torch
from fixtures_builders import adapters
from partid_rig import REPORT, TESTS

from partid.models import model_files
from partid.models.consistentid import FacialEncoder, ProjPlus, pair_indices

REFERENCE = TESTS / "fixtures" / "consistentid_modules_reference.pt"
CROSS_DIM = {"sd15": 768, "sdxl": 2048}
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def reference():
    return torch.load(REFERENCE, weights_only=True)


@pytest.fixture(scope="module", params=["sd15", "sdxl"])
def variant(request):
    return request.param


_weights_cache: dict[str, model_files.AdapterWeights] = {}


def adapter(variant: str) -> model_files.AdapterWeights:
    if variant not in _weights_cache:
        _weights_cache[variant] = model_files.load_adapter(str(adapters.consistentid_bin(variant)), "ConsistentID")
    return _weights_cache[variant]


def inputs(ref):
    scale = ref["q_scale"]
    regions = ref["region_states_q"].float() / scale
    positions = [ref["positions_row0"].tolist(), ref["positions_row1"].tolist()]
    return ref["arcface"], regions, positions


def fingerprint(group) -> torch.Tensor:
    keys = sorted(group)
    return torch.tensor([sum(group[k].double().sum().item() for k in keys),
                         sum(group[k].double().abs().sum().item() for k in keys)], dtype=torch.float64)


def check_same_weights(ref, variant):
    groups = adapter(variant).groups
    ours = torch.stack([fingerprint(groups["image_proj"]), fingerprint(groups["FacialEncoder"])])
    assert torch.allclose(ours, ref[f"{variant}.weights_fingerprint"], rtol=1e-9), (
        "the random ConsistentID fixture weights changed since the reference was made; "
        "regenerate tests/fixtures/consistentid_modules_reference.pt as this file's docstring says")


def compare(label: str, ours: torch.Tensor, expected: torch.Tensor) -> float:
    assert ours.shape == expected.shape, label
    max_abs = (ours.double() - expected.double()).abs().max().item()
    max_rel = max_abs / expected.double().abs().max().item()
    line = f"ConsistentID parity {label}: max abs {max_abs:.3e}, max rel {max_rel:.3e}"
    REPORT.append(line)
    print(line)
    assert max_rel < TOLERANCE, line
    return max_rel


def test_official_keys_load_strictly(variant):
    groups, d = adapter(variant).groups, CROSS_DIM[variant]
    with torch.device("meta"):  # key names and shapes are what is checked; no need for real init
        proj, facial = ProjPlus.from_config(d, shortcut=variant == "sdxl"), FacialEncoder(d)
    # strict=True raises on any missing, unexpected or mis-shaped key.
    proj.load_state_dict(groups["image_proj"], strict=True, assign=True)
    facial.load_state_dict(groups["FacialEncoder"], strict=True, assign=True)
    assert set(proj.state_dict()) == set(groups["image_proj"])
    assert set(facial.state_dict()) == set(groups["FacialEncoder"])


def test_from_adapter_casts_and_follows_the_official_shortcut(variant):
    weights = adapter(variant)
    proj = ProjPlus.from_adapter(weights, dtype=torch.bfloat16)
    facial = FacialEncoder.from_adapter(weights, dtype=torch.bfloat16, device="cpu")
    for module in (proj, facial):
        assert {p.dtype for p in module.parameters()} == {torch.bfloat16}
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    # Official pipelines: SD1.5 calls shortcut=False, SDXL shortcut=True with scale 1.0.
    assert (proj.shortcut, proj.scale) == ((False, 1.0) if variant == "sd15" else (True, 1.0))
    stored = weights.groups["image_proj"]["proj.0.weight"]
    assert torch.equal(proj.proj[0].weight, stored.to(torch.bfloat16))
    assert stored.dtype == torch.float16  # the handle's tensors are not changed by the cast


def test_proj_plus_matches_official(reference, variant):
    check_same_weights(reference, variant)
    arcface, regions, _ = inputs(reference)
    clip_states = regions[:, 0]
    with torch.no_grad():
        plain = ProjPlus.from_adapter(adapter(variant), torch.float32, shortcut=False)
        compare(f"ProjPlus {variant} shortcut=False", plain(arcface, clip_states), reference[f"{variant}.proj_tokens"])
        plain.shortcut = True
        compare(f"ProjPlus {variant} shortcut=True", plain(arcface, clip_states),
                reference[f"{variant}.proj_tokens_shortcut"])


def test_proj_plus_scale_only_acts_with_shortcut(reference):
    arcface, regions, _ = inputs(reference)
    proj = ProjPlus.from_adapter(adapter("sd15"), torch.float32, shortcut=False, scale=0.3)
    with torch.no_grad():
        # The official forward ignores `scale` when shortcut is off.
        assert torch.allclose(proj(arcface, regions[:, 0]), reference["sd15.proj_tokens"], rtol=0, atol=1e-4)


def test_facial_encoder_matches_official(reference, variant):
    check_same_weights(reference, variant)
    _, regions, positions = inputs(reference)
    prompt = reference[f"{variant}.prompt_q"].float() / reference["q_scale"]
    given = prompt.clone()
    facial = FacialEncoder.from_adapter(adapter(variant), torch.float32)
    with torch.no_grad():
        compare(f"FacialEncoder {variant} region tokens", facial.encode_regions(regions),
                reference[f"{variant}.region_tokens"])
        out = facial(given, regions, positions)
    assert torch.equal(given, prompt), "the caller's prompt embeddings must not be mutated"
    marked = torch.zeros(prompt.shape[:2], dtype=torch.bool)
    for b, row in enumerate(positions):
        marked[b, row] = True
    compare(f"FacialEncoder {variant} fused prompt rows", out[marked], reference[f"{variant}.fused_rows"])
    assert torch.equal(out[~marked], prompt[~marked])


def test_fusion_pairs_region_k_with_position_k(reference):
    """positions[b][k] receives region k, whatever order the positions are listed in."""
    fuse = FacialEncoder.from_adapter(adapter("sd15")).fuse_module
    gen = torch.Generator().manual_seed(0)
    prompt, regions = torch.randn(2, 77, 768, generator=gen), torch.randn(2, 5, 768, generator=gen)
    positions = [[30, 12, 40], [3]]
    with torch.no_grad():
        out = fuse(prompt, regions, positions)
        for b, row in enumerate(positions):
            for k, p in enumerate(row):
                assert torch.allclose(out[b, p], fuse.fuse_tokens(prompt[b, p], regions[b, k]), atol=1e-5)
        assert torch.equal(fuse(prompt, regions, [[], []]), prompt)


def test_unused_region_slots_do_not_matter(reference):
    _, regions, positions = inputs(reference)
    facial = FacialEncoder.from_adapter(adapter("sd15"))
    prompt = reference["sd15.prompt_q"].float() / reference["q_scale"]
    changed = regions.clone()
    changed[1, 2] = 0.0  # row 1 has two positions, so its slot 2 is padding
    with torch.no_grad():
        assert torch.allclose(facial(prompt, regions, positions), facial(prompt, changed, positions), atol=1e-6)
        assert torch.equal(facial(prompt, regions, [[], []]), prompt)


@pytest.mark.parametrize("positions, message", [
    ([[1, 2]], "1 rows for a batch of 2"),
    ([[1, 2, 3, 4], []], "only 3 region tokens"),
    ([[4, 4], []], "appears twice"),
    ([[77], []], "outside the 77-token prompt"),
])
def test_bad_positions_are_refused(positions, message):
    with pytest.raises(ValueError, match=message):
        pair_indices(positions, batch=2, seq_len=77, num_regions=3)


def test_slot_fusion_for_training_equals_the_inference_fusion(reference):
    """fuse_slots (per-sample pairing, what the trainer uses) == forward with position lists, on the official
    random weights; a FacialEncoder rebuilt from its group alone (from_state_dict) is the same module."""
    weights = adapter("sd15")
    facial = FacialEncoder.from_adapter(weights)
    rebuilt = FacialEncoder.from_state_dict(weights.groups["FacialEncoder"])
    assert len(rebuilt.visual_projection.layers) == 8 and rebuilt.visual_projection.layers[0][0].heads == 16
    gen = torch.Generator().manual_seed(3)
    prompt, states = torch.randn(2, 77, 768, generator=gen), torch.randn(2, 5, 9, 1280, generator=gen) * 0.1
    slots = torch.tensor([[12, 20, 30, -1, -1], [5, -1, -1, -1, -1]])
    with torch.no_grad():
        expected = facial(prompt, states, [[12, 20, 30], [5]])
        ours = rebuilt.fuse_slots(prompt, states, slots)
        assert torch.equal(rebuilt.fuse_slots(prompt, states, torch.full((2, 5), -1)), prompt)
    diff = float((ours - expected).abs().max())
    assert diff < 1e-5 and torch.equal(ours[0, :12], prompt[0, :12])
    REPORT.append(f"FacialEncoder slot fusion (training) vs position-list fusion (inference): max diff {diff:.1e}")
