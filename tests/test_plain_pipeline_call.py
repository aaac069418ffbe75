"""Issue 17, items 2 and 3: the call a diffusers user types first works on the shipped embedded model.

``StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained("assets/tiny-instruct-pix2pix")`` with no dtype,
then ``pipe("make it black and white", image=photo)`` with no settings, on a photo of a size the model never saw:
no dtype clash, the model folder's recommended settings (``call_defaults.json``) are used, the result is grey.
References are independent of the pipeline: the colourfulness of the input photo, a call with the settings
written out by hand, and the snippet the model card prints.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from PIL import Image

from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline
from loca_diffusion.embedded import ADAPTERS_DIR, BASE_DIR, RESOLUTION
from loca_diffusion.embedded.evaluate import (
    CALL_DEFAULTS,
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_STEPS,
)
from loca_diffusion.pipelines import CALL_DEFAULTS_NAME, read_call_defaults


def _chroma(image: Image.Image) -> float:
    """Mean max(R, G, B) - min(R, G, B) over the pixels, 0..255: 0 for any grey."""
    x = np.asarray(image.convert("RGB"), dtype=float)
    return float((x.max(-1) - x.min(-1)).mean())


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A colourful held-out-size photo: 377 x 600 px, as in the issue."""
    from skimage import data

    return Image.fromarray(data.astronaut()).resize((377, 600), Image.Resampling.LANCZOS)


@pytest.fixture(scope="module")
def plain_pipe(torch_single_thread):
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(str(BASE_DIR.relative_to(BASE_DIR.parents[1])))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_from_pretrained_without_dtype_loads_every_component_in_float32(plain_pipe):
    # the text encoder is saved in fp16 (for size); the UNet and VAE load in float32, so must it
    dtypes = {name: next(getattr(plain_pipe, name).parameters()).dtype for name in ("unet", "vae", "text_encoder")}
    assert set(dtypes.values()) == {torch.float32}, dtypes


def test_plain_call_on_the_shipped_model_makes_a_grey_picture_in_seconds(plain_pipe, photo, monkeypatch):
    monkeypatch.chdir(BASE_DIR.parents[1])  # the README's relative path
    start = time.perf_counter()
    edited = plain_pipe("make it black and white", image=photo, generator=torch.Generator().manual_seed(0)).images[0]
    seconds = time.perf_counter() - start
    # the model's own resolution, aspect kept: 377 x 600 -> 40 x 64 (multiples of 8)
    assert edited.size == (40, 64)
    # diffusers' defaults on the full photo took minutes (327 s in the issue) and came out pink
    assert seconds < 30, seconds
    before = _chroma(photo.resize(edited.size, Image.Resampling.LANCZOS))
    assert before > 30 and _chroma(edited) < 0.25 * before, (before, _chroma(edited))


def test_left_out_arguments_come_from_the_model_folder(plain_pipe, photo):
    assert read_call_defaults(BASE_DIR) == plain_pipe.call_defaults == CALL_DEFAULTS
    assert CALL_DEFAULTS == {
        "resolution": RESOLUTION,
        "num_inference_steps": DEFAULT_STEPS,
        "guidance_scale": DEFAULT_GUIDANCE,
        "image_guidance_scale": DEFAULT_IMAGE_GUIDANCE,
    }
    small = photo.resize((40, 64), Image.Resampling.LANCZOS)
    by_hand = plain_pipe(
        "invert the colors", image=small, num_inference_steps=DEFAULT_STEPS, guidance_scale=DEFAULT_GUIDANCE,
        image_guidance_scale=DEFAULT_IMAGE_GUIDANCE, generator=torch.Generator().manual_seed(3), output_type="np",
    ).images  # fmt: skip
    defaults = plain_pipe(
        "invert the colors", image=photo, generator=torch.Generator().manual_seed(3), output_type="np"
    ).images
    assert np.array_equal(defaults, by_hand)
    # arguments given in the call win over the folder's
    other = plain_pipe(
        "invert the colors", image=small, num_inference_steps=4, generator=torch.Generator().manual_seed(3),
        output_type="np",
    ).images  # fmt: skip
    assert not np.array_equal(other, by_hand)


def test_call_defaults_survive_save_pretrained_and_typos_are_refused(plain_pipe, tmp_path):
    plain_pipe.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / CALL_DEFAULTS_NAME).read_text()) == CALL_DEFAULTS
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / CALL_DEFAULTS_NAME).write_text('{"guidence_scale": 2}')
    with pytest.raises(ValueError, match="guidence_scale"):
        read_call_defaults(tmp_path / "bad")


def test_the_model_card_snippet_runs_as_written(photo, tmp_path, monkeypatch, torch_single_thread):
    """The "Use" snippet of the shipped cartoonizer's card, with only the adapter path and photo filled in."""
    card = (ADAPTERS_DIR / "cartoonizer" / "README.md").read_text()
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0]
    assert 'from_pretrained("assets/tiny-instruct-pix2pix")' in snippet and "pipe(" in snippet
    photo.save(tmp_path / "photo.jpg")
    monkeypatch.chdir(BASE_DIR.parents[1])
    snippet = snippet.replace("path/to/this/directory", str(ADAPTERS_DIR / "cartoonizer"))
    snippet = snippet.replace('"photo.jpg"', repr(str(tmp_path / "photo.jpg")))
    namespace: dict = {}
    exec(compile(snippet, "card", "exec"), namespace)
    edited = namespace["edited"]
    assert edited.size == (40, 64) and np.asarray(edited).std() > 5  # an image, not a blank
