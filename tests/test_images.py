"""loca_diffusion.images.load_rgb and its users (pair builder, training data): 16-bit images are scaled
to 8 bits instead of clipping to white, EXIF orientation, transparency. References are numpy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from loca_diffusion.data import load_edit_dataset, make_train_dataset
from loca_diffusion.data.cartoonize import build_cartoon_dataset
from loca_diffusion.images import load_rgb

H, W = 24, 40


def gradient16() -> np.ndarray:
    """A 16-bit horizontal + vertical gradient covering 0..65535."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.rint((xx / (W - 1) * 0.75 + yy / (H - 1) * 0.25) * 65535).astype(np.uint16)


def expected_rgb(values: np.ndarray) -> np.ndarray:
    grey = np.rint(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def save_16bit_png(path) -> np.ndarray:
    values = gradient16()
    Image.fromarray(values).save(path)  # mode I;16
    return values


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_16_bit_modes_are_scaled_not_clipped(mode):
    values = gradient16()
    if mode == "I;16B":
        image = Image.frombytes("I;16B", (W, H), values.astype(">u2").tobytes())
    else:
        image = Image.fromarray(values).convert(mode) if mode == "I" else Image.fromarray(values)
    assert image.mode == mode
    out = load_rgb(image)
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), expected_rgb(values))


def test_16_bit_png_file(tmp_path):
    values = save_16bit_png(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode in ("I;16", "I")  # what Pillow opens it as
    out = np.asarray(load_rgb(tmp_path / "g16.png"))
    np.testing.assert_array_equal(out, expected_rgb(values))
    assert out.min() == 0 and out.max() == 255


def test_exif_orientation_is_applied(tmp_path):
    array = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    image = Image.fromarray(array, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 3  # rotated 180 degrees
    image.save(tmp_path / "r.png", exif=exif)
    np.testing.assert_array_equal(np.asarray(load_rgb(tmp_path / "r.png")), array[::-1, ::-1])


def test_transparency_is_composited_on_white():
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (200, 0, 0, 0)  # fully transparent: white
    rgba[0, 1] = (200, 0, 0, 255)  # opaque: its colour
    rgba[1, 0] = (0, 0, 0, 128)  # half transparent black over white
    rgba[1, 1] = (0, 100, 0, 255)
    out = np.asarray(load_rgb(Image.fromarray(rgba, "RGBA"))).astype(int)
    alpha = rgba[..., 3:].astype(float) / 255
    reference = rgba[..., :3] * alpha + 255 * (1 - alpha)
    np.testing.assert_allclose(out, reference, atol=1)
    la = np.asarray(load_rgb(Image.fromarray(rgba, "RGBA").convert("LA")))
    assert tuple(la[0, 0]) == (255, 255, 255)
    palette = Image.fromarray(np.array([[0, 1]], dtype=np.uint8), "P")
    palette.putpalette([10, 20, 30, 40, 50, 60])
    np.testing.assert_array_equal(np.asarray(load_rgb(palette)), [[[10, 20, 30], [40, 50, 60]]])


def test_pair_builder_reads_16_bit_photos(tmp_path):
    values = save_16bit_png(tmp_path / "g16.png")
    build_cartoon_dataset(tmp_path / "ds", photos=[("g16", tmp_path / "g16.png")], resolution=None)
    row = json.loads((tmp_path / "ds" / "metadata.jsonl").read_text().splitlines()[0])
    original = np.asarray(Image.open(tmp_path / "ds" / row["original_image_file_name"]))
    np.testing.assert_array_equal(original, expected_rgb(values))


def test_training_data_reads_16_bit_images(tmp_path):
    from test_data import FakeTokenizer

    root = tmp_path / "ds"
    root.mkdir()
    values = save_16bit_png(root / "a.png")
    save_16bit_png(root / "b.png")
    row = {"original_image_file_name": "a.png", "edit_prompt": "cartoon", "cartoonized_image_file_name": "b.png"}
    (root / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    dataset = load_edit_dataset(train_data_dir=root, cache_dir=tmp_path / "cache")
    # W x H resized to a W x W square would interpolate; train at the native width with a "shorter side" crop
    example = make_train_dataset(dataset, FakeTokenizer(), H, resize_mode="shorter_side", center_crop=True)[0]
    left = (W - H) // 2
    reference = expected_rgb(values)[:, left : left + H].astype(np.float32) / 127.5 - 1
    pixels = example["original_pixel_values"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(pixels, reference, atol=1e-6)
