"""One training run on a ComfyUI model: dataset preparation, patched model, loss, trainer, saving.

Used by the trainer node (nodes/training.py) and the headless / torchrun entry point (cli/train.py),
so both run the same code. The math lives in models/training/; this file only connects it to
ComfyUI objects (ModelPatcher, VAE, CLIP, CLIP_VISION) and to PartID's parsers.

ConsistentID identity tokens: ProjPlus(ArcFace, CLIP-H penultimate states of the whole reference),
attended by every cross-attention through the trainable to_k_ip/to_v_ip. With a face parser and CLIP
vision the run also fuses region tokens into the caption (FacialEncoder, nodes/training_regions.py)
and, as the paper, the localisation loss is on those fused tokens, each against its region's mask in
the *target* image (the image being denoised); without regions it falls back to the ID tokens against
the face mask. With `paired`, the ID tokens come from another image of the same identity (Visual
Persona's cross-image pairing).

Attention maps come from the cross-attention (`attention="cross"`, the paper and FastComposer) or
from the self-attention (`"self"`, what the released ConsistentID code hooked: attn1 probabilities at
the fused tokens' text positions used as key positions, each head's map divided by its maximum).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from ..models.images import to_uint8, to_uint8_hwc
from ..models.layouts.consistentid import CLIP_H_TOKENS, CLIP_H_WIDTH
from ..models.layouts.unet_attention import UNETS, UNetAttentionConfig
from ..models.training import attention_maps as maps_engine
from ..models.training.attention_hooks import IdentityBranch, TrainingHooks
from ..models.training.dataset import CachedDataset, Sample, module_fingerprint
from ..models.training.losses import LOSSES, localisation_loss, mask_mass, masks_on_grid
from ..models.training.images import load_mask_file, load_rgb
from ..models.training.objective import background_kept, noise_batch, noise_loss, total_loss
from ..models.training.trainables import AdapterTrainables, flat_for_safetensors
from ..models.training.trainer import Trainer, TrainConfig
from ..models.consistentid.regions import REGION_ORDER
from ..models.visual_persona import PART_NAMES, SELECTED_PARTS
from . import training_patch as tp
from .training_regions import FacialText, facial_items

log = logging.getLogger("partid.training")
BLOCK_CHOICES = ("middle", "all")
ATTENTIONS = ("cross", "self")


@dataclass
class JobOptions:
    train: tuple = ("proj_plus", "id_kv", "lora")
    loc_weight: float = 0.01
    loc_loss: str = "consistentid"
    normalise: str = "auto"                  # auto: see map_normalisation
    attention: str = "cross"                 # which attention the maps come from (ATTENTIONS)
    pairing: str = "faithful"                # region <-> marker pairing of the fused text (prompt.PAIRINGS)
    blocks: str = "middle"                   # the five middle blocks (FastComposer/ConsistentID) or all
    paired: bool = False
    resolution: int = 512
    drop_background: float = 0.0             # probability a sample's noise loss ignores the background
    id_weight: float = 1.0
    gradient_checkpointing: bool = False

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.blocks not in BLOCK_CHOICES:
            raise ValueError(f"blocks must be one of {BLOCK_CHOICES}, got {self.blocks!r}")
        if self.loc_loss not in LOSSES:     # checked here, not at the first step after the dataset is cached
            raise ValueError(f"loc_loss must be one of {LOSSES}, got {self.loc_loss!r}")

    def map_normalisation(self, family: str) -> str:
        """auto: what the loss expects (attention_maps.default_normalisation); Visual Persona's part groups share
        the identity keys, ConsistentID's one ID group does not."""
        if self.normalise != "auto":
            return self.normalise
        return maps_engine.default_normalisation(self.attention, self.loc_loss, family == "Visual Persona")


def weights_fingerprint(obj) -> str:
    """A stable id of the weights of a ComfyUI VAE, CLIP or CLIP vision object (or None), for dataset cache keys
    (dataset.module_fingerprint of the network it wraps): the same file gives the same id in every process;
    another checkpoint's VAE or text encoder gives another."""
    if obj is None:
        return "none"
    module = next((m for m in (getattr(obj, a, None) for a in ("first_stage_model", "cond_stage_model", "model"))
                   if isinstance(m, torch.nn.Module)), obj if isinstance(obj, torch.nn.Module) else None)
    return type(obj).__name__ if module is None else module_fingerprint(module)


def latent_and_text(vae, clip, image: torch.Tensor, caption: str) -> dict:
    """What every trainer's prepare caches for the base model: VAE latent, text context, pooled text."""
    out = {"latent": vae.encode(image[..., :3])[0].float()}
    cond, pooled = clip.encode_from_tokens(clip.tokenize(caption), return_pooled=True)
    out["context"] = cond[0].float()
    if pooled is not None:
        out["pooled"] = pooled[0].float()
    return out


def make_prepare(vae, clip, resolution: int, face_parser=None, analyzer=None, clip_vision=None,
                 facial: FacialText | None = None):
    """prepare(path, sample) for CachedDataset: latent, text, face mask, ArcFace, CLIP-H states; with a face
    parser, CLIP vision and `facial`, the fused-region data of nodes/training_regions.py as well."""
    # Every network here is frozen: no autograd graph. (With one, the graph of a CLIP-H encode, 3.5 GB of
    # saved activations and cast weights, outlived the call: measured in the test process.)
    @torch.no_grad()
    def prepare(path: str, sample: Sample) -> dict:
        image = load_rgb(path, resolution)
        if facial is not None and face_parser is not None and clip_vision is not None:
            out = {"latent": vae.encode(image[..., :3])[0].float()}
            hw = tuple(out["latent"].shape[-2:])
            out.update(facial_items(clip, clip_vision, face_parser, image, sample.caption, facial, hw))
            file_mask = load_mask_file(path, resolution)      # the user's own face mask wins over the parser's
            if file_mask is not None:
                out["mask"] = masks_on_grid([file_mask], hw)[0]
            out["arcface"] = _arcface(analyzer, image, path)
            return out
        out = latent_and_text(vae, clip, image, sample.caption)
        mask = load_mask_file(path, resolution)
        if mask is None and face_parser is not None:
            from ..models.face_regions import face_regions

            mask = face_regions(face_parser.parse(image)).masks["face"].float()
        if mask is None:
            mask = torch.ones(1, resolution, resolution)
        out["mask"] = masks_on_grid([mask], tuple(out["latent"].shape[-2:]))[0]
        out["arcface"] = _arcface(analyzer, image, path)
        if clip_vision is not None:   # the CLIP preprocessing of inference and of the region path
            from .consistentid_encode import encode_states

            out["clip_states"] = encode_states(clip_vision, to_uint8(image[..., :3]), "official")[0]
        else:
            out["clip_states"] = torch.zeros(CLIP_H_TOKENS, CLIP_H_WIDTH)
        return out
    return prepare


# Below the Face Analysis node's 0.5: a training image is one person's photo, and a face missed here would
# train that image on the all-zero (unconditional) embedding instead of its identity.
TRAINING_DET_THRESH = 0.3


def _arcface(analyzer, image: torch.Tensor, path: str = "") -> torch.Tensor:
    """[512] normed ArcFace of the largest face (colour order BGR, as the official training fed insightface);
    zeros without an analyzer or a face (official uncond), the latter logged with the image's name."""
    if analyzer is None:
        return torch.zeros(512)
    from ..models.face_analysis import analyze

    found = analyze(analyzer, [to_uint8_hwc(image[0])], det_thresh=TRAINING_DET_THRESH, on_no_face="bypass")
    if found.selected_faces()[0] is None:
        log.warning("[PartID] training image %s: no face found (detection threshold %s in the %d px centre crop); "
                    "it trains with the zero identity embedding. Crop it closer to the face, or remove it.",
                    path or "(unnamed)", TRAINING_DET_THRESH, image.shape[1])
    return torch.from_numpy(found.embeddings(normed=True)[0]).float()


class IdentitySession:
    """A cloned, patched model with the trainable adapter and the loss of one micro-batch.

    ConsistentID: ProjPlus tokens; with region data (`region_states`, `slot_positions`, `region_masks`)
    the FacialEncoder fuses each region's token into the text and each fused token is one group against
    its region mask (kind "context", or "self" for self-attention maps); without it one group (all 4 ID
    tokens) against the face mask `mask`.
    Visual Persona: decoder tokens of the parts in `part_features` [P, S, E] (DINOv2 patch tokens of
    the released parts 1-4), one group per part (its 256 tokens) against `part_masks` [P, h, w]; a part
    whose mask is empty in the target image is left out of the loss.
    """

    def __init__(self, patcher, adapter_groups: dict, layout: UNetAttentionConfig, options: JobOptions,
                 dataset: CachedDataset, device: torch.device, shortcut: bool = False,
                 family: str = "ConsistentID"):
        self.options, self.dataset, self.device, self.family = options, dataset, device, family
        self.regions = family == "ConsistentID" and len(dataset) > 0 and "region_states" in dataset.item(0)
        if options.attention == "self" and not self.regions:
            raise ValueError("self-attention maps need fused region tokens (ConsistentID with a face parser and "
                             "CLIP vision): their text positions are the key positions the released code used")
        self.patcher = patcher.clone()
        unet_config = self.patcher.model.model_config.unet_config
        facial = None
        if self.regions:
            from ..models.consistentid import FacialEncoder

            if not adapter_groups.get("FacialEncoder"):
                raise ValueError("the adapter has no FacialEncoder weights, which fusing region tokens needs")
            facial = FacialEncoder.from_state_dict(adapter_groups["FacialEncoder"], torch.float32, device)
        if family == "ConsistentID":
            from ..models.consistentid import ProjPlus
            from ..models.consistentid.perceiver import materialise

            cross_dim = adapter_groups["image_proj"]["norm.weight"].shape[0]
            encoder = materialise(lambda: ProjPlus.from_config(cross_dim, shortcut, 1.0),
                                  adapter_groups["image_proj"], torch.float32, device)
        else:
            from ..models.visual_persona.decoder import PartDecoder

            # Built by assignment: from copies, since the loaded tensors may be inference tensors (ComfyUI
            # loads in inference mode) and must never be trained in place.
            encoder = PartDecoder.from_state_dict({k: v.clone() for k, v in adapter_groups["image_proj"].items()},
                                                  dtype=torch.float32, device=device)
        self.trainables = AdapterTrainables(family, adapter_groups, layout, unet_config, encoder,
                                            options.train, facial).to(device)
        blocks = tp.all_blocks(self.patcher)
        self.recorded = [b.key for b in (maps_engine.middle_blocks(_with_diffusers(blocks, unet_config))
                                         if options.blocks == "middle" else blocks)]
        self.recorder = maps_engine.AttentionRecorder(set(self.recorded), options.attention,
                                                      options.map_normalisation(family))
        self.hooks = TrainingHooks(self.recorder, IdentityBranch(self.trainables.block_projections(), options.id_weight))
        tp.install_training_patches(self.patcher, self.hooks, [b.key for b in blocks],
                                    self.recorded if options.attention == "self" else ())
        tp.add_lora_wrappers(self.patcher, self.trainables.lora_by_weight_key())
        self.last_mass = float("nan")

    def identity(self, items, refs, dev):
        """(tokens [B, Tk, C], token groups with their target masks, foreground [B, h, w] of the noise loss)."""
        if self.family == "ConsistentID":
            tokens = self.trainables.encoder(torch.stack([r["arcface"] for r in refs]).to(dev),
                                             torch.stack([r["clip_states"] for r in refs]).to(dev))
            masks = torch.stack([it["mask"] for it in items]).to(dev)
            if self.regions:
                return tokens, self.region_groups(items, dev), masks
            return tokens, [maps_engine.identity_group(tokens.shape[1], masks)], masks
        feats = torch.stack([r["part_features"] for r in refs]).to(dev)                 # [B, P, S, E]
        parts = list(SELECTED_PARTS)[:feats.shape[1]]
        tokens = self.trainables.encoder(feats, parts)                                  # [B, P, T, W]
        masks = torch.stack([it["part_masks"] for it in items]).to(dev)                # [B, P, h, w]
        groups = maps_engine.part_groups(masks, tokens.shape[2], [PART_NAMES[p] for p in parts])
        return tokens.flatten(1, 2), groups, masks.amax(1)

    def region_groups(self, items, dev) -> list:
        """One group per region slot fused in at least one sample: its text position, its region mask."""
        slots = torch.stack([it["slot_positions"] for it in items]).to(dev)          # [B, 5]
        masks = torch.stack([it["region_masks"] for it in items]).to(dev)            # [B, 5, h, w]
        return maps_engine.slot_groups(slots, masks, REGION_ORDER,
                                       "self" if self.options.attention == "self" else "context")

    def fused_context(self, items, context: torch.Tensor, dev) -> torch.Tensor:
        if not self.regions:
            return context
        states = torch.stack([it["region_states"] for it in items]).to(dev)
        slots = torch.stack([it["slot_positions"] for it in items]).to(dev)
        return self.trainables.facial.fuse_slots(context, states, slots)

    def load(self):
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patcher], force_full_load=True)
        tp.materialise_inference_weights(self.patcher.model)
        self.patcher.model.requires_grad_(False)
        self.trainables.requires_grad_(False)
        for part in self.options.train:
            self.trainables.part(part).requires_grad_(True)

    def batch(self, indices, seeds, measure: bool = False) -> dict:
        """Loss parts of one micro-batch (also used to measure the attention mass with no grad)."""
        ds, opt, dev = self.dataset, self.options, self.device
        items = [ds.item(i) for i in indices]
        refs = [ds.item(ds.reference_index(i, s, opt.paired)) for i, s in zip(indices, seeds)]
        # The cache holds the VAE's raw latents; the UNet works in the scaled latent space (as KSampler feeds it
        # through process_latent_in): SD1.5 x 0.18215, SDXL x 0.13025.
        x0 = self.patcher.model.process_latent_in(torch.stack([it["latent"] for it in items]).to(dev))
        context = torch.stack([it["context"] for it in items]).to(dev)
        ms = self.patcher.model.model_sampling
        noise, sigma = noise_batch(tuple(items[0]["latent"].shape), seeds, ms.percent_to_sigma)
        noise, sigma = noise.to(dev), sigma.to(dev)
        x_t = ms.noise_scaling(sigma, noise, x0)
        tokens, groups, region = self.identity(items, refs, dev)
        context = self.fused_context(items, context, dev)
        self.hooks.identity.tokens = tokens
        self.recorder.groups, self.recorder.enabled = groups, (opt.loc_weight > 0 or measure)
        self.recorder.clear()
        y = None
        if "pooled" in items[0]:
            size = x0.shape[-1] * 8         # the pixel size: every VAE of these bases downsamples by 8
            adm = [self.patcher.model.encode_adm(pooled_output=it["pooled"][None].to(dev), width=size, height=size)
                   for it in items]
            y = None if any(a is None for a in adm) else torch.cat(adm)    # SD1.5 takes no pooled vector
        diffusion = self.patcher.get_model_object("diffusion_model")
        with tp.checkpointed_transformer_blocks(diffusion, opt.gradient_checkpointing and not measure):
            x0_pred = tp.denoise(self.patcher, x_t, sigma, context, y)
        n_loss = noise_loss(x0_pred, x0, sigma, region.unsqueeze(1), background_kept(seeds, opt.drop_background))
        loc = localisation_loss(self.recorder.maps, self.recorder.grids, groups, opt.loc_loss) \
            if self.recorder.maps else None
        self.last_mass = mask_mass(self.recorder.maps, self.recorder.grids, groups) if self.recorder.maps else float("nan")
        total = total_loss(n_loss, loc, opt.loc_weight)
        # The recorder stays on until the next batch: checkpoint recomputes during backward record too.
        return {"loss": total, "noise": n_loss.detach(), "loc": (loc.detach() if loc is not None else float("nan")),
                "mass": self.last_mass}

    def measure_mass(self, indices, seed: int = 12345) -> float:
        """Attention mass inside the masks on fixed samples and noise (no grad)."""
        with torch.no_grad():
            self.batch(list(indices), [seed + i for i in range(len(indices))], measure=True)
        return self.last_mass

    def save_adapter(self, path: str) -> str:
        from safetensors.torch import save_file

        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = path + ".tmp"
        save_file(flat_for_safetensors(self.trainables.official_state()), tmp,
                  metadata={"partid": "trained adapter", "family": self.family})
        os.replace(tmp, path)
        return path


def _with_diffusers(blocks, unet_config):
    """Module-walked blocks carry no diffusers path; take them from the config enumeration (same keys)."""
    from ..models.attention.unet_keys import cross_attention_blocks

    by_key = {b.key: b for b in cross_attention_blocks(unet_config)}
    return [by_key[b.key] for b in blocks]


def layout_for(adapter) -> UNetAttentionConfig:
    return UNETS[adapter.format.base]


def run_session(session: IdentitySession, config: TrainConfig, out_path: str, state_path: str | None,
                should_cancel=None, progress=None, distributed: bool = False) -> Trainer:
    """Train (resuming from state_path when it exists); saves `out_path` at every save point and the end."""
    session.load()
    trainer = Trainer(session.trainables, session.batch, len(session.dataset), config, session.device,
                      state_path=state_path, save_fn=lambda step: session.save_adapter(out_path),
                      should_cancel=should_cancel, progress=progress, distributed=distributed)
    trainer.load_state()
    with torch.inference_mode(False), torch.enable_grad():
        trainer.run()
    return trainer
