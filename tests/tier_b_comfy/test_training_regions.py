"""ConsistentID training with fused region tokens (the paper's localisation loss) in the real ComfyUI.

Tiny runs: the tiny SD1.5-layout UNet in a real ModelPatcher, a one-layer 64-wide FacialEncoder in the
official key layout (fixtures_builders/training.py), synthetic latents of a bright "face" square whose
five regions are fixed parts of it (face: the square; eye: its top half; ear: its left half; nose: its
centre; lip: its bottom half) and random region CLIP states. Each fused token is one group against its
region mask; the cross-attention mode is the paper's, the self-attention mode the released code's.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from partid_rig import REPORT

pytestmark = pytest.mark.filterwarnings("ignore")
SLOTS = torch.tensor([4, 8, 12, 16, 20])          # where each region's token sits in the (random) text


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fixtures_builders.training import synthetic_folder

    return synthetic_folder(tmp_path_factory.mktemp("regions") / "data", n=4, identities=2)


def region_masks(face: torch.Tensor) -> torch.Tensor:
    ys, xs = (face > 0.5).nonzero(as_tuple=True)
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    out = torch.zeros(5, *face.shape)
    out[0, y0:y1, x0:x1] = 1
    out[1, y0:ym, x0:x1] = 1
    out[2, y0:y1, x0:xm] = 1
    out[3, ym - 1:ym + 1, xm - 1:xm + 1] = 1
    out[4, ym:y1, x0:x1] = 1
    return out


def region_prepare(path, sample):
    from partid.models.training.images import load_mask_file as _mask_file, load_rgb

    img = load_rgb(path, 64).permute(0, 3, 1, 2)
    lat = F.avg_pool2d(img, 8)[0]
    lat = torch.cat([lat, lat.mean(0, keepdim=True)]) * 2 - 1
    face = F.adaptive_avg_pool2d(_mask_file(path, 64)[None], (8, 8))[0, 0]
    seed = int(face.sum() * 1000) % 10_000
    from fixtures_builders.training import raw_vae_latent

    return {"latent": raw_vae_latent(lat), "context": rand(77, 768, seed=5), "mask": face, "arcface": rand(512, seed=6),
            "clip_states": rand(16, 1280, seed=7) * 0.1, "region_states": rand(5, 16, 1280, seed=seed) * 0.1,
            "slot_positions": SLOTS.clone(), "region_masks": region_masks(face)}


def session(data, tmp, groups=None, **options):
    from fixtures_builders.sd_models import tiny_sd15_patcher
    from fixtures_builders.training import TINY_SD15_LAYOUT, tiny_consistentid_groups

    from partid.models.training.dataset import CachedDataset
    from partid.nodes.training_run import IdentitySession, JobOptions

    ds = CachedDataset(str(data), region_prepare, "regions", cache_dir=str(tmp / "cache"))
    opts = JobOptions(**{"train": ("facial_encoder",), "resolution": 64, **options})
    with torch.inference_mode(False):
        s = IdentitySession(tiny_sd15_patcher(), groups or tiny_consistentid_groups(facial=True),
                            TINY_SD15_LAYOUT, opts, ds, torch.device("cpu"))
        s.load()
    return s


def train_and_measure(s, tmp, name, steps=8):
    from partid.models.training.trainer import TrainConfig
    from partid.nodes.training_run import run_session

    before = s.measure_mass(range(4))
    trainer = run_session(s, TrainConfig(steps=steps, batch_size=2, learning_rate=1e-3, seed=0),
                          str(tmp / f"{name}.safetensors"), None)
    return before, s.measure_mass(range(4)), trainer.state.history


def test_fused_region_tokens_learn_to_attend_to_their_regions(comfy, data, tmp_path):
    """The paper's loss: each fused region token's cross-attention against its region mask (FacialEncoder trained)."""
    rises, lines = {}, []
    for lam in (0.0, 1.0):
        s = session(data, tmp_path, loc_weight=lam)
        assert s.regions and s.trainables.facial is not None
        before, after, history = train_and_measure(s, tmp_path, f"cross{lam}")
        assert set(s.recorder.maps[next(iter(s.recorder.maps))]) == {"face", "eye", "ear", "nose", "lip"}
        rises[lam] = after - before
        lines.append(f"lambda {lam}: mass {before:.3f} -> {after:.3f}, loc {history[0]['loc']:.4f} -> "
                     f"{history[-1]['loc']:.4f}")
    REPORT.append("training ConsistentID fused region tokens (tiny SD1.5, cross-attention, 5 regions, balanced L1, "
                  "8 steps x 2, facial_encoder): " + "; ".join(lines))
    assert rises[1.0] > rises[0.0] + 0.03          # measured: +0.049 vs -0.005


def test_the_trained_facial_encoder_is_saved_in_the_official_group(comfy, data, tmp_path):
    from safetensors.torch import load_file

    from fixtures_builders.training import tiny_consistentid_groups
    from partid.models.consistentid import FacialEncoder

    start = tiny_consistentid_groups(facial=True)
    s = session(data, tmp_path, loc_weight=0.5, train=("facial_encoder", "lora"))
    train_and_measure(s, tmp_path, "saved", steps=2)
    saved = load_file(str(tmp_path / "saved.safetensors"))
    facial = {k[len("FacialEncoder."):]: v for k, v in saved.items() if k.startswith("FacialEncoder.")}
    assert set(facial) == set(start["FacialEncoder"])
    change = max(float((facial[k].float() - start["FacialEncoder"][k]).abs().max()) for k in facial)
    assert change > 1e-4
    for k, v in start["image_proj"].items():       # not trained: written back as loaded (fp16 file)
        assert torch.equal(saved[f"image_proj.{k}"], v.to(torch.float16))
    reloaded = FacialEncoder.from_state_dict({k: v.float() for k, v in facial.items()})
    item = region_prepare(str(next(data.rglob("img0.png"))), None)
    with torch.no_grad():
        a = FacialEncoder.from_state_dict(start["FacialEncoder"]).fuse_slots(
            item["context"][None], item["region_states"][None], SLOTS[None])
        b = reloaded.fuse_slots(item["context"][None], item["region_states"][None], SLOTS[None])
    diff = float((a - b)[0, SLOTS].abs().max())
    assert diff > 1e-3 and torch.equal(a[0, :4], b[0, :4])
    REPORT.append(f"trained FacialEncoder saved in the official group: max weight change {change:.4f}, fused "
                  f"token change {diff:.4f}, other tokens unchanged")


def test_self_attention_mode_records_attn1_only_and_trains(comfy, data, tmp_path):
    """The released code's variant: attn1 probabilities at the fused tokens' text positions, per-head max-normalised."""
    s = session(data, tmp_path, loc_weight=1.0, attention="self", train=("facial_encoder", "lora"))
    calls = {"cross": 0, "self": 0}
    selfa = s.hooks.self_attention

    def counting_self(*args, **kwargs):
        calls["self"] += 1
        return selfa(*args, **kwargs)

    s.hooks.self_attention = counting_self
    before, after, history = train_and_measure(s, tmp_path, "self", steps=6)
    assert s.recorder.attention == "self" and s.recorder.normalise == "keys_max"
    assert calls["self"] > 0 and set(s.recorder.maps) == set(s.recorded)
    losses = [h["loc"] for h in history]
    assert all(torch.isfinite(torch.tensor(losses)))
    REPORT.append(f"training ConsistentID, self-attention maps (released code's mode; tiny SD1.5, facial_encoder + "
                  f"lora, lambda 1, 6 steps x 2): loc {losses[0]:.4f} -> {losses[-1]:.4f}, mass {before:.3f} -> "
                  f"{after:.3f}")
    assert losses[-1] < losses[0]


# --- the preparation on a real photo, against the inference nodes ------------------------------------------------

def test_prepared_regions_fuse_exactly_as_the_inference_nodes(comfy, model_dirs, sd15_clip_vae, tmp_path):
    """What the trainer caches per image (nodes/training_regions.py) against the inference chain on the same
    real photo and random official-layout files: PartID Face Regions -> ConsistentID Encode -> Text Fusion.
    The plain text encoding, the region CLIP states and the fused text must be the ones inference uses."""
    from pathlib import Path

    from fixtures_builders import adapters
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.photos import astronaut
    from PIL import Image

    from partid.models import model_files
    from partid.models.consistentid import FacialEncoder
    from partid.models.face_parsing import face_parser_from
    from partid.nodes.training_regions import FacialText, facial_items
    from partid.models.training.images import load_rgb

    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    folder = link_clip_vision(Path(model_dirs)).parent
    comfy.folder_paths.add_model_folder_path("clip_vision", str(folder))
    clip = sd15_clip_vae[0]
    text = "a photo of an astronaut"
    with torch.inference_mode():
        (clip_vision,) = comfy.nodes.CLIPVisionLoader().load_clip("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
        adapter = model_files.load_adapter(str(adapters.consistentid_bin("sd15")), "ConsistentID")
        (parser,) = comfy.run(nodes["PartIDFaceParserLoader"], parser="bisenet_face_parsing")[0]
        Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
        image = load_rgb(str(tmp_path / "astronaut.png"), 256)
        item = facial_items(clip, clip_vision, face_parser_from(parser, "cpu"), image, text, FacialText("sd15"),
                            (32, 32))
        masks = comfy.run(nodes["PartIDFaceRegions"], parser=parser, image=image)[0][:5]
        (regions, _), _ = comfy.run(nodes["PartIDConsistentIDEncode"], clip_vision=clip_vision, image=image,
                                    **dict(zip(("face", "eyes", "ears", "nose", "mouth"), masks)))
        positive, _ = comfy.run(nodes["PartIDConsistentIDText"], clip=clip, adapter=adapter, regions=regions,
                                text=text, negative="", merge_at=0.6)[0]
    slots = item["slot_positions"]
    present = regions.present[0]
    assert torch.equal(slots >= 0, present), (slots, present)   # faithful pairing fuses every present region
    assert bool(present.any()), "the random BiSeNet found no facial region on the photo"
    plain, fused = positive[0][0][0], positive[1][0][0]
    states_diff = float((item["region_states"][present] - regions.states[0][present]).abs().max())
    assert torch.equal(item["context"], plain.float())
    with torch.no_grad():
        ours = FacialEncoder.from_state_dict({k: v.float() for k, v in adapter.groups["FacialEncoder"].items()}
                                             ).fuse_slots(item["context"][None], item["region_states"][None], slots[None])
    fused_diff = float((ours[0] - fused.float()).abs().max())
    changed = (fused.float() - plain.float()).abs().amax(-1) > 0
    assert torch.equal(changed.nonzero().flatten().sort().values, slots[slots >= 0].sort().values)
    assert states_diff < 1e-5 and fused_diff < 1e-4
    REPORT.append(f"training preparation vs inference chain (astronaut, random BiSeNet/CLIP-H/SD1.5 CLIP/ConsistentID): "
                  f"{int(present.sum())} regions fused at the Text Fusion node's positions {slots[slots >= 0].tolist()}; "
                  f"plain text identical; region states max diff {states_diff:.1e}; fused text max diff {fused_diff:.1e}")


@pytest.mark.parametrize("inputs, named", [({"train": "facial_encoder + lora"}, "train"),
                                           ({"loc_attention": "self"}, "loc_attention"),
                                           ({"loc_attention": "sideways"}, "loc_attention"),
                                           ({"precision": "fp8"}, "precision"), ({"loc_loss": "l2"}, "loc_loss"),
                                           ({"blocks": "some"}, "blocks")])
def test_the_node_refuses_region_training_without_a_parser_and_names_the_input(comfy, data, inputs, named):
    from types import SimpleNamespace

    from fixtures_builders.training import tiny_consistentid_groups

    adapter = SimpleNamespace(family="ConsistentID", groups=tiny_consistentid_groups(facial=True))
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDTrainConsistentID"]
    info = node.GET_NODE_INFO_V1()["input"]
    assert {"loc_attention", "pairing"} <= set(info["optional"])
    assert "facial_encoder + proj_plus + id_kv + lora" in info["required"]["train"][1]["options"]
    # InputError is a ValueError; ComfyUI loaded the pack under another module name than `partid`.
    with pytest.raises(ValueError) as err, torch.inference_mode():
        node.execute(model=None, vae=None, clip=None, adapter=adapter, folder=str(data), **inputs)
    message = str(err.value)
    assert type(err.value).__name__ == "InputError"
    assert "PartID Train ConsistentID" in message and named in message


def test_the_node_refuses_an_adapter_of_another_base_before_preparing_data(comfy, data, tmp_path):
    """An SD1.5 ConsistentID file on an SDXL model: named at once (was a bare ValueError after the dataset cache)."""
    from fixtures_builders import adapters
    from fixtures_builders.training import tiny_sdxl_patcher

    from partid.models import model_files

    adapter = model_files.load_adapter(str(adapters.consistentid_bin("sd15")), "ConsistentID")
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDTrainConsistentID"]
    with pytest.raises(ValueError) as err, torch.inference_mode():
        node.execute(model=tiny_sdxl_patcher(), vae=None, clip=None, adapter=adapter, folder=str(data),
                     train="id_kv")
    message = str(err.value)
    # vae=None: had the dataset been prepared first, this would be an AttributeError from the VAE encode.
    assert type(err.value).__name__ == "InputError" and "input 'adapter'" in message and "SDXL" in message


def test_a_users_mask_file_is_the_face_mask_with_fused_regions_too(comfy, model_dirs, sd15_clip_vae, tmp_path):
    """README: a *_mask.png is used whenever present. With a face parser and CLIP vision connected (the fused-region
    path) it used to be ignored silently for the parser's face mask."""
    from pathlib import Path

    import numpy as np
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.photos import astronaut
    from PIL import Image

    from partid.models.face_parsing import face_parser_from
    from partid.models.training.dataset import Sample
    from partid.models.training.losses import resize_mask
    from partid.nodes.training_regions import FacialText
    from partid.nodes.training_run import make_prepare

    nodes = comfy.nodes.NODE_CLASS_MAPPINGS
    comfy.folder_paths.add_model_folder_path("clip_vision", str(link_clip_vision(Path(model_dirs)).parent))
    clip, vae = sd15_clip_vae[0], sd15_clip_vae[1]
    Image.fromarray(astronaut()).save(tmp_path / "astronaut.png")
    box = np.zeros((512, 512), np.uint8)
    box[64:320, 128:384] = 255
    with torch.inference_mode():
        (clip_vision,) = comfy.nodes.CLIPVisionLoader().load_clip("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
        (parser,) = comfy.run(nodes["PartIDFaceParserLoader"], parser="bisenet_face_parsing")[0]
    prepare = make_prepare(vae, clip, 128, face_parser=face_parser_from(parser, "cpu"), clip_vision=clip_vision,
                           facial=FacialText("sd15"))
    sample = Sample("astronaut.png", "a photo of a person", "p")
    from_parser = prepare(str(tmp_path / "astronaut.png"), sample)
    Image.fromarray(box).save(tmp_path / "astronaut_mask.png")
    from_file = prepare(str(tmp_path / "astronaut.png"), sample)
    expected = resize_mask(torch.from_numpy(box).float()[None] / 255, (16, 16)).view(16, 16)
    assert "region_masks" in from_file and float((from_file["mask"] - expected).abs().max()) < 0.1  # edge blur of the 128 px resize
    assert float((from_parser["mask"] - expected).abs().max()) > 0.3
    assert torch.equal(from_file["region_masks"], from_parser["region_masks"])     # regions stay the parser's
