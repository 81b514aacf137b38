"""Errors that tell the user what went wrong and how to fix it.

Every error raised at a user-facing boundary names the node, the input, what was wrong and
the fix, so a message read in the ComfyUI console or in a headless run's log is actionable.
"""
from __future__ import annotations


class PartIDError(Exception):
    """Base class for every error PartID raises on purpose."""


class InputError(PartIDError, ValueError):
    """A node input the user can change is wrong."""

    def __init__(self, node: str, input_name: str, problem: str, fix: str, batch_index: int | None = None):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        self.batch_index = batch_index
        where = f"{node}, input '{input_name}'"
        if batch_index is not None:
            where += f", batch index {batch_index}"
        super().__init__(f"[PartID] {where}: {problem} Fix: {fix}")


class ModelFileError(PartIDError, FileNotFoundError):
    """A model file is missing, unreadable, unsafe, or of the wrong kind."""

    def at_input(self, node: str, input_name: str, fix: str, override: bool = False) -> InputError:
        """This error reported at the node input that named the file: its text is the problem; the fix is the
        one the message carries when it has one ("... Fix: download it again"), else `fix` (always `fix` with
        override, for a caller that knows better, e.g. which adapter file fits the base model)."""
        problem, sep, own = str(self).removeprefix("[PartID] ").partition(" Fix: ")
        return InputError(node, input_name, problem, fix if override or not sep else own)


class UnsafeCheckpointError(ModelFileError):
    """A pickle checkpoint that needs arbitrary code to load; refused."""
