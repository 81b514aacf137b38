"""Read an ONNX file's graph signature without running it (onnx is imported lazily)."""
from __future__ import annotations

from .errors import ModelFileError


def io_shapes(path: str, infer: bool = False) -> tuple[list[tuple[str, list]], list[tuple[str, list]]]:
    """[(name, dims)] for inputs and outputs; a dim is an int or a symbolic name ("?" when unknown).

    `infer`: run ONNX shape inference first, for exports whose outputs declare no shape (common for
    SCHP exports made with dynamic axes); the class count then comes from the classifier's weights.
    """
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception as exc:
        raise ModelFileError(f"[PartID] {path} is not a readable ONNX file ({exc}). "
                             "Fix: download it again; it may be truncated.") from exc
    if infer:
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is a best effort; the declared signature is still checked below
            pass
    init = {i.name for i in model.graph.initializer}

    def dims(v):
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                for d in v.type.tensor_type.shape.dim]

    ins = [(v.name, dims(v)) for v in model.graph.input if v.name not in init]
    outs = [(v.name, dims(v)) for v in model.graph.output]
    return ins, outs


def parser_classes(path: str) -> int:
    """Class count of a segmentation export: the channel dim of its first 4-D output."""
    ins, outs = io_shapes(path)
    if len(ins) != 1 or len(ins[0][1]) != 4 or ins[0][1][1] != 3:
        raise ModelFileError(f"[PartID] {path}: expected one image input [N,3,H,W], found {ins}.")
    for attempt in (outs, None):
        if attempt is None:   # no output declares its channels: let ONNX infer them from the graph
            attempt = io_shapes(path, infer=True)[1]
            outs = attempt
        for _name, d in attempt:
            if len(d) == 4 and isinstance(d[1], int) and d[1] > 1:
                return d[1]
    raise ModelFileError(f"[PartID] {path}: no [N,classes,H,W] output, found {outs}; not a parser export.")
