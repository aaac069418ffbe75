"""The committed embedded default (assets/): the base loads and its shipped edits do what they say on
held-out photos, the LoCA cartoonizer moves the output toward the cartoon target, and the edit CLI runs offline.
References are computed independently of the model: pixel correlation with the input,
PSNR against loca_diffusion.data.cartoonize's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from loca_diffusion.embedded import ADAPTERS_DIR, BASE_DIR, EXAMPLES_DIR, RESOLUTION
from loca_diffusion.embedded.edits import CARTOON_INSTRUCTION, cartoon_targets
from loca_diffusion.embedded.evaluate import run_edit
from loca_diffusion.embedded.metrics import psnr
from loca_diffusion.embedded.photos import PHOTOS, centre_square, to_image, to_tensor

ROOT = Path(__file__).resolve().parents[1]
HELD_OUT = ("chelsea.png", "coffee.png")


@pytest.fixture(scope="module")
def pipe(torch_single_thread):
    from loca_diffusion.edit import load_pipeline

    return load_pipeline(BASE_DIR)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    return torch.stack([to_tensor(centre_square(Image.open(EXAMPLES_DIR / f), RESOLUTION)) for f in HELD_OUT])


def test_code_made_edits_match_independent_references():
    """The targets the base learned, against numpy / scipy / PIL computations of the same edits."""
    import scipy.ndimage as ndimage

    from loca_diffusion.embedded.edits import EDITS_BY_NAME

    x = torch.rand(2, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = x.numpy()

    def edit(name):
        return EDITS_BY_NAME[name].apply(x).numpy()

    gray = np.asarray(to_image(x[0]).convert("L"), dtype=np.float64) / 255  # PIL's ITU-R 601 luma
    assert np.abs(edit("black_and_white")[0] - gray[None]).max() < 1.5 / 255
    assert np.allclose(edit("invert"), 1 - a)
    assert np.allclose(edit("flip_horizontal"), a[..., ::-1])
    assert np.allclose(edit("darker"), 0.55 * a)
    reference = ndimage.gaussian_filter(a, sigma=(0, 0, 1.5, 1.5), mode="mirror", truncate=3.0)
    assert np.allclose(edit("blur"), reference, atol=1e-12)


def test_default_guidance_is_the_one_chosen_on_training_photos():
    import re

    from loca_diffusion.embedded.evaluate import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE

    text = (ROOT / "bench" / "results" / "embedded_guidance.md").read_text()
    chosen = re.search(r"^Chosen: ([0-9.]+) / ([0-9.]+)", text, re.M)
    assert chosen, "bench/results/embedded_guidance.md has no 'Chosen:' line"
    assert (DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE) == (float(chosen[1]), float(chosen[2]))


def test_working_edits_are_the_ones_that_ship():
    """The app suggests exactly the pretraining edits that passed the 3 dB rule in the committed quality table."""
    from loca_diffusion.embedded.edits import DROPPED_EDITS, PRETRAINING_EDITS, WORKING_EDITS

    result = json.loads((ROOT / "bench" / "results" / "embedded_quality.json").read_text())
    assert [e.name for e in WORKING_EDITS] == result["shipped_edits"]
    assert set(DROPPED_EDITS) == set(result["dropped_edits"])
    assert {e.name for e in PRETRAINING_EDITS} == set(result["base_edits"])


def test_examples_are_held_out_and_listed():
    held_out = {f"{p.name}.png" for p in PHOTOS if p.held_out}
    rows = [json.loads(line) for line in (EXAMPLES_DIR / "examples.jsonl").read_text().splitlines() if line.strip()]
    assert rows and {r["image"] for r in rows} <= held_out
    assert all((EXAMPLES_DIR / r["image"]).is_file() for r in rows)
    assert {r["adapter"] for r in rows} <= {None, "cartoonizer"}


def test_base_loads_as_instruct_pix2pix(pipe):
    from loca_diffusion.pipelines import StableDiffusionInstructPix2PixLoCAPipeline

    assert isinstance(pipe, StableDiffusionInstructPix2PixLoCAPipeline)
    assert pipe.unet.config.in_channels == 2 * pipe.vae.config.latent_channels
    index = json.loads((BASE_DIR / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert (BASE_DIR / "tokenizer").is_dir()  # loads offline: nothing to download


def test_invert_correlates_negatively_with_the_input(pipe, photos):
    out = run_edit(pipe, photos, ["invert the colors"] * len(photos))
    for x, y in zip(photos, out):
        r = np.corrcoef(x.flatten().numpy(), y.flatten().numpy())[0, 1]
        assert r < -0.5, r


def test_edit_scores_reuse_the_outputs_they_are_given(pipe, photos):
    from loca_diffusion.embedded.edits import EDITS_BY_NAME
    from loca_diffusion.embedded.evaluate import edit_outputs, evaluate_edits

    edits = [EDITS_BY_NAME["invert"], EDITS_BY_NAME["black_and_white"]]
    outputs = edit_outputs(pipe, photos, edits)
    assert outputs.shape == (2, *photos.shape)
    # one sampling pass in edit-major order: the invert rows are the invert instruction's edits
    instructions = [edits[0].instructions[0]] * 2 + [edits[1].instructions[0]] * 2
    alone = run_edit(pipe, torch.cat([photos, photos]), instructions)
    torch.testing.assert_close(outputs.flatten(0, 1), alone)
    # given the inputs as "outputs", the model's score is exactly output = input, computed by hand
    scores = evaluate_edits(pipe, photos, edits, outputs=torch.stack([photos, photos]))
    for e in edits:
        by_hand = sum(10 * np.log10(1 / float(((x - t) ** 2).mean())) for x, t in zip(photos, e.apply(photos))) / 2
        assert scores[e.name]["psnr"] == pytest.approx(by_hand, abs=0.05)
        assert scores[e.name]["psnr"] == pytest.approx(scores[e.name]["identity_psnr"])


def _chroma(x: torch.Tensor) -> float:
    """Mean colourfulness max(R, G, B) - min(R, G, B) over the pixels: 0 for any grey.

    (HSV saturation divides this by max(R, G, B), which blows up the VAE's few-level noise in dark pixels.)"""
    return float((x.amax(0) - x.amin(0)).mean())


def test_black_and_white_has_near_zero_saturation(pipe, photos):
    out = run_edit(pipe, photos, ["make it black and white"] * len(photos))
    for x, y in zip(photos, out):
        # measured at commit time: 0.27 -> 0.023 (chelsea), 0.42 -> 0.029 (coffee); 0.05 is ~13 grey levels
        assert _chroma(y) < 0.05 and _chroma(y) < 0.2 * _chroma(x), (_chroma(x), _chroma(y))


def test_cartoonizer_adapter_moves_toward_the_cartoon(pipe, photos):
    targets = cartoon_targets(photos)
    prompts = [CARTOON_INSTRUCTION] * len(photos)
    before = run_edit(pipe, photos, prompts)
    pipe.load_loca(ADAPTERS_DIR / "cartoonizer", adapter_name="test_cartoon")
    try:
        after = run_edit(pipe, photos, prompts)
    finally:
        pipe.unload_loca()
    for b, a, t in zip(before, after, targets):
        # measured at commit time: +0.84 dB (chelsea), +3.75 dB (coffee) over the base alone
        assert psnr(a, t) > psnr(b, t) + 0.5, (psnr(a, t), psnr(b, t))


def test_the_comparison_scores_what_load_loca_serves(pipe, photos):
    """bench/task_comparison.py scores every method merged through PEFT; for LoCA that must be the edit that
    ``pipe.load_loca`` (the app's and the CLI's route) gives."""
    from loca_diffusion.embedded.evaluate import merged_adapter_pipeline

    adapter = ADAPTERS_DIR / "cartoonizer"
    merged = run_edit(merged_adapter_pipeline(BASE_DIR, adapter), photos, [CARTOON_INSTRUCTION] * 2)
    pipe.load_loca(adapter, adapter_name="route")
    try:
        served = run_edit(pipe, photos, [CARTOON_INSTRUCTION] * 2)
    finally:
        pipe.unload_loca()
    assert (merged - served).abs().max() < 2e-3, float((merged - served).abs().max())


def test_edit_cli_runs_offline(tmp_path):
    out = tmp_path / "edited.png"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-m", "loca_diffusion.edit", "--image", str(EXAMPLES_DIR / HELD_OUT[0]),
         "--instruction", "make it black and white", "--adapter", str(ADAPTERS_DIR / "cartoonizer"),
         "--steps", "4", "--output", str(out)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert Image.open(out).size == (RESOLUTION, RESOLUTION)


def test_edit_cli_keeps_the_aspect_ratio_and_documents_its_flags(pipe, tmp_path):
    """Issue 17 item 9: no centre crop (the app keeps the whole photo); every sampling flag has help text."""
    from loca_diffusion.edit import edit_image

    wide = Image.open(EXAMPLES_DIR / HELD_OUT[1]).convert("RGB").resize((150, 60))
    edited = edit_image(pipe, wide, "make it darker", steps=4)
    assert edited.size == (64, 24)  # 150 x 60 -> 64 x 25.6 -> multiples of 8
    # the whole photo is there: the left and right edges of the input show in the output's edges
    small = np.asarray(wide.resize(edited.size), dtype=float)
    out = np.asarray(edited, dtype=float)
    assert np.corrcoef(small[:, :8].ravel(), out[:, :8].ravel())[0, 1] > 0.5
    help_text = subprocess.run(
        [sys.executable, "-m", "loca_diffusion.edit", "--help"], capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    ).stdout  # fmt: skip
    for flag in ("--resolution", "--steps", "--guidance_scale", "--image_guidance_scale"):
        after = help_text.split("options:", 1)[1].split(f"\n  {flag}", 1)[1].split("\n  --", 1)[0]
        assert "default:" in after, (flag, after)


def test_edit_reads_16_bit_and_exif_rotated_photos_as_the_picture_they_show(pipe, tmp_path):
    from loca_diffusion.edit import edit_image

    grey = Image.open(EXAMPLES_DIR / HELD_OUT[0]).convert("L")
    values = np.asarray(grey, dtype=np.uint16)
    Image.fromarray(values * 257).save(tmp_path / "sixteen.png")  # 'I;16': 257 * v maps back to v exactly
    sideways = tmp_path / "sideways.jpg"
    colour = Image.open(EXAMPLES_DIR / HELD_OUT[1]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    colour.transpose(Image.Transpose.ROTATE_90).save(sideways, exif=exif, quality=100)
    upright = tmp_path / "upright.jpg"
    colour.save(upright, quality=100)

    reference = np.asarray(edit_image(pipe, grey.convert("RGB"), "make it darker"))
    sixteen = edit_image(pipe, Image.open(tmp_path / "sixteen.png"), "make it darker")
    assert np.array_equal(np.asarray(sixteen), reference)
    rotated = np.asarray(edit_image(pipe, Image.open(sideways), "make it darker"), dtype=float)
    straight = np.asarray(edit_image(pipe, Image.open(upright), "make it darker"), dtype=float)
    assert np.abs(rotated - straight).mean() < 3  # JPEG re-encoding of a rotated image differs slightly
