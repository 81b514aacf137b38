"""Training engine (models/training) with torch only: attention maps, losses, trainer, dataset, export."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fixtures_builders.sd_models import SD15_UNET, TINY_SD15_UNET
from partid.models.attention.unet_keys import cross_attention_blocks
from partid.models.training.attention_maps import (AttentionRecorder, TokenGroup, group_maps, middle_blocks,
                                                   part_groups, slot_groups)
from partid.models.training.dataset import CachedDataset, module_fingerprint, scan_folder
from partid.models.training.losses import (balanced_l1, fastcomposer_l1, localisation_loss, mask_mass,
                                           resize_mask)
from partid.models.training.objective import background_kept, loss_curve_image, noise_batch, noise_loss
from partid.models.training.trainer import Trainer, TrainConfig, TrainingCancelled, batch_plan


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --- attention maps ---------------------------------------------------------------------------------------------

def test_maps_match_explicit_attention_probabilities():
    heads, b, tq, tk, d = 2, 2, 16, 5, 8
    q, k = rand(b, tq, heads * d, seed=1), rand(b, tk, heads * d, seed=2)
    index = torch.tensor([[1, 3], [4, -1]])
    qh, kh = q.view(b, tq, heads, d).transpose(1, 2), k.view(b, tk, heads, d).transpose(1, 2)
    logits = qh @ kh.transpose(-1, -2) / math.sqrt(d)                             # [B, H, Tq, Tk]
    # keys: the model's own probabilities (as SDPA computes them), summed over the group's present tokens
    probs = logits.softmax(-1).mean(1)
    keys = group_maps(q, k, heads, index, "keys")
    assert torch.allclose(keys[0], probs[0][:, [1, 3]].sum(-1), atol=1e-6)
    assert torch.allclose(keys[1], probs[1][:, 4], atol=1e-6)
    # the same probabilities reproduce SDPA's output (so they are the attention the model uses)
    v = rand(b, tk, heads * d, seed=3).view(b, tk, heads, d).transpose(1, 2)
    assert torch.allclose(logits.softmax(-1) @ v, F.scaled_dot_product_attention(qh, kh, v), atol=1e-5)
    # pixels: softmax over pixels, mean of present tokens, scaled so a uniform map is 1
    pix = group_maps(q, k, heads, index, "pixels")
    expected0 = logits[0][..., [1, 3]].softmax(1).mean(0).mean(-1) * tq
    assert torch.allclose(pix[0], expected0, atol=1e-5)
    assert torch.allclose(pix.mean(1), torch.ones(b), atol=1e-5)


def test_recorder_keeps_the_first_record_of_a_step_and_is_off_by_default():
    rec = AttentionRecorder(blocks={("middle", 0, 0)})
    q, k = rand(1, 4, 8), rand(1, 3, 8)
    group = TokenGroup("g", "context", torch.tensor([[0]]), torch.ones(1, 2, 2))
    rec.groups = [group]
    assert not rec.wants(("middle", 0, 0), "cross")          # disabled
    rec.enabled = True
    assert rec.wants(("middle", 0, 0), "cross") and not rec.wants(("input", 1, 0), "cross")
    assert not rec.wants(("middle", 0, 0), "self")
    rec.record(("middle", 0, 0), q, {"context": k}, 2, (2, 2))
    first = rec.maps[("middle", 0, 0)]["g"]
    rec.record(("middle", 0, 0), q * 2, {"context": k}, 2, (2, 2))   # a checkpoint recompute: first kept
    assert rec.maps[("middle", 0, 0)]["g"] is first and first.shape == (1, 4)
    rec.clear()
    assert rec.maps == {} and rec.grids == {}


def test_middle_blocks_are_fastcomposers_five():
    sd15 = middle_blocks(cross_attention_blocks(dict(SD15_UNET, num_heads=8)))
    assert [b.key for b in sd15] == [("input", 4, 0), ("input", 5, 0), ("input", 7, 0), ("input", 8, 0),
                                     ("middle", 0, 0), ("output", 3, 0), ("output", 4, 0), ("output", 5, 0),
                                     ("output", 6, 0), ("output", 7, 0), ("output", 8, 0)]
    tiny = cross_attention_blocks(dict(TINY_SD15_UNET, num_heads=8))
    assert middle_blocks(tiny) == tiny                        # five diffusers blocks: all of them


# --- losses ------------------------------------------------------------------------------------------------------

def test_losses_on_known_maps():
    mask = torch.zeros(1, 4, 4)
    mask[0, :2, :2] = 1                                       # a quarter of the image
    m = mask.flatten(1)
    inside = m * 4.0                                          # all attention inside, mean 1 over pixels
    uniform = torch.ones(1, 16)
    assert torch.allclose(balanced_l1(inside, m), torch.tensor([-4.0]), atol=1e-4)
    assert torch.allclose(balanced_l1(uniform, m), torch.tensor([0.0]), atol=1e-4)
    assert torch.allclose(fastcomposer_l1(inside, m), torch.tensor([-1.0]))
    assert torch.allclose(fastcomposer_l1(uniform, m), torch.tensor([0.75 - 0.25]))
    groups = [TokenGroup("a", "identity", torch.tensor([[0]]), mask)]
    maps, grids = {"b": {"a": inside}}, {"b": (4, 4)}
    assert localisation_loss(maps, grids, groups, "consistentid") < localisation_loss({"b": {"a": uniform}}, grids,
                                                                                      groups, "consistentid")
    assert mask_mass(maps, grids, groups) == pytest.approx(1.0)
    assert mask_mass({"b": {"a": uniform}}, grids, groups) == pytest.approx(0.25)


def test_storymaker_mse_is_zero_for_perfect_partition_and_masks_resize_by_area():
    p0, p1 = torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)
    p0[0, :, :4] = 1
    p1[0, :4, 4:] = 1
    groups = [TokenGroup("p0", "identity", torch.tensor([[0]]), p0, person=0),
              TokenGroup("p1", "identity", torch.tensor([[1]]), p1, person=1),
              TokenGroup("bg", "identity", torch.tensor([[2]]), torch.zeros(1, 8, 8), background=True)]
    grid = (4, 4)
    r0, r1 = resize_mask(p0, grid), resize_mask(p1, grid)
    perfect = {"b": {"p0": r0, "p1": r1, "bg": 1 - torch.maximum(r0, r1)}}
    assert float(localisation_loss(perfect, {"b": grid}, groups, "storymaker")) == pytest.approx(0.0, abs=1e-7)
    swapped = {"b": {"p0": r1, "p1": r0, "bg": torch.maximum(r0, r1)}}
    assert float(localisation_loss(swapped, {"b": grid}, groups, "storymaker")) > 0.3
    half = torch.zeros(1, 8, 8)
    half[0, :, :1] = 1                                        # one column: a quarter of each 2x2 cell column
    assert torch.allclose(resize_mask(half, grid).view(4, 4)[:, 0], torch.full((4,), 0.5))


def test_noise_loss_equals_epsilon_mse_and_background_drop():
    x0, eps, sigma = rand(2, 4, 4, 4, seed=1), rand(2, 4, 4, 4, seed=2), torch.tensor([0.5, 3.0])
    eps_pred = rand(2, 4, 4, 4, seed=3)
    x_t = x0 + eps * sigma.view(-1, 1, 1, 1)
    x0_pred = x_t - eps_pred * sigma.view(-1, 1, 1, 1)        # what an EPS model's denoised output is
    assert torch.allclose(noise_loss(x0_pred, x0, sigma), F.mse_loss(eps_pred, eps), atol=1e-5)
    region = torch.zeros(2, 1, 4, 4)
    region[:, :, :2] = 1
    only_fg = noise_loss(x0_pred, x0, sigma, region, torch.tensor([False, False]))
    assert torch.allclose(only_fg, F.mse_loss(eps_pred[:, :, :2], eps[:, :, :2]), atol=1e-5)


# --- trainer -----------------------------------------------------------------------------------------------------

class Regression(torch.nn.Module):
    """y = W x with a fixed random dataset; trained_state as AdapterTrainables has it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(6, 3, bias=False)
        with torch.no_grad():
            self.w.weight.copy_(rand(3, 6, seed=9) * 0.1)
        self.x, self.target = rand(8, 6, seed=1), rand(8, 6, seed=1) @ rand(6, 3, seed=2)

    def loss(self, indices, seeds):
        noise = torch.stack([rand(3, seed=s) for s in seeds]) * 0.01
        pred = self.w(self.x[indices])
        loss = F.mse_loss(pred, self.target[indices] + noise)
        return {"loss": loss, "noise": loss.detach()}

    def trained_state(self):
        return {k: v.detach() for k, v in self.state_dict().items()}

    def load_trained_state(self, state):
        self.load_state_dict(state)


def make_trainer(model, tmp_path=None, **cfg):
    config = TrainConfig(**{"steps": 30, "batch_size": 2, "learning_rate": 0.05, **cfg})
    state = str(tmp_path / "run.state") if tmp_path else None
    return Trainer(model, model.loss, 8, config, state_path=state)


def test_loss_falls_with_warmup_and_accumulation():
    model = Regression()
    trainer = make_trainer(model, warmup_steps=5, grad_accumulation=2)
    history = trainer.run().history
    assert history[0]["lr"] == pytest.approx(0.05 / 5) and history[5]["lr"] == pytest.approx(0.05)
    first, last = history[0]["loss"], history[-1]["loss"]
    assert last < 0.3 * first


def test_cancel_keeps_the_saved_state_and_resume_matches_an_uninterrupted_run(tmp_path):
    straight = Regression()
    make_trainer(straight, steps=12, save_every=4).run()

    model = Regression()
    calls = {"n": 0}

    def cancel_after_six():
        calls["n"] += 1
        return calls["n"] > 6

    trainer = make_trainer(model, tmp_path, steps=12, save_every=4)
    trainer.should_cancel = cancel_after_six
    with pytest.raises(TrainingCancelled) as info:
        trainer.run()
    assert info.value.step == 6
    resumed_model = Regression()
    resumed = make_trainer(resumed_model, tmp_path, steps=12, save_every=4)
    assert resumed.load_state() and resumed.state.step == 4           # the last save, not step 6
    resumed.run()
    assert torch.equal(resumed_model.w.weight, straight.w.weight)
    assert [h["step"] for h in resumed.state.history] == list(range(1, 13))


def test_batch_plan_shards_one_global_batch():
    cfg = TrainConfig(batch_size=2, seed=3)
    single = batch_plan(TrainConfig(batch_size=4, seed=3), 10, 5, 0, 0, 1)
    ranks = [batch_plan(cfg, 10, 5, 0, r, 2) for r in range(2)]
    assert ranks[0][0] + ranks[1][0] == single[0] and ranks[0][1] + ranks[1][1] == single[1]
    assert batch_plan(cfg, 3, 0, 0, 0, 2)[0] != []               # a batch larger than the dataset still fills


# --- dataset and export ------------------------------------------------------------------------------------------

def test_folder_dataset_captions_identities_cache_and_pairing(tmp_path):
    from fixtures_builders.training import synthetic_folder, write_identities

    root = synthetic_folder(tmp_path / "data", n=4, identities=2)
    samples = scan_folder(str(root))
    assert [s.path for s in samples] == ["person0/img0.png", "person0/img2.png", "person1/img1.png", "person1/img3.png"]
    assert samples[0].caption == "a photo of person 0" and samples[0].identity == "person0"
    calls = []

    def prepare(path, sample):
        calls.append(path)
        return {"x": torch.full((2,), float(len(calls)))}

    ds = CachedDataset(str(root), prepare, "k1")
    ds.prepare_all(rank=0, world=2)
    assert ds.computed == 2                                   # its shard only
    ds.prepare_all()
    again = CachedDataset(str(root), prepare, "k1")
    assert [float(again.item(i)["x"][0]) for i in range(4)] == [float(ds.item(i)["x"][0]) for i in range(4)]
    assert again.computed == 0 and len(calls) == 4
    assert CachedDataset(str(root), prepare, "other-parser").item(0) and len(calls) == 5
    assert ds.reference_index(0, 7, paired=True) == 1 and ds.reference_index(0, 7, paired=False) == 0
    write_identities(root, {"person0/img0.png": "solo"})
    solo = scan_folder(str(root))
    assert solo[0].identity == "solo" and solo[1].identity == "person0/img2.png"


def test_export_keeps_every_key_and_writes_trained_values():
    from fixtures_builders.training import TINY_SD15_LAYOUT, tiny_consistentid_groups
    from partid.models.consistentid import ProjPlus
    from partid.models.training.trainables import AdapterTrainables, flat_for_safetensors

    groups = tiny_consistentid_groups()
    proj = ProjPlus.from_config(768)
    proj.load_state_dict(groups["image_proj"])
    t = AdapterTrainables("ConsistentID", groups, TINY_SD15_LAYOUT, dict(TINY_SD15_UNET, num_heads=8), proj,
                          ("id_kv", "lora"))
    assert not any(p.requires_grad for p in t.encoder.parameters())
    assert all(p.requires_grad for p in t.kv.parameters()) and all(p.requires_grad for p in t.lora.parameters())
    with torch.no_grad():
        t.kv["1"]["to_k_ip"].weight.add_(1.0)
    out = t.official_state(torch.float32)
    assert {g: set(v) for g, v in out.items()} == {g: set(v) for g, v in groups.items()}
    assert torch.equal(out["adapter_modules"]["1.to_k_ip.weight"], groups["adapter_modules"]["1.to_k_ip.weight"] + 1)
    assert torch.equal(out["adapter_modules"]["3.to_k_ip.weight"], groups["adapter_modules"]["3.to_k_ip.weight"])
    assert set(t.trained_state()) == {k for k in t.state_dict() if k.startswith(("kv.", "lora."))}
    assert "adapter_modules.1.to_k_ip.weight" in flat_for_safetensors(out)


def test_loss_curve_image():
    img = loss_curve_image([{"step": i, "loss": 1.0 / i, "noise": 0.5, "loc": -0.1 * i} for i in range(1, 20)])
    assert img.shape == (1, 320, 640, 3) and img.min() < 0.5 and img.max() == 1.0


def test_keys_max_maps_give_the_released_codes_per_head_balanced_l1():
    """Self-attention mode as the released ConsistentID training computed it: attention probabilities of attn1
    gathered at the fused tokens' (text) positions, each head's map divided by its max over pixels, balanced L1
    per head and token, averaged. Written out here head by head; ours averages heads first (the loss is linear)."""
    heads, b, side, d = 2, 2, 4, 8
    tq = side * side
    q, k = rand(b, tq, heads * d, seed=1), rand(b, tq, heads * d, seed=2)
    positions = torch.tensor([[3, 9], [5, 14]])                                     # two tokens, one per region
    masks = (rand(b, 2, side, side, seed=3) > 0).float()
    qh, kh = q.view(b, tq, heads, d).transpose(1, 2), k.view(b, tq, heads, d).transpose(1, 2)
    probs = (qh @ kh.transpose(-1, -2) / math.sqrt(d)).softmax(-1)                  # [B, H, Tq, Tk]
    expected = torch.zeros(())
    for i in range(b):
        for h in range(heads):
            for t in range(2):
                a = probs[i, h, :, positions[i, t]]
                a = a / (a.max() + 1e-5)
                m = masks[i, t].flatten()
                expected += (a * (1 - m)).sum() / ((1 - m).sum() + 1e-5) - (a * m).sum() / (m.sum() + 1e-5)
    expected /= b * heads * 2
    groups = [TokenGroup(f"r{t}", "self", positions[:, t:t + 1], masks[:, t]) for t in range(2)]
    rec = AttentionRecorder({"blk"}, "self", "keys_max", groups, enabled=True)
    rec.record("blk", q, {"self": k}, heads, (side, side))
    ours = localisation_loss(rec.maps, rec.grids, groups, "consistentid")
    assert torch.allclose(ours, expected, atol=1e-6), (float(ours), float(expected))
    # a key position beyond this attention's keys (a text position on a small block) counts as absent
    out = group_maps(q, k, heads, torch.tensor([[tq + 3], [2]]), "keys_max")
    assert torch.equal(out[0], torch.zeros(tq)) and float(out[1].max()) > 0


@pytest.mark.parametrize("kind", ["consistentid", "fastcomposer"])
def test_localisation_loss_of_a_batch_is_the_mean_of_its_samples(kind):
    """Sample 0 has a face but no ear, sample 1 both: the batch's loss must equal the mean of the two one-sample
    losses, which is what DDP (one sample per process, gradients averaged) and gradient accumulation compute."""
    gen = torch.Generator().manual_seed(3)
    attn = {"face": torch.rand(2, 16, generator=gen), "ear": torch.rand(2, 16, generator=gen)}
    masks = {"face": torch.zeros(2, 4, 4), "ear": torch.zeros(2, 4, 4)}
    masks["face"][:, :2, :2] = 1
    masks["ear"][:, 2:, 3:] = 1
    slots = torch.tensor([[5, -1], [5, 9]])                                  # text positions of face, ear
    stacked = torch.stack([masks["face"], masks["ear"]], 1)

    def loss(rows):
        # Groups of the regions fused in this (micro-)batch, as the training session builds them.
        groups = slot_groups(slots[rows], stacked[rows], ("face", "ear"), "context")
        return float(localisation_loss({"b": {n: a[rows] for n, a in attn.items()}}, {"b": (4, 4)}, groups, kind))

    assert [g.name for g in slot_groups(slots[[0]], stacked[[0]], ("face", "ear"), "context")] == ["face"]

    assert loss([0, 1]) == pytest.approx((loss([0]) + loss([1])) / 2, abs=1e-7)


def test_storymaker_loss_of_a_batch_is_the_mean_of_its_samples():
    """Uneven persons: sample 0 shows person 0 only, sample 1 persons 0 and 1; a background group in both. The
    batch's StoryMaker loss must equal the mean of the one-sample losses (DDP / accumulation), which it did not
    when each person's term was averaged over the whole batch before the terms were averaged."""
    gen = torch.Generator().manual_seed(4)
    names = ("p0", "p1", "bg")
    attn = {n: torch.rand(2, 16, generator=gen) for n in names}
    masks = {n: torch.zeros(2, 4, 4) for n in names}
    masks["p0"][:, :2, :2] = 1
    masks["p1"][1, 2:, 3:] = 1
    index = {"p0": torch.tensor([[1], [1]]), "p1": torch.tensor([[-1], [2]]), "bg": torch.tensor([[3], [3]])}

    def loss(rows):
        groups = [TokenGroup(n, "identity", index[n][rows], masks[n][rows], person=i if n != "bg" else None,
                             background=n == "bg")
                  for i, n in enumerate(names) if bool((index[n][rows] >= 0).any())]
        return float(localisation_loss({"b": {n: a[rows] for n, a in attn.items()}}, {"b": (4, 4)}, groups,
                                       "storymaker"))

    assert loss([0, 1]) == pytest.approx((loss([0]) + loss([1])) / 2, abs=1e-7)


def test_part_groups_leave_a_missing_part_out_and_a_split_batch_gives_the_same_loss():
    """Visual Persona's part groups: part j owns tokens j*T..(j+1)*T-1; a sample whose part mask is empty has no
    tokens in that group. With StoryMaker's loss (each part its own person) the batch's loss equals the mean of
    its one-sample losses, as DDP and gradient accumulation compute it."""
    gen = torch.Generator().manual_seed(5)
    masks = torch.zeros(2, 3, 4, 4)
    masks[:, 0, :2] = 1
    masks[1, 1, 2:, :2] = 1                                   # part 1 only in sample 1; part 2 in neither
    groups = part_groups(masks, 4, ("face", "upper", "lower"))
    assert [g.person for g in groups] == [0, 1, 2]
    assert torch.equal(groups[0].index, torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]]))
    assert torch.equal(groups[1].index, torch.tensor([[-1] * 4, [4, 5, 6, 7]]))
    assert groups[1].valid.tolist() == [False, True] and not bool(groups[2].valid.any())
    attn = {g.name: torch.rand(2, 16, generator=gen) for g in groups}

    def loss(rows):
        sub = part_groups(masks[rows], 4, ("face", "upper", "lower"))
        return float(localisation_loss({"b": {n: a[rows] for n, a in attn.items()}}, {"b": (4, 4)}, sub,
                                       "storymaker"))

    assert loss([0, 1]) == pytest.approx((loss([0]) + loss([1])) / 2, abs=1e-7)


def test_noise_and_background_drop_of_a_sample_come_from_its_seed_alone():
    """A micro-batch split over processes or accumulation steps must draw the same noise, timestep and
    background choice per sample as the whole batch."""
    to_sigma = lambda t: 1.0 + 10.0 * t                       # noqa: E731  (any monotone map)
    noise, sigma = noise_batch((4, 8, 8), [7, 8, 9], to_sigma)
    halves = [noise_batch((4, 8, 8), s, to_sigma) for s in ([7], [8, 9])]
    assert torch.equal(noise, torch.cat([h[0] for h in halves])) and torch.equal(sigma, torch.cat([h[1] for h in halves]))
    assert noise.shape == (3, 4, 8, 8) and len(set(sigma.tolist())) == 3
    assert background_kept([1, 2], 0.0) is None
    kept = background_kept(range(400), 0.5)
    assert torch.equal(kept[10:20], background_kept(range(10, 20), 0.5)) and 140 < int(kept.sum()) < 260


def test_module_fingerprint_is_the_same_in_every_process():
    """Dataset cache keys hold the VAE's and CLIP's fingerprints: a restarted ComfyUI (another string-hash seed)
    must compute the same id, or every restart recomputes the whole dataset."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import torch, partid_rig; from partid.models.training.dataset import module_fingerprint; "
            "torch.manual_seed(0); m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), "
            "torch.nn.Linear(4, 2), torch.nn.Linear(2, 2)); print(module_fingerprint(m))")
    tests_dir = str(Path(__file__).resolve().parents[1])
    ids = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tests_dir,
                          env={**__import__("os").environ, "PYTHONHASHSEED": str(seed), "PYTHONPATH": tests_dir}
                          ).stdout.strip() for seed in range(1, 7)}
    assert len(ids) == 1 and len(next(iter(ids))) == 16, ids
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2), torch.nn.Linear(2, 2))
    assert module_fingerprint(m) in ids
    with torch.no_grad():
        m[2].bias.add_(1.0)                                   # the middle tensor changes: another id
    assert module_fingerprint(m) not in ids


def test_training_and_evaluation_read_images_as_load_image_does(tmp_path):
    """A phone photo stored sideways (EXIF Orientation 6) trains upright, as Load Image shows it, and its
    *_mask.png (drawn on the upright photo) still covers the same pixels; a 16-bit grayscale PNG keeps its
    tones (Pillow's own conversion made it near white)."""
    import numpy as np
    from PIL import Image

    from partid.models.evaluation.pairing import load_rgb as eval_load_rgb
    from partid.models.training.images import load_mask_file, load_rgb

    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255                                        # left half white as stored
    exif = Image.Exif()
    exif[0x0112] = 6                                           # rotate 90 degrees clockwise to display
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    upright = np.zeros((80, 40), np.uint8)
    upright[:40] = 255                                          # what the viewer shows: the top half white
    Image.fromarray(upright).save(tmp_path / "phone_mask.png")
    image = load_rgb(str(tmp_path / "phone.jpg"), 40)[0].mean(-1)          # centre square of the upright photo
    mask = load_mask_file(str(tmp_path / "phone.jpg"), 40)[0]
    assert image[:16].mean() > 0.9 and image[-16:].mean() < 0.1, (image[:16].mean(), image[-16:].mean())
    assert torch.allclose(image, mask, atol=0.06), float((image - mask).abs().max())
    assert eval_load_rgb(tmp_path / "phone.jpg").shape == (80, 40, 3)

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert abs(float(load_rgb(str(tmp_path / "deep.png"), 64).mean()) - 0.5) < 0.01
    assert abs(float(eval_load_rgb(tmp_path / "deep.png").mean()) - 127.5) < 2
