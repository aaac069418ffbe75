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


def dark_mask(images: torch.Tensor, threshold: float = 0.2) -> torch.Tensor:
    """(B, 1, H, W) True where every channel is below ``threshold``: what reads as black ink in an output
    (a model draws ink lines near black, not at exactly 0 like the code-made target)."""
    return images.amax(dim=1, keepdim=True) < threshold


def ink_scores(
    outputs: torch.Tensor, ink_targets: torch.Tensor, *, tolerance: int = 1, threshold: float = 0.2
) -> dict[str, float]:
    """Ink-line agreement of ``outputs`` (B, 3, H, W) with the target's ink mask ``ink_targets`` (B, 1, H, W):
    precision (the output's dark pixels that lie within ``tolerance`` px of a target ink pixel), recall (the
    target's ink pixels with an output dark pixel within ``tolerance`` px) and their F1, pooled over the
    batch. Unlike PSNR, a line drawn one pixel off counts as drawn."""
    predicted = dark_mask(outputs, threshold).float()
    truth = ink_targets.float()
    size = 2 * tolerance + 1
    near_truth = torch.nn.functional.max_pool2d(truth, size, stride=1, padding=tolerance) > 0
    near_pred = torch.nn.functional.max_pool2d(predicted, size, stride=1, padding=tolerance) > 0
    n_pred, n_truth = float(predicted.sum()), float(truth.sum())
    precision = float((near_truth & (predicted > 0)).sum()) / n_pred if n_pred else 0.0
    recall = float((near_pred & (truth > 0)).sum()) / n_truth if n_truth else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"ink_precision": precision, "ink_recall": recall, "ink_f1": f1}


class DinoV2Similarity:
    """Cosine similarity of DINOv2 image embeddings: the CLS token of the ViT-S/14 in DINOv2 layout that
    :mod:`loca_diffusion.offline` converts, each image resized to the model's 224 px input with ImageNet
    normalisation; the score PEFT's image-generation method comparison uses. Loads the model on first
    use (``make offline-models`` installs it; no network)."""

    INPUT_SIZE = 224  # the input size of the ONNX export (the config's 518 is DINOv2's position grid)
    MEAN = (0.485, 0.456, 0.406)
    STD = (0.229, 0.224, 0.225)

    def __init__(self, model_dir: str | None = None):
        self.model_dir = model_dir
        self._model = None

    @property
    def model(self):
        if self._model is None:
            from transformers import Dinov2Model

            from ..offline import resolve_model

            self._model = Dinov2Model.from_pretrained(self.model_dir or resolve_model("offline:vit-s14")).eval()
        return self._model

    def pixel_values(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> the model's normalised input at :attr:`INPUT_SIZE`."""
        size = self.INPUT_SIZE
        x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.MEAN).view(1, 3, 1, 1)
        std = torch.tensor(self.STD).view(1, 3, 1, 1)
        return (x.clamp(0, 1) - mean) / std

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, hidden) CLS embeddings (after the final layer norm)."""
        return self.model(pixel_values=self.pixel_values(images)).last_hidden_state[:, 0]

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        """Mean cosine similarity of each output's embedding with its target's."""
        return float(torch.nn.functional.cosine_similarity(self.embed(outputs), self.embed(targets)).mean())
