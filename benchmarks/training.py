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
setup and the first step's allocations are excluded alike. The trainers run interleaved (A, B, C, A, B,
C, ...) --repeats times and each cell is the median. "peak" = torch.cuda.max_memory_allocated on GPU,
the process's peak RSS on CPU (reset per run where Linux allows), the largest over the repeats. Writes
training.md and training.json into --out (default benchmarks/results/<device>), and with --readme
replaces the text between `<!-- training benchmark -->` and `<!-- /training benchmark -->` in that file.
Runs over ~3 GB of RAM take the shared-machine lock (harness.heavy_lock).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import harness  # noqa: E402  (registers the repo as package `partid`; tests/ on sys.path)
import bench_models as bm  # noqa: E402

SETTINGS = {("cpu", "sd15"): 128, ("cuda", "sd15"): 512, ("cuda", "sdxl"): 1024}
README_MARKER = "training benchmark"
COLUMNS = ("base", "size", "trainer", "s/step", "ratio vs ComfyUI Train LoRA")


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
        session = training_run.IdentitySession(patcher, adapter_groups(base, layout, official), layout, options,
                                               dataset, device, shortcut=base == "sdxl")
        harness.sync(device.type)
        start = time.perf_counter()
        training_run.run_session(session, TrainConfig(steps=steps, precision=precision, learning_rate=1e-4),
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


def measure(fn, steps: int, device: str) -> dict:
    """{"step_s": seconds per step, "peak_bytes": peak of the N-step run}."""
    one = fn(1)
    harness.reset_peak(device)
    many = fn(steps)
    return {"step_s": (many - one) / (steps - 1), "peak_bytes": harness.peak_bytes(device)}


PARTID, COMFY, OFFICIAL = ("PartID ConsistentID (id_kv + LoRA, loc 0.01)", "ComfyUI Train LoRA (rank 128, all layers)",
                           "PartID ConsistentID official set (FacialEncoder + ProjPlus + id_kv + LoRA, 5 fused regions)")


def render(result: dict) -> str:
    info, s = result["machine"], result["settings"]
    lines = []
    if info["device"] == "cpu":
        lines += ["**GPU table: not measured yet.** What follows is a CPU run (small images): it shows the format, "
                  "not the GPU cost. On a CUDA machine `python benchmarks/training.py --device cuda --readme "
                  "README.md` replaces this block.", ""]
    lines += [f"Machine: {harness.machine_line(info)}.", "", f"Command: `{s['command']}`", "",
              f"Batch 1, {s['precision']}, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
              f"{s['steps']}-step runs minus 1-step runs, median of {s['repeats']} interleaved repeats; random "
              f"weights, {'tiny UNet: numbers meaningless' if s['tiny'] else 'real UNet sizes'}.", ""]
    rows = [(r["base"], f"{r['size']}x{r['size']}", r["trainer"], f"{r['step_s']:.3f}", f"{r['ratio']:.2f}",
             f"{r['peak_mib']:.0f}") for r in result["rows"]]
    lines.append(harness.markdown_table(COLUMNS + (harness.peak_label(info["device"]),), rows))
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--bases", nargs="*", default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps of the timed run (default: cpu 2, cuda 20)")
    parser.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default: cpu 1, cuda 3)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="the tiny SD1.5 UNet (a smoke run of the code path)")
    parser.add_argument("--out", type=Path, help="folder for training.md / training.json "
                                                 "(default benchmarks/results/<device>)")
    parser.add_argument("--readme", type=Path, help="also replace the marked training-benchmark block of this file")
    args = parser.parse_args(argv)
    harness.cpu_settings(args.threads, False)
    _, nodes, pack = harness.start_comfy(args.device)
    bases = args.bases or (["sd15"] if args.device == "cpu" else ["sd15", "sdxl"])
    steps = args.steps or (2 if args.device == "cpu" else 20)
    repeats = args.repeats or (1 if args.device == "cpu" else 3)
    precision = "fp32" if args.device == "cpu" else "bf16"
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    ckpt = args.gradient_checkpointing
    result = {"machine": harness.machine_info(args.device),
              "settings": {"command": "python benchmarks/training.py " + " ".join(sys.argv[1:] if argv is None else argv),
                           "steps": steps, "repeats": repeats, "precision": precision, "gradient_checkpointing": ckpt,
                           "tiny": args.tiny, "batch": 1},
              "rows": []}
    with harness.heavy_lock(not args.tiny):
        for base in bases:
            size = 64 if args.tiny else SETTINGS[(args.device, base)]
            patcher = bm.build_base(base, args.tiny, args.device, pack, dtype).model
            trainers = {
                PARTID: lambda n: run_partid(pack, patcher, base, size, n, precision, ckpt, args.tiny),
                COMFY: lambda n: run_comfy_lora(nodes, patcher, base, size, n, precision, ckpt),
                OFFICIAL: lambda n: run_partid(pack, patcher, base, size, n, precision, ckpt, args.tiny, official=True)}
            runs = harness.interleaved({name: (lambda fn=fn: measure(fn, steps, args.device))
                                        for name, fn in trainers.items()}, repeats, warmup=0)
            comfy_step = harness.median_of(runs[COMFY], "step_s")
            for name, r in runs.items():
                step = harness.median_of(r, "step_s")
                result["rows"].append({"base": base, "size": size, "trainer": name, "step_s": step,
                                       "ratio": step / comfy_step, "peak_mib": max(x["peak_bytes"] for x in r) / 2 ** 20,
                                       "step_s_all": [x["step_s"] for x in r]})
                print(f"{base} {size} {name}: {step:.3f} s/step", flush=True)
            patcher = None   # free the UNet before the next base
    text = render(result)
    md, js = harness.write_results(args.out or harness.REPO / "benchmarks" / "results" / args.device, "training",
                                   "# PartID training benchmark\n\n" + text, result)
    if args.readme:
        harness.update_readme(args.readme, text, README_MARKER)
    sys.stdout.write("\n" + text + f"\nwrote {md} and {js}\n")
    return result


if __name__ == "__main__":
    main()
