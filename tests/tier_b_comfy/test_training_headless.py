"""The headless training entry (partid.cli.train) in the real ComfyUI: Visual Persona runs, config errors, and
the identity-side models it loads from config paths.

Visual Persona trains on the tiny SDXL-layout UNet (real ComfyUI modules, fixtures_builders/training.py) from
a real adapter file the entry loads itself: the reduced Visual Persona adapter sized for that UNet, read
through the pack's real format table extended with its shapes (as test_training_visual_persona does). The
identity models are the random-weight official-format files (BiSeNet face_parsing.pth, an insightface pack,
CLIP-ViT-H/14 safetensors, DINOv2 ViT-S/14 torch-hub .pth, the SegFormer clothes folder) read by the entry's
loaders and run through the trainer nodes' own prepare functions on a real photo. The base model's VAE and
text encoder are stand-ins there (a pooled latent, fixed text states): they are not what is under test, and
the random SD1.5 checkpoint is 2 GB.
"""
from __future__ import annotations

import dataclasses
import math
from argparse import Namespace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from partid_rig import COMFYUI, REPORT

pytestmark = pytest.mark.filterwarnings("ignore")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def vp_prepare(path, sample):
    """Two body parts on the tiny SDXL (face = the bright square, upper = the rest of its column band)."""
    from partid.models.training.images import load_mask_file as _mask_file, load_rgb

    img = load_rgb(path, 64).permute(0, 3, 1, 2)
    lat = F.avg_pool2d(img, 8)[0]
    face = F.adaptive_avg_pool2d(_mask_file(path, 64)[None], (8, 8))[0, 0]
    upper = ((face.sum(0, keepdim=True) > 0).float().expand_as(face) - face).clamp(0, 1)
    empty = torch.zeros_like(face)
    gen = torch.Generator().manual_seed(int(face.sum() * 1000) % 10_000)
    from fixtures_builders.training import raw_vae_latent

    return {"latent": raw_vae_latent(torch.cat([lat, lat.mean(0, keepdim=True)]) * 2 - 1, "sdxl"),
            "context": rand(77, 2048, seed=5),
            "pooled": rand(1280, seed=8), "part_masks": torch.stack([face, upper, empty, empty]),
            "part_features": torch.randn(4, 16, 64, generator=gen)}


class StandInVAE:
    """encode(IMAGE [B,H,W,3]) -> a 4-channel latent at 1/8 size, as a VAE's shape is."""

    def encode(self, image):
        x = F.avg_pool2d(image.permute(0, 3, 1, 2), 8)
        return torch.cat([x, x.mean(1, keepdim=True)], 1) * 2 - 1


class StandInCLIP:
    """SDXL-wide text states (context 2048, pooled 1280), fixed."""

    def tokenize(self, text):
        return text

    def encode_from_tokens(self, tokens, return_pooled=False):
        return rand(1, 77, 2048, seed=5), rand(1, 1280, seed=8)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fixtures_builders.training import synthetic_folder

    return synthetic_folder(tmp_path_factory.mktemp("headless") / "data", n=4, identities=2)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    from fixtures_builders.photos import astronaut
    from PIL import Image

    root = tmp_path_factory.mktemp("headless_photo") / "data"
    (root / "person0").mkdir(parents=True)
    Image.fromarray(astronaut()).save(root / "person0" / "astronaut.png")
    return root


@pytest.fixture(scope="module")
def tiny_vp_file(comfy, tmp_path_factory):
    """A reduced Visual Persona adapter file for the tiny SDXL UNet; the `partid` format table and UNet layouts
    extended with its shapes for the module's duration."""
    from fixtures_builders.training import TINY_SDXL_LAYOUT, tiny_visual_persona_groups
    from safetensors.torch import save_file

    from partid.models import formats
    from partid.models.layouts import unet_attention
    from partid.models.layouts import visual_persona as vp_layouts

    groups = tiny_visual_persona_groups(encoder_width=64)
    dec = vp_layouts.DecoderConfig(tokens=16, layers=1, heads=8, width=2048, encoder_width=64, mlp_ratio=0.25)
    tiny_format = dataclasses.replace(
        formats.VISUAL_PERSONA_SDXL, name="Visual Persona SDXL (reduced, test)", base="sdxl_tiny1",
        groups={"image_proj": (("image_proj",), vp_layouts.decoder_layout(dec), True),
                "ip_adapter": (("ip_adapter",), vp_layouts.ip_adapter_layout(TINY_SDXL_LAYOUT, 2048), True)})
    assert not tiny_format.mismatches(groups)
    saved = formats.ADAPTER_FORMATS
    formats.ADAPTER_FORMATS = (*saved, tiny_format)
    unet_attention.UNETS["sdxl_tiny1"] = TINY_SDXL_LAYOUT
    path = tmp_path_factory.mktemp("headless_adapter") / "tiny_vp.safetensors"
    save_file({f"{g}.{k}": v.contiguous() for g, vals in groups.items() for k, v in vals.items()}, str(path))
    yield path
    formats.ADAPTER_FORMATS = saved
    del unet_attention.UNETS["sdxl_tiny1"]


def vp_config(tmp_path, data, adapter, **extra):
    return {"family": "Visual Persona", "adapter": str(adapter), "folder": str(data),
            "output": str(tmp_path / "out" / "vp.safetensors"), "cache_dir": str(tmp_path / "cache"), "cpu": True,
            "steps": 2, "batch_size": 2, "learning_rate": 1e-2, "precision": "fp32", "loc_weight": 1.0,
            "resolution": 64, "save_every": 0, "resume": False, "seed": 0, **extra}


def test_visual_persona_trains_from_config_and_the_file_reloads(comfy, data, tiny_vp_file, tmp_path):
    from fixtures_builders.training import tiny_sdxl_patcher

    from partid.cli import train
    from partid.models import model_files

    start = model_files.load_adapter(str(tiny_vp_file), "Visual Persona")
    config = vp_config(tmp_path, data, tiny_vp_file)
    trainer = train.run(config, model=tiny_sdxl_patcher(), prepare=vp_prepare)
    history = trainer.state.history
    # loc is finite and not 0: the part masks reached the loss (it can be negative: balanced per-part terms)
    assert len(history) == 2 and all(math.isfinite(h["loss"]) and math.isfinite(h["loc"]) and h["loc"] != 0
                                     for h in history)
    saved = model_files.load_adapter(config["output"], "Visual Persona")
    assert saved.family == "Visual Persona" and saved.groups.keys() == start.groups.keys()
    change = {g: max(float((saved.groups[g][k].float() - start.groups[g][k].float()).abs().max())
                     for k in start.groups[g]) for g in start.groups}
    assert change["image_proj"] > 1e-3 and change["ip_adapter"] > 1e-3     # the default: decoder + id_kv
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 4
    REPORT.append(f"headless Visual Persona (tiny SDXL, config-loaded reduced adapter, 2 steps x 2): loss "
                  f"{history[0]['loss']:.4f} -> {history[-1]['loss']:.4f}; max change image_proj "
                  f"{change['image_proj']:.4f}, ip_adapter {change['ip_adapter']:.4f}")


def test_cache_key_separates_families_and_models(comfy):
    from partid.cli import train

    base = {"checkpoint": "/m/sdxl.safetensors", "face_parser": "/m/a.pth", "dinov2": "/m/g.pth",
            "body_parser": "/m/b"}
    keys = {train.cache_key(base, "ConsistentID", 512), train.cache_key(base, "Visual Persona", 512),
            train.cache_key({**base, "face_parser": "/m/other.pth"}, "ConsistentID", 512),
            train.cache_key({**base, "dinov2": "/m/s.pth"}, "Visual Persona", 512),
            train.cache_key({**base, "body_parser": "/m/c.onnx"}, "Visual Persona", 512),
            train.cache_key({**base, "clip_vision": "/m/h.safetensors"}, "ConsistentID", 512)}
    assert len(keys) == 6


@pytest.mark.parametrize("change, key", [({"family": "Visual persona"}, "family"), ({"dinov2": None}, "dinov2"),
                                         ({"body_parser": None}, "body_parser"),
                                         ({"dinov2": "/nonexistent/dinov2.pth"}, "dinov2"),
                                         ({"train": ["lora"]}, "train"), ({"checkpoint": None}, "checkpoint"),
                                         ({"blocks": "some"}, "blocks"),
                                         ({"family": "ConsistentID", "analyzer_provider": "gpu"}, "analyzer_provider"),
                                         ({"family": "ConsistentID", "train": ["facial_encoder"]}, "train"),
                                         ({"family": "ConsistentID", "attention": "self"}, "attention"),
                                         ({"attention": "self"}, "attention"),
                                         ({"precision": "fp8"}, "precision"), ({"loc_loss": "l2"}, "loc_loss")])
def test_config_errors_name_the_key(comfy, data, tiny_vp_file, tmp_path, change, key):
    from partid.cli import train
    from partid.models.errors import InputError

    config = vp_config(tmp_path, data, tiny_vp_file, checkpoint=str(tiny_vp_file), dinov2=str(tiny_vp_file),
                       body_parser=str(data))
    config.update(change)
    config = {k: v for k, v in config.items() if v is not None}
    with pytest.raises(InputError) as err:
        train.run(config)
    assert err.value.input_name == key and f"input '{key}'" in str(err.value) and "Fix:" in str(err.value)


def test_the_command_reports_a_missing_key_and_exits_with_usage(comfy, data, tiny_vp_file, tmp_path, caplog):
    import json

    from partid.cli import train
    from partid.cli.client import EXIT_USAGE

    config = vp_config(tmp_path, data, tiny_vp_file, checkpoint=str(tiny_vp_file), comfyui=COMFYUI,
                       body_parser=str(data))
    path = tmp_path / "train.json"
    path.write_text(json.dumps(config))
    with caplog.at_level("ERROR", logger="partid.cli.train"):
        assert train.main(Namespace(config=str(path), sets=[])) == EXIT_USAGE
    assert "input 'dinov2': missing" in caplog.text and '"dinov2"' in caplog.text


def test_visual_persona_refuses_an_sd15_model(comfy, data, tiny_vp_file, tmp_path):
    from fixtures_builders.sd_models import tiny_sd15_patcher

    from partid.cli import train
    from partid.models.errors import InputError

    with pytest.raises(InputError) as err:
        train.run(vp_config(tmp_path, data, tiny_vp_file), model=tiny_sd15_patcher(), prepare=vp_prepare)
    assert err.value.input_name == "checkpoint" and "SDXL" in str(err.value)


def test_consistentid_identity_models_from_paths_feed_the_real_prepare(comfy, photo_folder, tmp_path, caplog):
    from fixtures_builders.cache import cached
    from fixtures_builders.clip_vision import clip_vision_h
    from fixtures_builders.insightface_packs import build_pack
    from fixtures_builders.parsers import bisenet_pth, segformer_clothes_folder

    from partid.cli import train
    from partid.models.errors import InputError
    from partid.models.training.dataset import Sample
    from partid.nodes.folders import search_folders

    pack = cached("insightface/models/buffalo_l", lambda p: build_pack(str(p), "buffalo_l"))
    config = {"face_parser": str(bisenet_pth()), "analyzer": str(pack), "clip_vision": str(clip_vision_h()),
              "cpu": True}
    models = train.load_identity_models(config, "ConsistentID", None)
    # The parser is loaded through ComfyUI's model management on each use (as the trainer node runs it).
    assert type(models["face_parser"]._get()).__name__ == "FaceParser" and models["analyzer"].name == "buffalo_l"
    assert models["analyzer"].providers == ["CPUExecutionProvider"]          # a cpu run keeps onnxruntime there
    comfy.folder_paths.add_model_folder_path("insightface", str(Path(pack).parents[1]))
    by_name = train.load_analyzer("buffalo_l", "cpu")                   # by name, in ComfyUI's folders (another
    roots = [Path(r) for r in search_folders("insightface")]          # test may have registered one first)
    assert by_name.name == "buffalo_l" and any(Path(by_name.folder).is_relative_to(r) for r in roots)
    prepare = train.build_prepare("ConsistentID", StandInVAE(), StandInCLIP(), 128, models)
    image = next(photo_folder.rglob("*.png"))
    item = prepare(str(image), Sample(image.name, "a photo of a person", "person0"))
    assert item["clip_states"].shape == (257, 1280) and float(item["clip_states"].abs().mean()) > 0
    assert item["arcface"].shape == (512,) and item["mask"].shape == (16, 16)
    # The mask came from the face parser (no *_mask.png here): not the whole-image fallback.
    assert float(item["mask"].min()) < 1.0
    # An image without a face trains on the zero embedding: said with its name (it used to pass in silence).
    from PIL import Image

    Image.new("RGB", (96, 96), (128, 128, 128)).save(tmp_path / "wall.png")
    with caplog.at_level("WARNING", logger="partid.training"):
        blank = prepare(str(tmp_path / "wall.png"), Sample("wall.png", "a wall", "wall"))
    assert not bool(blank["arcface"].any())
    assert "wall.png: no face found" in caplog.text and "zero identity embedding" in caplog.text
    for key, wrong in (("face_parser", str(segformer_clothes_folder())), ("clip_vision", str(bisenet_pth()))):
        with pytest.raises(InputError) as err:
            train.load_identity_models({key: wrong}, "ConsistentID", None)
        assert err.value.input_name == key
    REPORT.append(f"headless ConsistentID identity models from paths (BiSeNet, buffalo_l, CLIP-H random) on the "
                  f"astronaut: CLIP-H states mean |x| {float(item['clip_states'].abs().mean()):.3f}, face-mask "
                  f"area {float(item['mask'].mean()):.3f}")


def test_visual_persona_identity_models_from_paths_feed_the_real_prepare(comfy, photo_folder, tiny_vp_file):
    from fixtures_builders.parsers import bisenet_pth, dinov2_hub_pth, segformer_clothes_folder

    from partid.cli import train
    from partid.models import model_files
    from partid.models.errors import InputError
    from partid.models.training.dataset import Sample

    config = {"dinov2": str(dinov2_hub_pth("vits14")), "body_parser": str(segformer_clothes_folder())}
    adapter = model_files.load_adapter(str(tiny_vp_file), "Visual Persona")
    with pytest.raises(InputError) as err:              # the reduced adapter takes 64-d tokens, ViT-S gives 384
        train.load_identity_models(config, "Visual Persona", adapter)
    assert err.value.input_name == "dinov2" and "384" in str(err.value)
    models = {"dinov2_weights": train.load_dinov2(config["dinov2"]),
              "body_parser": train.load_body_parser(config["body_parser"])}
    assert models["dinov2_weights"].embed_dim == 384 and models["body_parser"].label_set in ("atr", "lip")
    prepare = train.build_prepare("Visual Persona", StandInVAE(), StandInCLIP(), 128, models)
    image = next(photo_folder.rglob("*.png"))
    item = prepare(str(image), Sample(image.name, "a photo of a person", "person0"))
    assert item["part_features"].shape == (4, 256, 384) and torch.isfinite(item["part_features"]).all()
    assert item["part_masks"].shape == (4, 16, 16) and item["latent"].shape == (4, 16, 16)
    with pytest.raises(InputError) as err:                # a face parser given as the body parser
        train.load_body_parser(str(bisenet_pth()))
    assert err.value.input_name == "body_parser" and "face parser" in str(err.value)
