"""Benchmark (not a test): PartID body parsing + Visual Persona parts, ms per 512x512 image at batch 1 and 8.

    python benchmarks/body_parsing.py --device cpu
    python benchmarks/body_parsing.py --device cuda --segformer ~/ComfyUI/models/body_parsing/segformer_b2_clothes \
        --schp ~/ComfyUI/models/body_parsing/parsing_atr.onnx

Without --segformer / --schp it runs the test fixtures: the SegFormer is a random-weight SegFormer-B2 of
the real size (so its timings are the real model's), the SCHP ONNX is the small random stand-in (its
timings measure PartID's SCHP pre/post-processing and onnxruntime overhead, not ResNet-101). Prints one
markdown row per parser and batch size: median and best of --repeats runs, with the network time split out.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import harness  # noqa: E402,F401  (benchmarks/harness.py: registers the repo as package `partid`)
from harness import machine, sync  # noqa: E402

from partid.models import model_files  # noqa: E402
from partid.models.body_parsing import body_parser_from  # noqa: E402
from partid.models.body_parts import body_parts  # noqa: E402


def images(n: int) -> torch.Tensor:
    from skimage import data

    base = torch.from_numpy(data.astronaut()).float().div(255)           # 512x512, one person
    return torch.stack([torch.roll(base, 7 * i, dims=1) if i % 2 == 0 else base.flip(1) for i in range(n)])


class NetTimer:
    """Adds the time spent inside the parser's network (SegFormer forward / onnxruntime run) to `spent`."""

    def __init__(self, parser, device: str):
        self.spent, self.device = 0.0, device
        if parser.backend == "segformer":
            net = parser.net
            original = net.forward

            def timed(*args, **kwargs):
                self._sync()
                start = time.perf_counter()
                try:
                    return original(*args, **kwargs)
                finally:
                    self._sync()
                    self.spent += time.perf_counter() - start
            net.forward = timed
        else:
            session = parser.session
            original_run = session.run

            class Timed:
                def __getattr__(_, name):
                    return getattr(session, name)

                def run(_, *args, **kwargs):
                    start = time.perf_counter()
                    try:
                        return original_run(*args, **kwargs)
                    finally:
                        self.spent += time.perf_counter() - start
            parser.session = Timed()

    def _sync(self):
        sync(self.device)


def run(parser, frames: torch.Tensor, device: str):
    label_map = parser.parse(frames)
    parts = body_parts(label_map)
    sync(device)
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--segformer", help="segformer_b2_clothes folder (real weights)")
    parser.add_argument("--schp", help="parsing_atr.onnx or parsing_lip.onnx (real weights)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,8")
    args = parser.parse_args()

    from fixtures_builders import parsers
    from fixtures_builders.schp_onnx import schp_onnx

    runs = [("segformer_b2_clothes", args.segformer or str(parsers.segformer_clothes_folder()),
             "real weights" if args.segformer else "random B2, real size"),
            ("SCHP ONNX", args.schp or str(schp_onnx("atr")), "real weights" if args.schp else "random tiny stand-in")]
    print("| device | machine | parser | batch | ms/image median (best) | network | rest (pre/post + parts) |")
    print("|---|---|---|---|---|---|---|")
    for name, path, kind in runs:
        engine = body_parser_from(model_files.load_parser(path, "body"), args.device)
        timer = NetTimer(engine, args.device)
        where = ", ".join(engine.providers)
        for batch in (int(b) for b in args.batches.split(",")):
            frames = images(batch)
            run(engine, frames, args.device)                     # warm-up
            totals, nets = [], []
            for _ in range(args.repeats):
                timer.spent = 0.0
                start = time.perf_counter()
                run(engine, frames, args.device)
                totals.append(time.perf_counter() - start)
                nets.append(timer.spent)
            per = 1000.0 / batch
            total, net = statistics.median(totals) * per, statistics.median(nets) * per
            print(f"| {args.device} ({where}) | {machine(args.device)} | {name} ({kind}) | {batch} | "
                  f"{total:.1f} ({min(totals) * per:.1f}) | {net:.1f} | {total - net:.1f} |", flush=True)


if __name__ == "__main__":
    main()
