"""Training inside the real ComfyUI: patches, checkpointing, the localisation loss, the trainer node.

Tiny runs use the tiny SD1.5-layout UNet (real ComfyUI modules in a real ModelPatcher) with a
ConsistentID adapter sized for it (fixtures_builders/training.py) and synthetic latents (a bright
"face" square and its mask). The node run uses the random full-size SD1.5 checkpoint (UNet, CLIP,
VAE through CheckpointLoaderSimple) and the random official-layout ConsistentID-v1.bin, so the saved
file must reload through the real PartID ConsistentID Loader.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from partid_rig import REPORT

pytestmark = pytest.mark.filterwarnings("ignore")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from fixtures_builders.training import synthetic_folder

    return synthetic_folder(tmp_path_factory.mktemp("train") / "data", n=4, identities=2)


def synthetic_prepare(path, sample):
    """Latent = the image pooled to 8x8 (4 channels), fixed random text, mask from *_mask.png, ID inputs."""
    from partid.models.training.images import load_mask_file as _mask_file, load_rgb

    img = load_rgb(path, 64).permute(0, 3, 1, 2)
    lat = F.avg_pool2d(img, 8)[0]
    lat = torch.cat([lat, lat.mean(0, keepdim=True)]) * 2 - 1
    mask = F.adaptive_avg_pool2d(_mask_file(path, 64)[None], (8, 8))[0, 0]
    from fixtures_builders.training import raw_vae_latent

    return {"latent": raw_vae_latent(lat), "context": rand(77, 768, seed=5), "mask": mask, "arcface": rand(512, seed=6),
            "clip_states": rand(16, 1280, seed=7) * 0.1}


def session(comfy, data, tmp, **options):
    from fixtures_builders.sd_models import tiny_sd15_patcher
    from fixtures_builders.training import TINY_SD15_LAYOUT, tiny_consistentid_groups

    from partid.models.training.dataset import CachedDataset
    from partid.nodes.training_run import IdentitySession, JobOptions

    ds = CachedDataset(str(data), synthetic_prepare, "synthetic", cache_dir=str(tmp / "cache"))
    opts = JobOptions(**{"train": ("id_kv",), "resolution": 64, **options})
    with torch.inference_mode(False):
        s = IdentitySession(tiny_sd15_patcher(), tiny_consistentid_groups(), TINY_SD15_LAYOUT, opts, ds,
                            torch.device("cpu"))
        s.load()
    return s


def test_node_is_registered(comfy):
    assert "PartIDTrainConsistentID" in comfy.added
    node = comfy.nodes.NODE_CLASS_MAPPINGS["PartIDTrainConsistentID"]
    node.VALIDATE_CLASS()
    info = node.GET_NODE_INFO_V1()
    assert {"model", "vae", "clip", "adapter", "folder", "loc_weight", "gradient_checkpointing"} <= \
        set(info["input"]["required"])


def test_recording_patches_leave_the_forward_unchanged(comfy):
    from fixtures_builders.sd_models import tiny_sd15_patcher

    from partid.models.training.attention_hooks import TrainingHooks
    from partid.models.training.attention_maps import AttentionRecorder, TokenGroup
    from partid.nodes import training_patch as tp

    base = tiny_sd15_patcher()

    def foreign(q, k, v, extra_options):          # another pack's attn2 patch: kept and still used
        from comfy.ldm.modules import attention as comfy_attention

        return comfy_attention.optimized_attention(q, k * 1.5, v, extra_options["n_heads"]) * 0.5

    base.set_model_attn2_replace(foreign, "middle", 0, 0)
    blocks = tp.all_blocks(base)
    recorder = AttentionRecorder({b.key for b in blocks}, "cross")
    patched = base.clone()
    tp.install_training_patches(patched, TrainingHooks(recorder), [b.key for b in blocks], [b.key for b in blocks])
    x, sigma, ctx = rand(2, 4, 8, 8, seed=1), torch.tensor([2.0, 0.5]), rand(2, 77, 768, seed=2)
    with torch.inference_mode():
        plain = tp.denoise(base, x, sigma, ctx)
        recorder.groups = [TokenGroup("t", "context", torch.tensor([[3, 4]]), torch.ones(1, 8, 8))]
        recorder.enabled = True
        recorded = tp.denoise(patched, x, sigma, ctx)
        recorder.enabled = False
        off = tp.denoise(patched, x, sigma, ctx)
    assert torch.equal(plain, recorded) and torch.equal(plain, off)
    assert set(recorder.maps) == {b.key for b in blocks}
    for key, maps in recorder.maps.items():
        h, w = recorder.grids[key]
        assert maps["t"].shape == (2, h * w) and torch.allclose(maps["t"].mean(1), torch.ones(2), atol=1e-4)
    REPORT.append("training patches on the tiny SD1.5 UNet (recording on / off, a foreign attn2 patch kept): "
                  "output bit-identical to the unpatched model")


def test_dataset_cache_key_tells_checkpoints_apart(comfy, sd15_clip_vae):
    """The cached latents and text belong to one VAE and CLIP: their fingerprint is the same for the same weights
    loaded again, and differs for another network or a changed weight."""
    import copy

    from partid.nodes.training_run import weights_fingerprint

    clip, vae = sd15_clip_vae
    again = copy.deepcopy(vae)
    assert weights_fingerprint(vae) == weights_fingerprint(again) != weights_fingerprint(clip)
    first = next(iter(again.first_stage_model.state_dict().values()))
    with torch.inference_mode():
        first.add_(1.0)
    assert weights_fingerprint(again) != weights_fingerprint(vae) and weights_fingerprint(None) == "none"


def test_cached_vae_latents_enter_the_unet_scaled_as_ksampler_scales_them(comfy, data, tmp_path, monkeypatch):
    """The dataset caches what VAE.encode returns; the UNet must see it times SD1.5's 0.18215 (KSampler's
    process_latent_in), noised at the sample's sigma."""
    from partid.models.training.objective import sample_noise
    from partid.nodes import training_patch

    s = session(comfy, data, tmp_path)
    seen, real = {}, training_patch.denoise

    def spy(patcher, x_t, sigma, context, y=None):
        seen.update(x_t=x_t.detach().clone(), sigma=sigma.detach().clone())
        return real(patcher, x_t, sigma, context, y)

    monkeypatch.setattr(training_patch, "denoise", spy)
    with torch.no_grad():
        s.batch([0], [21])
    latent = s.dataset.item(0)["latent"][None]
    noise = sample_noise(tuple(latent.shape[1:]), 21)[0][None]
    ms = s.patcher.model.model_sampling
    assert torch.allclose(seen["x_t"], ms.noise_scaling(seen["sigma"], noise, latent * 0.18215), atol=1e-5)
    assert not torch.allclose(seen["x_t"], ms.noise_scaling(seen["sigma"], noise, latent), atol=1e-2)


def test_gradient_checkpointing_matches_and_records_once(comfy, data, tmp_path):
    grads, maps, calls = [], [], []
    for checkpointing in (False, True):
        s = session(comfy, data, tmp_path, loc_weight=1.0, gradient_checkpointing=checkpointing)
        count, cross = [0], s.hooks.cross

        def counting(*args, **kwargs):
            count[0] += 1
            return cross(*args, **kwargs)

        s.hooks.cross = counting
        with torch.inference_mode(False), torch.enable_grad():
            out = s.batch([0, 1], [11, 12])
            out["loss"].backward()
        calls.append(count[0])
        grads.append(torch.cat([p.grad.flatten() for p in s.trainables.trainable_parameters()]))
        maps.append({k: v["id"].detach() for k, v in s.recorder.maps.items()})
    diff = float((grads[0] - grads[1]).abs().max() / grads[0].abs().max())
    assert calls == [7, 14]                       # the recompute ran every block's attention again
    assert diff < 1e-5 and maps[0].keys() == maps[1].keys()
    assert all(torch.allclose(maps[0][k], maps[1][k], atol=1e-6) for k in maps[0])
    REPORT.append(f"training: per-transformer-block gradient checkpointing vs none, relative max grad diff {diff:.2e}")


def test_localisation_loss_raises_attention_mass_inside_masks(comfy, data, tmp_path):
    from partid.models.training.trainer import TrainConfig
    from partid.nodes.training_run import run_session

    rises, lines = {}, []
    for lam in (0.0, 1.0):
        s = session(comfy, data, tmp_path, loc_weight=lam)
        before = s.measure_mass(range(4))
        trainer = run_session(s, TrainConfig(steps=8, batch_size=2, learning_rate=1e-3, seed=0),
                              str(tmp_path / f"out{lam}.safetensors"), None)
        after = s.measure_mass(range(4))
        history = trainer.state.history
        rises[lam] = after - before
        lines.append(f"lambda {lam}: mass {before:.3f} -> {after:.3f}, noise loss {history[0]['noise']:.3f} -> "
                     f"{history[-1]['noise']:.3f}")
        assert (tmp_path / f"out{lam}.safetensors").is_file()
    REPORT.append("training, attention mass of the ID tokens inside the face masks (5 middle blocks, tiny SD1.5, "
                  "8 steps x 2, id_kv): " + "; ".join(lines))
    assert rises[1.0] > rises[0.0] + 0.1


def lat_of(item):
    """The model-space latent of a synthetic SD1.5 item (undoing raw_vae_latent's SD1.5 scale)."""
    import comfy.latent_formats

    return comfy.latent_formats.SD15().process_in(item["latent"])


def vp_prepare(path, sample):
    """Two body parts (face = the bright square, upper = the rest of its column band) on the tiny SDXL."""
    from fixtures_builders.training import raw_vae_latent

    item = synthetic_prepare(path, sample)
    item["latent"] = raw_vae_latent(lat_of(item), "sdxl")          # the same model-space latent on SDXL
    face = item.pop("mask")
    upper = ((face.sum(0, keepdim=True) > 0).float().expand_as(face) - face).clamp(0, 1)
    empty = torch.zeros_like(face)
    item["part_masks"] = torch.stack([face, upper, empty, empty])
    gen = torch.Generator().manual_seed(int(face.sum() * 1000) % 10_000)
    item["part_features"] = torch.randn(4, 16, 64, generator=gen)
    item["context"] = rand(77, 2048, seed=5)
    item["pooled"] = rand(1280, seed=8)
    return item


# (loss, lambda, steps, margin): StoryMaker's MSE of probabilities is ~10x smaller than the balanced L1 and its
# first Adam steps are noisy, so it gets lambda 10 and 8 steps (measured: mass +0.035 vs +0.007 at lambda 0).
VP_LOSSES = [("consistentid", 1.0, 4, 0.05), ("storymaker", 10.0, 8, 0.02)]


@pytest.mark.parametrize("loss, strong, steps, margin", VP_LOSSES)
def test_visual_persona_per_part_localisation_on_sdxl(comfy, data, tmp_path, loss, strong, steps, margin):
    """Each part's tokens against its mask: the balanced L1, and StoryMaker's MSE (each part a "person": the
    attention probability its tokens take at each pixel, summed, against its mask). Measured on 4 fixed samples
    and noises before and after training, with lambda 0 as the control."""
    from fixtures_builders.training import TINY_SDXL_LAYOUT, tiny_sdxl_patcher, tiny_visual_persona_groups

    from partid.models.training.dataset import CachedDataset
    from partid.models.training.trainer import TrainConfig
    from partid.nodes.training_run import IdentitySession, JobOptions, run_session

    def fixed_loc(s):
        with torch.no_grad():
            return float(s.batch([0, 1, 2, 3], [12345 + i for i in range(4)], measure=True)["loc"]), s.last_mass

    lines, rises, falls = [], {}, {}
    for lam in (0.0, strong):
        ds = CachedDataset(str(data), vp_prepare, "vp", cache_dir=str(tmp_path / "vp_cache"))
        opts = JobOptions(train=("decoder", "id_kv"), loc_weight=lam, loc_loss=loss, resolution=64, paired=True)
        with torch.inference_mode(False):
            s = IdentitySession(tiny_sdxl_patcher(), tiny_visual_persona_groups(), TINY_SDXL_LAYOUT, opts, ds,
                                torch.device("cpu"), family="Visual Persona")
        s.load()
        assert s.recorder.normalise == ("keys" if loss == "storymaker" else "pixels")
        loc_before, before = fixed_loc(s)
        run_session(s, TrainConfig(steps=steps, batch_size=2, learning_rate=1e-3, seed=0),
                    str(tmp_path / f"vp{loss}{lam}.safetensors"), None)
        loc_after, after = fixed_loc(s)
        rises[lam], falls[lam] = after - before, loc_before - loc_after
        lines.append(f"lambda {lam}: mass {before:.3f} -> {after:.3f}, loss on fixed samples {loc_before:.4f} -> "
                     f"{loc_after:.4f}")
    saved = load_file_groups(tmp_path / f"vp{loss}{strong}.safetensors")
    assert set(saved) == {"image_proj", "ip_adapter"}
    name = {"consistentid": "balanced L1", "storymaker": "StoryMaker MSE"}[loss]
    REPORT.append(f"training Visual Persona (tiny SDXL, per-part groups face/upper, {name}, paired, "
                  f"{steps} steps x 2, decoder + id_kv): " + "; ".join(lines))
    assert rises[strong] > rises[0.0] + margin and falls[strong] > falls[0.0]


def load_file_groups(path):
    from safetensors.torch import load_file

    groups = {}
    for k, v in load_file(str(path)).items():
        head, _, rest = k.partition(".")
        groups.setdefault(head, {})[rest] = v
    return groups


# --- the node on the full-size random SD1.5 ------------------------------------------------------------------

@pytest.fixture(scope="module")
def clip_vae(sd15_clip_vae):
    return None, *sd15_clip_vae


@pytest.fixture(scope="module")
def sd15(comfy, model_dirs):
    with torch.inference_mode():
        return comfy.nodes.CheckpointLoaderSimple().load_checkpoint("partid_random_sd15.safetensors")[:3]


def run_node(comfy, name, **inputs):
    with torch.inference_mode():
        return comfy.run(comfy.nodes.NODE_CLASS_MAPPINGS[name], **inputs)[0]


def tiny_train(comfy, sd15, data, name, steps, resume, lr=1e-3):
    from fixtures_builders.sd_models import tiny_sd15_patcher
    from fixtures_builders.training import TINY_SD15_LAYOUT, tiny_consistentid_groups
    from types import SimpleNamespace

    from partid.models import formats
    from partid.models.training.trainer import TrainConfig
    from partid.nodes.training import run_training
    from partid.nodes.training_run import JobOptions

    _, clip, vae = sd15
    adapter = SimpleNamespace(family="ConsistentID", format=formats.ADAPTER_FORMATS[0],
                              groups=tiny_consistentid_groups())
    with torch.inference_mode():   # as ComfyUI runs the node
        return run_training(tiny_sd15_patcher(), vae, clip, adapter, str(data), name,
                     JobOptions(train=("id_kv", "lora"), loc_weight=0.1, resolution=64),
                     TrainConfig(steps=steps, batch_size=2, learning_rate=lr, save_every=2, seed=1), resume,
                     layout=TINY_SD15_LAYOUT)


def test_training_loss_falls_and_a_cancelled_run_resumes(comfy, clip_vae, data):
    """A cancel raised by ComfyUI's progress hook during a save step keeps that step's save; resuming from it
    gives bit-identical weights to an uninterrupted run."""
    from comfy import model_management, utils as comfy_utils
    from safetensors.torch import load_file

    history, straight = tiny_train(comfy, clip_vae, data, "straight", 6, resume=False, lr=3e-3)
    noise = [h["noise"] for h in history]
    assert sum(noise[-3:]) / 3 < sum(noise[:3]) / 3
    REPORT.append(f"training node path (tiny UNet, real VAE/CLIP): noise loss first 3 steps {sum(noise[:3]) / 3:.4f} "
                  f"-> last 3 {sum(noise[-3:]) / 3:.4f}")
    reference = load_file(straight)

    def cancel_during_step_four(value, total, preview, node_id=None):
        # As ComfyUI's server hook (main.py hijack_progress) does on every update: raise once interrupted.
        if value == 4:
            model_management.interrupt_current_processing(True)
        model_management.throw_exception_if_processing_interrupted()

    comfy_utils.set_progress_bar_global_hook(cancel_during_step_four)
    try:
        with pytest.raises(model_management.InterruptProcessingException):
            tiny_train(comfy, clip_vae, data, "cancelled", 6, resume=False, lr=3e-3)
    finally:
        comfy_utils.set_progress_bar_global_hook(None)
        model_management.interrupt_current_processing(False)
    from partid.nodes.training import output_paths

    # Step 4 (a save step, save_every 2) finished before the cancel reached the progress bar: it is saved.
    assert torch.load(output_paths("cancelled")[1] + ".pt", weights_only=True)["step"] == 4
    history, path = tiny_train(comfy, clip_vae, data, "cancelled", 6, resume=True, lr=3e-3)
    assert [h["step"] for h in history] == list(range(1, 7))
    resumed = load_file(path)
    assert resumed.keys() == reference.keys()
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)


def test_node_saves_an_adapter_the_loader_reads_and_it_changes_generation(comfy, model_dirs, sd15, data):
    from types import SimpleNamespace

    model, clip, vae = sd15
    (adapter,) = run_node(comfy, "PartIDConsistentIDLoader", adapter="consistentid_sd15", model=model)
    trained, curve, path = run_node(comfy, "PartIDTrainConsistentID", model=model, vae=vae, clip=clip, adapter=adapter,
                                    folder=str(data), output_name="partid_test_trained", train="id_kv", steps=2,
                                    batch_size=1, learning_rate=5e-3, precision="fp32", loc_weight=0.01,
                                    resolution=64, save_every=0, resume=False)
    assert Path(path).is_file() and curve.shape[0] == 1 and curve.shape[-1] == 3
    (reloaded,) = run_node(comfy, "PartIDConsistentIDLoader", adapter=Path(path).name, model=model)
    for group in ("image_proj", "FacialEncoder"):
        assert all(torch.equal(reloaded.groups[group][k], adapter.groups[group][k]) for k in adapter.groups[group])
    mods, orig = reloaded.groups["adapter_modules"], adapter.groups["adapter_modules"]
    change = max(float((mods[k].float() - orig[k].float()).abs().max()) for k in orig if "_ip." in k)
    assert change > 1e-3
    assert all(torch.equal(mods[k], orig[k]) for k in orig if "_lora." in k)

    states = SimpleNamespace(states=rand(1, 257, 1280, seed=3) * 0.1, uncond_states=torch.zeros(257, 1280))
    embeds = F.normalize(rand(1, 512, seed=4), dim=-1)
    pos = [[rand(1, 77, 768, seed=1), {}]]
    neg = [[torch.zeros(1, 77, 768), {}]]

    def generate(a):
        from comfy import sample as comfy_sample

        (patched,) = run_node(comfy, "PartIDConsistentIDApply", model=model, adapter=a, embeddings=embeds,
                           image_states=states)
        with torch.inference_mode():
            return comfy_sample.sample(patched, rand(1, 4, 8, 8, seed=2), 2, 5.0, "euler", "normal", pos, neg,
                                       torch.zeros(1, 4, 8, 8), seed=0)

    before, after = generate(adapter), generate(reloaded)
    diff = float((before - after).abs().max())
    assert diff > 1e-3
    REPORT.append(f"training node on random full-size SD1.5 (2 steps, id_kv): saved file reloads through the "
                  f"ConsistentID Loader; to_k_ip/to_v_ip max change {change:.4f}; generation max diff {diff:.4f}")
