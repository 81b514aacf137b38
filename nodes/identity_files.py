"""Save and load PARTID_IDENTITY tokens (models/identity_file.py does the reading and writing).

Saved identities go to ComfyUI/models/partid_identities/ (the first `partid_identities` folder), named
as core Save Image names its files (`prefix_00001_.safetensors`), so the loader lists them after a
refresh, and a graph that loads them needs neither DINOv2 nor the decoder nor the body parser.
"""
from __future__ import annotations

import logging
import os

from comfy_api.latest import io

from ..models.errors import InputError, ModelFileError
from ..models.identity_file import load_identity, save_identity
from . import types
from .identity_tokens import require_identity

SAVE_NODE = "PartID Save Identity"
LOAD_NODE = "PartID Load Identity"
FOLDER = "partid_identities"


def identities_folder() -> str:
    import folder_paths

    return os.path.abspath(folder_paths.get_folder_paths(FOLDER)[0])


class SaveIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="PartIDSaveIdentity", display_name=SAVE_NODE, category="PartID/identity", is_output_node=True,
            description="Saves identity tokens (e.g. from PartID Visual Persona Encode) to "
                        "models/partid_identities/, so later graphs can load them with PartID Load Identity "
                        "instead of running the parser, DINOv2 and the decoder again.",
            inputs=[types.Identity.Input("identity"),
                    io.String.Input("filename_prefix", default="identity",
                                    tooltip="File name start; may hold a subfolder (person/outfit) and %date% "
                                            "fields as core Save Image. Files are numbered: identity_00001_.")],
            outputs=[io.String.Output(display_name="path", tooltip="The file written.")],
        )

    @classmethod
    def execute(cls, identity, filename_prefix="identity"):
        import folder_paths

        tokens = require_identity(SAVE_NODE, "identity", identity)
        prefix = (filename_prefix or "").strip()
        if not prefix:
            raise InputError(SAVE_NODE, "filename_prefix", "the prefix is empty.", "give a name, e.g. 'identity'.")
        root = identities_folder()
        try:
            folder, name, counter, _, _ = folder_paths.get_save_image_path(prefix, root)
        except Exception as exc:    # core raises a bare Exception for a prefix leading outside the folder
            raise InputError(SAVE_NODE, "filename_prefix", f"'{prefix}' leads outside {root}.",
                             "use a plain name, or a subfolder without '..'.") from exc
        path = os.path.join(folder, f"{name}_{counter:05}_.safetensors")
        save_identity(tokens, path)
        logging.info("[PartID] %s: %d reference(s), groups %s -> %s", SAVE_NODE, tokens.references,
                     ", ".join(tokens.groups), path)
        return io.NodeOutput(path, ui={"text": [os.path.relpath(path, root)]})


class LoadIdentity(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        import folder_paths

        return io.Schema(
            node_id="PartIDLoadIdentity", display_name=LOAD_NODE, category="PartID/identity",
            description="Loads identity tokens saved by PartID Save Identity (models/partid_identities/): the same "
                        "tokens, groups and weights the encode node gave, for PartID Visual Persona Apply.",
            inputs=[io.Combo.Input("identity_file", options=folder_paths.get_filename_list(FOLDER),
                                   tooltip="A file from models/partid_identities/ (refresh after saving).")],
            outputs=[types.Identity.Output(display_name="identity")],
        )

    @classmethod
    def execute(cls, identity_file):
        import folder_paths

        path = folder_paths.get_full_path(FOLDER, identity_file) if identity_file else None
        if path is None:
            raise InputError(LOAD_NODE, "identity_file", f"'{identity_file}' is not in "
                             f"{', '.join(folder_paths.get_folder_paths(FOLDER))}.",
                             "save one with PartID Save Identity, then refresh the node list (R).")
        try:
            return io.NodeOutput(load_identity(path))
        except ModelFileError as exc:
            raise exc.at_input(LOAD_NODE, "identity_file", "choose a file written by PartID Save Identity.") from exc


NODES = [SaveIdentity, LoadIdentity]
