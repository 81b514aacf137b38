"""Every model file PartID uses: where it lives, what it is called, where to get it, its licence.

The loaders, the missing-file errors, the downloader and the README table all read this one
list, so a file's name or source is written down once.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelFolder:
    """A ComfyUI model folder PartID registers (or reuses, when `core` is true)."""

    key: str                      # folder_paths name
    subdirs: tuple[str, ...]      # default locations under ComfyUI/models
    extensions: tuple[str, ...]
    core: bool = False            # owned by ComfyUI: extend nothing, only read


FOLDERS = {f.key: f for f in (
    ModelFolder("face_parsing", ("face_parsing",), (".pth", ".pt", ".bin", ".safetensors", ".json")),
    ModelFolder("body_parsing", ("body_parsing", "schp"), (".onnx", ".safetensors", ".json")),
    ModelFolder("insightface", ("insightface",), (".onnx",)),
    ModelFolder("identity_adapters", ("identity_adapters", "consistentid", "visual_persona"),
                (".safetensors", ".bin", ".pth", ".pt")),
    ModelFolder("dinov2", ("dinov2",), (".safetensors", ".pth", ".pt", ".bin", ".json")),
    ModelFolder("clip_vision", ("clip_vision",), (), core=True),
    ModelFolder("evaluation", ("evaluation",), (".safetensors", ".pth", ".json")),
    ModelFolder("partid_identities", ("partid_identities",), (".safetensors",)),   # PartID Save Identity writes here
)}


@dataclass(frozen=True)
class ModelFile:
    """One downloadable model: a single file, or a folder (a transformers repo, an insightface pack)."""

    name: str                     # what the user picks / what errors name
    kind: str                     # face_parser | body_parser | face_analysis | adapter | dinov2 | clip_vision
                                  # | eval_clip | eval_dino
    folder: str                   # ModelFolder key
    filenames: tuple[str, ...]    # accepted file names (first = canonical); for packs, the files inside
    licence: str
    source: str                   # human-readable origin (URL)
    repo_id: str | None = None    # Hugging Face repo for optional download
    repo_files: tuple[str, ...] = ()   # files to fetch from repo_id, in order of `filenames`
    revision: str | None = None   # pinned commit; None = resolved once and recorded in the lock file
    sha256: dict[str, str] = field(default_factory=dict)  # filename -> digest, when known
    is_pack: bool = False         # a folder of files (insightface pack, transformers model)
    description: str = ""


NON_COMMERCIAL = "non-commercial research only"
# The names transformers reads a folder's weights from; a pack that lists model.safetensors accepts any of them.
TRANSFORMERS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")

CATALOG: tuple[ModelFile, ...] = (
    ModelFile("bisenet_face_parsing", "face_parser", "face_parsing",
              ("face_parsing.pth", "79999_iter.pth"),
              licence=f"code MIT; weights trained on CelebAMask-HQ: {NON_COMMERCIAL}",
              source="https://huggingface.co/JackAILab/ConsistentID (face_parsing.pth = BiSeNet 79999_iter.pth)",
              repo_id="JackAILab/ConsistentID", repo_files=("face_parsing.pth",),
              description="BiSeNet 19-class face parser (ConsistentID's)"),
    ModelFile("segformer_face_parsing", "face_parser", "face_parsing",
              ("config.json", "model.safetensors", "preprocessor_config.json"),
              licence=f"CelebAMask-HQ-trained: {NON_COMMERCIAL}",
              source="https://huggingface.co/jonathandinu/face-parsing",
              repo_id="jonathandinu/face-parsing",
              repo_files=("config.json", "model.safetensors", "preprocessor_config.json"),
              is_pack=True, description="SegFormer face parser (transformers)"),
    ModelFile("segformer_b2_clothes", "body_parser", "body_parsing",
              ("config.json", "model.safetensors", "preprocessor_config.json"),
              licence="MIT (model card); trained on ATR",
              source="https://huggingface.co/mattmdjaga/segformer_b2_clothes",
              repo_id="mattmdjaga/segformer_b2_clothes",
              repo_files=("config.json", "model.safetensors", "preprocessor_config.json"),
              is_pack=True, description="SegFormer-B2, 18 ATR labels (transformers)"),
    ModelFile("schp_atr_onnx", "body_parser", "body_parsing", ("parsing_atr.onnx",),
              licence=f"SCHP code MIT; OOTDiffusion export CC BY-NC-SA 4.0: {NON_COMMERCIAL}",
              source="https://huggingface.co/levihsu/OOTDiffusion (checkpoints/humanparsing/parsing_atr.onnx)",
              repo_id="levihsu/OOTDiffusion", repo_files=("checkpoints/humanparsing/parsing_atr.onnx",),
              description="SCHP ATR (18 labels) ONNX export"),
    ModelFile("schp_lip_onnx", "body_parser", "body_parsing", ("parsing_lip.onnx",),
              licence=f"SCHP code MIT; OOTDiffusion export CC BY-NC-SA 4.0: {NON_COMMERCIAL}",
              source="https://huggingface.co/levihsu/OOTDiffusion (checkpoints/humanparsing/parsing_lip.onnx)",
              repo_id="levihsu/OOTDiffusion", repo_files=("checkpoints/humanparsing/parsing_lip.onnx",),
              description="SCHP LIP (20 labels) ONNX export"),
    ModelFile("buffalo_l", "face_analysis", "insightface",
              ("det_10g.onnx", "w600k_r50.onnx"),
              licence=f"insightface pretrained packs: {NON_COMMERCIAL}",
              source="https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip "
                     "(unzip to models/insightface/models/buffalo_l/)",
              is_pack=True, description="insightface buffalo_l: SCRFD-10G detector + ArcFace R50 (ConsistentID)"),
    ModelFile("antelopev2", "face_analysis", "insightface",
              ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
              licence=f"insightface pretrained packs: {NON_COMMERCIAL}",
              source="https://github.com/deepinsight/insightface/releases (antelopev2.zip; "
                     "unzip to models/insightface/models/antelopev2/)",
              is_pack=True, description="insightface antelopev2: SCRFD-10G detector + ArcFace R100"),
    ModelFile("consistentid_sd15", "adapter", "identity_adapters", ("ConsistentID-v1.bin",),
              licence="see https://huggingface.co/JackAILab/ConsistentID (research use)",
              source="https://huggingface.co/JackAILab/ConsistentID",
              repo_id="JackAILab/ConsistentID", repo_files=("ConsistentID-v1.bin",),
              description="ConsistentID for SD1.5 (184 M parameters)"),
    ModelFile("consistentid_sdxl", "adapter", "identity_adapters", ("ConsistentID_SDXL-v1.bin",),
              licence="see https://huggingface.co/JackAILab/ConsistentID (research use)",
              source="https://huggingface.co/JackAILab/ConsistentID",
              repo_id="JackAILab/ConsistentID", repo_files=("ConsistentID_SDXL-v1.bin",),
              description="ConsistentID for SDXL (869 M parameters)"),
    ModelFile("visual_persona", "adapter", "identity_adapters", ("weight.bin", "visual_persona.safetensors"),
              licence="see https://github.com/cvlab-kaist/Visual-Persona (research use)",
              source="Google Drive link in the README of https://github.com/cvlab-kaist/Visual-Persona "
                     "(save it as ComfyUI/models/identity_adapters/weight.bin)",
              description="Visual Persona SDXL: body-partitioned decoder + IP key/value"),
    ModelFile("dinov2_vitg14", "dinov2", "dinov2", ("dinov2_vitg14_pretrain.pth",),
              licence="Apache-2.0",
              source="https://dl.fbaipublicfiles.com/dinov2/dinov2_vitg14/dinov2_vitg14_pretrain.pth",
              description="DINOv2 ViT-g/14 (torch-hub layout), Visual Persona's encoder"),
    ModelFile("dinov2_giant_hf", "dinov2", "dinov2", ("config.json", "model.safetensors"),
              licence="Apache-2.0", source="https://huggingface.co/facebook/dinov2-giant",
              repo_id="facebook/dinov2-giant", repo_files=("config.json", "model.safetensors"),
              is_pack=True, description="DINOv2 ViT-g/14 (transformers layout)"),
    ModelFile("clip_vit_h", "clip_vision", "clip_vision", ("CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors",),
              licence="MIT (OpenCLIP weights)",
              source="https://huggingface.co/h94/IP-Adapter (models/image_encoder/model.safetensors)",
              repo_id="h94/IP-Adapter", repo_files=("models/image_encoder/model.safetensors",),
              description="CLIP-ViT-H/14, loaded by core CLIPVisionLoader"),
    ModelFile("clip_vit_large_patch14", "eval_clip", "evaluation",
              ("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
               "vocab.json", "merges.txt", "special_tokens_map.json"),
              licence="MIT (OpenAI CLIP)", source="https://huggingface.co/openai/clip-vit-large-patch14",
              repo_id="openai/clip-vit-large-patch14",
              repo_files=("config.json", "model.safetensors", "preprocessor_config.json", "tokenizer_config.json",
                          "vocab.json", "merges.txt", "special_tokens_map.json"),
              is_pack=True, description="CLIP ViT-L/14 (transformers layout): evaluation CLIP-I and CLIP-T"),
    ModelFile("dino_vits16", "eval_dino", "evaluation", ("dino_deitsmall16_pretrain.pth",),
              licence="Apache-2.0",
              source="https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
              description="DINO ViT-S/16 (torch-hub layout): evaluation DINO, FGIS and per-part similarity"),
)


def by_name(name: str) -> ModelFile:
    for entry in CATALOG:
        if entry.name == name:
            return entry
    raise KeyError(f"no catalog entry named {name!r}; known: {', '.join(e.name for e in CATALOG)}")


def of_kind(kind: str) -> list[ModelFile]:
    return [e for e in CATALOG if e.kind == kind]


def readme_table() -> str:
    """The README's model table, generated so it never drifts from the catalog."""
    rows = ["| model | file(s) | folder (under ComfyUI/models) | source | licence |", "|---|---|---|---|---|"]
    for e in CATALOG:
        folder = FOLDERS[e.folder].subdirs[0] + "/"
        if e.is_pack:  # insightface packs keep the ecosystem's models/<pack>/ nesting
            folder += ("models/" if e.folder == "insightface" else "") + e.name + "/"
        rows.append(f"| {e.description} | {', '.join(f'`{f}`' for f in e.filenames)} | `{folder}` | {e.source} | {e.licence} |")
    return "\n".join(rows)
