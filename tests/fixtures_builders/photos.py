"""Real photos for tests, as RGB uint8 arrays [H,W,3].

- `astronaut()`: skimage's astronaut (512x512, one face), shipped inside scikit-image.
- `group_photo()`: insightface's own test image `data/images/t1.jpg` (1280x886, several faces). It is
  read out of an installed insightface package if one is importable, else out of the insightface
  wheel in the fixture cache; the wheel is fetched once with `pip download --no-deps` (PyPI only)
  and never installed: installing insightface would pull the CPU `onnxruntime` next to
  onnxruntime-gpu (REFERENCE.md section 7).

Decoded with Pillow, as ComfyUI's Load Image node does (for t1.jpg it gives the same pixels as
cv2.imread with opencv 5.0; the parity fixture records the hash of the pixels it was made from).
"""
from __future__ import annotations

import glob
import importlib.util
import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .cache import cached

INSIGHTFACE_VERSION = "2.1"      # the version the parity fixture was made with
T1_MEMBER = "insightface/data/images/t1.jpg"


def astronaut() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[..., :3])


def _installed_t1() -> bytes | None:
    # find_spec locates the package without importing it (importing would load onnxruntime).
    spec = importlib.util.find_spec("insightface")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", "images", "t1.jpg")
        if os.path.isfile(path):
            return Path(path).read_bytes()
    return None


def _download_wheel(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               f"insightface=={INSIGHTFACE_VERSION}", "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        wheels = glob.glob(os.path.join(tmp, "insightface-*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not download the insightface {INSIGHTFACE_VERSION} wheel for its test photo "
                               f"(needs PyPI): {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
        shutil.move(wheels[0], dest)


def insightface_wheel() -> Path:
    return cached(f"wheels/insightface-{INSIGHTFACE_VERSION}-py3-none-any.whl", _download_wheel)


def _wheel_t1() -> bytes:
    with zipfile.ZipFile(insightface_wheel()) as whl:
        return whl.read(T1_MEMBER)


def group_photo_jpeg() -> bytes:
    return _installed_t1() or _wheel_t1()


def group_photo() -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(group_photo_jpeg())) as img:
        return np.array(img.convert("RGB"))          # a writable copy
