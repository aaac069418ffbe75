"""Pictures of a training run: where the LoCA coefficients sit in the DCT spectrum, and image grids."""

from __future__ import annotations

import math

import numpy as np
import torch.nn as nn
from PIL import Image

from .tuners.loca.layer import iter_loca_layers

__all__ = ["image_grid", "location_heatmap"]


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


def image_grid(images: list[Image.Image], columns: int) -> Image.Image:
    """Images (same size) laid out row by row."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    w, h = images[0].size
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * w, rows * h), (255, 255, 255))
    for i, image in enumerate(images):
        grid.paste(image.convert("RGB").resize((w, h)), ((i % columns) * w, (i // columns) * h))
    return grid
