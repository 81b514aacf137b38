"""CLIP-I and CLIP-T with one CLIP that has both towers (transformers `CLIPModel` folder layout).

Definitions (REFERENCE.md 6): L2-normalised CLIP embeddings, 100 x cosine; CLIP-I between the
reference and the generation images, CLIP-T between the prompt and the generation image. The default
model is openai/clip-vit-large-patch14 (catalog `clip_vit_large_patch14`): config.json +
model.safetensors + preprocessor_config.json + the tokenizer files. Images go through the folder's own
CLIPImageProcessor (shortest side to 224 bicubic, centre crop 224, CLIP mean/std); prompts through its
CLIPTokenizer, truncated at 77 tokens as CLIP was trained.

ComfyUI's CLIP_VISION holds only the image tower, and CLIP-T needs the text tower of the *same*
CLIP, so this reads the whole model folder rather than a CLIP_VISION.
"""
from __future__ import annotations

import json
import os

import numpy as np
import torch

from ..errors import ModelFileError
from ..model_files import require_transformers_weights

MAX_TOKENS = 77
TOKENIZER_FILES = ("vocab.json", "merges.txt")


def _features(out) -> torch.Tensor:
    # transformers 4.x returns the projected tensor; 5.x a ModelOutput whose pooler_output is that tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class CLIPScorer:
    """Embeds images and prompts with one CLIP; `name` says which (for the report)."""

    def __init__(self, folder: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        if os.path.isfile(folder):       # a file picked inside the folder (e.g. its model.safetensors)
            folder = os.path.dirname(folder)
        config_path = os.path.join(folder, "config.json")
        if not os.path.isfile(config_path):
            raise ModelFileError(f"[PartID] {folder}: a CLIP folder needs config.json (transformers layout, "
                                 "e.g. openai/clip-vit-large-patch14).")
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
        if config.get("model_type") != "clip":
            raise ModelFileError(f"[PartID] {config_path} describes a '{config.get('model_type')}' model; CLIP-I and "
                                 "CLIP-T need a full CLIP (image and text towers), e.g. openai/clip-vit-large-patch14.")
        require_transformers_weights(folder, ("model.safetensors",))
        missing = [f for f in TOKENIZER_FILES + ("preprocessor_config.json",)
                   if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise ModelFileError(f"[PartID] {folder}: missing {', '.join(missing)} (CLIP-T needs the tokenizer and "
                                 "CLIP-I the image processor of the same repo).")
        self.folder = folder
        self.short_name = os.path.basename(os.path.normpath(folder))
        self.dtype = dtype
        self.model = CLIPModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        self.model = self.model.eval().requires_grad_(False).to(torch.device(device), dtype)
        self.processor = CLIPImageProcessor.from_pretrained(folder, local_files_only=True)
        self.tokenizer = CLIPTokenizer.from_pretrained(folder, local_files_only=True)

    @property
    def device(self) -> torch.device:
        """Where the model is now (ComfyUI's model management may have moved it)."""
        return next(self.model.parameters()).device

    def describe(self) -> str:
        v = self.model.config.vision_config
        return (f"CLIP {self.short_name} (ViT patch {v.patch_size}, image "
                f"{v.image_size}, width {v.hidden_size}, {v.num_hidden_layers} layers)")

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """uint8 RGB [H, W, 3] arrays -> the processor's [N, 3, 224, 224] float32."""
        # Channels-last stated: the processor otherwise guesses, and reads a side of 1, 3 or 4 px as channels.
        return self.processor(images=list(images), return_tensors="pt",
                              input_data_format="channels_last")["pixel_values"]

    @torch.inference_mode()
    def image_embeddings(self, images: list[np.ndarray]) -> torch.Tensor:
        """[N, D] L2-normalised image embeddings (float32, CPU)."""
        x = self.pixel_values(images).to(self.device, self.dtype)
        feats = _features(self.model.get_image_features(pixel_values=x)).float().cpu()
        return torch.nn.functional.normalize(feats, dim=-1)

    def token_ids(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(list(prompts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                              return_tensors="pt")

    @torch.inference_mode()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        """[N, D] L2-normalised text embeddings (float32, CPU)."""
        ids = {k: v.to(self.device) for k, v in self.token_ids(prompts).items()}
        feats = _features(self.model.get_text_features(**ids)).float().cpu()
        return torch.nn.functional.normalize(feats, dim=-1)
