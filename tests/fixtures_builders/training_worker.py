"""A headless training process for the DDP test: run as a script, alone or under torchrun.

    python -m torch.distributed.run --nproc_per_node 2 training_worker.py CONFIG.json

It calls the pack's own headless entry (partid.cli.train: setup_comfyui + run) with the tiny SD1.5
UNet, the tiny ConsistentID adapter and the synthetic latents of the tier-B training tests, then
writes this rank's trained tensors to `<out_dir>/rank<r>.safetensors` so the test can compare ranks.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.append(str(TESTS))

import partid_rig  # noqa: E402,F401  (registers the `partid` package)


def synthetic_prepare(path, sample):
    import torch
    import torch.nn.functional as F

    from partid.models.training.images import load_mask_file as _mask_file, load_rgb

    img = load_rgb(path, 64).permute(0, 3, 1, 2)
    lat = F.avg_pool2d(img, 8)[0]
    lat = torch.cat([lat, lat.mean(0, keepdim=True)]) * 2 - 1
    mask = F.adaptive_avg_pool2d(_mask_file(path, 64)[None], (8, 8))[0, 0]
    gen = torch.Generator().manual_seed(5)
    from fixtures_builders.training import raw_vae_latent

    return {"latent": raw_vae_latent(lat), "context": torch.randn(77, 768, generator=gen), "mask": mask,
            "arcface": torch.randn(512, generator=gen), "clip_states": torch.randn(16, 1280, generator=gen) * 0.1}


def main(config_path: str) -> None:
    import logging

    logging.basicConfig(level=logging.INFO)
    config = json.loads(Path(config_path).read_text())
    from partid.cli import train

    train.setup_comfyui(config)
    import torch
    from safetensors.torch import save_file
    from types import SimpleNamespace

    from fixtures_builders.sd_models import tiny_sd15_patcher
    from fixtures_builders.training import TINY_SD15_LAYOUT, tiny_consistentid_groups
    from partid.models import formats

    torch.set_num_threads(1)
    adapter = SimpleNamespace(family="ConsistentID", format=formats.ADAPTER_FORMATS[0],
                              groups=tiny_consistentid_groups())
    trainer = train.run(config, model=tiny_sd15_patcher(), adapter=adapter, layout=TINY_SD15_LAYOUT,
                        prepare=synthetic_prepare)
    rank = int(os.environ.get("RANK", "0"))
    state = {k: v.contiguous() for k, v in trainer.trainables.trained_state().items()}
    save_file(state, os.path.join(config["out_dir"], f"rank{rank}.safetensors"))
    history = trainer.state.history
    Path(config["out_dir"], f"history{rank}.json").write_text(json.dumps(history))


if __name__ == "__main__":
    main(sys.argv[1])
