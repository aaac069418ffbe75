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


# The cartoonizer adapter's target: loca_diffusion.data.cartoonize tuned for 64 px images (one smoothing
# pass, 6 colours, a higher ink threshold: the defaults draw 2-3 px black blobs at this size).
CARTOON_STYLE = {"num_colors": 6, "bilateral_passes": 1, "edge_c": 8}
CARTOON_INSTRUCTION = "Change the natural image to a cartoon-style image."  # the paper's evaluation prompt


def _cartoon_layers(images: torch.Tensor) -> list[tuple]:
    from ..data.cartoonize import cartoon_layers
    from .photos import to_image

    return [cartoon_layers(to_image(x), **CARTOON_STYLE) for x in images]


def _from_uint8(array) -> torch.Tensor:
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


def cartoon_targets(images: torch.Tensor, ink: bool = True) -> torch.Tensor:
    """:func:`loca_diffusion.data.cartoonize.cartoonize` with :data:`CARTOON_STYLE` of each image (B, 3, H, W);
    ``ink=False``: its flat colours without the black ink lines."""
    from ..data.cartoonize import cartoonize
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


# The parts of a cartoon, each a base edit of its own (the layers of loca_diffusion.data.cartoonize with
# CARTOON_STYLE). The base learns them in pretraining; the cartoon itself (flat colours AND ink, and
# its instruction) never reaches pretraining: composing the parts is what the LoCA adapter learns, as
# an adapter on the real InstructPix2Pix composes what its base learned from 450k edits.


def flat_colors(x: torch.Tensor) -> torch.Tensor:
    """The cartoon's flat colour regions without ink: edge-preserving smoothing + k-means quantization."""
    return torch.stack([_from_uint8(flat) for _, flat, _ in _cartoon_layers(x)]).to(x)


def black_outlines(x: torch.Tensor) -> torch.Tensor:
    """The cartoon's black ink lines drawn over the unchanged photo."""
    masks = torch.stack([torch.from_numpy(ink) for _, _, ink in _cartoon_layers(x)])[:, None]
    return x.masked_fill(masks.to(x.device), 0.0)


def line_drawing(x: torch.Tensor) -> torch.Tensor:
    """The cartoon's ink lines alone, black on white."""
    masks = torch.stack([torch.from_numpy(ink) for _, _, ink in _cartoon_layers(x)])[:, None]
    return torch.ones_like(x).masked_fill(masks.to(x.device), 0.0)


def smooth(x: torch.Tensor, passes: int = 3) -> torch.Tensor:
    """Edge-preserving smoothing: the cartoon's bilateral filter, run ``passes`` times (one pass is too
    faint at 64 px to learn as an edit of its own)."""
    from ..data.cartoonize import cartoon_layers
    from .photos import to_image

    style = {**CARTOON_STYLE, "bilateral_passes": passes}
    return torch.stack([_from_uint8(cartoon_layers(to_image(i), **style)[0]) for i in x]).to(x)


PART_EDITS: tuple[Edit, ...] = (
    Edit(
        "flat_colors",
        flat_colors,
        (
            "paint it with flat colors",
            "reduce it to a few flat colors",
            "make the colors flat",
            "simplify the colors into flat regions",
            "posterize the image",
        ),
    ),
    Edit(
        "black_outlines",
        black_outlines,
        (
            "draw black outlines",
            "outline the edges in black ink",
            "trace the contours with black lines",
            "add dark outlines to the edges",
            "ink the outlines",
        ),
    ),
    Edit(
        "line_drawing",
        line_drawing,
        (
            "make a line drawing",
            "turn it into an ink line drawing",
            "draw only the outlines on white",
            "make an ink sketch of the edges",
            "keep just the lines on a white page",
        ),
    ),
    Edit(
        "smooth",
        smooth,
        (
            "smooth the image but keep the edges",
            "smooth out the textures",
            "apply an edge-preserving smoothing",
            "remove the fine texture",
            "make the surfaces smooth",
        ),
    ),
)

# What the base is pretrained on: the base edits and the parts of a cartoon, never the cartoon.
PRETRAINING_EDITS: tuple[Edit, ...] = EDITS + PART_EDITS

EDITS_BY_NAME = {e.name: e for e in PRETRAINING_EDITS}

# Trained but not shipped as working edits: they beat output = input by under 3 dB on held-out photos
# (bench/results/embedded_quality.md); the app does not suggest them.
DROPPED_EDITS = ("more_contrast", "flip_horizontal", "flat_colors", "black_outlines", "smooth")
WORKING_EDITS: tuple[Edit, ...] = tuple(e for e in PRETRAINING_EDITS if e.name not in DROPPED_EDITS)
