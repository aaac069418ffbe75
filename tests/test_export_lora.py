"""Issue 20, point 4: LoRA export of LoCA adapters (PEFT's convert_to_lora / save_as_lora, and
``python -m loca_diffusion.export_lora``), checked by loading the LoRA through diffusers and through PeftModel."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.lora.conversion import save_as_lora

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion.export_lora import export_lora, main, overall_relative_error

from _models import SPECS, run_eval

pytestmark = pytest.mark.usefixtures("torch_single_thread")

ROOT = Path(__file__).resolve().parents[1]
CARTOONIZER = ROOT / "assets" / "adapters" / "cartoonizer"
BASE = ROOT / "assets" / "tiny-instruct-pix2pix"


def _edit(pipe, image):
    return pipe(
        "Change the natural image to a cartoon-style image.",
        image=image,
        num_inference_steps=3,
        output_type="pt",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="module")
def cartoon_edits():
    from PIL import Image

    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(
        str(BASE), safety_checker=None, torch_dtype=torch.float32
    )
    pipe.set_progress_bar_config(disable=True)
    photos = sorted(p for p in (ROOT / "assets" / "examples").rglob("*") if p.suffix in (".png", ".jpg"))
    image = Image.open(photos[0])
    image = image.convert("RGB").resize((64, 64))
    base = _edit(pipe, image)
    pipe.load_loca(str(CARTOONIZER))
    loca = _edit(pipe, image)
    pipe.unload_loca()
    return pipe, image, base, loca


@pytest.mark.parametrize("rank, lossy", [(128, False), (4, True)])
def test_cartoonizer_lora_through_diffusers_reproduces_the_edit(cartoon_edits, rank, lossy, tmp_path, capsys):
    pipe, image, base, loca = cartoon_edits
    assert main([str(CARTOONIZER), str(tmp_path), "--rank", str(rank)]) == 0
    printed = capsys.readouterr().out
    reported = float(printed.strip().splitlines()[-1].split("overall relative error ")[1].split()[0])
    assert "to_q" in printed and "relative error" in printed.splitlines()[0]
    pipe.load_lora_weights(str(tmp_path))  # diffusers' own LoRA loader, from pytorch_lora_weights.safetensors
    try:
        lora = _edit(pipe, image)
    finally:
        pipe.unload_lora_weights()
    edit_size = float((loca - base).norm())
    edit_error = float((lora - loca).norm()) / edit_size
    assert edit_size > 0
    if not lossy:
        assert reported < 1e-6
        assert edit_error < 1e-3  # float32 sampling noise only
    else:
        assert reported > 0.5  # rank 4 of 64..128-wide updates is visibly lossy
        assert 1e-3 < edit_error <= 2 * reported  # the edit is off, by about what the weights are
    print(f"rank {rank}: weight error {reported:.3e}, edit error {edit_error:.3e}")


def test_transformers_lora_through_peft_model(tmp_path):
    spec = SPECS["bert"]
    torch.manual_seed(0)
    model = get_peft_model(spec.base(), spec.config(init_weights=False))
    expected, base_out = run_eval(model, spec), run_eval(spec.base(), spec)
    model.save_pretrained(tmp_path / "loca")
    for rank, lossy in ((32, False), (1, True)):
        layers = export_lora(tmp_path / "loca", tmp_path / f"lora{rank}", rank=rank, diffusers_prefix=None)
        error = overall_relative_error(layers)
        lora = PeftModel.from_pretrained(spec.base(), tmp_path / f"lora{rank}")
        edit_error = float((run_eval(lora, spec) - expected).norm() / (expected - base_out).norm())
        if lossy:
            assert error > 0.1 and edit_error > 1e-3
        else:
            assert error < 1e-6 and edit_error < 1e-4
    # PEFT's own conversion on the LoCA model in memory: the same LoRA at full rank
    save_as_lora(tmp_path / "peft", model, rank=32)
    converted = PeftModel.from_pretrained(spec.base(), tmp_path / "peft")
    torch.testing.assert_close(run_eval(converted, spec), expected, rtol=1e-4, atol=1e-5)


def test_gpt2_conv1d_converts_with_peft(tmp_path):
    spec = SPECS["gpt2"]
    torch.manual_seed(0)
    model = get_peft_model(spec.base(), spec.config(init_weights=False))
    expected = run_eval(model, spec)
    save_as_lora(tmp_path, model, rank=32)
    converted = PeftModel.from_pretrained(spec.base(), tmp_path)
    torch.testing.assert_close(run_eval(converted, spec), expected, rtol=1e-4, atol=1e-5)


def test_export_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="exactly one of rank"):
        export_lora(CARTOONIZER, tmp_path)
    with pytest.raises(ValueError, match="energy must be in"):
        export_lora(CARTOONIZER, tmp_path, energy=1.5)


@pytest.mark.parametrize("energy", [0.5, 0.9])
def test_energy_keeps_the_requested_fraction_with_the_smallest_rank(energy, tmp_path):
    from loca_diffusion.export_lora import export_layers

    _, at_energy = export_layers(CARTOONIZER, energy=energy)
    for layer in at_energy:
        # ||dW - BA||^2 / ||dW||^2 is the energy left out: at most 1 - E, and one rank less would leave more
        assert layer.relative_error**2 <= 1 - energy + 1e-9
        if layer.rank > 1:
            _, smaller = export_layers(CARTOONIZER, rank=layer.rank - 1) if layer is at_energy[0] else (None, None)
            if smaller is not None:
                assert smaller[0].relative_error**2 > 1 - energy
