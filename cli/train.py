"""Headless training: ``python -m <repo_dir> train --config train.json`` (one process), or the same under
``torchrun --nproc_per_node N -m <repo_dir> train --config train.json`` (PyTorch DDP, one process per GPU;
gloo on CPU). Trains ConsistentID or Visual Persona (`family`).

The run is the trainer nodes' own code (nodes/training_run.py, nodes/training_visual_persona.py): ComfyUI is
imported in-process to load the checkpoint (UNet, CLIP, VAE) and drive the UNet. With N processes each takes
its slice of every global batch (`batch_size` is per process: global batch = N x batch_size), DDP averages
gradients, the dataset cache is prepared shard by shard, and only rank 0 writes the adapter and the resume state.

Config keys (JSON):
  family       "ConsistentID" (default) or "Visual Persona"
  checkpoint   base model .safetensors (Visual Persona: SDXL 1.0)
  adapter      start weights (ConsistentID-v1.bin / ConsistentID_SDXL-v1.bin / Visual Persona weight.bin)
  folder, output (.safetensors path), state (resume prefix; default output + ".state"), resume (default true)
  ConsistentID identity models, each optional (without one its inputs stay zero / the mask falls back to
  *_mask.png files, else the whole image):
    face_parser  BiSeNet face_parsing.pth or a SegFormer face-parsing folder (as PartID Face Parser Loader)
    analyzer     insightface pack name (buffalo_l, searched in ComfyUI's insightface folders) or the pack's
                 folder (its name is the pack's); analyzer_provider auto|cpu|cuda (default auto; cpu when cpu)
    clip_vision  CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors
  Visual Persona identity models, both required:
    dinov2       dinov2_vitg14_pretrain.pth or a transformers DINOv2 folder (as PartID DINOv2 Loader)
    body_parser  SegFormer clothes folder or SCHP .onnx (as PartID Body Parser Loader)
  train (list; ConsistentID: facial_encoder, proj_plus, id_kv, lora (facial_encoder and attention "self" need
  face_parser and clip_vision: the fused region tokens); Visual Persona: decoder, id_kv), steps, batch_size,
  grad_accumulation, learning_rate, warmup_steps, weight_decay, precision (fp32|bf16|fp16), seed, save_every,
  max_grad_norm, adam_eps, loc_weight, loc_loss, normalise, attention, pairing, blocks, paired, resolution,
  drop_background, id_weight, gradient_checkpointing, cache_dir, caption, cpu (bool), comfyui (path).
  Visual Persona defaults differ where its trainer node's do: train [decoder, id_kv], paired true,
  resolution 1024.
"""
from __future__ import annotations

import json
import logging
import os
import sys

log = logging.getLogger("partid.cli.train")

JOB_KEYS = ("train", "loc_weight", "loc_loss", "normalise", "attention", "pairing", "blocks", "paired", "resolution",
            "drop_background", "id_weight", "gradient_checkpointing")
CONFIG_KEYS = ("steps", "batch_size", "grad_accumulation", "learning_rate", "warmup_steps", "weight_decay",
               "precision", "seed", "save_every", "max_grad_norm", "adam_eps")
FAMILIES = ("ConsistentID", "Visual Persona")
WHERE = "train config"                          # what InputError names in place of a node
CID_MODELS = ("face_parser", "analyzer", "clip_vision")
VP_MODELS = ("dinov2", "body_parser")
VP_DEFAULTS = {"train": ["decoder", "id_kv"], "paired": True, "resolution": 1024}   # the VP trainer node's


def add_subcommand(sub) -> None:
    p = sub.add_parser("train", help="train a ConsistentID or Visual Persona adapter (config key 'family'; "
                                     "also under torchrun)")
    p.add_argument("--config", required=True,
                   help="training config JSON (keys: family, checkpoint, adapter, folder, output, identity models "
                        "face_parser/analyzer/clip_vision or dinov2/body_parser, ...: see cli/train.py)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="override a config key; VALUE parsed as JSON if possible")


def load_config(path: str, sets: list[str]) -> dict:
    """The config file's JSON object with the --set KEY=VALUE overrides applied (VALUE as JSON if it parses)."""
    from .workflow import parse_value

    try:
        with open(path, encoding="utf-8") as fh:
            config = json.load(fh)
    except OSError as exc:
        raise _error("--config", f"cannot read {path}: {exc.strerror or exc}.", "give the path of a JSON file.")
    except ValueError as exc:
        raise _error("--config", f"{path} is not valid JSON ({exc}).", "fix the file (a JSON object of keys).")
    if not isinstance(config, dict):
        raise _error("--config", f"{path} holds a {type(config).__name__}, not a JSON object.",
                     'write the keys as an object: {"checkpoint": "...", "adapter": "...", ...}.')
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise _error("--set", f"{item!r} is not KEY=VALUE.", "write it as --set steps=200 (no spaces around =).")
        config[key.strip()] = parse_value(value)
    return config


def setup_comfyui(config: dict) -> None:
    """Import ComfyUI in-process (as tier-B tests and main.py do), on CPU when asked."""
    from .server import find_comfyui

    root = config.get("comfyui") or find_comfyui()
    if root and root not in sys.path:
        sys.path.insert(0, root)
    import utils.extra_config  # noqa: F401  (before comfy imports put comfy/ on sys.path: 'utils' must be ComfyUI's)
    import comfy.cli_args

    if config.get("cpu"):
        comfy.cli_args.args.cpu = True
    elif "LOCAL_RANK" in os.environ:
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))


def init_distributed(cpu: bool) -> tuple[int, int]:
    """(rank, world) from torchrun's environment; a process group when world > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if cpu else "nccl")
    return dist.get_rank(), world


def _error(key: str, problem: str, fix: str):
    from ..models.errors import InputError

    return InputError(WHERE, key, problem, fix)


def _require_path(config: dict, key: str, what: str) -> None:
    value = config.get(key)
    if not value:
        raise _error(key, f"missing ({what}).", f'add "{key}": "<path>" to the config (or --set {key}=PATH).')
    if not os.path.exists(value):
        raise _error(key, f"'{value}' does not exist.", f"give the path of {what}.")


def check_config(config: dict, have_model: bool = False, have_adapter: bool = False,
                 have_prepare: bool = False) -> str:
    """Refuse a config that cannot run, before anything is loaded; returns the family."""
    from ..models.training.trainables import CONSISTENTID_PARTS, VISUAL_PERSONA_PARTS

    family = config.get("family", "ConsistentID")
    if family not in FAMILIES:
        raise _error("family", f"unknown family '{family}'.", f"use one of {list(FAMILIES)}.")
    vp = family == "Visual Persona"
    if not have_model:
        _require_path(config, "checkpoint", "an SDXL 1.0 checkpoint" if vp else "an SD1.5 or SDXL checkpoint")
    if not have_adapter:
        _require_path(config, "adapter", "Visual Persona's weight.bin" if vp else "a ConsistentID adapter")
    _require_path(config, "folder", "a folder of training images")
    if not config.get("output"):
        raise _error("output", "missing.", 'add "output": "<path>.safetensors" (where the trained adapter goes).')
    allowed = VISUAL_PERSONA_PARTS if vp else CONSISTENTID_PARTS
    bad = [p for p in config.get("train", ()) if p not in allowed]
    if bad or isinstance(config.get("train"), str):
        raise _error("train", f"{family} trains some of {list(allowed)}; got {config['train']!r}.",
                     f"give a list, e.g. {json.dumps(list(allowed))}.")
    for key in (CID_MODELS if vp else VP_MODELS):
        if config.get(key):
            log.warning("config key '%s' is for the other family; %s training ignores it.", key, family)
    if vp and not have_prepare:
        _require_path(config, "dinov2", "DINOv2 weights (dinov2_vitg14_pretrain.pth)")
        _require_path(config, "body_parser", "a body parser (segformer_b2_clothes folder or SCHP .onnx)")
    elif not vp:
        if config.get("analyzer_provider", "auto") not in ("auto", "cpu", "cuda"):
            raise _error("analyzer_provider", f"unknown provider '{config['analyzer_provider']}'.",
                         'use "auto", "cpu" or "cuda".')
        for key in ("face_parser", "clip_vision"):
            if config.get(key):
                _require_path(config, key, "a face parser" if key == "face_parser" else "CLIP-ViT-H/14")
        regions = bool(config.get("face_parser") and config.get("clip_vision")) or have_prepare
        fix = 'add "face_parser" and "clip_vision" (the fused region tokens need both).'
        if "facial_encoder" in config.get("train", ()) and not regions:
            raise _error("train", "training facial_encoder needs the facial regions fused into the captions.", fix)
        if config.get("attention") == "self" and not regions:
            raise _error("attention", "self-attention maps are taken at the fused region tokens' positions.", fix)
    if vp and config.get("attention", "cross") != "cross":
        raise _error("attention", "Visual Persona's part tokens are only attended by the cross-attention.",
                     'use "attention": "cross" (the default).')
    return family


def _loaded(key: str, read):
    """read(), with a model file of the wrong kind reported under its config key."""
    from ..models.errors import ModelFileError

    try:
        return read()
    except ModelFileError as exc:
        raise exc.at_input(WHERE, key, "give a file of the right kind.") from exc


def load_face_parser(path: str):
    """The face parser engine make_prepare runs (read as PartID Face Parser Loader reads it), on ComfyUI's
    device under its model management, as the trainer node runs it."""
    from ..models import model_files
    from ..nodes import managed

    weights = _loaded("face_parser", lambda: model_files.load_parser(path, "face"))
    return managed.OnUse(lambda: managed.face_parser(weights))


def load_analyzer(name_or_folder: str, provider: str = "auto"):
    """An insightface pack by name (ComfyUI's insightface folders, as PartID Face Analysis Loader) or folder."""
    from ..models import face_analysis_pack

    if os.path.isdir(name_or_folder):
        folder = os.path.abspath(name_or_folder)
        roots, name = [os.path.dirname(folder)], os.path.basename(folder)
    else:
        from ..nodes.folders import register_model_folders, search_folders

        register_model_folders()
        roots, name = search_folders("insightface"), name_or_folder
    return _loaded("analyzer", lambda: face_analysis_pack.open_pack(roots, name, provider))


def load_clip_vision(path: str):
    """CLIP-ViT-H/14 through ComfyUI's own loader (what Load CLIP Vision gives the trainer node)."""
    import comfy.clip_vision

    from ..models.errors import InputError
    from ..nodes.consistentid_encode import check_clip_vision

    model = comfy.clip_vision.load(path)
    if model is None:
        raise _error("clip_vision", f"{path} is not an image encoder ComfyUI recognises.",
                     "give CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors.")
    try:
        check_clip_vision(model)
    except InputError as exc:
        raise _error("clip_vision", exc.problem, "give CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors.") from exc
    return model


def load_dinov2(path: str):
    """DINOv2 weights as PartID DINOv2 Loader reads them."""
    from ..models import model_files

    return _loaded("dinov2", lambda: model_files.load_dinov2(path))


def load_body_parser(path: str):
    """Body parser weights as PartID Body Parser Loader reads them (make_vp_prepare builds the engine)."""
    from ..models import model_files

    return _loaded("body_parser", lambda: model_files.load_parser(path, "body"))


def _abs(value):
    return os.path.abspath(value) if isinstance(value, str) and os.path.exists(value) else value


def cache_key(config: dict, family: str, resolution: int, extra: str = "") -> str:
    """What the cached items depend on: the family, resolution, base model and every identity model (and
    `extra`: how the prepare marks captions)."""
    models = VP_MODELS if family == "Visual Persona" else CID_MODELS
    return "|".join(str(x) for x in (family, resolution, _abs(config.get("checkpoint")),
                                     *(f"{k}={_abs(config.get(k))}" for k in models), extra))


def load_identity_models(config: dict, family: str, adapter) -> dict:
    """The identity-side models the family's trainer node takes as inputs, loaded as its loader nodes load them."""
    if family == "Visual Persona":
        from ..nodes.visual_persona_encode import check_inputs

        from ..models.errors import InputError

        dinov2 = load_dinov2(config["dinov2"])
        try:
            check_inputs(dinov2, adapter, WHERE)        # the decoder's token width
        except InputError as exc:
            raise _error("dinov2", exc.problem, "give the path of the DINOv2 the adapter's decoder takes "
                         "(Visual Persona: dinov2_vitg14_pretrain.pth, ViT-g/14).") from exc
        return {"dinov2_weights": dinov2, "body_parser": load_body_parser(config["body_parser"])}
    analyzer = config.get("analyzer")
    # A CPU run keeps onnxruntime on the CPU too (auto would try, and loudly fail, to start CUDA first).
    provider = config.get("analyzer_provider", "cpu" if config.get("cpu") else "auto")
    return {"face_parser": load_face_parser(config["face_parser"]) if config.get("face_parser") else None,
            "analyzer": load_analyzer(analyzer, provider) if analyzer else None,
            "clip_vision": load_clip_vision(config["clip_vision"]) if config.get("clip_vision") else None}


def build_prepare(family: str, vae, clip, resolution: int, models: dict):
    """The dataset preparation the family's trainer node builds (the same functions)."""
    if family == "Visual Persona":
        from ..nodes.training_visual_persona import make_vp_prepare

        return make_vp_prepare(vae, clip, resolution, models["dinov2_weights"], models["body_parser"])
    from ..nodes.training_run import make_prepare

    return make_prepare(vae, clip, resolution, **models)


def _check_base(model, family: str, adapter) -> None:
    from ..models import model_files

    unet_config = model.model.model_config.unet_config
    context = unet_config.get("context_dim")
    if family == "Visual Persona" and context != 2048:
        raise _error("checkpoint", f"this checkpoint's text width is {context}; Visual Persona is made for SDXL "
                     "(2048).", "give an SDXL 1.0 checkpoint (sd_xl_base_1.0.safetensors).")
    if getattr(adapter, "path", None):
        model_files.check_base(adapter, context, type(model.model).__name__)


def run(config: dict, model=None, clip=None, vae=None, adapter=None, layout=None, prepare=None):
    """Train as configured; the loaded objects may be given (tests pass tiny ones). Returns the Trainer."""
    import torch

    from ..models.training.dataset import CachedDataset
    from ..models.training.trainer import TrainConfig, remove_state
    from ..nodes.training_run import IdentitySession, JobOptions, layout_for, run_session, weights_fingerprint

    family = check_config(config, model is not None, adapter is not None, prepare is not None)
    vp = family == "Visual Persona"
    cpu = bool(config.get("cpu", not torch.cuda.is_available()))
    rank, world = init_distributed(cpu)
    if adapter is None:
        from ..models import model_files

        adapter = _loaded("adapter", lambda: model_files.load_adapter(config["adapter"], family))
    job = {k: config[k] for k in JOB_KEYS if k in config}
    if vp:
        job = {**VP_DEFAULTS, **job}
    if "train" in job:
        job["train"] = tuple(job["train"])
    try:
        options = JobOptions(**job)
    except ValueError as exc:   # its messages start with the option's name ("blocks must be one of ...")
        raise _error(str(exc).split()[0], str(exc) + ".", "use one of the values listed.") from exc
    try:
        train_config = TrainConfig(**{k: config[k] for k in CONFIG_KEYS if k in config})
    except ValueError as exc:   # likewise ("precision must be one of ..."), before the checkpoint loads
        raise _error(str(exc).split()[0].rstrip(","), str(exc) + ".", "use one of the values listed.") from exc
    # Identity models before the checkpoint: a wrong path or file fails in seconds, not after the UNet loads.
    models = load_identity_models(config, family, adapter) if prepare is None else None
    if models is not None and not vp:   # the fused-region caption marking, as the ConsistentID trainer node sets it
        from ..nodes.training_regions import FacialText

        models["facial"] = FacialText(adapter.format.base, options.pairing)
    if model is None:
        import comfy.sd

        model, clip, vae = comfy.sd.load_checkpoint_guess_config(config["checkpoint"], output_vae=True,
                                                                 output_clip=True)[:3]
    _check_base(model, family, adapter)
    prepare = prepare or build_prepare(family, vae, clip, options.resolution, models)
    layout = layout or layout_for(adapter)
    output = config["output"]
    state = config.get("state", output + ".state")
    if not config.get("resume", True) and rank == 0:
        remove_state(state)
    facial = (models or {}).get("facial")
    # The VAE's and CLIP's weights, not only the checkpoint's path: a file replaced at the same path must not
    # reuse the old latents and text (as the trainer nodes key them).
    extra = "|".join((facial.key if facial else "", weights_fingerprint(vae), weights_fingerprint(clip)))
    dataset = CachedDataset(config["folder"], prepare, cache_key(config, family, options.resolution, extra),
                            cache_dir=config.get("cache_dir"),
                            default_caption=config.get("caption", "a photo of a person"))
    dataset.prepare_all(rank, world)
    getattr(prepare, "release", lambda: None)()     # Visual Persona: DINOv2 is not needed once cached
    if world > 1:
        import torch.distributed as dist

        dist.barrier()   # every shard cached (and a stale state removed) before anyone reads
    device = torch.device(model.load_device)
    with torch.inference_mode(False):
        session = IdentitySession(model, adapter.groups, layout, options, dataset, device,
                                  shortcut=adapter.format.base == "sdxl", family=family)

        def progress(step, steps, logs):
            if rank == 0:
                log.info("step %d/%d loss %.5f noise %.5f loc %.5f", step, steps, logs.get("loss", 0.0),
                         logs.get("noise", 0.0), logs.get("loc", float("nan")))

        trainer = run_session(session, train_config, output, state, progress=progress,
                              distributed=world > 1)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return trainer


def main(args) -> int:
    from ..models.errors import PartIDError
    from .client import EXIT_USAGE

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.sets)
        setup_comfyui(config)
        run(config)
    except PartIDError as exc:   # a config or model-file problem: the message names the key and the fix
        log.error("%s", exc)
        return EXIT_USAGE
    return 0
