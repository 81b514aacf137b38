"""Nodes on PARTID_IDENTITY tokens: per-part weights, and joining two identities."""
from __future__ import annotations

from comfy_api.latest import io

from ..models.errors import InputError
from ..models.identity_tokens import IdentityTokens, concat
from ..models.visual_persona import PART_NAMES
from . import types

WEIGHTS_NODE = "PartID Identity Weights"
CONCAT_NODE = "PartID Concat Identity"


def is_identity(value) -> bool:
    """Duck-typed: the pack may be imported under two module names (ComfyUI's loader and `partid`)."""
    return all(hasattr(value, a) for a in ("cond", "uncond", "groups", "sizes", "weights", "source", "for_attention"))


def require_identity(node: str, input_name: str, value) -> IdentityTokens:
    if not is_identity(value):
        raise InputError(node, input_name, f"expected PartID identity tokens, got {type(value).__name__}.",
                         "connect the identity output of PartID Visual Persona Encode.")
    return value


class IdentityWeights(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDIdentityWeights", display_name=WEIGHTS_NODE, category="PartID/identity",
            description="Sets how strongly each body part's tokens act (e.g. outfit strong, face weaker). Scales the "
                        "part's attention values; 0 removes the part's tokens altogether. Parts the identity does not "
                        "have are ignored.",
            inputs=[types.Identity.Input("identity"),
                    *[io.Float.Input(name, default=1.0, min=0.0, max=5.0, step=0.05,
                                     tooltip=f"Weight of the {name.replace('_', ' ')} tokens (1 = as encoded).")
                      for name in ("face", "upper", "lower", "shoes", "full_body")]],
            outputs=[types.Identity.Output(display_name="identity")],
        )

    @classmethod
    def execute(cls, identity, face=1.0, upper=1.0, lower=1.0, shoes=1.0, full_body=1.0):
        identity = require_identity(WEIGHTS_NODE, "identity", identity)
        weights = {"face": face, "upper": upper, "lower": lower, "shoes": shoes, "full_body": full_body}
        for name, value in weights.items():
            if not 0.0 <= float(value) <= 5.0:
                raise InputError(WEIGHTS_NODE, name, f"{value} is outside 0..5.", "use a weight between 0 and 5.")
        return io.NodeOutput(identity.with_weights({k: float(v) for k, v in weights.items() if k in PART_NAMES}))


class ConcatIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDConcatIdentity", display_name=CONCAT_NODE, category="PartID/identity",
            description="Joins two identities into one token set attended jointly (e.g. one person's face with "
                        "another photo's outfit: zero the parts you do not want with PartID Identity Weights first). "
                        "For two people in one image, apply each identity separately with a mask instead.",
            inputs=[types.Identity.Input("identity_a"), types.Identity.Input("identity_b")],
            outputs=[types.Identity.Output(display_name="identity")],
        )

    @classmethod
    def execute(cls, identity_a, identity_b):
        a = require_identity(CONCAT_NODE, "identity_a", identity_a)
        b = require_identity(CONCAT_NODE, "identity_b", identity_b)
        try:
            return io.NodeOutput(concat(a, b))
        except ValueError as exc:
            raise InputError(CONCAT_NODE, "identity_b", str(exc) + ".",
                             "join identities made by the same encoder, with the same number of references.") from exc


NODES = [IdentityWeights, ConcatIdentity]
