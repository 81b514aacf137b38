"""PartID Train Visual Persona: trains Visual Persona's body-partitioned decoder and/or its ID key/value
(`ip_adapter`) on a frozen SDXL with the noise loss plus lambda x a per-part attention-localisation
loss (each part's 256 tokens against that part's mask in the denoised image).

Thin glue over the same run code as PartID Train ConsistentID (nodes/training_run.py: IdentitySession
with family "Visual Persona"; nodes/training.py: output paths, run_job (progress, cancel), folder).
Per image, once (cached by CachedDataset): the body parser's five masks, the part images cut as the
released code cuts them, DINOv2 patch tokens of parts 1-4, the VAE latent and the text. The saved
file has the released weight.bin groups (image_proj, ip_adapter), so the Visual Persona Loader reads it.
"""
from __future__ import annotations

import os

import torch
from comfy_api.latest import io

from ..models import model_files
from ..models.body_parsing import check_body_parser
from ..models.body_parts import PARTS, body_parts
from ..models.errors import InputError
from ..models.training.dataset import CachedDataset, Sample
from ..models.training.images import load_rgb
from ..models.training.losses import LOSSES, masks_on_grid
from ..models.training.objective import loss_curve_image
from ..models.training.trainer import PRECISIONS, TrainConfig
from ..models.visual_persona import SELECTED_PARTS, encode_parts, part_images
from . import managed, types
from .visual_persona_encode import DINOV2_ATTR, compute_device_dtype
from .visual_persona_encode import check_inputs as check_encoder_inputs
from .training import forget_state, output_paths, resolve_folder, run_job
from .training_run import IdentitySession, JobOptions, latent_and_text, layout_for, weights_fingerprint
from .validate import VISUAL_PERSONA_BASE_FIX, require_base_model, require_choice

NODE = "PartID Train Visual Persona"
TRAIN_CHOICES = {"decoder + id_kv": ("decoder", "id_kv"), "decoder": ("decoder",), "id_kv": ("id_kv",)}


def make_vp_prepare(vae, clip, resolution: int, dinov2_weights, body_parser):
    """prepare(path, sample): latent, text, part_masks [4, h, w] at latent size, part_features [4, 256, D].

    The body parser and DINOv2 run on ComfyUI's device under its model management, DINOv2 in the dtype
    PartID Visual Persona Encode uses there (fp16 on CUDA, fp32 on the CPU), loaded again per image since
    the VAE and CLIP load in between. A cached dataset never builds DINOv2.
    """
    from ..models.dinov2 import DINOv2

    parser = managed.OnUse(lambda: managed.body_parser(body_parser))
    _, dtype = compute_device_dtype()

    @torch.no_grad()          # frozen networks only: no autograd graph (see make_prepare)
    def prepare(path: str, sample: Sample) -> dict:
        image = load_rgb(path, resolution)
        out = latent_and_text(vae, clip, image, sample.caption)
        # Loaded weights are inference tensors (ComfyUI runs loaders in inference mode): build and run the
        # frozen parser and DINOv2 there; clone() outside gives ordinary tensors for the training graph.
        with torch.inference_mode():
            masks = body_parts(parser.parse(image)).masks                      # each [1, R, R]
            encoder = managed.managed(dinov2_weights, DINOV2_ATTR, lambda device: DINOv2.from_weights(
                dinov2_weights, dtype=dtype, device=device), dtype)
            images = part_images(list(image), [[masks[p][0] for p in PARTS]])
            features = encode_parts(encoder, images.pixels, SELECTED_PARTS)[0].float()
        masks = {k: v.clone() for k, v in masks.items()}
        out["part_features"] = features.clone()
        # A part the parser did not find stays empty: the session leaves it out of the loss.
        out["part_masks"] = masks_on_grid([masks[PARTS[p]] if bool(images.present[0, p]) else None
                                           for p in SELECTED_PARTS], tuple(out["latent"].shape[-2:]))
        return out

    # Once every image is cached the run never needs DINOv2 again: its network (4.5 GB for ViT-g in fp32) goes.
    prepare.release = lambda: managed.forget(dinov2_weights, DINOV2_ATTR)
    return prepare


def run_vp_training(model, vae, clip, adapter, dinov2, body_parser, folder: str, output_name: str,
                    options: JobOptions, config: TrainConfig, resume: bool = True, layout=None,
                    caption: str = "a photo of a person", cache_dir: str | None = None):
    """The node's work; returns (trainer history, adapter path). Tests pass tiny layouts."""
    out_path, state_path = output_paths(output_name)
    if not resume:
        forget_state(state_path)
    key = "|".join(str(x) for x in ("visual_persona", options.resolution, getattr(body_parser, "path", None),
                                    getattr(dinov2, "path", None), weights_fingerprint(vae), weights_fingerprint(clip)))
    with torch.inference_mode(False):
        dataset = CachedDataset(folder, make_vp_prepare(vae, clip, options.resolution, dinov2, body_parser), key,
                                cache_dir=cache_dir, default_caption=caption)
        dataset.prepare_all()
        dataset.prepare.release()
        session = IdentitySession(model, adapter.groups, layout or layout_for(adapter), options, dataset,
                                  torch.device(model.load_device), family="Visual Persona")
        trainer = run_job(session, config, out_path, state_path, NODE)
    return trainer.state.history, out_path


def check_inputs(model, adapter, dinov2, body_parser, folder: str, train: str, precision: str = "bf16",
                 loc_loss: str = "consistentid") -> None:
    check_encoder_inputs(dinov2, adapter, NODE)
    check_body_parser(body_parser, NODE, "body_parser")
    if not folder or not os.path.isdir(folder):
        raise InputError(NODE, "folder", f"'{folder}' is not a folder.", "give the path of a folder of images.")
    require_choice(NODE, "train", train, TRAIN_CHOICES)
    require_choice(NODE, "precision", precision, PRECISIONS)
    require_choice(NODE, "loc_loss", loc_loss, LOSSES)
    require_base_model(NODE, model, adapter, "model", VISUAL_PERSONA_BASE_FIX)


class TrainVisualPersona(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDTrainVisualPersona", display_name=NODE, category="PartID/Training",
            description="Trains Visual Persona (body-partitioned decoder, ID key/value) on a frozen SDXL from a "
                        "folder of images (captions in same-name .txt files; identities from subfolders or "
                        "identities.json). Body-part masks from the body parser, part images through DINOv2, both "
                        "computed once per image and cached. Loss: noise loss + lambda x attention-localisation "
                        "loss of each part's tokens against that part's mask. Saves weights the Visual Persona "
                        "Loader reads.",
            inputs=[
                io.Model.Input("model", tooltip="SDXL."), io.Vae.Input("vae"), io.Clip.Input("clip"),
                types.VisualPersonaAdapter.Input("adapter", tooltip="Start point (PartID Visual Persona Loader)."),
                types.DINOv2.Input("dinov2", tooltip="PartID DINOv2 Loader (ViT-g/14 for the released decoder)."),
                types.BodyParser.Input("body_parser", tooltip="PartID Body Parser Loader: the part masks."),
                io.String.Input("folder", default="training_images",
                                tooltip="Folder of training images: absolute, or relative to ComfyUI's input folder."),
                io.String.Input("output_name", default="partid_visual_persona_trained",
                                tooltip="File name (no extension) in models/identity_adapters."),
                io.Combo.Input("train", options=list(TRAIN_CHOICES), default="decoder + id_kv"),
                io.Int.Input("steps", default=1000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=1, min=1, max=256),
                io.Float.Input("learning_rate", default=1e-5, min=0.0, max=1.0, step=1e-6),
                io.Int.Input("warmup_steps", default=0, min=0, max=1_000_000),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16"),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Float.Input("loc_weight", default=0.01, min=0.0, max=100.0, step=0.001,
                               tooltip="lambda of the per-part localisation loss."),
                io.Combo.Input("loc_loss", options=list(LOSSES), default="consistentid"),
                io.Boolean.Input("paired", default=True,
                                 tooltip="Condition on another image of the same identity, as Visual Persona trains."),
                io.Int.Input("resolution", default=1024, min=64, max=2048, step=64),
                io.Int.Input("save_every", default=100, min=0, max=1_000_000),
                io.Boolean.Input("resume", default=True, tooltip="Continue from this output's saved state, if any."),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024, optional=True,
                             tooltip="Micro-batches per optimiser step (effective batch = batch_size x this)."),
                io.Boolean.Input("gradient_checkpointing", default=False, optional=True,
                                 tooltip="Recompute each transformer block in the backward pass: far less memory "
                                         "at 1024 px, about a third more time."),
            ],
            outputs=[types.VisualPersonaAdapter.Output(display_name="adapter"),
                     io.Image.Output(display_name="loss_curve"), io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, clip, adapter, dinov2, body_parser, folder,
                output_name="partid_visual_persona_trained", train="decoder + id_kv", steps=1000, batch_size=1,
                learning_rate=1e-5, warmup_steps=0, precision="bf16", seed=0, loc_weight=0.01,
                loc_loss="consistentid", paired=True, resolution=1024, save_every=100, resume=True,
                grad_accumulation=1, gradient_checkpointing=False):
        folder = resolve_folder(folder)
        check_inputs(model, adapter, dinov2, body_parser, folder, train, precision, loc_loss)
        options = JobOptions(train=TRAIN_CHOICES[train], loc_weight=loc_weight, loc_loss=loc_loss, paired=paired,
                             resolution=resolution, gradient_checkpointing=gradient_checkpointing)
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accumulation=grad_accumulation,
                             learning_rate=learning_rate, warmup_steps=warmup_steps, precision=precision, seed=seed,
                             save_every=save_every)
        history, path = run_vp_training(model, vae, clip, adapter, dinov2, body_parser, folder, output_name,
                                        options, config, resume)
        trained = model_files.load_adapter(path, "Visual Persona")
        return io.NodeOutput(trained, loss_curve_image(history), path)


NODES = [TrainVisualPersona]
