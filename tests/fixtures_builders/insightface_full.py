"""Full-cost random insightface packs for benchmarks: the real networks' layers, the test graphs' answers.

The test packs (insightface_packs.py) are tiny, so timing them measures PartID's pre/post-processing
and onnxruntime overhead but not SCRFD-10G or ArcFace. Benchmarks need the real cost without the real
weights (not downloadable here), so this builder writes, with the same file names and signatures:

- the detector: SCRFD-10G's published configuration, written out as ONNX layers: a ResNet-v1e backbone
  with a deep stem (3x3 convs to 28, 28, 56 channels, max-pool), BasicBlock stages of (3, 4, 2, 3) blocks
  with (56, 88, 88, 224) channels and average-pool shortcuts, a PAFPN on the last three stages (56
  channels), and per stride a head of three 3x3 convs at 80 channels with score / box / keypoint convs
  for 2 anchors. Batch norms are folded into the conv biases, as onnxruntime fuses them. Its nine
  outputs enter the test graph's outputs scaled by 1e-30: every layer runs, and the detections stay
  those of the test graph (which finds the astronaut's face), so a benchmark times the real detector
  on a realistic number of faces instead of the thousands of boxes random logits would give.
- the recogniser: ArcFace's iresnet (R50 for buffalo_l: stages of 3, 4, 14, 3 blocks; R100 for
  antelopev2: 3, 13, 30, 3) at 64/128/256/512 channels on 112x112 crops, each block BN -> conv -> BN
  -> PReLU -> strided conv -> BN plus a strided 1x1 shortcut, then BN, the 25088 -> 512 fully connected
  layer and the feature BN. The pre-activation BNs stay as BatchNormalization nodes (they cannot fold
  into a following conv); those after a conv are folded.

Random weights, so embeddings and boxes mean nothing: only the time does. The optional models of a pack
are the test graphs. Files: buffalo_l ~190 MB, antelopev2 ~270 MB (cached once per machine).
"""
from __future__ import annotations

import os

import numpy as np
import onnx

from partid.models.insightface_pack import PACKS, SCRFD_ANCHORS, SCRFD_WIDTHS

from .insightface_packs import _Graph, build_model

SCRFD_10G = dict(stem=56, blocks=(3, 4, 2, 3), planes=(56, 88, 88, 224), neck=56, head=80, head_convs=3)
IRESNET_LAYERS = {"w600k_r50.onnx": (3, 4, 14, 3), "glintr100.onnx": (3, 13, 30, 3)}
IRESNET_PLANES = (64, 128, 256, 512)
BLEND = np.array(1e-30, np.float32)      # full branch's weight in the outputs: runs every layer, changes no bit of them


def _bn(g: _Graph, x: str, c: int) -> str:
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    return g.op("BatchNormalization", [x, g.const(ones, "gamma"), g.const(zeros, "beta"), g.const(zeros, "mean"),
                                       g.const(ones, "var")], epsilon=1e-5)


def _basic_block(g: _Graph, x: str, c_in: int, c_out: int, stride: int) -> str:
    """ResNet-v1e BasicBlock; its shortcut, when shapes change, is avg-pool (stride) then a 1x1 conv."""
    y = g.op("Relu", [g.conv(x, c_in, c_out, stride)])
    y = g.conv(y, c_out, c_out, 1)
    short = x
    if stride != 1 or c_in != c_out:
        if stride != 1:
            short = g.op("AveragePool", [short], kernel_shape=[stride, stride], strides=[stride, stride],
                         ceil_mode=1, count_include_pad=0)
        short = g.conv(short, c_in, c_out, 1, k=1)
    return g.op("Relu", [g.op("Add", [y, short])])


def _scrfd_10g(g: _Graph, x: str) -> list[str]:
    """The nine raw head maps [1, A*w, H, W] in output order (score 8/16/32, box 8/16/32, kps 8/16/32)."""
    cfg = SCRFD_10G
    stem = cfg["stem"]
    x = g.op("Relu", [g.conv(x, 3, stem // 2, 2)])
    x = g.op("Relu", [g.conv(x, stem // 2, stem // 2, 1)])
    x = g.op("Relu", [g.conv(x, stem // 2, stem, 1)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    stages, c = [], stem
    for i, (n, planes) in enumerate(zip(cfg["blocks"], cfg["planes"])):
        for b in range(n):
            x = _basic_block(g, x, c, planes, 2 if (b == 0 and i > 0) else 1)
            c = planes
        stages.append((x, c))
    width = cfg["neck"]
    laterals = [g.conv(f, ch, width, 1, k=1) for f, ch in stages[1:]]        # strides 8, 16, 32
    scales = g.const(np.array([1, 1, 2, 2], np.float32), "scales")
    roi = g.const(np.zeros(0, np.float32), "roi")
    for i in range(len(laterals) - 1, 0, -1):                                 # top-down
        up = g.op("Resize", [laterals[i], roi, scales], mode="nearest")
        laterals[i - 1] = g.op("Add", [laterals[i - 1], up])
    outs = [g.conv(lat, width, width, 1) for lat in laterals]
    for i in range(len(outs) - 1):                                            # bottom-up
        outs[i + 1] = g.op("Add", [outs[i + 1], g.conv(outs[i], width, width, 2)])
    outs = [outs[0]] + [g.conv(o, width, width, 1) for o in outs[1:]]
    maps: dict[tuple[int, int], str] = {}
    for level, feat in enumerate(outs):                                       # heads are not shared across strides
        y, c = feat, width
        for _ in range(cfg["head_convs"]):
            y = g.op("Relu", [g.conv(y, c, cfg["head"], 1)])
            c = cfg["head"]
        for kind, w in enumerate(SCRFD_WIDTHS):
            maps[kind, level] = g.conv(y, c, w * SCRFD_ANCHORS, 1)
    return [maps[kind, level] for kind in range(len(SCRFD_WIDTHS)) for level in range(len(outs))]


def _detector(spec, seed: int) -> onnx.ModelProto:
    """The test detector with SCRFD-10G's full branch blended into each output (see the module docstring)."""
    model = build_model(spec, seed)
    g = _Graph(np.random.default_rng([seed, 10]))
    g.count = 10_000                                          # node/initialiser names distinct from the test graph's
    full = _scrfd_10g(g, spec.inputs[0].name)
    graph = model.graph
    for out, raw, width in zip(spec.outputs, full, [w for w in SCRFD_WIDTHS for _ in range(3)]):
        flat = g.op("Reshape", [g.op("Transpose", [raw], perm=[0, 2, 3, 1]),
                                g.const(np.array([-1, width], np.int64), "shape")])
        scaled = g.op("Mul", [flat, g.const(BLEND, "blend")])
        producer = next(n for n in graph.node if out.name in n.output)
        inner = out.name + "_test_graph"
        producer.output[list(producer.output).index(out.name)] = inner
        g.op("Add", [inner, scaled], out.name)
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.inits)
    return model


def _iresnet(spec, layers: tuple[int, ...], seed: int) -> onnx.ModelProto:
    g = _Graph(np.random.default_rng([seed, 20, sum(layers)]))
    x = g.conv(spec.inputs[0].name, 3, 64, 1)
    x = g.op("PRelu", [x, g.const(np.full((64, 1, 1), 0.25, np.float32), "slope")])
    c = 64
    for n, planes in zip(layers, IRESNET_PLANES):
        for b in range(n):
            stride = 2 if b == 0 else 1
            y = _bn(g, x, c)
            y = g.conv(y, c, planes, 1)
            y = g.op("PRelu", [y, g.const(np.full((planes, 1, 1), 0.25, np.float32), "slope")])
            y = g.conv(y, planes, planes, stride)
            short = g.conv(x, c, planes, stride, k=1) if b == 0 else x
            x = g.op("Add", [y, short])
            c = planes
    x = g.op("Flatten", [_bn(g, x, c)], axis=1)                # [N, 512 * 7 * 7]
    x = g.dense(x, c * 7 * 7, 512)
    _bn(g, x, 512)
    g.nodes[-1].output[0] = spec.outputs[0].name
    return g.model(spec)


def build_full_pack(dest_folder: str, name: str, seed: int = 0) -> str:
    """Write pack `name` with full-cost detector and recogniser (optional models: the test graphs)."""
    os.makedirs(dest_folder, exist_ok=True)
    for spec in PACKS[name]:
        if spec.role == "detection":
            model = _detector(spec, seed)
        elif spec.role == "recognition":
            model = _iresnet(spec, IRESNET_LAYERS[spec.filename], seed)
        else:
            model = build_model(spec, seed)
        onnx.checker.check_model(model)
        onnx.save(model, os.path.join(dest_folder, spec.filename))
    return dest_folder


def full_pack_root(name: str = "buffalo_l"):
    """Cached folder holding models/<name>/ (full-cost graphs); pass it as an insightface search root."""
    from .cache import cached

    pack = cached(f"insightface_full/models/{name}", lambda p: build_full_pack(str(p), name))
    return pack.parent.parent


def macs(model: onnx.ModelProto, input_hw: tuple[int, int]) -> int:
    """Multiply-accumulates of the Conv and Gemm nodes at one input size (batch 1), from shape inference."""
    from onnx import shape_inference

    m = onnx.ModelProto()
    m.CopyFrom(model)
    inp = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(inp, (1, 3, *input_hw)):
        d.ClearField("dim_param")
        d.dim_value = v
    m = shape_inference.infer_shapes(m)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in m.graph.value_info}
    weights = {i.name: list(i.dims) for i in m.graph.initializer}
    total = 0
    for node in m.graph.node:
        if node.op_type == "Conv":
            out = shapes.get(node.output[0])
            if out:
                w = weights[node.input[1]]
                total += int(np.prod(out)) * w[1] * w[2] * w[3]
        elif node.op_type == "Gemm":
            w = weights[node.input[1]]
            total += w[0] * w[1]
    return total
