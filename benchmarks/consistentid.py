"""Benchmark (not a test): ConsistentID's sampling overhead and its preprocessing, in the real ComfyUI.

    python benchmarks/consistentid.py                                   # CPU: random SD1.5, 128x128, 4 steps
    python benchmarks/consistentid.py --device cuda                     # SD1.5 512x512 30 steps, SDXL 1024x1024 30
    python benchmarks/consistentid.py --device cuda --base sd15 --checkpoint ~/ComfyUI/models/checkpoints/x.safetensors

Everything runs through PartID's nodes as ComfyUI loads them: face analysis (buffalo_l), face regions
(BiSeNet), ConsistentID Encode (CLIP-ViT-H/14: the present regions + the whole reference in one
batch), Text Fusion (SD1.5), Apply. Without --checkpoint / --adapter / --clip-vision it uses the test
fixtures' random-weight files: the full-size SD1.5 checkpoint, the official-layout adapters, CLIP-H and
BiSeNet have the released architectures, so their times are the real ones; the random insightface
packs are tiny graphs (face analysis is not representative, see benchmarks/face_analysis.py). SDXL
without --checkpoint is a random full-size UNet built in-process with random text conditioning (no
text fusion row).

CPU caveat (2-core AMD EPYC VM, random weights): the patched model sampled 1.55x slower than the plain
one at 2 threads and 1.29x at 1 thread, but 0.99x at 1 thread with --flush-denormal: the random
adapter (LoRA merged into the weights, so no extra operations per step) drives some values into
subnormal floats, on which x86 is slow. torch sets flush-to-zero per thread, so the flag only takes
full effect with --threads 1. Trained weights need not do this; GPU kernels flush subnormals anyway.

Sampling: plain vs ConsistentID-patched model, interleaved (plain, patched, plain, ...) --repeats
times, Euler, CFG 5. "step" is the median time per sampler step between the first and the last step
callback (model loading and the LoRA merge excluded); "call" is the whole sampling call; "switch" is
loading the patched model right after the plain one, i.e. merging the adapter LoRA into the shared UNet
weights (timed on its own, before the patched call; the plain call that follows takes it out again). Preprocessing rows: median ms per reference over --repeats runs after a
warm-up (the warm-up computes the CLIP-H states of the zero input, cached per CLIP vision model).
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

import harness  # noqa: E402  (benchmarks/harness.py: registers the repo as package `partid`)
from harness import machine, sync, timed  # noqa: E402
from harness import run_node as run  # noqa: E402

SETTINGS = {("cpu", "sd15"): (128, 4), ("cuda", "sd15"): (512, 30), ("cuda", "sdxl"): (1024, 30),
            ("cpu", "sdxl"): (256, 2)}


def random_sdxl(device: str):
    import comfy.model_patcher
    import comfy.supported_models
    from fixtures_builders.sd_models import SDXL_UNET, init_random_

    config = comfy.supported_models.SDXL(SDXL_UNET)
    config.set_inference_dtype(torch.float16 if device == "cuda" else torch.float32, None)
    model = init_random_(config.get_model({}, device="cpu"), 0)
    cpu, dev = torch.device("cpu"), torch.device(device)
    return comfy.model_patcher.ModelPatcher(model, dev, cpu)


def sample_timed(model, conds, size: int, steps: int, device: str) -> tuple[float, float, float]:
    """(wall seconds per step between first and last callback, whole call wall seconds, process CPU
    seconds per step: on a shared CPU this one is far less disturbed by other processes)."""
    import comfy.sample

    marks = []
    latent = torch.zeros(1, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    sync(device)
    start = time.perf_counter()

    def callback(step, x0, x, total):
        sync(device)
        marks.append((time.perf_counter(), time.process_time()))

    with torch.inference_mode():
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", conds[0], conds[1], latent,
                            callback=callback, disable_pbar=True)
    sync(device)
    total = time.perf_counter() - start
    n = max(len(marks) - 1, 1)
    return (marks[-1][0] - marks[0][0]) / n, total, (marks[-1][1] - marks[0][1]) / n


def bench_base(args, nodes, base: str, clip_vision, photo, where: str) -> None:
    """Print the rows of one base model."""
    size, steps = SETTINGS[(args.device, base)]
    size, steps = args.size or size, args.steps or steps
    clip = vae = None
    if args.checkpoint or base == "sd15":
        ckpt = Path(args.checkpoint).name if args.checkpoint else "partid_random_sd15.safetensors"
        model, clip, vae = nodes.CheckpointLoaderSimple().load_checkpoint(ckpt)[:3]
    else:
        model = random_sdxl(args.device)
    adapter_name = (Path(args.adapter).name if args.adapter else
                    {"sd15": "consistentid_sd15", "sdxl": "consistentid_sdxl"}[base])
    (adapter,) = run(nodes, "PartIDConsistentIDLoader", adapter=adapter_name, model=model)
    (analyzer,) = run(nodes, "PartIDFaceAnalysisLoader", pack="buffalo_l",
                      provider="cuda" if args.device == "cuda" else "cpu")
    (face_parser,) = run(nodes, "PartIDFaceParserLoader", parser="bisenet_face_parsing")

    def row(stage, med, best, note=""):
        print(f"| {where} | {base} | {stage} | {med * 1000:.0f} ({best * 1000:.0f}) | {note} |")

    (faces, embeds, *_), med, best = timed(args.device, lambda: run(
        nodes, "PartIDFaceAnalysis", analyzer=analyzer, image=photo, det_thresh=0.2, on_no_face="bypass"),
        args.repeats)
    row("face analysis (buffalo_l)", med, best, "random tiny test graphs: not representative")
    masks, med, best = timed(args.device, lambda: run(nodes, "PartIDFaceRegions", parser=face_parser,
                                                      image=photo, resolution=512 if base == "sd15" else 1280),
                             args.repeats)
    row("face regions (BiSeNet)", med, best, f"parse at {512 if base == 'sd15' else 1280}")
    masks = dict(zip(("face", "eyes", "ears", "nose", "mouth"), masks[:5]))
    (regions, image_states), med, best = timed(args.device, lambda: run(
        nodes, "PartIDConsistentIDEncode", clip_vision=clip_vision, image=photo, **masks), args.repeats)
    row("encode (region images + CLIP-H)", med, best,
        f"{int(regions.present.sum()) + 1} images in one CLIP-H batch")
    if clip is not None and base == "sd15":
        conds, med, best = timed(args.device, lambda: run(
            nodes, "PartIDConsistentIDText", clip=clip, adapter=adapter, regions=regions,
            text="a photo of an astronaut", negative="blurry"), args.repeats)
        row("text fusion (FacialEncoder)", med, best)
    elif clip is not None:
        conds, *_ = timed(args.device, lambda: run(nodes, "PartIDConsistentIDText", clip=clip, adapter=adapter,
                                                   regions=regions, text="a photo of an astronaut"), 1, 0)
    else:
        gen = torch.Generator().manual_seed(1)
        conds = tuple([[torch.randn(1, 77, 2048, generator=gen), {"pooled_output": torch.randn(1, 1280, generator=gen)}]]
                      for _ in range(2))
    (patched,), med, best = timed(args.device, lambda: run(
        nodes, "PartIDConsistentIDApply", model=model, adapter=adapter, embeddings=embeds,
        image_states=image_states), args.repeats)
    row("apply (ProjPlus + patches)", med, best)

    import comfy.model_management as mm

    plain_steps, patched_steps, plain_calls, patched_calls, switches, plain_cpu, patched_cpu = ([] for _ in range(7))
    sample_timed(model, conds, size, min(steps, 2), args.device)            # warm-up
    for _ in range(args.repeats):
        s, c, p = sample_timed(model, conds, size, steps, args.device)
        plain_steps.append(s)
        plain_calls.append(c)
        plain_cpu.append(p)
        sync(args.device)
        t0 = time.perf_counter()
        mm.load_models_gpu([patched])                                        # the LoRA merge alone
        sync(args.device)
        switches.append(time.perf_counter() - t0)
        s, c, p = sample_timed(patched, conds, size, steps, args.device)
        patched_steps.append(s)
        patched_calls.append(c)
        patched_cpu.append(p)
    med = statistics.median
    note = f"{size}x{size}, {steps} steps, euler, cfg 5"
    row("sampler step, plain", med(plain_steps), min(plain_steps), note)
    row("sampler step, ConsistentID", med(patched_steps), min(patched_steps),
        f"ratio {med(patched_steps) / med(plain_steps):.3f}")
    if args.device == "cpu":
        row("sampler step CPU time, plain", med(plain_cpu), min(plain_cpu), "process CPU seconds, all threads")
        row("sampler step CPU time, ConsistentID", med(patched_cpu), min(patched_cpu),
            f"ratio {med(patched_cpu) / med(plain_cpu):.3f}")
    row("sampling call, plain", med(plain_calls), min(plain_calls), note)
    row("sampling call, ConsistentID", med(patched_calls), min(patched_calls),
        f"ratio {med(patched_calls) / med(plain_calls):.3f}")
    row("switch to patched (LoRA merge)", med(switches), min(switches), "once per model load")
    mm.unload_all_models()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--base", choices=("sd15", "sdxl", "both"), help="default: sd15 on cpu, both on cuda")
    parser.add_argument("--size", type=int, help="image side (default 128 cpu / 512 SD1.5 / 1024 SDXL on cuda)")
    parser.add_argument("--steps", type=int, help="sampler steps (default 4 cpu / 30 cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--checkpoint", help="a real checkpoint file (used for the --base given)")
    parser.add_argument("--adapter", help="a real ConsistentID .bin (default: the random test file)")
    parser.add_argument("--clip-vision", help="a real CLIP-ViT-H-14 safetensors (default: the random test file)")
    parser.add_argument("--threads", type=int, help="CPU: torch threads (default: torch's choice)")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="CPU: flush subnormal floats to zero (ComfyUI does not; per thread: use --threads 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        torch.set_flush_denormal(True)
    if args.base == "both" or (args.base is None and args.device == "cuda"):
        bases = ["sd15", "sdxl"]
    else:
        bases = [args.base or "sd15"]
    folder_paths, nodes, _ = harness.start_comfy(args.device)
    from fixtures_builders.clip_vision import link_clip_vision
    from fixtures_builders.layout import populate_models_dir
    from fixtures_builders.photos import astronaut

    models = populate_models_dir(Path(tempfile.mkdtemp(prefix="partid_bench_")), with_sdxl="sdxl" in bases)
    link_clip_vision(models)
    for key in ("checkpoints", "face_parsing", "insightface", "identity_adapters", "clip_vision"):
        folder_paths.add_model_folder_path(key, str(models / key))
    for path, key in ((args.checkpoint, "checkpoints"), (args.adapter, "identity_adapters"),
                      (args.clip_vision, "clip_vision")):
        if path:
            folder_paths.add_model_folder_path(key, str(Path(path).expanduser().parent))
    clip_name = Path(args.clip_vision).name if args.clip_vision else "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"
    (clip_vision,) = nodes.CLIPVisionLoader().load_clip(clip_name)
    photo = torch.from_numpy(astronaut()).float()[None] / 255.0
    where = f"{args.device} | {machine(args.device)}{', flush-denormal' if args.flush_denormal else ''}"
    print("| device | machine | base | stage | ms median (best) | notes |\n|---|---|---|---|---|---|")

    for base in bases:
        bench_base(args, nodes, base, clip_vision, photo, where)


if __name__ == "__main__":
    main()
