"""Recognise a checkpoint by matching it against declared official layouts.

Each `CheckpointFormat` states what an official file contains (groups, keys, shapes) and which
base model it belongs to. `identify` returns the one format a file matches exactly, or raises an
error that says, for the closest formats, what differs. No guessing from a single key.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .errors import ModelFileError
from .layouts.consistentid import consistentid_layout
from .layouts.visual_persona import decoder_layout, ip_adapter_layout

Shape = tuple[int, ...]


@dataclass(frozen=True)
class CheckpointFormat:
    name: str                        # e.g. "ConsistentID SD1.5"
    family: str                      # which loader reads it: "ConsistentID", "Visual Persona", "BiSeNet"
    kind: str                        # catalog kind: adapter | face_parser | dinov2 ...
    base: str | None                 # "sd15" | "sdxl" | None (base-independent)
    context_dim: int | None          # cross-attention width of the base the file needs
    # group -> (accepted group names, {key: shape}, exact) ; exact=False only checks listed keys
    groups: Mapping[str, tuple[tuple[str, ...], Mapping[str, Shape], bool]]
    optional_groups: tuple[str, ...] = ()
    normalise: Callable[[dict], dict] | None = field(default=None, compare=False)

    def mismatches(self, state: Mapping, limit: int = 6) -> list[str]:
        """What keeps `state` from being this format (empty when it matches)."""
        problems: list[str] = []
        for canonical, (names, layout, exact) in self.groups.items():
            group = next((state[n] for n in names if n in state), None)
            if group is None:
                problems.append(f"missing group '{' or '.join(names)}'")
                continue
            if not isinstance(group, Mapping):
                problems.append(f"group '{canonical}' is not a dict of tensors")
                continue
            for key, shape in layout.items():
                t = group.get(key)
                if t is None:
                    problems.append(f"missing {canonical}.{key}")
                elif tuple(t.shape) != tuple(shape):
                    problems.append(f"{canonical}.{key} has shape {list(t.shape)}, expected {list(shape)}")
                if len(problems) >= limit:
                    return problems
            if exact:
                extra = [k for k in group if k not in layout]
                if extra:
                    problems.append(f"{len(extra)} unexpected keys in '{canonical}', e.g. {extra[0]}")
        return problems[:limit]

    def canonical(self, state: Mapping) -> dict[str, dict[str, torch.Tensor]]:
        """The file's groups under their canonical names (`image_proj_model` -> `image_proj`)."""
        out = {}
        for canonical, (names, _layout, _exact) in self.groups.items():
            out[canonical] = dict(next(state[n] for n in names if n in state))
        for name in self.optional_groups:
            if name in state:
                out[name] = dict(state[name])
        return out


def _nested_from_prefixed(state: Mapping) -> dict:
    """safetensors files store `image_proj.x` flat; regroup by the first dotted component."""
    if any(isinstance(v, Mapping) for v in state.values()):
        return dict(state)
    grouped: dict[str, dict] = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        grouped.setdefault(head, {})[rest] = value
    return grouped


def _consistentid(variant: str, label: str) -> CheckpointFormat:
    layout = consistentid_layout(variant)
    proj = next(iter(layout))
    return CheckpointFormat(
        name=f"ConsistentID {label}", family="ConsistentID", kind="adapter", base=variant,
        context_dim=768 if variant == "sd15" else 2048,
        groups={
            # Both spellings occur in the official files (SD1.5 `image_proj`, SDXL `image_proj_model`).
            "image_proj": (("image_proj", "image_proj_model"), layout[proj], True),
            "FacialEncoder": (("FacialEncoder",), layout["FacialEncoder"], True),
            "adapter_modules": (("adapter_modules",), layout["adapter_modules"], True),
        },
    )


VISUAL_PERSONA_SDXL = CheckpointFormat(
    name="Visual Persona SDXL", family="Visual Persona", kind="adapter", base="sdxl", context_dim=2048,
    groups={
        "image_proj": (("image_proj",), decoder_layout(), True),
        "ip_adapter": (("ip_adapter",), ip_adapter_layout(), True),
    },
    optional_groups=("unet",),
)

ADAPTER_FORMATS: tuple[CheckpointFormat, ...] = (
    _consistentid("sd15", "SD1.5"),
    _consistentid("sdxl", "SDXL"),
    VISUAL_PERSONA_SDXL,
)

# BiSeNet (face-parsing.PyTorch 79999_iter.pth == ConsistentID face_parsing.pth): a flat dict.
# The anchors pin the ResNet-18 stem, both refinement modules, the fusion block and the 19-class
# head; the network's strict load checks every other key.
BISENET_FACE_PARSING = CheckpointFormat(
    name="BiSeNet face parser (19 classes)", family="BiSeNet", kind="face_parser", base=None, context_dim=None,
    groups={"": (("",), {
        "cp.resnet.conv1.weight": (64, 3, 7, 7),
        "cp.arm16.conv.conv.weight": (128, 256, 3, 3),
        "cp.arm32.conv.conv.weight": (128, 512, 3, 3),
        "ffm.convblk.conv.weight": (256, 256, 1, 1),
        "conv_out.conv_out.weight": (19, 256, 1, 1),
        "conv_out16.conv_out.weight": (19, 64, 1, 1),
        "conv_out32.conv_out.weight": (19, 64, 1, 1),
    }, False)},
)


def identify(state: Mapping, formats: tuple[CheckpointFormat, ...], path: str = "") -> CheckpointFormat:
    """The single format `state` matches; otherwise a ModelFileError naming what differs."""
    flat_group = {"": state}
    candidates = []
    for fmt in formats:
        view = flat_group if "" in fmt.groups else _nested_from_prefixed(state)
        problems = fmt.mismatches(view)
        if not problems:
            return fmt
        candidates.append((len(problems), fmt, problems))
    candidates.sort(key=lambda c: c[0])
    detail = "; ".join(f"not {fmt.name}: {', '.join(p[:3])}" for _, fmt, p in candidates[:3])
    raise ModelFileError(
        f"[PartID] {path or 'this file'} is none of the formats this loader reads "
        f"({', '.join(f.name for f in formats)}). {detail}.")


def grouped(state: Mapping, fmt: CheckpointFormat) -> dict[str, dict[str, torch.Tensor]]:
    view = {"": state} if "" in fmt.groups else _nested_from_prefixed(state)
    return fmt.canonical(view)
