"""Benchmark (not a test): PartID's sampling overhead against plain sampling and an IP-Adapter-style baseline.

    python benchmarks/run.py --device cuda --out benchmarks/results/cuda            # the README table
    python benchmarks/run.py --device cuda --readme README.md                       # ... and put it in the README
    python benchmarks/run.py --device cpu                                           # CPU smoke (SD1.5 only)
    python benchmarks/run.py --device cpu --tiny --out /tmp/x                       # seconds: plumbing check only

Runs the real ComfyUI in-process (found like `partid.cli.server.find_comfyui`, PartID loaded by ComfyUI's
own custom-node loader) on random-weight models of the real sizes (tests/fixtures_builders): SD1.5 and
SDXL UNets, the official-layout ConsistentID / Visual Persona files, CLIP-H, BiSeNet, SegFormer-B2,
DINOv2-g, and insightface packs whose detector and recogniser run SCRFD-10G's and ArcFace-R50's layers
(fixtures_builders/insightface_full.py). Random weights give the real cost of every layer.

CPU caveat (2-core AMD EPYC VM, random weights): a ConsistentID-patched SD1.5 sampled 1.55x slower than
the plain one at 2 threads and 1.29x at 1 thread, but 0.99x at 1 thread with --flush-denormal: the random
adapter (its LoRA merged into the weights, so no extra operations per step) drives some values into
subnormal floats, on which x86 is slow. torch sets flush-to-zero per thread, so the flag only takes full
effect with --threads 1. Trained weights need not do this; GPU kernels flush subnormals anyway.

Sampling table: per base model, image size and batch, every configuration (plain, an IP-Adapter-style
baseline of 16 decoupled tokens through the same attention machinery, ConsistentID SD1.5 / SDXL,
Visual Persona, ConsistentID face + Visual Persona body on one model, two Visual Persona identities with
masks) sampled interleaved --repeats times (Euler, CFG 5); "ms/step" is the median time per sampler step
between the first and last step callbacks, "ratio" that over plain's, "call s" the whole sampling call
(the model already loaded: the LoRA merge of a switch is timed apart as "switch ms"), "prep ms/ref" the
preprocessing of one reference photo (median of --repeats after a warm-up), and the peak memory of the
call (GPU: max allocated; CPU: the process's peak RSS, weights included). Scaling table: ms per step of
the decoupled attention with 0 (plain), 4, 16, 256, 1024, 2048 identity tokens at each image size.
Writes benchmark.md and benchmark.json into --out, and with --readme replaces the text between
`<!-- benchmark table -->` and `<!-- /benchmark table -->` in that file.

CPU mode (smoke): small latents, few steps, SD1.5 only (SDXL rows say "skipped: cpu mode" unless
--cpu-sdxl); full-size CPU runs hold the shared machine's heavy-job lock (/tmp/partid-heavy.lock).
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

import harness
import bench_models as bm

GPU_DEFAULTS = dict(sizes=[512, 1024], batches=[1, 4], steps=30, repeats=3, scaling_sizes=[512, 1024])
CPU_DEFAULTS = dict(sizes=[128], batches=[1, 2], steps=3, repeats=3, scaling_sizes=[128, 256])
SCALING_TOKENS = [4, 16, 256, 1024, 2048]
SAMPLING_COLUMNS = ["configuration", "base", "size", "batch", "steps", "id tokens", "ms/step", "ratio", "call s",
                    "switch ms", "prep ms/ref", "peak MiB"]
SCALING_COLUMNS = ["base", "size", "id tokens", "ms/step", "ratio", "extra ms/step"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, help="folder for benchmark.md / benchmark.json (default benchmarks/results/<device>)")
    p.add_argument("--readme", type=Path, help="also replace the marked benchmark block of this markdown file")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], help="image sides (GPU 512,1024; CPU 128)")
    p.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], help="batch sizes (GPU 1,4; CPU 1,2)")
    p.add_argument("--steps", type=int, help="sampler steps (GPU 30, CPU 3)")
    p.add_argument("--repeats", type=int, help="interleaved repeats (default 3)")
    p.add_argument("--bases", default="sd15,sdxl", help="sd15,sdxl (CPU: SDXL only with --cpu-sdxl)")
    p.add_argument("--cpu-sdxl", action="store_true", help="CPU: also run the full-size SDXL configurations: needs well over "
                        "24 GB of RAM (SDXL fp32 + LoRA weight backups + both adapters; OOM on a 24 GB VM)")
    p.add_argument("--tiny", action="store_true", help="small-channel UNets and adapters: checks the plumbing in seconds")
    p.add_argument("--no-preprocess", action="store_true", help="random identity inputs instead of timing preprocessing")
    p.add_argument("--scaling-sizes", type=lambda s: [int(x) for x in s.split(",")], help="GPU 512,1024; CPU 128,256")
    p.add_argument("--scaling-tokens", type=lambda s: [int(x) for x in s.split(",")], default=SCALING_TOKENS)
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--render", type=Path, metavar="JSON",
                   help="measure nothing: rewrite the markdown (and --readme block) from a benchmark.json")
    p.add_argument("--append", action="store_true",
                   help="keep the rows of other bases (and the scaling table, if not rerun) from --out's benchmark.json: "
                        "lets a run be split per base, e.g. on a machine with a per-command time limit")
    p.add_argument("--threads", type=int, help="CPU: torch threads")
    p.add_argument("--flush-denormal", action="store_true", help="CPU: flush subnormal floats (use with --threads 1)")
    args = p.parse_args(argv)
    defaults = GPU_DEFAULTS if args.device == "cuda" else CPU_DEFAULTS
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.out = args.out or harness.REPO / "benchmarks" / "results" / args.device
    return args


def sample_once(model, conds, size: int, batch: int, steps: int, device: str) -> dict:
    """One timed sampling call: per-step time, whole call, the (untimed-in-call) model switch, peak memory."""
    import comfy.model_management as mm
    import comfy.sample

    harness.sync(device)
    t0 = time.perf_counter()
    mm.load_models_gpu([model])               # a switch between clones merges/unmerges LoRA weights here
    harness.sync(device)
    switch = time.perf_counter() - t0
    harness.reset_peak(device)
    latent = torch.zeros(batch, 4, size // 8, size // 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))
    marks = []

    def callback(step, x0, x, total):
        harness.sync(device)
        marks.append(time.perf_counter())

    harness.sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        comfy.sample.sample(model, noise, steps, 5.0, "euler", "normal", conds[0], conds[1], latent,
                            callback=callback, disable_pbar=True)
    harness.sync(device)
    call = time.perf_counter() - start
    step = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else call / max(steps, 1)
    return {"step_s": step, "call_s": call, "switch_s": switch, "peak_bytes": harness.peak_bytes(device)}


def patch_counts(model) -> dict:
    """What a configuration installed: attn2 replace patches (blocks) and weight patches (LoRA keys)."""
    attn2 = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    groups = max((len(getattr(p, "groups", ())) for p in attn2.values()), default=0)
    return {"attn2_patches": len(attn2), "identity_groups": groups, "weight_patches": len(model.patches)}


def bench_grid(configs, base, sizes, batches, steps, repeats, device, prep_ms) -> list[dict]:
    """Rows for every (size, batch): configurations interleaved, medians, ratio vs plain."""
    rows = []
    models = {c.name: (c.build() if c.build else base.model) for c in configs}
    for size in sizes:
        for batch in batches:
            logging.info("sampling %s %dpx batch %d: %s", base.name, size, batch, ", ".join(models))
            for m in models.values():                # warm-up: kernels, allocator, K/V caches (2 steps)
                sample_once(m, base.conds, size, batch, min(steps, 2), device)
            runs = harness.interleaved({name: (lambda m=m: sample_once(m, base.conds, size, batch, steps, device))
                                        for name, m in models.items()}, repeats, warmup=0)
            plain = harness.median_of(runs["plain"], "step_s")
            for c in configs:
                r = runs[c.name]
                step = harness.median_of(r, "step_s")
                rows.append({"configuration": c.name, "base": base.name, "size": size, "batch": batch, "steps": steps,
                             "id_tokens": c.tokens, "step_ms": step * 1000, "ratio": step / plain,
                             "call_s": harness.median_of(r, "call_s"), "switch_ms": harness.median_of(r, "switch_s") * 1000,
                             "prep_ms_per_ref": prep_ms.get(c.preprocess) if c.preprocess else None,
                             "peak_mib": max(x["peak_bytes"] for x in r) / 2 ** 20, "repeats": repeats,
                             "step_ms_all": [x["step_s"] * 1000 for x in r], **patch_counts(models[c.name])})
    del models
    return rows


def bench_scaling(base, sizes, token_counts, steps, repeats, device, pack) -> list[dict]:
    """ms/step against the number of decoupled identity tokens (IP-Adapter-style machinery, batch 1)."""
    rows = []
    models = {0: base.model, **{n: bm.ip_adapter_style(base, pack, n) for n in token_counts}}
    for size in sizes:
        logging.info("scaling %s %dpx: %s tokens", base.name, size, ", ".join(map(str, models)))
        for m in models.values():
            sample_once(m, base.conds, size, 1, min(steps, 2), device)
        runs = harness.interleaved({n: (lambda m=m: sample_once(m, base.conds, size, 1, steps, device))
                                    for n, m in models.items()}, repeats, warmup=0)
        plain = harness.median_of(runs[0], "step_s")
        for n in models:
            step = harness.median_of(runs[n], "step_s")
            rows.append({"base": base.name, "size": size, "id_tokens": n, "step_ms": step * 1000, "ratio": step / plain,
                         "extra_ms_per_step": (step - plain) * 1000})
    return rows


def skipped_rows(base: str, why: str) -> list[dict]:
    names = (["plain", f"IP-Adapter-style baseline ({bm.IP_ADAPTER_TOKENS} tokens)", "ConsistentID SDXL",
              "Visual Persona", "both (ConsistentID face + Visual Persona body)",
              "two identities with masks (Visual Persona x2)"] if base == "sdxl"
             else ["plain", f"IP-Adapter-style baseline ({bm.IP_ADAPTER_TOKENS} tokens)", "ConsistentID SD1.5"])
    return [{"configuration": n, "base": base, "skipped": why} for n in names]


def fmt(value, digits=1):
    return "" if value is None else f"{value:.{digits}f}"


def render(result: dict) -> str:
    """The markdown block (also what --readme puts between the markers)."""
    info, s = result["machine"], result["settings"]
    commands = " + ".join(f"`{c}`" for c in s.get("commands", [s["command"]]))
    kind = ("**CPU smoke run** (small latents, few steps: it checks the harness, it is not what a GPU user sees)"
            if info["device"] == "cpu" else "**GPU run**")
    lines = []
    if info["device"] == "cpu":
        lines += ["**GPU table: not measured yet.** What follows is a CPU run: it shows the format and that the "
                  "harness works end to end, not what PartID costs on a GPU. On a shared CPU single calls can vary "
                  "up to 2x between repeats (every repeat is in benchmark.json), so small ratios are within noise. "
                  "On a CUDA machine `python benchmarks/run.py --device cuda --readme README.md` replaces this block.",
                  ""]
    lines += [f"Machine: {harness.machine_line(info)}.", "",
             f"Command: {commands}" + (" — **tiny models: plumbing check, numbers meaningless**" if s["tiny"] else ""),
             "", f"{kind}: {s['steps']} steps, Euler, CFG 5, median of {s['repeats']} interleaved repeats; "
             f"random weights, {'tiny models' if s['tiny'] else 'real model sizes'}.", ""]
    rows = []
    for r in result["sampling"]:
        if "skipped" in r:
            rows.append([r["configuration"], r["base"], *[""] * 8, r["skipped"], ""])
            continue
        rows.append([r["configuration"], r["base"], r["size"], r["batch"], r["steps"], r["id_tokens"], fmt(r["step_ms"]),
                     fmt(r["ratio"], 3), fmt(r["call_s"], 2), fmt(r["switch_ms"], 0), fmt(r["prep_ms_per_ref"], 0),
                     fmt(r["peak_mib"], 0)])
    lines.append(harness.markdown_table(SAMPLING_COLUMNS, rows))
    if result["preprocessing"]:
        lines += ["", "Preprocessing per reference (ms, median): " + "; ".join(
            f"{stage} {ms:.0f}" for stage, ms in result["preprocessing"].items()) + "."]
        if not any(k.startswith("sdxl: text fusion") for k in result["preprocessing"]):
            lines += ["", "(SDXL text fusion is not timed: the run builds no SDXL text encoders.)"] \
                if any(k.startswith("sdxl:") for k in result["preprocessing"]) else []
    if result.get("preprocessing_memory"):
        lines += ["", "Preprocessing memory: " + "; ".join(
            f"{what} {mib:.0f}" for what, mib in result["preprocessing_memory"].items()) + "."]
    if result["scaling"]:
        lines += ["", "Time per step against identity tokens (decoupled attention on every cross-attention, batch 1):", ""]
        lines.append(harness.markdown_table(SCALING_COLUMNS, [
            [r["base"], r["size"], r["id_tokens"], fmt(r["step_ms"]), fmt(r["ratio"], 3), fmt(r["extra_ms_per_step"])]
            for r in result["scaling"]]))
    lines += ["", f"Peak memory column: {harness.peak_label(info['device'])}."]
    return "\n".join(lines) + "\n"


def prepare_inputs(base, args, nodes, pack, photo, clip_vision, prep_stages, prep_ms, prep_memory) -> dict:
    inputs = {}
    adapter = bm.consistentid_adapter(base, args.tiny, nodes, pack)
    if clip_vision is not None:
        clip = bm.sd15_text_encoder() if base.name == "sd15" else None      # SDXL: no text encoders are built
        embeds, states, stages = bm.consistentid_preprocess(nodes, pack, photo, clip_vision, base, adapter, args.device,
                                                            args.repeats, clip)
        del clip
        prep_stages.update({f"{base.name}: {k}": v for k, v in stages.items()})
        prep_ms["cid"] = sum(stages.values())
    else:
        embeds, states = bm.random_consistentid_inputs(pack)
    inputs["cid"] = (adapter, embeds, states)
    if base.name == "sdxl":
        vp_adapter = bm.visual_persona_adapter(base, args.tiny, nodes, pack)
        if not args.tiny and not args.no_preprocess and args.device == "cuda":
            identity, stages, memory = bm.visual_persona_preprocess(nodes, pack, photo, vp_adapter,
                                                                    bm.dinov2_g_random(pack), args.device, args.repeats)
            prep_stages.update(stages)
            prep_memory.update(memory)
            prep_ms["vp"] = prep_ms["two"] = sum(stages.values())
            prep_ms["both"] = prep_ms["vp"] + prep_ms.get("cid", 0)
        else:
            identity = bm.random_identity(pack)       # CPU: DINOv2-g + decoder would not fit beside the UNet
        inputs["vp"] = (vp_adapter, identity)
    return inputs


def run(args) -> dict:
    threads = torch.get_num_threads()
    harness.cpu_settings(args.threads, args.flush_denormal)
    try:
        return _run(args)
    finally:                      # in-process callers (the smoke test) get torch's settings back
        torch.set_num_threads(threads)
        if args.flush_denormal:
            torch.set_flush_denormal(False)


def _run(args) -> dict:
    folder_paths, nodes, pack = harness.start_comfy(args.device)
    from fixtures_builders.photos import astronaut

    bases = [b for b in args.bases.split(",") if b]
    runnable = [b for b in bases if args.tiny or args.device == "cuda" or b == "sd15" or args.cpu_sdxl]
    preprocess = not (args.tiny or args.no_preprocess)
    if not args.tiny:
        from fixtures_builders.clip_vision import link_clip_vision
        from fixtures_builders.layout import populate_models_dir

        models = populate_models_dir(Path(tempfile.mkdtemp(prefix="partid_bench_")), with_checkpoint=False,
                                     with_sdxl="sdxl" in runnable)
        link_clip_vision(models)
        for key in ("face_parsing", "body_parsing", "insightface", "identity_adapters", "clip_vision", "dinov2"):
            folder_paths.add_model_folder_path(key, str(models / key))
        if preprocess:         # face analysis at SCRFD-10G / ArcFace-R50 cost (fixtures_builders/insightface_full.py)
            from fixtures_builders.insightface_full import full_pack_root

            folder_paths.add_model_folder_path("insightface", str(full_pack_root("buffalo_l")), is_default=True)
    photo = torch.from_numpy(astronaut()).float()[None] / 255.0
    result = {"machine": harness.machine_info(args.device, flush_denormal=args.flush_denormal),
              "settings": {"command": "python benchmarks/run.py " + " ".join(sys.argv[1:] if args.argv is None else args.argv),
                           "sizes": args.sizes, "batches": args.batches, "steps": args.steps, "repeats": args.repeats,
                           "bases": bases, "tiny": args.tiny, "scaling_tokens": args.scaling_tokens,
                           "scaling_sizes": args.scaling_sizes},
              "sampling": [], "preprocessing": {}, "preprocessing_memory": {}, "scaling": []}
    import comfy.model_management as mm

    for name in bases:
        if name not in runnable:
            result["sampling"] += skipped_rows(name, "skipped: cpu mode")
            continue
        # Full-size CPU runs need several GB of RAM on a shared machine: hold its heavy-job lock.
        with harness.heavy_lock(args.device == "cpu" and not args.tiny):
            base = bm.build_base(name, args.tiny, args.device, pack)
            clip_vision = None
            if preprocess:
                (clip_vision,) = nodes.CLIPVisionLoader().load_clip("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
            prep_ms: dict = {}
            inputs = prepare_inputs(base, args, nodes, pack, photo, clip_vision, result["preprocessing"], prep_ms,
                                    result["preprocessing_memory"])
            del clip_vision
            gc.collect()
            mm.unload_all_models()            # preprocessing models off the GPU: peak memory is sampling's
            mm.soft_empty_cache()
            configs = bm.configurations(base, inputs, pack)
            result["sampling"] += bench_grid(configs, base, args.sizes, args.batches, args.steps, args.repeats,
                                             args.device, prep_ms)
            scaling_base = "sdxl" if "sdxl" in runnable else "sd15"
            if not args.no_scaling and name == scaling_base:
                result["scaling"] = bench_scaling(base, args.scaling_sizes, args.scaling_tokens, args.steps,
                                                  args.repeats, args.device, pack)
            del base, inputs, configs
            mm.unload_all_models()
            mm.soft_empty_cache()
            gc.collect()
    return result


MERGE_MUST_MATCH = {"machine": ("device", "gpu", "cpu", "torch", "cuda", "comfyui", "flush_denormal", "torch_threads"),
                    "settings": ("tiny", "steps", "repeats")}


def merge_mismatches(result: dict, previous: dict) -> list[str]:
    """What differs between two runs that one table would label with a single machine and setting line."""
    return [f"{group}.{key}: {previous.get(group, {}).get(key)!r} then {result.get(group, {}).get(key)!r}"
            for group, keys in MERGE_MUST_MATCH.items() for key in keys
            if previous.get(group, {}).get(key) != result.get(group, {}).get(key)]


def merge_previous(result: dict, previous: dict) -> dict:
    """`result` plus what `previous` measured for bases this run did not measure.

    The table carries one machine line and one settings line, so runs that differ in any MERGE_MUST_MATCH
    field are refused (ValueError naming the fields) rather than merged under the newer run's labels.
    """
    mismatches = merge_mismatches(result, previous)
    if mismatches:
        raise ValueError("--append: the saved run was measured differently, so one table cannot hold both ("
                         + "; ".join(mismatches) + "). Rerun without --append, or with the same settings on the "
                         "same machine.")
    ran = {r["base"] for r in result["sampling"] if "skipped" not in r}
    kept = [r for r in previous.get("sampling", []) if r["base"] not in ran and "skipped" not in r]
    kept_bases = {r["base"] for r in kept}
    result["sampling"] = kept + [r for r in result["sampling"] if not ("skipped" in r and r["base"] in kept_bases)]
    result["preprocessing"] = {**previous.get("preprocessing", {}), **result["preprocessing"]}
    result["preprocessing_memory"] = {**previous.get("preprocessing_memory", {}),
                                      **result.get("preprocessing_memory", {})}
    result["scaling"] = result["scaling"] or previous.get("scaling", [])
    commands = previous.get("settings", {}).get("commands", [previous.get("settings", {}).get("command")])
    result["settings"]["commands"] = [c for c in commands if c] + [result["settings"]["command"]]
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    args.argv = argv
    if args.render:
        result = json.loads(args.render.read_text())
        args.out = args.out if "--out" in (argv or sys.argv) else args.render.parent
    else:
        result = run(args)
    previous = Path(args.out) / "benchmark.json"
    if args.append and not args.render and previous.is_file():
        try:
            result = merge_previous(result, json.loads(previous.read_text()))
        except ValueError as exc:       # the fresh run is kept apart so its time is not lost
            harness.write_results(Path(args.out) / "unmerged", "benchmark", "# PartID benchmark\n\n" + render(result),
                                  result)
            sys.exit(f"{exc}\nThis run's results: {Path(args.out) / 'unmerged'}")
    text = render(result)
    md, js = harness.write_results(args.out, "benchmark", "# PartID benchmark\n\n" + text, result)
    if args.readme:
        harness.update_readme(args.readme, text)
    sys.stdout.write(text)
    sys.stdout.write(f"\nwrote {md} and {js}\n")
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
