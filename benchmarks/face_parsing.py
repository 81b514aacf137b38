"""Benchmark (not a test): PartID face parsing + the five region masks, ms per 512x512 image at batch 1 and 8.

    python benchmarks/face_parsing.py --device cpu
    python benchmarks/face_parsing.py --device cuda --parser segformer
    python benchmarks/face_parsing.py --device cuda --parser ~/ComfyUI/models/face_parsing/face_parsing.pth

`--parser bisenet|segformer` runs the random-weight test files (tests/fixtures_builders/parsers.py): they
have the released architectures (BiSeNet/ResNet-18, SegFormer-B5), so the network time is the real one;
only the label maps (and so the contour work) differ from a real parse. A path loads real weights.
Prints one markdown row per batch size: median and best of --repeats runs, the network+pre/post-processing
part (`parse`) and the region masks (`regions`, cv2 contour fill on CPU) split out.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

import harness  # noqa: E402,F401  (benchmarks/harness.py: registers the repo as package `partid`)
from harness import machine, sync  # noqa: E402

from partid.models import model_files  # noqa: E402
from partid.models.face_parsing import face_parser_from  # noqa: E402
from partid.models.face_regions import face_regions  # noqa: E402


def images(n: int) -> torch.Tensor:
    from skimage import data

    base = np.ascontiguousarray(data.astronaut()[..., :3])      # 512x512, one face
    frames = [np.roll(base, 7 * i, axis=1) if i % 2 == 0 else base[:, ::-1] for i in range(n)]
    return torch.from_numpy(np.ascontiguousarray(np.stack(frames))).float().div(255)


def weights_for(choice: str):
    if choice in ("bisenet", "segformer"):
        from fixtures_builders import parsers

        path = parsers.bisenet_pth() if choice == "bisenet" else parsers.segformer_face_folder()
        return model_files.load_parser(str(path), "face"), f"{choice} (random weights)"
    return model_files.load_parser(choice, "face"), Path(choice).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--parser", default="bisenet", help="bisenet | segformer | path to real weights")
    parser.add_argument("--resolution", type=int, default=512, choices=(512, 1280), help="BiSeNet input size")
    parser.add_argument("--mode", default="ConsistentID", choices=("ConsistentID", "union"))
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    weights, name = weights_for(args.parser)
    engine = face_parser_from(weights, args.device)
    print("| device | machine | parser | resolution | batch | ms/image median (best) | parse | regions |")
    print("|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        rgb = images(batch)
        for _ in range(2):                                      # warm-up (CUDA kernels, allocator, thread pools)
            face_regions(engine.parse(rgb, args.resolution), args.mode)
        totals, parse_t = [], []
        for _ in range(args.repeats):
            sync(args.device)
            start = time.perf_counter()
            label_map = engine.parse(rgb, args.resolution)
            sync(args.device)
            middle = time.perf_counter()
            face_regions(label_map, args.mode)
            totals.append(time.perf_counter() - start)
            parse_t.append(middle - start)
        per = 1000.0 / batch
        total, parse = statistics.median(totals) * per, statistics.median(parse_t) * per
        res = args.resolution if weights.backend == "bisenet" else "processor (512)"
        print(f"| {args.device} | {machine(args.device)} | {name} | {res} | {batch} | "
              f"{total:.1f} ({min(totals) * per:.1f}) | {parse:.1f} | {total - parse:.1f} |")


if __name__ == "__main__":
    main()
