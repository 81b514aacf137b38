"""insightface model packs (buffalo_l, antelopev2): where they live and whether the files are the right kind.

The packs are folders of ONNX files that users unzip by hand, so the common failures are a wrong
folder level, a missing file, a failed download (HTML page, Git LFS pointer, truncated file) or a
file of another role under the expected name.  `find_pack` and `validate_pack` turn each of those
into a ModelFileError that names the file, what was expected and what was found.

The layouts below are the signatures of the official files (names, ranks, dtypes, fixed/symbolic
dims, output count and order).  Sources: insightface python-package model_zoo
(scrfd.py, arcface_onnx.py, landmark.py, attribute.py, model_zoo.py routing rules),
detection/scrfd/tools/scrfd2onnx.py, recognition/arcface_torch/torch2onnx.py, and third-party
dumps of the released files' metadata (see the comments at each entry).
Plain Python: no ComfyUI imports.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from .catalog import by_name
from .errors import ModelFileError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorSpec:
    """One graph input/output as the official file declares it."""

    name: str
    shape: tuple[int | str, ...]    # int = fixed dim, str = symbolic dim_param ("?", "None")
    free_axes: tuple[int, ...] = ()  # fixed in the real file but legitimately other sizes elsewhere
    name_checked: bool = True       # False where the real name could not be confirmed: check shape only


@dataclass(frozen=True)
class ModelSpec:
    filename: str
    role: str                       # detection | recognition | landmark_3d_68 | landmark_2d_106 | genderage
    required: bool                  # required by PartID (detector + recogniser); the rest are optional
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


SCRFD_STRIDES = (8, 16, 32)
SCRFD_ANCHORS = 2                   # anchors per feature-map position
SCRFD_WIDTHS = (1, 4, 10)           # score, bbox distances, 5 keypoints (x, y)


def _scrfd_outputs(names: tuple[str, ...], name_checked: bool) -> tuple[TensorSpec, ...]:
    # Grouped by kind, then by stride: score 8/16/32, bbox 8/16/32, kps 8/16/32 (scrfd.py indexes
    # net_outs[idx], [idx+3], [idx+6]).  Rank 2, no batch axis.  The first dim is declared as traced
    # at 640x640 (onnxruntime issue #12284 shows the SCRFD exports' fixed "{800,10}" declarations);
    # at other input sizes it follows the input, so it is a free axis.
    counts = [(640 // s) ** 2 * SCRFD_ANCHORS for s in SCRFD_STRIDES]   # 12800, 3200, 800
    return tuple(TensorSpec(names[k * 3 + i], (counts[i], w), free_axes=(0,), name_checked=name_checked)
                 for k, w in enumerate(SCRFD_WIDTHS) for i in range(3))


# det_10g.onnx: input 'input.1' [1,3,?,?] and output names 448 471 494 / 451 474 497 / 454 477 500,
# shapes [12800,1]..[800,10] - several independent dumps of the v0.7 file (sha256 5838f7fe...).
# scrfd_10g_bnkps.onnx (antelopev2) is the same file: published sha256 5838f7fe..., same size, and
# InsightFace-REST lists the same numeric output names for it.
_SCRFD_10G_NAMES = ("448", "471", "494", "451", "474", "497", "454", "477", "500")
_SCRFD_INPUT = TensorSpec("input.1", (1, 3, "?", "?"))

# ArcFace: PyTorch export, batch axis renamed to 'None' (arcface_torch/torch2onnx.py), output traced at
# batch 1 so declared [1,512] although any batch runs.  w600k_r50: 'input.1' -> '683' (two dumps of the
# released file).  glintr100: names from memory only ('input.1' -> '1333'), not checked.


def _arcface(filename: str, out_name: str, confirmed: bool, what: str) -> ModelSpec:
    return ModelSpec(filename, "recognition", True, what,
                     (TensorSpec("input.1", ("None", 3, 112, 112), name_checked=confirmed),),
                     (TensorSpec(out_name, (1, 512), free_axes=(0,), name_checked=confirmed),))


# Optional mxnet-converted models, shared by both packs: raw 0..255 pixels in (the graph normalises
# itself, which insightface detects by '_minus*'/'_mul*'/'bn_data' node names), one output.  Input
# 'data' / output 'fc1' are the mxnet conventions (one dump confirms 2d106det's 'fc1[212]'); batch
# dims are unconfirmed, so only names are unchecked and axis 0 is free.  insightface routes them by
# input size (192: landmark, 96: attribute) and output width (3309 = 68x3 3D landmarks + pose
# extras, 212 = 106x2, 3 = gender logits x2 + age/100).
def _mx(filename: str, role: str, size: int, width: int, what: str) -> ModelSpec:
    return ModelSpec(filename, role, False, what,
                     (TensorSpec("data", (1, 3, size, size), free_axes=(0,), name_checked=False),),
                     (TensorSpec("fc1", (1, width), free_axes=(0,), name_checked=False),))


_OPTIONAL = (
    _mx("1k3d68.onnx", "landmark_3d_68", 192, 3309, "3D 68-point landmarks"),
    _mx("2d106det.onnx", "landmark_2d_106", 192, 212, "2D 106-point landmarks"),
    _mx("genderage.onnx", "genderage", 96, 3, "gender/age"),
)

PACKS: dict[str, tuple[ModelSpec, ...]] = {
    "buffalo_l": (
        ModelSpec("det_10g.onnx", "detection", True, "SCRFD-10G face detector with 5 keypoints",
                  (_SCRFD_INPUT,), _scrfd_outputs(_SCRFD_10G_NAMES, True)),
        _arcface("w600k_r50.onnx", "683", True, "ArcFace R50 (WebFace600K) recogniser"),
        *_OPTIONAL),
    "antelopev2": (
        ModelSpec("scrfd_10g_bnkps.onnx", "detection", True, "SCRFD-10G face detector with 5 keypoints",
                  (_SCRFD_INPUT,), _scrfd_outputs(_SCRFD_10G_NAMES, True)),
        _arcface("glintr100.onnx", "1333", False, "ArcFace R100 (Glint360K) recogniser"),
        *_OPTIONAL),
}


def pack_layout(name: str) -> tuple[ModelSpec, ...]:
    if name not in PACKS:
        raise ModelFileError(f"[PartID] unknown insightface pack {name!r}; known: {', '.join(PACKS)}")
    return PACKS[name]


def _where_to_get(name: str) -> str:
    entry = by_name(name)
    return f"Download it from {entry.source} (licence: {entry.licence})."


def find_pack(search_roots: list[str], name: str) -> str:
    """The first folder holding every required file of pack `name`, under any of `search_roots`.

    Looks at <root>/models/<name>, <root>/<name>, and the doubled folders an unzip into an existing
    folder of the same name leaves (<root>/models/<name>/<name>, <root>/<name>/<name>).
    """
    required = [m.filename for m in pack_layout(name) if m.required]
    searched: list[str] = []
    partial: list[str] = []
    for root in search_roots:
        for parts in (("models", name), (name,), ("models", name, name), (name, name)):
            folder = os.path.join(root, *parts)
            if folder in searched:
                continue
            searched.append(folder)
            if not os.path.isdir(folder):
                continue
            missing = [f for f in required if not os.path.isfile(os.path.join(folder, f))]
            if not missing:
                return folder
            present = sorted(f for f in os.listdir(folder) if f.endswith(".onnx"))
            if present:  # a folder with some ONNX files is worth naming: likely a broken unzip
                partial.append(f"{folder} has {', '.join(present)} but lacks {', '.join(missing)}.")
    catalog_files = by_name(name).filenames
    optional = [m.filename for m in pack_layout(name) if not m.required]
    lines = [f"[PartID] insightface pack '{name}' not found.",
             "Searched: " + "; ".join(searched) + ".",
             f"Expected files: {', '.join(catalog_files)} (optional: {', '.join(optional)}).",
             *partial,
             _where_to_get(name)]
    raise ModelFileError(" ".join(lines))


# --- reading and checking one file's signature -------------------------------------------------

Tensor = tuple[str, str, tuple]     # (name, dtype, dims)


def _describe(tensors: list[Tensor]) -> str:
    return ", ".join(f"'{n}' {t}[{','.join(map(str, dims))}]" for n, t, dims in tensors) or "none"


def _sniff_non_onnx(path: str) -> str | None:
    """A plain-language reason when the bytes are clearly not a model (common failed downloads)."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    with open(path, "rb") as fh:
        head = fh.read(200)
    if head.startswith(b"version https://git-lfs"):
        return "it is a Git LFS pointer, not the model (fetch the real file with 'git lfs pull' or download it)"
    if head.lstrip()[:1] == b"<":
        return "it is an HTML/XML page (a failed download?), not an ONNX model"
    return None


def read_signature(path: str) -> tuple[list[Tensor], list[Tensor]]:
    """(inputs, outputs) of an ONNX file, without loading external weight files.

    Raises ModelFileError when the file cannot be parsed as ONNX (truncated, text, another format).
    """
    import onnx  # deferred: find_pack and the layouts must work without onnx installed

    reason = _sniff_non_onnx(path)
    if reason is None:
        try:
            model = onnx.load(path, load_external_data=False)
        except Exception as exc:  # protobuf raises DecodeError and friends on truncated/foreign bytes
            reason = f"it is not a readable ONNX model ({type(exc).__name__}: {exc}); truncated download?"
        else:
            if not model.graph.output:
                reason = "it parses but holds no ONNX graph (not an ONNX model, or truncated)"
    if reason:
        raise ModelFileError(f"[PartID] {path}: {reason}")

    def tensors(values, skip=frozenset()) -> list[Tensor]:
        out = []
        for v in values:
            if v.name in skip:   # older exporters also list weights as graph inputs
                continue
            tt = v.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim)
            out.append((v.name, onnx.TensorProto.DataType.Name(tt.elem_type).lower(), dims))
        return out

    initializers = frozenset(i.name for i in model.graph.initializer)
    return tensors(model.graph.input, initializers), tensors(model.graph.output)


def _guess_role(inputs: list[Tensor], outputs: list[Tensor]) -> str:
    """What insightface's own router (model_zoo.py) would take the file for."""
    if len(outputs) >= 5:
        return "a detection model"
    dims = inputs[0][2] if inputs else ()
    size = dims[2:4] if len(dims) == 4 else ()
    return {(112, 112): "a recognition model", (192, 192): "a landmark model",
            (96, 96): "a gender/age model"}.get(tuple(size), "not an insightface model of any known role")


def _mismatches(spec: TensorSpec, found: Tensor, kind: str) -> list[str]:
    name, dtype, dims = found
    problems = []
    if spec.name_checked and name != spec.name:
        problems.append(f"{kind} named '{name}', expected '{spec.name}'")
    if dtype != "float":
        problems.append(f"{kind} '{name}' is {dtype}, expected float")
    if len(dims) != len(spec.shape):
        return problems + [f"{kind} '{name}' has rank {len(dims)}, expected {len(spec.shape)}"]
    for axis, (want, got) in enumerate(zip(spec.shape, dims)):
        if isinstance(want, str) or axis in spec.free_axes:
            continue
        if got != want:
            problems.append(f"{kind} '{name}' axis {axis} is {got}, expected {want}")
    return problems


def _scrfd_counts_problem(inputs: list[Tensor], outputs: list[Tensor]) -> str | None:
    # Anchor counts must agree across strides (and with a fixed input size) or decoding misaligns.
    counts = [o[2][0] for o in outputs[:3]]
    if not all(isinstance(c, int) and c > 0 for c in counts):
        return None   # symbolic: follows the input at run time
    h, w = inputs[0][2][2:4]
    if isinstance(h, int) and isinstance(w, int):
        want = [(h // s) * (w // s) * SCRFD_ANCHORS for s in SCRFD_STRIDES]
    else:
        want = [counts[0], counts[0] // 4, counts[0] // 16]
    return None if counts == want else f"score outputs hold {counts} anchors, expected {want}"


def check_model_file(path: str, spec: ModelSpec) -> None:
    """Raise ModelFileError unless the file at `path` has the signature `spec` declares."""
    inputs, outputs = read_signature(path)
    problems: list[str] = []
    if len(inputs) != len(spec.inputs):
        problems.append(f"{len(inputs)} inputs, expected {len(spec.inputs)}")
    if len(outputs) != len(spec.outputs):
        problems.append(f"{len(outputs)} outputs, expected {len(spec.outputs)}")
    if not problems:
        for s, f in zip(spec.inputs, inputs):
            problems += _mismatches(s, f, "input")
        for s, f in zip(spec.outputs, outputs):
            problems += _mismatches(s, f, "output")
        if spec.role == "detection" and not problems:
            problem = _scrfd_counts_problem(inputs, outputs)
            problems += [problem] if problem else []
    if problems:
        raise ModelFileError(
            f"[PartID] {os.path.basename(path)} ({path}) is not the expected {spec.role} model "
            f"({spec.description}): {'; '.join(problems)}. "
            f"Expected inputs {_describe([(t.name, 'float', t.shape) for t in spec.inputs])} and outputs "
            f"{_describe([(t.name, 'float', t.shape) for t in spec.outputs])}; "
            f"found inputs {_describe(inputs)} and outputs {_describe(outputs)} - "
            f"this looks like {_guess_role(inputs, outputs)}. "
            f"Replace it with the file from the official pack.")


def validate_pack(folder: str, name: str) -> dict[str, str]:
    """{role: path} for the pack's files in `folder`, each checked against the official signature.

    A missing or wrong required file raises ModelFileError; an optional file that is absent is
    skipped, and one that is present but wrong is logged and left out (PartID never runs it).
    """
    found: dict[str, str] = {}
    for spec in pack_layout(name):
        path = os.path.join(folder, spec.filename)
        if not os.path.isfile(path):
            if spec.required:
                raise ModelFileError(f"[PartID] insightface pack '{name}' in {folder} lacks {spec.filename} "
                                     f"({spec.description}). {_where_to_get(name)}")
            continue
        try:
            check_model_file(path, spec)
        except ModelFileError as exc:
            if spec.required:
                raise
            log.warning("%s (optional, ignored)", exc)
            continue
        found[spec.role] = path
    return found


def onnx_providers() -> list[str]:
    """onnxruntime providers, CUDA first when this onnxruntime build offers it, CPU always last."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in available else []) + ["CPUExecutionProvider"]
