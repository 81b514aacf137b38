"""PartID Train ConsistentID: trains ConsistentID's FacialEncoder / ProjPlus / ID key-value / LoRA on a frozen
base model with the noise loss plus lambda x an attention-localisation loss, from a folder of images.

With a face parser and CLIP vision connected, each image's facial regions are fused into its caption as
at inference and the localisation loss is on those fused tokens (the paper); without them, on the ID
tokens against the face mask.

Thin glue: checks inputs, builds the dataset preparation from the connected models, runs
nodes/training_run.py (shared with the headless `train` command), reports progress (ComfyUI's
progress bar, its preview showing the loss curve) and honours the queue's cancel between steps: a
cancelled run keeps its last saved state and `resume` continues from it.
"""
from __future__ import annotations

import logging
import os

import torch
from comfy_api.latest import io

from ..models import model_files
from ..models.consistentid.prompt import PAIRINGS
from ..models.errors import InputError
from ..models.images import to_uint8_hwc
from ..models.training.dataset import CachedDataset
from ..models.training.losses import LOSSES
from ..models.training.objective import loss_curve_image
from ..models.training.trainer import PRECISIONS, TrainConfig, TrainingCancelled, remove_state
from . import managed, types
from .training_regions import FacialText
from .training_run import (ATTENTIONS, BLOCK_CHOICES, IdentitySession, JobOptions, layout_for, make_prepare,
                           run_session, weights_fingerprint)
from .validate import CONSISTENTID_BASE_FIX, require_adapter, require_base_model, require_choice

NODE = "PartID Train ConsistentID"
TRAIN_CHOICES = {"proj_plus + id_kv + lora": ("proj_plus", "id_kv", "lora"), "id_kv": ("id_kv",),
                 "id_kv + lora": ("id_kv", "lora"), "proj_plus + id_kv": ("proj_plus", "id_kv"), "lora": ("lora",),
                 "facial_encoder + proj_plus + id_kv + lora": ("facial_encoder", "proj_plus", "id_kv", "lora"),
                 "facial_encoder": ("facial_encoder",), "facial_encoder + lora": ("facial_encoder", "lora")}
# Inputs that need the fused region tokens, hence a face parser and CLIP vision.
NEEDS_REGIONS = "needs the facial regions fused into the captions"
log = logging.getLogger("partid.training")


def output_paths(name: str) -> tuple[str, str]:
    """(adapter file in the first identity_adapters folder, resume-state prefix in ComfyUI's output folder)."""
    import folder_paths

    safe = "".join(c for c in name if c.isalnum() or c in "-_.") or "partid_trained"
    adapter_dir = folder_paths.get_folder_paths("identity_adapters")[0]
    state_dir = os.path.join(folder_paths.get_output_directory(), "partid_training")
    os.makedirs(state_dir, exist_ok=True)
    return os.path.join(adapter_dir, safe + ".safetensors"), os.path.join(state_dir, safe + ".state")


def forget_state(state_path: str) -> None:
    """A run with resume off starts from the loaded adapter: remove the resume state of an earlier run."""
    remove_state(state_path)


def run_job(session, config: TrainConfig, out_path: str, state_path: str, node: str):
    """Train with ComfyUI's progress bar and cancel; a cancel keeps the state saved last and re-raises
    ComfyUI's interrupt, so the queue shows the run as interrupted."""
    import comfy.model_management

    try:
        return run_session(session, config, out_path, state_path,
                           should_cancel=comfy.model_management.processing_interrupted,
                           progress=_progress_reporter(config.steps, node))
    except TrainingCancelled:
        log.warning("[PartID] %s: cancelled; the state saved last (%s) is kept: run again with resume on.",
                    node, state_path)
        comfy.model_management.throw_exception_if_processing_interrupted()
        raise


def resolve_folder(folder: str) -> str:
    """A relative folder is looked up in ComfyUI's input folder first (input/training_images), then as given."""
    import folder_paths

    if folder and not os.path.isabs(folder):
        candidate = os.path.join(folder_paths.get_input_directory(), folder)
        if os.path.isdir(candidate):
            return candidate
    return folder


def _progress_reporter(total: int, node: str = NODE):
    import comfy.utils

    bar = comfy.utils.ProgressBar(total)
    history: list[dict] = []

    def report(step: int, steps: int, logs: dict):
        history.append({"step": step, **logs})
        log.info("[PartID] %s step %d/%d loss %.5f noise %.5f loc %.5f", node, step, steps, logs.get("loss", 0.0),
                 logs.get("noise", 0.0), logs.get("loc", float("nan")))
        preview = None
        if step == steps or step % max(1, steps // 20) == 0:
            from PIL import Image

            preview = ("JPEG", Image.fromarray(to_uint8_hwc(loss_curve_image(history)[0])), 512)
        bar.update_absolute(step, steps, preview)
    return report


def run_training(model, vae, clip, adapter, folder: str, output_name: str, options: JobOptions, config: TrainConfig,
          resume: bool = True, face_parser=None, analyzer=None, clip_vision=None, layout=None,
          caption: str = "a photo of a person", cache_dir: str | None = None):
    """The node's work; returns (trainer history, adapter path). Tests pass tiny layouts."""
    layout = layout or layout_for(adapter)
    out_path, state_path = output_paths(output_name)
    if not resume:
        forget_state(state_path)
    # The parser runs on ComfyUI's device, loaded again per image (the VAE and CLIP load in between).
    parser_engine = managed.OnUse(lambda: managed.face_parser(face_parser)) if face_parser is not None else None
    facial = FacialText(adapter.format.base, options.pairing)
    # The cache holds this VAE's latents and this CLIP's text: another checkpoint must not reuse them.
    key = "|".join(str(x) for x in (options.resolution, getattr(face_parser, "path", None),
                                    getattr(analyzer, "name", None) or type(analyzer).__name__,
                                    weights_fingerprint(clip_vision), facial.key, weights_fingerprint(vae),
                                    weights_fingerprint(clip)))
    device = torch.device(model.load_device)
    with torch.inference_mode(False):
        dataset = CachedDataset(folder, make_prepare(vae, clip, options.resolution, parser_engine, analyzer,
                                                     clip_vision, facial), key, cache_dir=cache_dir,
                                default_caption=caption)
        dataset.prepare_all()
        shortcut = adapter.format.base == "sdxl"
        session = IdentitySession(model, adapter.groups, layout, options, dataset, device, shortcut)
        trainer = run_job(session, config, out_path, state_path, NODE)
    return trainer.state.history, out_path


class TrainConsistentID(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDTrainConsistentID", display_name=NODE, category="PartID/Training",
            description="Trains ConsistentID (ProjPlus, ID key/value, LoRA) on a frozen base model from a folder of "
                        "images (captions in same-name .txt files, optional *_mask.png face masks, identities from "
                        "subfolders or identities.json). Loss: noise loss + lambda x attention-localisation loss of the "
                        "ID tokens against the face mask. Saves an adapter the ConsistentID Loader reads.",
            inputs=[
                io.Model.Input("model"), io.Vae.Input("vae"), io.Clip.Input("clip"),
                types.ConsistentIDAdapter.Input("adapter", tooltip="Start point (PartID ConsistentID Loader)."),
                io.String.Input("folder", default="training_images",
                                tooltip="Folder of training images: absolute, or relative to ComfyUI's input folder."),
                io.String.Input("output_name", default="partid_consistentid_trained",
                                tooltip="File name (no extension) in models/identity_adapters."),
                io.Combo.Input("train", options=list(TRAIN_CHOICES), default="proj_plus + id_kv + lora"),
                io.Int.Input("steps", default=1000, min=1, max=1_000_000),
                io.Int.Input("batch_size", default=1, min=1, max=256),
                io.Int.Input("grad_accumulation", default=1, min=1, max=1024),
                io.Float.Input("learning_rate", default=1e-4, min=0.0, max=1.0, step=1e-6),
                io.Int.Input("warmup_steps", default=0, min=0, max=1_000_000),
                io.Combo.Input("precision", options=list(PRECISIONS), default="bf16"),
                io.Boolean.Input("gradient_checkpointing", default=False),
                io.Int.Input("seed", default=0, min=0, max=2**31 - 1),
                io.Float.Input("loc_weight", default=0.01, min=0.0, max=100.0, step=0.001,
                               tooltip="lambda of the localisation loss (ConsistentID: 0.01; FastComposer 0.001)."),
                io.Combo.Input("loc_loss", options=list(LOSSES), default="consistentid"),
                io.Combo.Input("blocks", options=list(BLOCK_CHOICES), default="middle",
                               tooltip="Blocks whose attention maps the loss uses: the five middle blocks, or all."),
                io.Boolean.Input("paired", default=False,
                                 tooltip="Condition on another image of the same identity (cross-image pairs)."),
                io.Int.Input("resolution", default=512, min=64, max=2048, step=64),
                io.Int.Input("save_every", default=100, min=0, max=1_000_000),
                io.Boolean.Input("resume", default=True, tooltip="Continue from this output's saved state, if any."),
                io.Float.Input("drop_background", default=0.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Probability that a sample's noise loss ignores the background (official 0.5)."),
                types.FaceParser.Input("face_parser", optional=True,
                                       tooltip="Facial regions (with clip_vision: fused region tokens and their "
                                               "localisation loss) and the face mask of images without a "
                                               "*_mask.png file (a *_mask.png always wins)."),
                types.FaceAnalyzer.Input("analyzer", optional=True, tooltip="ArcFace embeddings (buffalo_l)."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP-ViT-H/14 for the ID tokens and the region tokens."),
                io.Combo.Input("loc_attention", options=list(ATTENTIONS), default="cross", optional=True,
                               tooltip="cross: fused region tokens' cross-attention (the paper, FastComposer). self: "
                                       "self-attention at their positions, as the released ConsistentID code did. "
                                       "Both need face_parser and clip_vision."),
                io.Combo.Input("pairing", options=list(PAIRINGS), default="faithful", optional=True,
                               tooltip="Region <-> caption word pairing of the fused text, as in Text Fusion "
                                       "(faithful: by order, as the official training)."),
            ],
            outputs=[types.ConsistentIDAdapter.Output(display_name="adapter"),
                     io.Image.Output(display_name="loss_curve"), io.String.Output(display_name="path")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, model, vae, clip, adapter, folder, output_name="partid_consistentid_trained",
                train="proj_plus + id_kv + lora", steps=1000, batch_size=1, grad_accumulation=1, learning_rate=1e-4,
                warmup_steps=0, precision="bf16", gradient_checkpointing=False, seed=0, loc_weight=0.01,
                loc_loss="consistentid", blocks="middle", paired=False, resolution=512, save_every=100, resume=True,
                drop_background=0.0, face_parser=None, analyzer=None, clip_vision=None, loc_attention="cross",
                pairing="faithful"):
        require_adapter(NODE, adapter, "ConsistentID")
        folder = resolve_folder(folder)
        if not folder or not os.path.isdir(folder):
            raise InputError(NODE, "folder", f"'{folder}' is not a folder.", "give the path of a folder of images.")
        require_choice(NODE, "train", train, TRAIN_CHOICES)
        require_choice(NODE, "loc_attention", loc_attention, ATTENTIONS)
        require_choice(NODE, "pairing", pairing, PAIRINGS)
        require_choice(NODE, "precision", precision, PRECISIONS)
        require_choice(NODE, "loc_loss", loc_loss, LOSSES)
        require_choice(NODE, "blocks", blocks, BLOCK_CHOICES)
        regions = face_parser is not None and clip_vision is not None
        needing = {"train": train if "facial_encoder" in TRAIN_CHOICES[train] else None,
                   "loc_attention": loc_attention if loc_attention == "self" else None}
        for name, value in needing.items():
            if value is not None and not regions:
                raise InputError(NODE, name, f"'{value}' {NEEDS_REGIONS}, and face_parser or clip_vision is not "
                                 "connected.", "connect a PartID Face Parser Loader to face_parser and Load CLIP "
                                 "Vision (CLIP-ViT-H/14) to clip_vision.")
        if regions and not adapter.groups.get("FacialEncoder"):
            raise InputError(NODE, "adapter", "the adapter has no FacialEncoder weights to fuse region tokens with.",
                             "load an official ConsistentID file, or disconnect face_parser.")
        require_base_model(NODE, model, adapter, "adapter", CONSISTENTID_BASE_FIX)
        options = JobOptions(train=TRAIN_CHOICES[train], loc_weight=loc_weight, loc_loss=loc_loss, blocks=blocks,
                             paired=paired, resolution=resolution, drop_background=drop_background,
                             gradient_checkpointing=gradient_checkpointing, attention=loc_attention, pairing=pairing)
        config = TrainConfig(steps=steps, batch_size=batch_size, grad_accumulation=grad_accumulation,
                             learning_rate=learning_rate, warmup_steps=warmup_steps, precision=precision, seed=seed,
                             save_every=save_every)
        history, path = run_training(model, vae, clip, adapter, folder, output_name, options, config, resume,
                                     face_parser, analyzer, clip_vision)
        trained = model_files.load_adapter(path, "ConsistentID")
        return io.NodeOutput(trained, loss_curve_image(history), path)


NODES = [TrainConsistentID]
