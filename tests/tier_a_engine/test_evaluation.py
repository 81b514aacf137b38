"""Evaluation metrics (models/evaluation) on real photos with random-weight models, against independent code.

Random weights make the values meaningless, so only what holds for any weights is asserted: self-similarity
is exactly the maximum, the image-image metrics are symmetric, FaceSim is 0 when the generation has no face,
every value is in range; and each metric's math is recomputed by other code on the same weights:
transformers' CLIPModel.forward (logits / logit scale = cosine) and CLIPVisionModelWithProjection for
CLIP-I/CLIP-T, transformers' ViTModel with torchvision's DINO evaluation transforms for DINO, PIL's
ImageOps.pad for the region crops, the detector's own boxes for FaceSim's largest face.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from fixtures_builders import photos
from fixtures_builders.evaluation import clip_folder, dino_vits16_pth, link_evaluation_models
from fixtures_builders.layout import populate_models_dir
from partid.models.evaluation import metrics, regions, setup
from partid.models.evaluation.dino_score import IMAGENET_MEAN, IMAGENET_STD
from partid.models.visual_persona.part_images import CLIP_MEAN, CLIP_STD
from partid_rig import REPORT

DET_THRESH = 0.2        # random packs score low; 0.2 finds the astronaut's face with both packs
SYMMETRIC = ("face_sim", "clip_i", "dino", "fgis", "part_sim") + metrics.REGION_COLUMNS + metrics.PART_COLUMNS


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = populate_models_dir(tmp_path_factory.mktemp("models"), with_checkpoint=False, with_sdxl=False)
    link_evaluation_models(root)
    return root


@pytest.fixture(scope="module")
def models(models_dir):
    return setup.open_models(str(models_dir), det_thresh=DET_THRESH)


@pytest.fixture(scope="module")
def images():
    astro = photos.astronaut()
    return {"astronaut": astro, "group": photos.group_photo(), "mirrored": np.ascontiguousarray(astro[:, ::-1]),
            "black": np.zeros((256, 192, 3), np.uint8)}


@pytest.fixture(scope="module")
def feats(models, images):
    return {k: metrics.features(models, v) for k, v in images.items()}


def _same(a, b, tol):
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= tol


def test_models_named_and_conditioning_pack_avoided(models):
    used = models.models_used()
    assert set(used) == set(metrics.METRICS)
    assert "antelopev2" in used["face_sim"] and "glintr100" in used["face_sim"]
    assert "clip_vit_large_patch14" in used["clip_i"] and used["clip_i"] == used["clip_t"]
    assert "DINO ViT-S/16" in used["dino"] and "face_parsing.pth" in used["fgis"] and "parsing_atr" in used["part_sim"]
    assert models.notes == []


def test_self_similarity_is_the_maximum(feats, models):
    text = metrics.prompt_embedding(models, "a photo of an astronaut")
    row = metrics.compare(feats["astronaut"], feats["astronaut"], text)
    assert row["face_in_reference"] == row["face_in_generation"] == 1
    assert row["face_sim"] == pytest.approx(1.0, abs=1e-6)
    assert row["clip_i"] == pytest.approx(100.0, abs=1e-4)
    assert row["dino"] == pytest.approx(1.0, abs=1e-6)
    present = [c for c in metrics.REGION_COLUMNS + metrics.PART_COLUMNS if not math.isnan(row[c])]
    assert present, "the random parsers found no region or part at all"
    for column in present + ["fgis", "part_sim"]:
        assert row[column] == pytest.approx(1.0, abs=1e-6), column
    assert -100.0 <= row["clip_t"] <= 100.0


def test_image_metrics_are_symmetric_and_in_range(feats):
    for a, b in (("astronaut", "group"), ("astronaut", "mirrored"), ("group", "black")):
        ab, ba = metrics.compare(feats[a], feats[b]), metrics.compare(feats[b], feats[a])
        for column in ("clip_i", "dino", "fgis", "part_sim") + metrics.REGION_COLUMNS + metrics.PART_COLUMNS:
            assert _same(ab[column], ba[column], 1e-9), (a, b, column)
            value = ab[column]
            limit = 100.0 if column == "clip_i" else 1.0
            assert math.isnan(value) or -limit - 1e-9 <= value <= limit + 1e-9
        assert math.isnan(ab["clip_t"])          # no prompt given


def test_face_sim_is_zero_without_a_face_and_undefined_without_a_reference_face(feats):
    assert feats["astronaut"].face is not None and feats["black"].face is None
    row = metrics.compare(feats["astronaut"], feats["black"])
    assert row["face_sim"] == 0.0 and (row["face_in_reference"], row["face_in_generation"]) == (1, 0)
    assert math.isnan(metrics.compare(feats["black"], feats["astronaut"])["face_sim"])
    mirrored = metrics.compare(feats["astronaut"], feats["mirrored"])
    assert _same(mirrored["face_sim"], metrics.compare(feats["mirrored"], feats["astronaut"])["face_sim"], 1e-12)
    assert -1.0 <= mirrored["face_sim"] <= 1.0


def test_face_sim_is_the_cosine_of_the_largest_faces(models, images, feats):
    from partid.models.face_analysis import analyze

    embeddings = []
    for key in ("astronaut", "mirrored"):
        result = analyze(models.face, [images[key]], det_thresh=DET_THRESH, face_select="index", face_index=0)
        faces = result.faces[0]
        areas = [(f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1]) for f in faces]
        embeddings.append(faces[int(np.argmax(areas))].embedding.astype(np.float64))
    a, b = embeddings
    want = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    got = metrics.compare(feats["astronaut"], feats["mirrored"])["face_sim"]
    REPORT.append(f"evaluation FaceSim vs cosine of raw largest-face embeddings: |diff| {abs(got - want):.1e}")
    assert got == pytest.approx(want, abs=1e-6)


def test_face_sim_between_the_people_of_the_group_photo(models, images):
    """t1.jpg's faces against each other: each face with itself is 1, with another person less, symmetric."""
    from partid.models.face_analysis import analyze

    faces = analyze(models.face, [images["group"]], det_thresh=0.17, face_select="index").faces[0]
    assert len(faces) >= 2, "the random antelopev2 found fewer than two faces in t1.jpg"
    sims = np.array([[metrics.face_sim(a.normed_embedding, b.normed_embedding) for b in faces] for a in faces])
    assert np.allclose(np.diag(sims), 1.0, atol=1e-6) and np.allclose(sims, sims.T, atol=1e-12)
    off = sims[~np.eye(len(faces), dtype=bool)]
    assert (off < 1.0 - 1e-6).all() and (off >= -1.0).all()
    REPORT.append(f"evaluation FaceSim between the {len(faces)} t1.jpg faces (random antelopev2): "
                  f"{off.min():.3f}..{off.max():.3f}, self 1")


def _pil_clip_pixels(rgb: np.ndarray, size: int = 224) -> torch.Tensor:
    """CLIPImageProcessor's documented steps with PIL: shortest side to 224 bicubic, centre crop 224, CLIP mean/std."""
    img = Image.fromarray(rgb)
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    long = int(size * long / short)           # torchvision Resize(int): the long side truncated
    img = img.resize((size, long) if w <= h else (long, size), Image.Resampling.BICUBIC)
    w, h = img.size
    # transformers' centre crop floors the offset; openai clip.py's torchvision CenterCrop rounds half to even
    # (one pixel further on odd margins, e.g. t1.jpg's 99): the documented HF behaviour is what we check.
    left, top = (w - size) // 2, (h - size) // 2
    x = np.asarray(img.crop((left, top, left + size, top + size)), np.float32) / 255
    x = (x - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD, np.float32)
    return torch.from_numpy(x).permute(2, 0, 1)


def test_clip_i_and_clip_t_match_clipmodel_forward(models, images, feats):
    from transformers import CLIPModel, CLIPVisionModelWithProjection

    prompt = "a photo of an astronaut"
    pixels = models.clip.pixel_values([images["astronaut"], images["group"]])
    independent = torch.stack([_pil_clip_pixels(images[k]) for k in ("astronaut", "group")])
    pixel_diff = (pixels - independent).abs().max().item()
    REPORT.append(f"evaluation CLIP preprocessing vs PIL resize/crop: max |diff| {pixel_diff:.3f}")
    assert pixel_diff < 0.1          # the same resize up to rounding of the bicubic taps

    folder = str(clip_folder())
    clip = CLIPModel.from_pretrained(folder, local_files_only=True).eval()
    ids = models.clip.token_ids([prompt])
    with torch.no_grad():
        out = clip(pixel_values=pixels, **ids)
        scale = clip.logit_scale.exp()
        vision = CLIPVisionModelWithProjection.from_pretrained(folder, local_files_only=True).eval()
        tower = torch.nn.functional.normalize(vision(pixel_values=pixels).image_embeds, dim=-1)
    cos_text = out.logits_per_image[:, 0] / scale            # CLIP's logits are logit_scale.exp() x cosine
    want_i = 100 * float(out.image_embeds[0] @ out.image_embeds[1])
    want_t = 100 * float(cos_text[1])
    row = metrics.compare(feats["astronaut"], feats["group"], metrics.prompt_embedding(models, prompt))
    diffs = (abs(row["clip_i"] - want_i), abs(row["clip_t"] - want_t),
             (tower - out.image_embeds).abs().max().item())
    REPORT.append(f"evaluation CLIP-I / CLIP-T vs CLIPModel.forward: |diff| {diffs[0]:.1e} / {diffs[1]:.1e}; "
                  f"image tower alone vs full model {diffs[2]:.1e}")
    assert diffs[0] < 1e-3 and diffs[1] < 1e-3 and diffs[2] < 1e-5
    # The prompt is truncated to CLIP's 77 tokens, as CLIP was trained.
    assert models.clip.token_ids(["word " * 200])["input_ids"].shape[-1] == 77


# transformers ViTModel per-layer names: 5.x first, 4.x second (whichever the installed version builds).
_VIT_NAMES = ({"q": "attention.q_proj", "k": "attention.k_proj", "v": "attention.v_proj", "o": "attention.o_proj",
               "fc1": "mlp.fc1", "fc2": "mlp.fc2", "layer": "layers.{i}."},
              {"q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value",
               "o": "attention.output.dense", "fc1": "intermediate.dense", "fc2": "output.dense",
               "layer": "encoder.layer.{i}."})


def _vit_from_hub(path) -> "torch.nn.Module":
    """transformers' ViTModel carrying DINO's hub weights (independent of models/dinov2.py)."""
    from transformers import ViTConfig, ViTModel

    state = torch.load(path, weights_only=True)
    dim = state["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    config = ViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=dim // 64,
                       intermediate_size=4 * dim, patch_size=16, image_size=224, layer_norm_eps=1e-6,
                       qkv_bias=True, hidden_act="gelu")
    vit = ViTModel(config, add_pooling_layer=False)
    names = next(n for n in _VIT_NAMES if n["layer"].format(i=0) + n["q"] + ".weight" in vit.state_dict())
    ours = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
            "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
            "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
            "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    for i in range(depth):
        hub, layer = f"blocks.{i}.", names["layer"].format(i=i)
        for p in ("weight", "bias"):
            for name, part in zip(("q", "k", "v"), state[f"{hub}attn.qkv.{p}"].chunk(3)):
                ours[f"{layer}{names[name]}.{p}"] = part
            ours[f"{layer}{names['o']}.{p}"] = state[f"{hub}attn.proj.{p}"]
            ours[f"{layer}{names['fc1']}.{p}"] = state[f"{hub}mlp.fc1.{p}"]
            ours[f"{layer}{names['fc2']}.{p}"] = state[f"{hub}mlp.fc2.{p}"]
            ours[f"{layer}layernorm_before.{p}"] = state[f"{hub}norm1.{p}"]
            ours[f"{layer}layernorm_after.{p}"] = state[f"{hub}norm2.{p}"]
    vit.load_state_dict(ours, strict=True)
    return vit.eval()


@pytest.fixture(scope="module")
def vit():
    return _vit_from_hub(dino_vits16_pth())


def _vit_cls(vit, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.nn.functional.normalize(vit(pixel_values=pixels).last_hidden_state[:, 0], dim=-1)


def test_dino_matches_vitmodel_with_torchvision_transforms(vit, images, feats):
    from torchvision import transforms as T

    dino_eval = T.Compose([T.Resize(256, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(224), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    keys = ("astronaut", "group")
    cls = _vit_cls(vit, torch.stack([dino_eval(Image.fromarray(images[k])) for k in keys]))
    embed_diff = max((cls[i] - feats[k].dino).abs().max().item() for i, k in enumerate(keys))
    want = float(cls[0] @ cls[1])
    got = metrics.compare(feats["astronaut"], feats["group"])["dino"]
    REPORT.append(f"evaluation DINO vs transformers ViTModel + torchvision transforms: CLS max |diff| "
                  f"{embed_diff:.1e}, cosine |diff| {abs(got - want):.1e}")
    assert embed_diff < 1e-4 and abs(got - want) < 1e-5


def _pil_region_crop(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(mask)
    box = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    crop = Image.fromarray(np.where(mask[..., None], rgb, 0).astype(np.uint8)).crop(box)
    side = max(crop.size)
    return np.asarray(ImageOps.pad(crop, (side, side), color=(0, 0, 0)).resize((224, 224), Image.Resampling.BICUBIC))


def test_region_crops_and_fgis_recomputed_independently(models, images, feats, vit):
    from partid.models.face_regions import face_regions

    crops = {}
    for key in ("astronaut", "mirrored"):
        rgb = images[key]
        label_map = models.face_parser.parse(torch.from_numpy(rgb).float().div(255)[None])
        masks = face_regions(label_map, mode="union").masks
        ours = regions.face_region_crops(models.face_parser, rgb)
        crops[key] = {}
        for region in regions.REGIONS:
            mask = masks[region][0].numpy() >= 0.5
            assert ours.present(region) == bool(mask.any())
            if mask.any():
                independent = _pil_region_crop(rgb, mask)
                assert np.array_equal(ours.images[region], independent), region
                crops[key][region] = independent
    def normalise(a):
        x = torch.from_numpy(np.array(a)).float() / 255
        return ((x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).permute(2, 0, 1)[None]

    def cls(crop):
        return _vit_cls(vit, normalise(crop))[0]

    both = [r for r in regions.REGIONS if r in crops["astronaut"] and r in crops["mirrored"]]
    assert both, "no facial region present in both images"
    cos = [float(cls(crops["astronaut"][r]) @ cls(crops["mirrored"][r])) for r in both]
    row = metrics.compare(feats["astronaut"], feats["mirrored"])
    diff = abs(row["fgis"] - float(np.mean(cos)))
    REPORT.append(f"evaluation FGIS ({len(both)} region(s)) vs independent crops + ViTModel: |diff| {diff:.1e}")
    assert diff < 1e-5
    for region in regions.REGIONS:
        assert math.isnan(row[f"fgis_{region}"]) == (region not in both)


def _imagenet_pixels(crop) -> torch.Tensor:
    x = torch.from_numpy(np.array(crop)).float() / 255
    return ((x - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)).permute(2, 0, 1)[None]


def test_part_sim_recomputed_from_visual_persona_part_images(models, images, feats, vit):
    """Per-part cosines from Visual Persona's own part images through the independent ViTModel."""
    from partid.models.body_parts import body_parts
    from partid.models.visual_persona.part_images import part_images

    cls = {}
    for key in ("astronaut", "group"):
        rgb = images[key]
        label_map = models.body_parser.parse(torch.from_numpy(rgb).float().div(255)[None])
        vp = part_images([rgb], body_parts(label_map).stacked())
        ours = regions.body_part_crops(models.body_parser, rgb)
        cls[key] = {}
        for i, part in enumerate(regions.PARTS):
            assert ours.present(part) == bool(vp.present[0, i])
            if ours.present(part):
                crop = vp.images[0, i].numpy()
                assert np.array_equal(ours.images[part], crop)
                cls[key][part] = _vit_cls(vit, _imagenet_pixels(crop))[0]
    row = metrics.compare(feats["astronaut"], feats["group"])
    both = [p for p in regions.PARTS if p in cls["astronaut"] and p in cls["group"]]
    identity = [p for p in both if p in metrics.IDENTITY_PARTS]
    assert identity, "no Visual Persona identity part present in both photos: the check would be empty"
    diffs = [abs(row[f"part_{p}"] - float(cls["astronaut"][p] @ cls["group"][p])) for p in both]
    want = float(np.mean([float(cls["astronaut"][p] @ cls["group"][p]) for p in identity]))
    REPORT.append(f"evaluation per-part similarity ({', '.join(both)}) vs Visual Persona part images + ViTModel: "
                  f"max |diff| {max(diffs):.1e}, part_sim |diff| {abs(row['part_sim'] - want):.1e}")
    assert max(diffs) < 1e-5 and abs(row["part_sim"] - want) < 1e-5
    for part in regions.PARTS:
        assert math.isnan(row[f"part_{part}"]) == (part not in both)


def test_face_pack_choice_states_a_fallback(tmp_path):
    assert setup.choose_face_pack(["antelopev2", "buffalo_l"]) == ("antelopev2", None)
    pack, note = setup.choose_face_pack(["buffalo_l"])
    assert pack == "buffalo_l" and "conditioned" in note and "antelopev2" in note
    assert setup.choose_face_pack(["buffalo_l", "antelopev2"], conditioned_with="antelopev2") == ("buffalo_l", None)
    assert setup.choose_face_pack([], "auto")[0] is None
    assert setup.choose_face_pack(["antelopev2"], "none") == (None, None)


def test_missing_models_leave_metrics_empty_and_say_why(tmp_path, images):
    models = setup.open_models(str(tmp_path), det_thresh=DET_THRESH)
    assert models.clip is models.dino is models.face is models.face_parser is models.body_parser is None
    assert all(v.startswith("not computed") for v in models.models_used().values())
    assert any("dino_vits16" in n and "dl.fbaipublicfiles.com" in n for n in models.notes)
    row = metrics.evaluate_pair(models, images["black"], images["black"], "a prompt")
    assert all(math.isnan(row[m]) for m in metrics.METRICS)


def test_files_of_the_wrong_kind_are_refused_by_name(models_dir):
    from fixtures_builders.parsers import dinov2_hub_pth, segformer_face_folder
    from partid.models.errors import ModelFileError
    from partid.models.evaluation.clip_score import CLIPScorer
    from partid.models.evaluation.dino_score import dino_vit_from_file

    with pytest.raises(ModelFileError, match="DINOv2 checkpoint"):
        dino_vit_from_file(str(dinov2_hub_pth("vits14")))
    with pytest.raises(ModelFileError, match="not a DINO torch-hub checkpoint"):
        dino_vit_from_file(str(models_dir / "face_parsing" / "face_parsing.pth"))
    with pytest.raises(ModelFileError, match="'segformer' model; CLIP-I and CLIP-T need a full CLIP"):
        CLIPScorer(str(segformer_face_folder()))


def test_a_clip_folder_is_read_from_a_file_picked_inside_it_and_needs_its_weights(tmp_path):
    """A clone of openai/clip-vit-large-patch14 under its own name shows in the loader's combo as
    'clip-vit-large-patch14/model.safetensors': the file's folder is the model (it used to be refused for a
    config.json it has). A copy without the weights file is refused at load, naming the folder."""
    import shutil

    from partid.models.errors import ModelFileError
    from partid.models.evaluation.clip_score import CLIPScorer

    clone = tmp_path / "clip-vit-large-patch14"
    shutil.copytree(clip_folder(), clone)
    scorer = CLIPScorer(str(clone / "model.safetensors"))
    assert scorer.folder == str(clone) and scorer.short_name == "clip-vit-large-patch14"
    (clone / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="has config.json but no weights"):
        CLIPScorer(str(clone))


def test_clip_reads_a_thin_image_as_channels_last():
    """A 4 x 300 red strip: the processor used to guess channels-first for a side of 1, 3 or 4 px."""
    from partid.models.evaluation.clip_score import CLIPScorer

    red = np.zeros((4, 300, 3), np.uint8)
    red[..., 0] = 255
    px = CLIPScorer(str(clip_folder())).pixel_values([red])
    assert px.shape == (1, 3, 224, 224) and bool((px[0, 0] > px[0, 1]).all()) and bool((px[0, 0] > px[0, 2]).all())


def test_the_summary_explains_empty_cells_of_computed_metrics():
    """A reference without a face empties face_sim; a generation that lost its face empties FGIS for that pair
    (while face_sim scores it 0): both are counted in the notes rather than left unexplained."""
    from partid.models.evaluation import report

    nan = math.nan
    rows = [{"face_sim": nan, "fgis": 0.8, "part_sim": nan, "face_in_reference": 0, "face_in_generation": 1},
            {"face_sim": 0.0, "fgis": nan, "part_sim": nan, "face_in_reference": 1, "face_in_generation": 0},
            {"face_sim": 0.6, "fgis": 0.7, "part_sim": nan, "face_in_reference": 1, "face_in_generation": 1}]
    used = {m: "some model" for m in metrics.METRICS}
    used["part_sim"] = "not computed: no DINO and body parser"
    notes = report.summarise(rows, used)["notes"]
    assert notes == ["face_sim is empty for 1 pair(s) whose reference has no detected face.",
                     "fgis is empty for 1 pair(s) with no facial region found in both images: a generation that "
                     "lost them is left out of fgis (face_sim counts a lost face as 0)."]
