"""An opened insightface pack: validated ONNX files and their onnxruntime sessions."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from . import insightface_pack
from .errors import ModelFileError


@dataclass
class FaceAnalysisModels:
    name: str
    folder: str
    files: dict[str, str]                       # role -> path
    providers: list[str]
    sessions: dict[str, object] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        roles = ", ".join(f"{r}: {os.path.basename(p)}" for r, p in sorted(self.files.items()))
        return f"insightface {self.name} from {self.folder} on {', '.join(self.providers)} ({roles})."


def _providers(choice: str) -> list[str]:
    available = insightface_pack.onnx_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda" and "CUDAExecutionProvider" not in available:
        raise ModelFileError(
            "[PartID] provider 'cuda' was asked for but onnxruntime offers only "
            f"{', '.join(available)}. Fix: install onnxruntime-gpu *instead of* onnxruntime "
            "(pip uninstall onnxruntime; pip install onnxruntime-gpu), or choose provider 'auto'.")
    return available


def open_pack(search_roots: list[str], name: str, provider: str = "auto") -> FaceAnalysisModels:
    import onnxruntime as ort

    folder = insightface_pack.find_pack(search_roots, name)
    files = insightface_pack.validate_pack(folder, name)
    providers = _providers(provider)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = {role: ort.InferenceSession(path, sess_options=options, providers=providers)
                for role, path in files.items() if role in ("detection", "recognition")}
    # onnxruntime-gpu lists CUDA even where its libraries cannot load, then quietly runs on the CPU:
    # report what the sessions really use, and refuse an explicit "cuda" that did not take.
    used = next(iter(sessions.values())).get_providers()
    if provider == "cuda" and "CUDAExecutionProvider" not in used:
        raise ModelFileError(
            "[PartID] provider 'cuda' was asked for but onnxruntime could not start CUDA (it runs on "
            f"{', '.join(used)}). Fix: install the CUDA and cuDNN versions your onnxruntime-gpu needs "
            "(pip install onnxruntime-gpu[cuda,cudnn]), or choose provider 'auto'.")
    return FaceAnalysisModels(name, folder, files, used, sessions)
