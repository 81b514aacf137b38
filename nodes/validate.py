"""Input checks a node runs itself: ComfyUI (0.3.64) does not check V3 combo values before execution."""
from __future__ import annotations

import logging

from ..models.errors import InputError

log = logging.getLogger("partid")


def require_choice(node: str, input_name: str, value, options) -> None:
    if value not in options:
        raise InputError(node, input_name, f"'{value}' is not one of {', '.join(map(str, options))}.",
                         "pick one of the listed values (an edited or older workflow may hold a stale value).")


def check_identity_mask(node: str, mask) -> None:
    """An apply node's optional MASK: [H, W] or [M, H, W] (M is 1 or the latent batch, checked when sampling)."""
    if mask is None:
        return
    import torch

    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or min(mask.shape[-2:]) < 1:
        shape = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(node, "mask", f"expected a MASK [H, W] or [batch, H, W], got {shape}.",
                         "connect a MASK output (e.g. Load Image's mask, a Solid Mask or PartID Body Parts).")
    if not torch.isfinite(mask).all():
        raise InputError(node, "mask", "the mask holds NaN or infinite values.", "connect a mask with values in 0..1.")
    if not bool((mask > 0).any()):     # e.g. a Select Labels with nothing switched on, a Solid Mask of 0
        log.warning("[PartID] %s: the mask is empty (all zero), so the identity acts nowhere; connect a mask of "
                    "the region it should cover, or disconnect it for the whole image.", node)


def require_adapter(node: str, adapter, family: str, groups: tuple[str, ...] = (), bases=None) -> str | None:
    """The adapter input holds a loaded adapter of `family` (with those weight groups, of one of `bases`);
    returns its base model name."""
    base = getattr(getattr(adapter, "format", None), "base", None)
    have = getattr(adapter, "groups", None) or {}
    if getattr(adapter, "family", None) != family or any(g not in have for g in groups) \
            or (bases is not None and base not in bases):
        raise InputError(node, "adapter", f"this is not a {family} adapter.",
                         f"connect the PartID {family} Loader's output.")
    return base


# start_at / end_at are percents of the model's noise range (as ControlNet's start/end_percent), not of the steps.
WINDOW_NOTE = ("A fraction of the model's noise range, as ControlNet's start/end percent, not of the steps: with a "
               "karras schedule or denoise < 1 a window covers fewer steps than its width suggests.")


def window_tooltips(what: str, official: tuple[str, str] = ("", "")) -> tuple[str, str]:
    """Tooltips of an apply node's start_at and end_at."""
    return (f"Start of the window where the {what} acts (0: from pure noise{official[0]}). {WINDOW_NOTE}",
            f"End of the window where the {what} acts (1: to the end{official[1]}). {WINDOW_NOTE}")


def check_window(node: str, start_at: float, end_at: float) -> None:
    """An apply node's sampling window: start_at must not come after end_at (ComfyUI checks each bound alone)."""
    if start_at > end_at:
        raise InputError(node, "start_at", f"start_at {start_at} is after end_at {end_at}.",
                         "make start_at smaller than end_at.")
    if start_at == end_at:            # a window of one sigma, which no sampler step lands on
        log.warning("[PartID] %s: start_at equals end_at (%s), so the identity acts at no step; widen the window.",
                    node, start_at)


CONSISTENTID_BASE_FIX = ("pick the ConsistentID file made for this base model (ConsistentID-v1.bin for SD1.5, "
                         "ConsistentID_SDXL-v1.bin for SDXL).")
VISUAL_PERSONA_BASE_FIX = "Visual Persona is made for SDXL: connect an SDXL 1.0 checkpoint's MODEL."


def require_base_model(node: str, model, adapter, input_name: str, fix: str) -> None:
    """The MODEL is a ComfyUI model of the adapter's base (text width); InputError naming `input_name` else."""
    from ..models import model_files
    from ..models.errors import ModelFileError

    unet_config = getattr(getattr(getattr(model, "model", None), "model_config", None), "unet_config", None)
    if unet_config is None:
        raise InputError(node, "model", f"expected a MODEL, got {type(model).__name__}.", "connect a checkpoint's MODEL.")
    try:
        model_files.check_base(adapter, unet_config.get("context_dim"), type(model.model).__name__)
    except ModelFileError as exc:
        raise exc.at_input(node, input_name, fix, override=True) from exc
