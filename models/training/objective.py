"""The denoising objective and the loss curve picture.

The UNet wrapper ComfyUI trains through predicts the clean latent x0 (BaseModel.apply_model returns
`calculate_denoised`); for an epsilon model x_t = x0 + sigma * eps, so the usual noise loss
|eps_pred - eps|^2 equals |(x0_pred - x0) / sigma|^2: computed that way it needs no knowledge of
the model's parameterisation beyond sigma.
"""
from __future__ import annotations

import numpy as np
import torch


def sample_noise(shape: tuple[int, ...], seed: int) -> tuple[torch.Tensor, float]:
    """(noise [shape], t in [0, 1)) from one sample's seed: identical whatever process draws it."""
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(shape, generator=gen)
    t = float(torch.rand((), generator=gen))
    return noise, t


def noise_batch(latent_shape: tuple[int, ...], seeds, percent_to_sigma) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [B, *latent_shape], sigma [B]) of a micro-batch, each sample from its own seed (so a batch split
    over ranks or accumulation steps draws the same noise); `percent_to_sigma` maps t in [0, 1) to the model's
    sigma (ComfyUI's model_sampling.percent_to_sigma)."""
    noises, sigmas = [], []
    for seed in seeds:
        noise, t = sample_noise(tuple(latent_shape), seed)
        noises.append(noise)
        sigmas.append(float(percent_to_sigma(t)))
    return torch.stack(noises), torch.tensor(sigmas)


def background_kept(seeds, drop_probability: float) -> torch.Tensor | None:
    """[B] bool: whether each sample's noise loss keeps the background (drawn from its seed); None when nothing
    is ever dropped."""
    if drop_probability <= 0:
        return None
    return torch.tensor([np.random.default_rng(int(s)).random() >= drop_probability for s in seeds])


def total_loss(noise: torch.Tensor, localisation: torch.Tensor | None, weight: float) -> torch.Tensor:
    """noise + weight x localisation (the noise loss alone when there is no map or the weight is 0)."""
    if localisation is None or weight == 0:
        return noise
    return noise + weight * localisation


def noise_loss(x0_pred: torch.Tensor, x0: torch.Tensor, sigma: torch.Tensor,
               region: torch.Tensor | None = None, keep_background: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared epsilon error, [B] -> scalar.

    region: [B, 1, h, w] foreground at latent size; keep_background: [B] bool. Where a sample's
    keep_background is False only the foreground counts (ConsistentID's training drops the
    background from the denoising loss with probability 0.5).
    """
    err = ((x0_pred.float() - x0.float()) / sigma.float().view(-1, 1, 1, 1)) ** 2
    if region is None or keep_background is None:
        return err.mean()
    weight = torch.where(keep_background.view(-1, 1, 1, 1).to(err.device), torch.ones_like(region),
                         region.to(err.device)).expand_as(err)
    per_sample = (err * weight).sum((1, 2, 3)) / weight.sum((1, 2, 3)).clamp(min=1.0)
    return per_sample.mean()


def loss_curve_image(history: list[dict], keys: tuple[str, ...] = ("loss", "noise", "loc"),
                     width: int = 640, height: int = 320) -> torch.Tensor:
    """An IMAGE [1, H, W, 3] plotting each recorded loss (own scale per series; legend with last value)."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    colours = {"loss": (20, 20, 20), "noise": (30, 110, 200), "loc": (210, 80, 30)}
    left, right, top, bottom = 40, width - 10, 24, height - 24
    draw.rectangle((left, top, right, bottom), outline=(180, 180, 180))
    steps = [h["step"] for h in history]
    y_text = 4
    for key in keys:
        values = [h[key] for h in history if key in h and np.isfinite(h[key])]
        if not values:
            continue
        lo, hi = min(values), max(values)
        span = (hi - lo) or 1.0
        xs = steps[-len(values):]
        x_span = max(1, (xs[-1] - xs[0]) if len(xs) > 1 else 1)
        points = [(left + (right - left) * (x - xs[0]) / x_span, bottom - (bottom - top) * (v - lo) / span)
                  for x, v in zip(xs, values)]
        colour = colours.get(key, (90, 90, 90))
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        else:
            draw.ellipse((points[0][0] - 2, points[0][1] - 2, points[0][0] + 2, points[0][1] + 2), fill=colour)
        draw.text((left + 4 + 130 * keys.index(key), y_text), f"{key} {values[-1]:.4g}", fill=colour)
    draw.text((left, bottom + 4), f"step {steps[0] if steps else 0}", fill=(90, 90, 90))
    draw.text((right - 70, bottom + 4), f"step {steps[-1] if steps else 0}", fill=(90, 90, 90))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]
