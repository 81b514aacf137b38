"""The random-weight SD1.5 models the other tests stand on, run through ComfyUI's own nodes."""
from __future__ import annotations

import torch


def test_full_size_sd15_checkpoint_samples_through_core_nodes(comfy, model_dirs):
    n = comfy.nodes
    model, clip, vae = n.CheckpointLoaderSimple().load_checkpoint("partid_random_sd15.safetensors")
    assert type(model.model).__name__ == "BaseModel"
    assert model.model.model_config.unet_config["context_dim"] == 768
    (pos,) = n.CLIPTextEncode().encode(clip, "a portrait photo of a person")
    (neg,) = n.CLIPTextEncode().encode(clip, "blurry")
    assert pos[0][0].shape == (1, 77, 768)
    (latent,) = n.EmptyLatentImage().generate(64, 64, 1)
    (out,) = n.KSampler().sample(model, 0, 1, 5.0, "euler", "normal", pos, neg, latent, denoise=1.0)
    (image,) = n.VAEDecode().decode(vae, out)
    assert image.shape == (1, 64, 64, 3) and torch.isfinite(image).all()


def test_tiny_sd15_layout_unet_samples_in_a_model_patcher(comfy):
    import comfy.sample
    from fixtures_builders.sd_models import tiny_sd15_patcher

    patcher = tiny_sd15_patcher()
    cond = [[torch.randn(1, 77, 768), {}]]
    latent = torch.zeros(1, 4, 16, 16)
    noise = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    out = comfy.sample.sample(patcher, noise, 2, 4.0, "euler", "normal", cond, cond, latent)
    assert out.shape == latent.shape and torch.isfinite(out).all()
    # The random weights must make the text reach the output, or patch tests would prove nothing.
    other = [[torch.randn(1, 77, 768), {}]]
    out2 = comfy.sample.sample(patcher, noise, 2, 4.0, "euler", "normal", other, other, latent)
    assert (out - out2).abs().max() > 1e-3
    # The same cross-attention layout as SD1.5: every transformer block has attn2 with a 768 context.
    attn2 = [m for name, m in patcher.model.diffusion_model.named_modules() if name.endswith("attn2")]
    assert attn2 and all(m.to_k.weight.shape[1] == 768 for m in attn2)
