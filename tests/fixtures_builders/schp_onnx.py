"""Random-weight stand-ins for the SCHP ONNX exports OOTDiffusion / IDM-VTON distribute.

The real files (`checkpoints/humanparsing/parsing_atr.onnx`, `parsing_lip.onnx`, ~250 MB each) are
PyTorch exports of SCHP's AugmentCE2P ResNet-101. What their signature is, as far as the public code
shows it (OOTDiffusion preprocess/humanparsing/parsing_api.py `onnx_inference`, copied unchanged by
IDM-VTON; the files themselves cannot be fetched here):

- one input named `input.1` (the name torch.onnx.export gives an unnamed first input), fed a
  float32 [1,3,S,S] batch: S = 512 (ATR) or 473 (LIP), built by SCHP's SimpleFolderDataset;
- several outputs: the code reads `output[1][0]`, i.e. the flattened SCHP result
  `[[parsing, fusion], [edge]]` -> outputs (parsing [1,C,S',S'], fusion [1,C,S',S'], edge [1,2,S',S']),
  and uses the second (fusion) logits, exactly as SCHP's own `output[0][-1]`;
- S' is the stride-4 size of ResNet's layer1: 128 for 512, 119 for 473 (3x3/2 conv, then 3x3/2 max-pool).

`schp_onnx(label_set)` writes graphs with that signature (static batch 1, as torch.onnx.export
without dynamic axes gives) that compute for real: strided conv + max-pool to S', a parsing head, an
edge head and a fusion conv over both. `nearest_colour_onnx` writes a hand-made net whose fusion
logits are a known function of the input (the nearest of a few colours), for geometry tests.
Deterministic; every file is well under 2 MB. Opset 11, IR 6 (loads in old and new onnxruntime).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from partid.models.labels import BODY_LABEL_SETS

from .cache import cached

OPSET = 11
IR_VERSION = 6
INPUT_NAME = "input.1"
INPUT_SIZE = {"atr": 512, "lip": 473}


def stride4(size: int) -> int:
    """ResNet stem of SCHP: 3x3 stride-2 conv (pad 1), then 3x3 stride-2 max-pool (pad 1)."""
    after_conv = (size + 2 - 3) // 2 + 1
    return (after_conv + 2 - 3) // 2 + 1


class _Net:
    def __init__(self, seed: int):
        self.rng, self.nodes, self.inits, self.n = np.random.default_rng(seed), [], [], 0

    def name(self, base: str) -> str:
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, value: np.ndarray) -> str:
        name = self.name("w")
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, **attrs) -> str:
        out = out or self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(op_type), **attrs))
        return out

    def conv(self, x: str, c_in: int, c_out: int, k: int = 3, stride: int = 1, out: str | None = None,
             weight: np.ndarray | None = None, bias: np.ndarray | None = None) -> str:
        if weight is None:
            weight = self.rng.normal(0.0, np.sqrt(2.0 / (c_in * k * k)), (c_out, c_in, k, k))
        if bias is None:
            bias = self.rng.normal(0.0, 0.1, c_out)
        return self.op("Conv", [x, self.const(weight), self.const(bias)], out, kernel_shape=[k, k],
                       strides=[stride, stride], pads=[k // 2] * 4)

    def model(self, size: int, outputs: list[tuple[str, int, int]], batch) -> onnx.ModelProto:
        ins = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, size, size])]
        outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [batch, c, s, s]) for name, c, s in outputs]
        graph = helper.make_graph(self.nodes, "schp_random", ins, outs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="PartID test fixture (random weights)")
        model.ir_version = IR_VERSION
        onnx.checker.check_model(model)
        return model


def build_schp(n_classes: int, size: int, batch=1, seed: int = 0) -> onnx.ModelProto:
    """SCHP-like graph: input.1 [batch,3,size,size] -> parsing, fusion [batch,C,s,s], edge [batch,2,s,s]."""
    g = _Net(seed)
    x = g.op("Relu", [g.conv(INPUT_NAME, 3, 16, stride=2)])
    x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    x1 = g.op("Relu", [g.conv(x, 16, 32)])
    parsing_fea = g.op("Relu", [g.conv(x1, 32, 24)])
    edge_fea = g.op("Relu", [g.conv(x1, 32, 8)])
    g.conv(parsing_fea, 24, n_classes, k=1, out="parsing")
    g.conv(edge_fea, 8, 2, k=1, out="edge")
    fused = g.op("Concat", [parsing_fea, edge_fea], axis=1)
    g.conv(fused, 32, n_classes, k=1, out="fusion")
    s = stride4(size)
    return g.model(size, [("parsing", n_classes, s), ("fusion", n_classes, s), ("edge", 2, s)], batch)


def schp_onnx(label_set: str = "atr", batch=1) -> Path:
    """parsing_atr.onnx / parsing_lip.onnx stand-in (cached). `batch="N"` writes a dynamic-batch variant."""
    n_classes, size = len(BODY_LABEL_SETS[label_set]), INPUT_SIZE[label_set]
    suffix = "" if batch == 1 else f"_batch{batch}"

    def build(path):
        onnx.save(build_schp(n_classes, size, batch, seed={"atr": 11, "lip": 12}[label_set]), str(path))

    return cached(f"body_parsing/parsing_{label_set}{suffix}.onnx", build)


def nearest_colour_onnx(path: Path, colours_bgr: np.ndarray, size: int, mean_bgr, std_bgr, pool: int = 1,
                        batch=1) -> Path:
    """A net whose fusion logits pick, per pixel, the nearest of `colours_bgr` ([C,3] uint8 values).

    In SCHP's normalised input space x, logit_c = 2 p_c.x - |p_c|^2 with p_c the normalised colour c,
    so argmax = nearest colour. `pool` > 1 averages pool x pool blocks first (output at size/pool, like
    SCHP's stride-4 logits). The parsing output carries the negated logits, so a parser that reads
    outputs[0] instead of the fusion output gets visibly wrong labels.
    """
    p = (np.asarray(colours_bgr, np.float64) / 255.0 - np.asarray(mean_bgr)) / np.asarray(std_bgr)
    n = len(p)
    g = _Net(0)
    x = INPUT_NAME
    if pool > 1:
        x = g.op("AveragePool", [x], kernel_shape=[pool, pool], strides=[pool, pool])
    weight, bias = (2.0 * p)[:, :, None, None], -(p ** 2).sum(1)
    g.conv(x, 3, n, k=1, out="fusion", weight=weight, bias=bias)
    g.conv(x, 3, n, k=1, out="parsing", weight=-weight, bias=-bias)
    g.conv(x, 3, 2, k=1, out="edge")
    s = size // pool
    onnx.save(g.model(size, [("parsing", n, s), ("fusion", n, s), ("edge", 2, s)], batch), str(path))
    return path
