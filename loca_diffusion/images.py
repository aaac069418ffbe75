"""Opening user images as 8-bit RGB, the same way everywhere (pair builder, training data, validation,
web app), and laying images out in a grid (:func:`image_grid`, for validation samples).

``PIL.Image.convert("RGB")`` clips 16-bit and 32-bit integer greyscale images (modes ``I;16``,
``I;16B``, ``I;16L``, ``I``; 16-bit PNGs and TIFFs) at 255, which turns them all white. Here they are
scaled from 0..65535 to 0..255 instead. EXIF orientation is applied, and transparent images (``LA``,
``RGBA``, ``P`` with transparency, ...) are composited onto white rather than having their hidden colour
channels show through.
"""

from __future__ import annotations

import math
import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps

__all__ = ["fit_size", "load_rgb", "image_grid", "SIXTEEN_BIT_MODES"]

# Integer greyscale modes whose range is 0..65535 (Pillow opens 16-bit PNGs as I;16 or, before 10.x, as I).
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})
BACKGROUND = (255, 255, 255)


def fit_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size an input is resized to: long side ``max_side``, aspect kept, both sides multiples of 8
    (the VAE and UNet downsample by powers of two)."""
    scale = max_side / max(width, height)
    return (max(8, round(width * scale / 8) * 8), max(8, round(height * scale / 8) * 8))


def _sixteen_to_eight_bit(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)  # big/little endian is resolved by numpy's view of the mode
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def load_rgb(image: Union[str, os.PathLike, Image.Image]) -> Image.Image:
    """An 8-bit RGB copy of ``image`` (a path or a PIL image): EXIF orientation applied, 16-bit greyscale
    scaled to 8 bits, transparency composited onto white, any other mode converted by PIL."""
    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            opened.load()
            return load_rgb(opened)
    if not isinstance(image, Image.Image):
        raise TypeError(f"load_rgb expects a path or a PIL image, got {type(image).__name__}")
    image = ImageOps.exif_transpose(image)
    if image.mode in SIXTEEN_BIT_MODES:
        image = _sixteen_to_eight_bit(image)
    elif image.mode == "F":  # float images: PIL's convention is 0..255
        image = Image.fromarray(np.clip(np.rint(np.asarray(image)), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")


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
