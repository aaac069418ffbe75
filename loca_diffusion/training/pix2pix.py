"""What only the InstructPix2Pix script trains with: its loss, its conditioning dropout and the picture of
where LoCA's coefficients sit in the DCT spectrum (logged to TensorBoard and saved with the adapter)."""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..tuners.loca.utils import iter_loca_layers

__all__ = ["conditioning_dropout", "instruct_pix2pix_loss", "location_heatmap"]



def conditioning_dropout(
    encoder_hidden_states: torch.Tensor,
    original_image_latents: torch.Tensor,
    null_conditioning: torch.Tensor,
    probability: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the text only, the image only, or both, each with ``probability`` (InstructPix2Pix's
    classifier-free guidance training): with ``u ~ U(0, 1)`` per example, text is dropped for
    ``u < 2p``, the image for ``p <= u < 3p``; both therefore for ``p <= u < 2p``."""
    if probability <= 0:
        return encoder_hidden_states, original_image_latents
    batch = encoder_hidden_states.shape[0]
    u = torch.rand(batch, device="cpu", generator=generator).to(encoder_hidden_states.device)
    drop_text = (u < 2 * probability).view(batch, 1, 1)
    encoder_hidden_states = torch.where(
        drop_text, null_conditioning.to(encoder_hidden_states.dtype), encoder_hidden_states
    )
    keep_image = 1 - ((u >= probability) & (u < 3 * probability)).to(original_image_latents.dtype)
    return encoder_hidden_states, original_image_latents * keep_image.view(batch, 1, 1, 1)


def instruct_pix2pix_loss(
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    noise_scheduler,
    batch: dict[str, torch.Tensor],
    null_conditioning: torch.Tensor,
    dropout_probability: float,
    weight_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """InstructPix2Pix's training loss on one batch (``edited_pixel_values``, ``original_pixel_values`` in
    [-1, 1], ``input_ids``): noise the edited image's latents, condition on the instruction and the original
    image's latents (with :func:`conditioning_dropout`), and regress the scheduler's target (noise or
    velocity). Draws from the global RNG in a fixed order, so a resumed run replays it."""
    latents = vae.encode(batch["edited_pixel_values"].to(weight_dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    ).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(batch["input_ids"])[0]
    original_latents = vae.encode(batch["original_pixel_values"].to(weight_dtype)).latent_dist.mode()
    encoder_hidden_states, original_latents = conditioning_dropout(
        encoder_hidden_states, original_latents, null_conditioning, dropout_probability
    )
    model_input = torch.cat([noisy_latents, original_latents], dim=1)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")


def _colormap(values: np.ndarray) -> np.ndarray:
    """A perceptually ordered dark-blue -> yellow map (viridis-like anchors), values in [0, 1]."""
    anchors = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)
    pos = np.clip(values, 0, 1) * (len(anchors) - 1)
    low = np.floor(pos).astype(int).clip(0, len(anchors) - 2)
    frac = (pos - low)[..., None]
    return (anchors[low] * (1 - frac) + anchors[low + 1] * frac).astype(np.uint8)


def location_heatmap(
    model: nn.Module, adapter_name: str = "default", bins: int = 48, tile: int = 96, columns: int = 8
) -> Image.Image:
    """One tile per LoCA layer: where its coefficients sit on the (d_out x d_in) DCT spectrum (low
    frequencies top-left), binned to ``bins x bins`` and weighted by coefficient magnitude."""
    layers = [layer for _, layer in iter_loca_layers(model) if adapter_name in layer.loca_coefficients]
    if not layers:
        raise ValueError(f"The model has no LoCA layer with adapter '{adapter_name}'")
    rows = math.ceil(len(layers) / columns)
    canvas = Image.new("RGB", (columns * (tile + 4) + 4, rows * (tile + 4) + 4), (255, 255, 255))
    for i, layer in enumerate(layers):
        loc = layer.get_locations(adapter_name).cpu().numpy()
        weight = layer.loca_coefficients[adapter_name].detach().abs().float().cpu().numpy() + 1e-12
        spectrum_row, spectrum_col = loc[0] / max(layer.out_features, 1), loc[1] / max(layer.in_features, 1)
        hist, _, _ = np.histogram2d(spectrum_row, spectrum_col, bins=bins, range=[[0, 1], [0, 1]], weights=weight)
        hist = np.log1p(hist / max(hist.max(), 1e-12) * 99) / np.log(100)
        image = Image.fromarray(_colormap(hist)).resize((tile, tile), Image.NEAREST)
        canvas.paste(image, (4 + (i % columns) * (tile + 4), 4 + (i // columns) * (tile + 4)))
    return canvas
