"""The base edits of the embedded model, made in code, each with paraphrased instructions.

Every edit maps a batch of images ``(B, 3, H, W)`` in [0, 1] to its edited version. Cartoonization is
deliberately not among them: it is what the LoCA adapter adds on top of the base. Which of them the
model learned well enough to ship is measured, not assumed (``bench/embedded_quality.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

_LUMA = torch.tensor([0.299, 0.587, 0.114])
_SEPIA = torch.tensor([[0.393, 0.769, 0.189], [0.349, 0.686, 0.168], [0.272, 0.534, 0.131]])


def grayscale(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("c,bchw->bhw", _LUMA.to(x), x)[:, None].expand_as(x).clone()


def invert(x: torch.Tensor) -> torch.Tensor:
    return 1 - x


def brighter(x: torch.Tensor) -> torch.Tensor:
    return (x * 1.35 + 0.1).clamp(0, 1)


def darker(x: torch.Tensor) -> torch.Tensor:
    return x * 0.55


def sepia(x: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _SEPIA.to(x), x).clamp(0, 1)


def warm(x: torch.Tensor) -> torch.Tensor:
    return (
        x * torch.tensor([1.2, 1.0, 0.7]).view(1, 3, 1, 1) + torch.tensor([0.06, 0.02, 0.0]).view(1, 3, 1, 1)
    ).clamp(0, 1)


def cool(x: torch.Tensor) -> torch.Tensor:
    return (
        x * torch.tensor([0.7, 0.95, 1.2]).view(1, 3, 1, 1) + torch.tensor([0.0, 0.02, 0.06]).view(1, 3, 1, 1)
    ).clamp(0, 1)


def more_contrast(x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * 1.8 + mean).clamp(0, 1)


def blur(x: torch.Tensor, sigma: float = 1.5) -> torch.Tensor:
    """Gaussian blur (separable, reflect padding)."""
    radius = int(3 * sigma + 0.5)  # scipy.ndimage.gaussian_filter(truncate=3.0)
    k = torch.exp(-(torch.arange(-radius, radius + 1, dtype=x.dtype) ** 2) / (2 * sigma**2))
    k = k / k.sum()
    c = x.shape[1]
    x = torch.nn.functional.pad(x, (radius,) * 4, mode="reflect")
    x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def flip_horizontal(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


@dataclass(frozen=True)
class Edit:
    name: str
    apply: Callable[[torch.Tensor], torch.Tensor]
    instructions: tuple[str, ...]  # the first is the canonical one (examples, evaluation)


EDITS: tuple[Edit, ...] = (
    Edit(
        "black_and_white",
        grayscale,
        (
            "make it black and white",
            "convert to black and white",
            "turn the photo black and white",
            "make it grayscale",
            "remove the colors",
            "desaturate the image",
            "make it a monochrome photo",
        ),
    ),
    Edit(
        "invert",
        invert,
        (
            "invert the colors",
            "make it a negative",
            "invert the image",
            "turn it into a photo negative",
            "reverse the colors",
        ),
    ),
    Edit(
        "brighter",
        brighter,
        (
            "make it brighter",
            "brighten the photo",
            "increase the brightness",
            "lighten the image",
            "make the picture lighter",
        ),
    ),
    Edit(
        "darker",
        darker,
        (
            "make it darker",
            "darken the photo",
            "decrease the brightness",
            "make the picture dimmer",
            "lower the exposure",
        ),
    ),
    Edit(
        "sepia",
        sepia,
        (
            "apply a sepia tone",
            "make it sepia",
            "give it an old sepia look",
            "turn it into a sepia photograph",
            "make it look like an old brown photo",
        ),
    ),
    Edit(
        "warm",
        warm,
        (
            "make it warmer",
            "give it a warm tint",
            "add a warm orange tone",
            "warm up the colors",
        ),
    ),
    Edit(
        "cool",
        cool,
        (
            "make it cooler",
            "give it a cool blue tint",
            "add a cold blue tone",
            "cool down the colors",
        ),
    ),
    Edit(
        "more_contrast",
        more_contrast,
        (
            "increase the contrast",
            "add more contrast",
            "make it more contrasty",
            "boost the contrast",
        ),
    ),
    Edit(
        "blur",
        blur,
        (
            "blur the image",
            "make it blurry",
            "add a soft blur",
            "make the photo out of focus",
        ),
    ),
    Edit(
        "flip_horizontal",
        flip_horizontal,
        (
            "flip it horizontally",
            "mirror the image",
            "flip the photo left to right",
            "make a mirror image",
        ),
    ),
)

EDITS_BY_NAME = {e.name: e for e in EDITS}
# Trained but not shipped as working edits: they beat output = input by under 3 dB on held-out photos
# (bench/results/embedded_quality.md); the app does not suggest them.
DROPPED_EDITS = ("more_contrast", "flip_horizontal")
WORKING_EDITS: tuple[Edit, ...] = tuple(e for e in EDITS if e.name not in DROPPED_EDITS)


# The cartoonizer adapter's target: loca_diffusion.cartoonize tuned for 64 px images (one smoothing
# pass, 6 colours, a higher ink threshold: the defaults draw 2-3 px black blobs at this size).
CARTOON_STYLE = {"num_colors": 6, "bilateral_passes": 1, "edge_c": 8}
CARTOON_INSTRUCTION = "Change the natural image to a cartoon-style image."  # the paper's evaluation prompt


def cartoon_targets(images: torch.Tensor, ink: bool = True) -> torch.Tensor:
    """:func:`loca_diffusion.cartoonize.cartoonize` with :data:`CARTOON_STYLE` of each image (B, 3, H, W);
    ``ink=False``: its flat colours without the black ink lines."""
    from ..cartoonize import cartoonize
    from .photos import to_image, to_tensor

    return torch.stack([to_tensor(cartoonize(to_image(x), **CARTOON_STYLE, ink=ink)) for x in images])


def ink_mask(targets: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) True where a cartoon target is pure black: its ink lines (a k-means colour of a photo
    is practically never exactly black)."""
    return targets.amax(dim=1, keepdim=True) == 0


def cartoon_reference_outputs(images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Code-made outputs that split the cartoon target into its two parts, to read a model's score against:
    the exact flat colours without ink lines, and the input with the target's ink lines drawn on it."""
    mask = ink_mask(targets)
    return {
        "flat colours, no ink (exact)": cartoon_targets(images, ink=False),
        "input + the target's ink lines": images.masked_fill(mask, 0.0),
    }
