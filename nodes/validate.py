"""Input checks a node runs itself: ComfyUI (0.3.64) does not check V3 combo values before execution."""
from __future__ import annotations

from ..models.errors import InputError


def require_choice(node: str, input_name: str, value, options) -> None:
    if value not in options:
        raise InputError(node, input_name, f"'{value}' is not one of {', '.join(map(str, options))}.",
                         "pick one of the listed values (an edited or older workflow may hold a stale value).")
