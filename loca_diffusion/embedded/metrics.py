"""Image quality metrics on (3, H, W) tensors in [0, 1] (scikit-image's PSNR and SSIM)."""

from __future__ import annotations

import numpy as np
import torch


def _hwc(x: torch.Tensor) -> np.ndarray:
    if x.dim() != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(x.shape)}")
    return x.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy().astype(np.float64)


def psnr(output: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB (data range 1)."""
    from skimage.metrics import peak_signal_noise_ratio

    return float(peak_signal_noise_ratio(_hwc(target), _hwc(output), data_range=1.0))


def ssim(output: torch.Tensor, target: torch.Tensor) -> float:
    """Structural similarity (colour, 7 x 7 windows, data range 1)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(_hwc(target), _hwc(output), data_range=1.0, channel_axis=2))
