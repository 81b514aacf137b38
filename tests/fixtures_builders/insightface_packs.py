"""Random-weight stand-ins for the insightface packs, with the official files' exact signatures.

Tests cannot download the real packs (hundreds of MB, non-commercial licence), so `build_pack`
writes small ONNX graphs whose inputs/outputs match `models.insightface_pack.PACKS` (names, ranks,
fixed/symbolic dims, output order).  The graphs compute for real - strided convolutions laid out
like SCRFD's heads, conv + pool + dense like ArcFace - so onnxruntime runs them on any image and
the output shapes follow the input exactly as the real models' do.  The weights are random, so
the numbers mean nothing: tests of detection *quality* need real weights.
Deterministic from `seed`; every file is well under 2 MB.
"""
from __future__ import annotations

import os
import zlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from partid.models.insightface_pack import (PACKS, SCRFD_ANCHORS, SCRFD_STRIDES, SCRFD_WIDTHS, ModelSpec,
                                     TensorSpec)

OPSET = 11        # what the official exports use (scrfd2onnx.py asserts opset 11)
IR_VERSION = 6    # the IR of opset-11 exporters: loads in old and new onnxruntime alike


class _Graph:
    """Accumulates nodes and random initialisers; names nodes like a PyTorch export ('Conv_3')."""

    def __init__(self, rng: np.random.Generator):
        self.rng, self.nodes, self.inits, self.count = rng, [], [], 0

    def _name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def const(self, value: np.ndarray, base: str = "w") -> str:
        name = self._name(base)
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, node_name: str | None = None,
           **attrs) -> str:
        out = out or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=node_name or self._name(op_type), **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, stride: int, k: int = 3, bias: float = 0.0,
             out: str | None = None) -> str:
        # He-style scale keeps activations in a sane range through the random stack.
        w = self.rng.normal(0.0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k)).astype(np.float32)
        b = np.full(c_out, bias, np.float32)
        return self.op("Conv", [x, self.const(w), self.const(b, "b")], out, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[k // 2] * 4)

    def dense(self, x: str, n_in: int, n_out: int, out: str | None = None) -> str:
        w = self.rng.normal(0.0, np.sqrt(1.0 / n_in), (n_in, n_out)).astype(np.float32)
        b = np.zeros(n_out, np.float32)
        return self.op("Gemm", [x, self.const(w), self.const(b, "b")], out)

    def model(self, spec: ModelSpec) -> onnx.ModelProto:
        def info(t: TensorSpec):
            return helper.make_tensor_value_info(t.name, TensorProto.FLOAT, list(t.shape))
        graph = helper.make_graph(self.nodes, spec.filename.removesuffix(".onnx"),
                                  [info(t) for t in spec.inputs], [info(t) for t in spec.outputs], self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="PartID test fixture (random weights)")
        m.ir_version = IR_VERSION
        return m


def _detector(spec: ModelSpec, g: _Graph) -> onnx.ModelProto:
    # Backbone: five stride-2 convs give the stride 8/16/32 feature maps SCRFD's heads read.
    x = g.op("Relu", [g.conv(spec.inputs[0].name, 3, 8, 2)])
    x = g.op("Relu", [g.conv(x, 8, 16, 2)])
    feats = []
    for _ in SCRFD_STRIDES:
        x = g.op("Relu", [g.conv(x, 16, 16, 2)])
        feats.append(x)
    for kind, width in enumerate(SCRFD_WIDTHS):
        for level, feat in enumerate(feats):
            out = spec.outputs[kind * 3 + level].name
            # Score bias -3: random logits would otherwise put half of all anchors above 0.5.
            y = g.conv(feat, 16, width * SCRFD_ANCHORS, 1, bias=-3.0 if kind == 0 else 0.0)
            # [1, A*w, H, W] -> [1, H, W, A*w] -> [H*W*A, w]: row (y*W + x)*A + a, as scrfd.py's
            # anchor centres are laid out (each centre repeated A times in a row).
            y = g.op("Transpose", [y], perm=[0, 2, 3, 1])
            y = g.op("Reshape", [y, g.const(np.array([-1, width], np.int64), "shape")],
                     out if kind == 2 else None)
            if kind == 0:
                g.op("Sigmoid", [y], out)            # the released models output probabilities
            elif kind == 1:
                g.op("Relu", [y], out)               # distances >= 0 keep decoded boxes well-formed
    return g.model(spec)


def _embedder(spec: ModelSpec, g: _Graph, channels: tuple[int, ...], normalise_inside: bool) -> onnx.ModelProto:
    x = spec.inputs[0].name
    if normalise_inside:
        # mxnet-converted models take raw 0..255 pixels and normalise in-graph; insightface spots this
        # by the first nodes' names ('_minus*', '_mul*') and then feeds mean 0 / std 1.
        x = g.op("Sub", [x, g.const(np.array(127.5, np.float32), "mean")], node_name="_minusscalar0")
        x = g.op("Mul", [x, g.const(np.array(1 / 128, np.float32), "scale")], node_name="_mulscalar0")
    for c_in, c_out in zip((3,) + channels[:-1], channels):
        x = g.op("Relu", [g.conv(x, c_in, c_out, 2)])
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    out = spec.outputs[0]
    y = g.dense(x, channels[-1], out.shape[1], None if spec.role.startswith("landmark") else out.name)
    if spec.role.startswith("landmark"):
        g.op("Tanh", [y], out.name)                  # landmark coordinates are normalised to [-1, 1]
    return g.model(spec)


def build_model(spec: ModelSpec, seed: int = 0) -> onnx.ModelProto:
    """The random-weight graph for one pack file; each file gets its own stream from (seed, file)."""
    rng = np.random.default_rng([seed, zlib.crc32(spec.filename.encode())])
    g = _Graph(rng)
    if spec.role == "detection":
        return _detector(spec, g)
    if spec.role == "recognition":
        return _embedder(spec, g, (16, 32, 64), normalise_inside=False)
    return _embedder(spec, g, (8, 16, 32), normalise_inside=True)


def build_pack(dest_folder: str, name: str, seed: int = 0, include_optional: bool = True) -> str:
    """Write pack `name` (buffalo_l | antelopev2) into `dest_folder`; returns the folder."""
    os.makedirs(dest_folder, exist_ok=True)
    for spec in PACKS[name]:
        if spec.required or include_optional:
            model = build_model(spec, seed)
            onnx.checker.check_model(model, full_check=True)
            onnx.save(model, os.path.join(dest_folder, spec.filename))
    return dest_folder
