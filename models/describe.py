"""One-paragraph human summaries of loaded model handles (what the Model Info node shows)."""
from __future__ import annotations

import os

from .model_files import AdapterWeights, DINOv2Weights, ParserWeights


def describe(handle) -> str:
    if isinstance(handle, AdapterWeights):
        dtypes = sorted({str(t.dtype).replace("torch.", "") for g in handle.groups.values() for t in g.values()})
        groups = ", ".join(f"{k} ({len(v)} tensors)" for k, v in handle.groups.items())
        return (f"{handle.format.name} from {os.path.basename(handle.path)}: {handle.parameter_count() / 1e6:.1f} M "
                f"parameters, stored as {'/'.join(dtypes)}; base {handle.format.base} (text width "
                f"{handle.format.context_dim}); groups: {groups}.")
    if isinstance(handle, ParserWeights):
        return (f"{handle.backend} parser from {handle.path}: {len(handle.labels)} labels ({handle.label_set}): "
                f"{', '.join(handle.labels)}.")
    if isinstance(handle, DINOv2Weights):
        return (f"DINOv2 {handle.size_name} ({handle.layout} layout) from {handle.path}: width {handle.embed_dim}, "
                f"depth {handle.depth}, patch {handle.patch_size}, {handle.ffn} FFN.")
    describe_fn = getattr(handle, "describe", None)
    if callable(describe_fn):
        return describe_fn()
    return f"{type(handle).__name__}"
