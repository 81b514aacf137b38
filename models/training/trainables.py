"""The adapter parts a run trains, as one nn.Module, and their export in the official layouts.

ConsistentID (file groups `image_proj`, `FacialEncoder`, `adapter_modules`):
  "proj_plus"  ProjPlus (ArcFace + CLIP-H -> 4 ID tokens),
  "id_kv"      to_k_ip / to_v_ip of every cross-attention,
  "lora"       the rank-128 LoRA on every attention (to_q/to_k/to_v/to_out, down/up, scale 1),
  "facial_encoder"  the FacialEncoder (region resampler + FuseModule) that fuses region tokens into
              the text; present (frozen or trained) whenever the run fuses region tokens.
Visual Persona (`image_proj` = part decoder, `ip_adapter`):
  "decoder"    the body-partitioned decoder,
  "id_kv"      to_k_ip / to_v_ip.
Frozen parts stay in the module (the forward needs them) with requires_grad False; only trainable
parameters reach the optimiser and DDP. Parameters are kept in float32 (mixed precision is autocast).
`official_state` rebuilds the whole checkpoint: every group and key of the file the run started from,
trained values in place, so the result reloads through models/model_files.load_adapter unchanged.
"""
from __future__ import annotations

from typing import Hashable, Mapping, Sequence

import torch
from torch import nn

from ..attention.unet_keys import LORA_PROJECTIONS, processor_targets
from ..layouts.unet_attention import UNetAttentionConfig

CONSISTENTID_PARTS = ("facial_encoder", "proj_plus", "id_kv", "lora")
VISUAL_PERSONA_PARTS = ("decoder", "id_kv")


def _linear(weight: torch.Tensor) -> nn.Linear:
    out_f, in_f = weight.shape
    with torch.device("meta"):
        layer = nn.Linear(in_f, out_f, bias=False)
    layer.weight = nn.Parameter(weight.detach().to(torch.float32).clone())
    return layer


def _ordinary_parameters(module: nn.Module) -> nn.Module:
    """Weights loaded under ComfyUI's inference mode are inference tensors, which can never require grad:
    replace those by ordinary copies (others are kept as they are)."""
    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None and p.is_inference():
                sub._parameters[name] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
        for name, b in list(sub._buffers.items()):
            if b is not None and b.is_inference():
                sub._buffers[name] = b.detach().clone()
    return module


class AdapterTrainables(nn.Module):
    """`encoder` (ProjPlus or PartDecoder), `kv` {index: {to_k_ip, to_v_ip}}, `lora` {index: {proj_lora: {down, up}}},
    `facial` (ConsistentID's FacialEncoder, or None when the run fuses no region tokens)."""

    def __init__(self, family: str, groups: Mapping[str, Mapping[str, torch.Tensor]], layout: UNetAttentionConfig,
                 unet_config: dict, encoder: nn.Module, train: Sequence[str], facial: nn.Module | None = None):
        super().__init__()
        allowed = CONSISTENTID_PARTS if family == "ConsistentID" else VISUAL_PERSONA_PARTS
        unknown = [t for t in train if t not in allowed]
        if unknown or not train:
            raise ValueError(f"{family} trains some of {allowed}; got {list(train)}")
        self.family, self.train_parts = family, tuple(train)
        self.groups = {g: dict(v) for g, v in groups.items()}          # the file as loaded (for export)
        self.kv_group = "adapter_modules" if family == "ConsistentID" else "ip_adapter"
        self.encoder_group = "image_proj"
        self.targets = processor_targets(layout, unet_config)
        self.encoder = _ordinary_parameters(encoder.float())
        if "facial_encoder" in train and facial is None:
            raise ValueError("training the FacialEncoder needs region tokens: the run has no facial regions")
        self.facial = _ordinary_parameters(facial.float()) if facial is not None else None
        modules = self.groups[self.kv_group]
        self.kv = nn.ModuleDict()
        self.lora = nn.ModuleDict()
        for index, target in self.targets.items():
            if target.attn == "attn2":
                self.kv[str(index)] = nn.ModuleDict({
                    "to_k_ip": _linear(modules[f"{index}.to_k_ip.weight"]),
                    "to_v_ip": _linear(modules[f"{index}.to_v_ip.weight"])})
            if family == "ConsistentID":
                self.lora[str(index)] = nn.ModuleDict({
                    f"{proj}_lora": nn.ModuleDict({
                        "down": _linear(modules[f"{index}.{proj}_lora.down.weight"]),
                        "up": _linear(modules[f"{index}.{proj}_lora.up.weight"])})
                    for proj in LORA_PROJECTIONS})
        self.requires_grad_(False)
        for part in self.train_parts:
            self.part(part).requires_grad_(True)

    def part(self, name: str) -> nn.Module:
        return {"proj_plus": self.encoder, "decoder": self.encoder, "id_kv": self.kv, "lora": self.lora,
                "facial_encoder": self.facial}[name]

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def block_projections(self) -> dict[Hashable, tuple[nn.Linear, nn.Linear]]:
        """{ComfyUI block key: (to_k_ip, to_v_ip)} for attention_hooks.IdentityBranch."""
        return {self.targets[int(i)].block.key: (m["to_k_ip"], m["to_v_ip"]) for i, m in self.kv.items()}

    def lora_by_weight_key(self) -> dict[str, tuple[nn.Linear, nn.Linear]]:
        """{ModelPatcher weight key: (down, up)} for every LoRA'd projection."""
        out = {}
        for i, projs in self.lora.items():
            target = self.targets[int(i)]
            for proj in LORA_PROJECTIONS:
                pair = projs[f"{proj}_lora"]
                out[target.weight_key(proj)] = (pair["down"], pair["up"])
        return out

    def trained_state(self) -> dict[str, torch.Tensor]:
        """Flat state of what is trained (what a resume restores): `encoder.*`, `kv.*`, `lora.*`."""
        names = {"proj_plus": "encoder.", "decoder": "encoder.", "id_kv": "kv.", "lora": "lora.",
                 "facial_encoder": "facial."}
        prefixes = tuple(names[p] for p in self.train_parts)
        return {k: v.detach() for k, v in self.state_dict().items() if k.startswith(prefixes)}

    def load_trained_state(self, state: Mapping[str, torch.Tensor]) -> None:
        missing = set(self.trained_state()) - set(state)
        if missing:
            raise ValueError(f"the resume state lacks {len(missing)} trained tensors, e.g. {sorted(missing)[0]}")
        own = self.state_dict()
        with torch.no_grad():
            for k, v in state.items():
                if k in own:
                    own[k].copy_(v)

    def official_state(self, dtype: torch.dtype = torch.float16) -> dict[str, dict[str, torch.Tensor]]:
        """Every group of the source file, trained tensors written back, keys as in the official file."""
        out = {g: {k: v.detach().to("cpu", dtype).contiguous() for k, v in vals.items()}
               for g, vals in self.groups.items()}
        enc = out[self.encoder_group]
        for k, v in self.encoder.state_dict().items():
            if k in enc:
                enc[k] = v.detach().to("cpu", dtype).contiguous()
        if self.facial is not None:
            out["FacialEncoder"] = {k: v.detach().to("cpu", dtype).contiguous()
                                    for k, v in self.facial.state_dict().items()}
        mods = out[self.kv_group]
        for i, m in self.kv.items():
            for name in ("to_k_ip", "to_v_ip"):
                mods[f"{i}.{name}.weight"] = m[name].weight.detach().to("cpu", dtype).contiguous()
        for i, projs in self.lora.items():
            for proj in LORA_PROJECTIONS:
                for side in ("down", "up"):
                    w = projs[f"{proj}_lora"][side].weight
                    mods[f"{i}.{proj}_lora.{side}.weight"] = w.detach().to("cpu", dtype).contiguous()
        return out


def flat_for_safetensors(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """`{group: {key: t}}` -> `{"group.key": t}`: the safetensors spelling formats.py regroups."""
    return {f"{g}.{k}": v for g, vals in groups.items() for k, v in vals.items()}


def fresh_consistentid_kv(groups: dict, layout: UNetAttentionConfig, unet_config: dict,
                          base_weights: Mapping[str, torch.Tensor]) -> dict:
    """Official training init: to_k_ip / to_v_ip copied from the UNet's attn2 to_k / to_v, LoRA up zero.

    base_weights: {ModelPatcher key: tensor} of the UNet (e.g. patcher.model.state_dict()).
    """
    mods = dict(groups["adapter_modules"])
    for index, target in processor_targets(layout, unet_config).items():
        if target.attn == "attn2":
            for ip, proj in (("to_k_ip", "to_k"), ("to_v_ip", "to_v")):
                mods[f"{index}.{ip}.weight"] = base_weights[target.weight_key(proj)].detach().clone()
        for proj in LORA_PROJECTIONS:
            key = f"{index}.{proj}_lora.up.weight"
            if key in mods:
                mods[key] = torch.zeros_like(mods[key])
    return {**groups, "adapter_modules": mods}
