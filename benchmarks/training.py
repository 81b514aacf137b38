"""Benchmark (not a test): PartID's ConsistentID trainer vs ComfyUI's own Train LoRA node, same model, batch, size.

    python benchmarks/training.py                       # CPU smoke run: random full-size SD1.5 UNet, 128x128, batch 1
    python benchmarks/training.py --device cuda         # SD1.5 at 512 and SDXL at 1024, batch 1, bf16
    python benchmarks/training.py --tiny                # seconds: the tier-B tiny SD1.5 UNet (numbers mean nothing)

Both trainers run on the same random-weight UNet of the real config (ComfyUI's own model classes),
built in-process, with random latents and text conditioning (the UNet cost does not depend on the
values). PartID trains the ConsistentID ID key/value projections and the rank-128 LoRA on every
attention (an adapter sized for the UNet, random weights, LoRA up zero as officially initialised),
with the localisation loss on (lambda 0.01, the five middle blocks); ComfyUI's TrainLoraNode trains
its rank-128 LoRA on every weight of the UNet (its default: all layers), AdamW, MSE. A third row is
the official set: FacialEncoder (full size) + ProjPlus + ID key/value + LoRA with five region tokens
fused into the text and the localisation loss on them.

"step" = (wall time of an N-step run - wall time of a 1-step run) / (N - 1): model loading, adapter
setup and the first step's allocations are excluded alike. "peak" = torch.cuda.max_memory_allocated on
GPU, the process's peak RSS on CPU (reset per run where Linux allows). Runs over ~3 GB of RAM take the
shared-machine lock (harness.heavy_lock).
"""
from __future__ import annotations

import argparse
import time

import torch

import harness  # noqa: E402  (registers the repo as package `partid`; tests/ on sys.path)

SETTINGS = {("cpu", "sd15"): 128, ("cuda", "sd15"): 512, ("cuda", "sdxl"): 1024}


def random_unet(base: str, device: str, dtype: torch.dtype, tiny: bool = False):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SD15_UNET, SDXL_UNET, TINY_SD15_UNET, init_random_

    sd15 = TINY_SD15_UNET if tiny else SD15_UNET
    config = (comfy.supported_models.SD15(sd15) if base == "sd15" else comfy.supported_models.SDXL(SDXL_UNET))
    config.set_inference_dtype(dtype, None)
    model = init_random_(config.get_model({}, device="cpu"), 0)
    return comfy.model_patcher.ModelPatcher(model, torch.device(device), torch.device("cpu"))


def adapter_groups(base: str, unet_layout, facial: bool = False) -> dict:
    from fixtures_builders.random_weights import random_state

    from partid.models.layouts.consistentid import adapter_modules_layout, consistentid_layout

    layout = consistentid_layout(base)
    encoder = random_state(layout["FacialEncoder"], 2, dtype=torch.float32) if facial else {}
    groups = {"image_proj": random_state(next(iter(layout.values())), 0, dtype=torch.float32), "FacialEncoder": encoder,
              "adapter_modules": random_state(adapter_modules_layout(unet_layout), 1, dtype=torch.float32)}
    groups["adapter_modules"] = {k: (torch.zeros_like(v) if k.endswith("_lora.up.weight") else v)
                                 for k, v in groups["adapter_modules"].items()}
    return groups


def conditioning(base: str, batch: int, size: int):
    ctx_dim = 768 if base == "sd15" else 2048
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(batch, 4, size // 8, size // 8, generator=gen)
    context = torch.randn(batch, 77, ctx_dim, generator=gen)
    pooled = torch.randn(batch, 1280, generator=gen) if base == "sdxl" else None
    return latents, context, pooled


def run_partid(pack, patcher, base: str, size: int, steps: int, precision: str, checkpointing: bool,
               tiny: bool = False, official: bool = False) -> float:
    from fixtures_builders.training import TINY_SD15_LAYOUT

    from partid.models.layouts.unet_attention import UNETS
    from partid.models.training.dataset import CachedDataset, Sample
    from partid.models.training.trainer import TrainConfig

    training_run = pack(".nodes.training_run")
    latents, context, pooled = conditioning(base, 1, size)
    item = {"latent": latents[0], "context": context[0], "mask": torch.ones(size // 8, size // 8) * 0.5,
            "arcface": torch.randn(512), "clip_states": torch.randn(257, 1280) * 0.1}
    if pooled is not None:
        item["pooled"] = pooled[0]
    train = ("id_kv", "lora")
    if official:   # five regions fused after words 4, 8, ... of the text; each region a quarter of the image
        train = ("facial_encoder", "proj_plus", "id_kv", "lora")
        masks = torch.zeros(5, size // 8, size // 8)
        for r in range(5):
            masks[r, (r % 2) * size // 16:(r % 2 + 1) * size // 16, (r // 2 % 2) * size // 16:] = 1
        item.update(region_states=torch.randn(5, 257, 1280) * 0.1, slot_positions=torch.arange(4, 24, 4),
                    region_masks=masks)
    dataset = CachedDataset("unused", lambda p, s: item, "bench", samples=[Sample("x.png", "", "x")])
    dataset._memory[0] = item
    options = training_run.JobOptions(train=train, loc_weight=0.01, resolution=size,
                                      gradient_checkpointing=checkpointing)
    device = torch.device(patcher.load_device)
    with torch.inference_mode(False):
        layout = TINY_SD15_LAYOUT if tiny else UNETS[base]
        session = training_run.ConsistentIDSession(patcher, adapter_groups(base, layout, official), layout, options,
                                                   dataset, device, shortcut=base == "sdxl")
        harness.sync(device.type)
        start = time.perf_counter()
        training_run.run_consistentid(session, TrainConfig(steps=steps, precision=precision, learning_rate=1e-4),
                                      "/tmp/partid_bench_train.safetensors", None)
        harness.sync(device.type)
    return time.perf_counter() - start


def run_comfy_lora(nodes, patcher, base: str, size: int, steps: int, precision: str, checkpointing: bool) -> float:
    import comfy_extras.nodes_train as nodes_train

    latents, context, pooled = conditioning(base, 1, size)
    extra = {} if pooled is None else {"pooled_output": pooled}
    positive = [[context, extra]]
    harness.sync(patcher.load_device.type)
    start = time.perf_counter()
    with torch.inference_mode():
        nodes_train.TrainLoraNode().train(patcher, {"samples": latents}, positive, 1, steps, 1, 1e-4, 128, "AdamW",
                                          "MSE", 0, precision, "fp32" if precision == "fp32" else "bf16", "LoRA",
                                          checkpointing, "[None]")
    harness.sync(patcher.load_device.type)
    return time.perf_counter() - start


def measure(fn, steps: int, device: str) -> tuple[float, float]:
    """(seconds per step, peak bytes of the N-step run)."""
    one = fn(1)
    harness.reset_peak(device)
    many = fn(steps)
    return (many - one) / (steps - 1), harness.peak_bytes(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bases", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps of the timed run (default: cpu 3, cuda 20)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="the tiny SD1.5 UNet (a smoke run of the code path)")
    args = parser.parse_args()
    harness.cpu_settings(args.threads, False)
    _, nodes, pack = harness.start_comfy(args.device)
    bases = args.bases or (["sd15"] if args.device == "cpu" else ["sd15", "sdxl"])
    steps = args.steps or (2 if args.device == "cpu" else 20)
    precision = "fp32" if args.device == "cpu" else "bf16"
    rows = []
    with harness.heavy_lock(not args.tiny):
        for base in bases:
            size = 64 if args.tiny else SETTINGS[(args.device, base)]
            dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
            patcher = random_unet(base, args.device, dtype, args.tiny)
            for name, fn in (
                    ("PartID ConsistentID (id_kv + LoRA, loc 0.01)",
                     lambda n: run_partid(pack, patcher, base, size, n, precision, args.gradient_checkpointing,
                                          args.tiny)),
                    ("ComfyUI Train LoRA (rank 128, all layers)",
                     lambda n: run_comfy_lora(nodes, patcher, base, size, n, precision, args.gradient_checkpointing)),
                    ("PartID ConsistentID official set (FacialEncoder + ProjPlus + id_kv + LoRA, 5 fused regions)",
                     lambda n: run_partid(pack, patcher, base, size, n, precision, args.gradient_checkpointing,
                                          args.tiny, official=True))):
                per_step, peak = measure(fn, steps, args.device)
                rows.append((base, f"{size}x{size}", name, f"{per_step:.3f}", f"{peak / 2**20:.0f}"))
                print(f"{base} {size} {name}: {per_step:.3f} s/step, {harness.peak_label(args.device)} "
                      f"{peak / 2**20:.0f}", flush=True)
            patcher = None   # free the UNet before the next base
    table = harness.markdown_table(("base", "size", "trainer", "s/step", harness.peak_label(args.device)), rows)
    print(f"\n{harness.machine(args.device)}, batch 1, {precision}, checkpointing {args.gradient_checkpointing}\n")
    print(table)


if __name__ == "__main__":
    main()
