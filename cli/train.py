"""Headless training: ``python -m <repo_dir> train --config train.json`` (one process), or the same under
``torchrun --nproc_per_node N -m <repo_dir> train --config train.json`` (PyTorch DDP, one process per GPU;
gloo on CPU).

The run is the trainer node's own code (nodes/training_run.py): ComfyUI is imported in-process to load
the checkpoint (UNet, CLIP, VAE) and drive the UNet. With N processes each takes its slice of every
global batch (`batch_size` is per process: global batch = N x batch_size), DDP averages gradients, the
dataset cache is prepared shard by shard, and only rank 0 writes the adapter and the resume state.

Config keys (JSON): checkpoint, adapter, folder, output (.safetensors path), state (resume prefix;
default output + ".state"), resume (default true), train (list: proj_plus, id_kv, lora), steps,
batch_size, grad_accumulation, learning_rate, warmup_steps, precision (fp32|bf16|fp16), seed,
save_every, adam_eps, loc_weight, loc_loss, blocks, paired, resolution, drop_background,
gradient_checkpointing, cache_dir, caption, cpu (bool), comfyui (path).
"""
from __future__ import annotations

import json
import logging
import os
import sys

log = logging.getLogger("partid.cli.train")

JOB_KEYS = ("train", "loc_weight", "loc_loss", "normalise", "blocks", "paired", "resolution", "drop_background",
            "id_weight", "gradient_checkpointing")
CONFIG_KEYS = ("steps", "batch_size", "grad_accumulation", "learning_rate", "warmup_steps", "weight_decay",
               "precision", "seed", "save_every", "max_grad_norm", "adam_eps")


def add_subcommand(sub) -> None:
    p = sub.add_parser("train", help="train a ConsistentID adapter (also under torchrun)")
    p.add_argument("--config", required=True, help="training config JSON (keys: see cli/train.py)")
    p.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE",
                   help="override a config key; VALUE parsed as JSON if possible")


def load_config(path: str, sets: list[str]) -> dict:
    with open(path, encoding="utf-8") as fh:
        config = json.load(fh)
    for item in sets:
        key, _, value = item.partition("=")
        try:
            config[key] = json.loads(value)
        except json.JSONDecodeError:
            config[key] = value
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


def run(config: dict, model=None, clip=None, vae=None, adapter=None, layout=None, prepare=None):
    """Train as configured; the loaded objects may be given (tests pass tiny ones). Returns the Trainer."""
    import torch

    from ..models.training.dataset import CachedDataset
    from ..models.training.trainer import TrainConfig
    from ..nodes.training_run import ConsistentIDSession, JobOptions, layout_for, make_prepare, run_consistentid

    cpu = bool(config.get("cpu", not torch.cuda.is_available()))
    rank, world = init_distributed(cpu)
    if model is None:
        import comfy.sd

        model, clip, vae = comfy.sd.load_checkpoint_guess_config(config["checkpoint"], output_vae=True,
                                                                 output_clip=True)[:3]
    if adapter is None:
        from ..models import model_files

        adapter = model_files.load_adapter(config["adapter"], "ConsistentID")
    layout = layout or layout_for(adapter)
    job = {k: config[k] for k in JOB_KEYS if k in config}
    if "train" in job:
        job["train"] = tuple(job["train"])
    options = JobOptions(**job)
    train_config = TrainConfig(**{k: config[k] for k in CONFIG_KEYS if k in config})
    output = config["output"]
    state = config.get("state", output + ".state")
    if not config.get("resume", True) and rank == 0:
        for suffix in (".pt", ".safetensors"):
            if os.path.isfile(state + suffix):
                os.remove(state + suffix)
    prepare = prepare or make_prepare(vae, clip, options.resolution)
    dataset = CachedDataset(config["folder"], prepare, f"{options.resolution}|{config.get('checkpoint')}",
                            cache_dir=config.get("cache_dir"), default_caption=config.get("caption",
                                                                                          "a photo of a person"))
    dataset.prepare_all(rank, world)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()   # every shard cached (and a stale state removed) before anyone reads
    device = torch.device(model.load_device)
    with torch.inference_mode(False):
        session = ConsistentIDSession(model, adapter.groups, layout, options, dataset, device,
                                      shortcut=adapter.format.base == "sdxl")

        def progress(step, steps, logs):
            if rank == 0:
                log.info("step %d/%d loss %.5f noise %.5f loc %.5f", step, steps, logs.get("loss", 0.0),
                         logs.get("noise", 0.0), logs.get("loc", float("nan")))

        trainer = run_consistentid(session, train_config, output, state, progress=progress,
                                   distributed=world > 1)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return trainer


def main(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = load_config(args.config, args.sets)
    setup_comfyui(config)
    run(config)
    return 0
