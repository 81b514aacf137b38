"""Benchmark (not a test): PartID face analysis, ms per 512x512 image at batch 1 and 8.

    python benchmarks/face_analysis.py --device cpu
    python benchmarks/face_analysis.py --device cuda
    python benchmarks/face_analysis.py --device cuda --pack-dir ~/ComfyUI/models/insightface   # real weights

Without --pack-dir it runs random-weight packs whose detector and recogniser have the real networks'
layers (tests/fixtures_builders/insightface_full.py: SCRFD-10G, 10.1 GMACs at 640x480 as published,
13.4 at PartID's 640x640; ArcFace R50, 6.3 GMACs; the files are the released ones' sizes), so the
times are the real cost; the detector's answers are those of the test graph, which finds the
astronaut's face, so recognition runs once per image as with a real photo. `--test-graphs` runs the
tiny test packs instead (PartID's own pre/post-processing and onnxruntime overhead only). Prints one
markdown row per batch size: median and best of --repeats runs (on shared machines the median can
swing severalfold between runs), with the time inside the two onnxruntime sessions split out.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import harness  # noqa: E402,F401  (benchmarks/harness.py: registers the repo as package `partid`)
from harness import machine  # noqa: E402

from partid.models import face_analysis as fa  # noqa: E402
from partid.models.face_analysis_pack import open_pack  # noqa: E402


class Timed:
    """An onnxruntime session that adds the time of its run() calls to `spent`."""

    def __init__(self, session):
        self.session, self.spent = session, 0.0

    def __getattr__(self, name):
        return getattr(self.session, name)

    def run(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.session.run(*args, **kwargs)
        finally:
            self.spent += time.perf_counter() - start


def images(n: int) -> list[np.ndarray]:
    from skimage import data

    base = np.ascontiguousarray(data.astronaut()[..., :3])      # 512x512, one face
    return [np.ascontiguousarray(np.roll(base, 7 * i, axis=1) if i % 2 == 0 else base[:, ::-1]) for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--pack", default="buffalo_l", choices=("buffalo_l", "antelopev2"))
    parser.add_argument("--pack-dir", help="folder holding <pack>/ or models/<pack>/ (real weights)")
    parser.add_argument("--det-thresh", type=float, help="default 0.5 for real packs, 0.3 for the random ones")
    parser.add_argument("--test-graphs", action="store_true", help="the tiny test packs instead of full-cost ones")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    if args.pack_dir:
        roots, kind, thresh = [args.pack_dir], "real weights", args.det_thresh or 0.5
    elif args.test_graphs:
        from fixtures_builders.cache import cached
        from fixtures_builders.insightface_packs import build_pack

        pack = cached(f"insightface/models/{args.pack}", lambda p: build_pack(str(p), args.pack))  # the tests' cache
        roots, kind, thresh = [str(pack.parent)], "random-weight test graphs", args.det_thresh or 0.3
    else:
        from fixtures_builders.insightface_full import full_pack_root

        roots = [str(full_pack_root(args.pack))]
        kind, thresh = "random weights, full-cost networks", args.det_thresh or 0.3
    models = open_pack(roots, args.pack, args.device)
    det, rec = Timed(models.sessions["detection"]), Timed(models.sessions["recognition"])
    models.sessions.update(detection=det, recognition=rec)

    print(f"| device | machine | pack ({kind}) | batch | ms/image median (best) | detector net | recogniser net | "
          "rest | faces/image |")
    print("|---|---|---|---|---|---|---|---|---|")
    for batch in (1, 8):
        frames = images(batch)
        for _ in range(2):                                      # warm-up (CUDA kernels, allocator)
            fa.analyze(models, frames, det_thresh=thresh, on_no_face="bypass")
        totals, det_t, rec_t = [], [], []
        for _ in range(args.repeats):
            det.spent = rec.spent = 0.0
            start = time.perf_counter()
            result = fa.analyze(models, frames, det_thresh=thresh, on_no_face="bypass")
            totals.append(time.perf_counter() - start)
            det_t.append(det.spent)
            rec_t.append(rec.spent)
        per = 1000.0 / batch
        total, d, r = (statistics.median(v) * per for v in (totals, det_t, rec_t))
        print(f"| {args.device} ({', '.join(models.providers)}) | {machine(args.device)} | {args.pack} | {batch} | "
              f"{total:.1f} ({min(totals) * per:.1f}) | {d:.1f} | {r:.1f} | {total - d - r:.1f} | "
              f"{result.face_count / batch:.1f} |")


if __name__ == "__main__":
    main()
