"""What the embedded base is pretrained on: the base edits and the parts of a cartoon, never the cartoon.

The cartoonizer must be what the LoCA adapter adds, so no cartoon pair and no cartoon instruction may
reach the base's training data (the latent bank of the UNet stage, the decoder stage's targets). The
parts must be exactly the layers the cartoon is made of, checked against OpenCV directly.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from loca_diffusion.data.prompts import CARTOONIZATION_PARAPHRASES
from loca_diffusion.embedded.edits import (
    CARTOON_INSTRUCTION,
    CARTOON_STYLE,
    EDITS,
    PART_EDITS,
    PRETRAINING_EDITS,
    cartoon_targets,
)
from loca_diffusion.embedded.metrics import psnr
from loca_diffusion.embedded.photos import held_out_batch, to_image

ROOT = Path(__file__).resolve().parents[1]


def _pretrain_script():
    spec = importlib.util.spec_from_file_location("pretrain_tiny_pix2pix", ROOT / "train" / "pretrain_tiny_pix2pix.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def views() -> torch.Tensor:
    return held_out_batch(64)[:4]


def test_no_cartoon_instruction_reaches_pretraining():
    cartoon = {CARTOON_INSTRUCTION.casefold(), *(p.casefold() for p in CARTOONIZATION_PARAPHRASES)}
    for edit in PRETRAINING_EDITS:
        for text in edit.instructions:
            assert text.casefold() not in cartoon, (edit.name, text)
            assert "cartoon" not in text.casefold() and "comic" not in text.casefold(), (edit.name, text)
    assert PRETRAINING_EDITS == EDITS + PART_EDITS
    assert {e.name for e in PART_EDITS} >= {"flat_colors", "black_outlines", "line_drawing", "smooth"}


def test_parts_are_the_layers_the_cartoon_is_made_of(views):
    parts = {e.name: e.apply(views) for e in PART_EDITS}
    ink = (parts["line_drawing"] == 0).all(dim=1, keepdim=True)
    # flat colours with the ink of the line drawing are exactly the cartoon target ...
    assert torch.equal(parts["flat_colors"].masked_fill(ink, 0.0), cartoon_targets(views))
    assert torch.equal(parts["flat_colors"], cartoon_targets(views, ink=False))
    # ... the outlines are the photo, untouched off the ink, black on it; the drawing is white off it
    assert torch.equal(parts["black_outlines"], views.masked_fill(ink, 0.0))
    assert torch.all(parts["line_drawing"][~ink.expand_as(views)] == 1)
    assert 0.02 < ink.float().mean() < 0.5
    # edge-preserving smoothing is OpenCV's bilateral filter of the cartoon style, run three times
    for x, y in zip(views, parts["smooth"]):
        ref = np.asarray(to_image(x))
        for _ in range(3):
            ref = cv2.bilateralFilter(np.ascontiguousarray(ref), 7, 50, 50)
        assert torch.equal(y, torch.from_numpy(ref).permute(2, 0, 1).float() / 255)
    assert CARTOON_STYLE["bilateral_passes"] == 1  # the test's filter size/sigma assume the 64 px style


def test_no_pretraining_edit_is_the_cartoon(views):
    target = cartoon_targets(views)
    for edit in PRETRAINING_EDITS:
        score = sum(psnr(o, t) for o, t in zip(edit.apply(views), target)) / len(views)
        assert score < 30.0, f"{edit.name} reproduces the cartoon ({score:.1f} dB)"


def test_pretraining_data_never_holds_the_cartoon(views, tmp_path, monkeypatch):
    """The UNet stage's latent bank and the decoder stage's targets, built by the script's own code on
    known crops: every bank entry is the encoding of a pretraining edit, none is the cartoon's."""
    from loca_diffusion.embedded import pretraining

    script = _pretrain_script()
    assert script.build_latent_bank is pretraining.build_latent_bank  # what the UNet stage trains on

    class FixedCrops:
        def __init__(self, *args, **kwargs):
            pass

        def sample(self, batch_size, generator):
            return views[:batch_size]

    monkeypatch.setattr(pretraining, "RandomCrops", FixedCrops)
    monkeypatch.setattr(pretraining, "require_photos", lambda held_out: [])
    torch.manual_seed(0)
    vae = script.build_vae().eval().requires_grad_(False)
    bank = script.build_latent_bank(vae, num_crops=len(views), seed=0, path=tmp_path / "bank.pt")
    assert bank["edits"] == [e.name for e in PRETRAINING_EDITS]

    def encode(images):
        return vae.encode(images * 2 - 1).latent_dist.mean.half()

    with torch.no_grad():
        cartoon = encode(cartoon_targets(views)).float()
        for k, edit in enumerate(PRETRAINING_EDITS):
            entry = bank["edited"][:, k].float()
            assert torch.allclose(entry, encode(edit.apply(views)).float(), atol=1e-2), edit.name
            assert (entry - cartoon).abs().mean() > 1e-2, f"bank entry {edit.name} is the cartoon"

    targets = script.decoder_targets(views.repeat(8, 1, 1, 1), torch.Generator().manual_seed(0))
    cartoon_pixels = cartoon_targets(views).repeat(8, 1, 1, 1)
    assert all(psnr(o, t) < 30.0 for o, t in zip(targets, cartoon_pixels))


def test_latent_banks_of_one_seed_share_their_crops_whatever_the_edits(tmp_path):
    """The upper-bound probe (``bench.part_continuation --cartoon_weight``) adds the cartoon to the bank's
    edits: its crops, and the encodings of the edits both banks hold, must be the pretraining bank's."""
    from loca_diffusion.embedded.models import build_vae
    from loca_diffusion.embedded.pretraining import build_latent_bank

    torch.manual_seed(0)
    vae = build_vae().eval().requires_grad_(False)
    cartoon = PRETRAINING_EDITS[0].__class__("cartoon", cartoon_targets, (CARTOON_INSTRUCTION,))
    plain = build_latent_bank(vae, 3, seed=5, path=tmp_path / "a.pt", edits=PRETRAINING_EDITS[:2])
    with_cartoon = build_latent_bank(vae, 3, seed=5, path=tmp_path / "b.pt", edits=(*PRETRAINING_EDITS[:2], cartoon))
    assert with_cartoon["edits"] == [PRETRAINING_EDITS[0].name, PRETRAINING_EDITS[1].name, "cartoon"]
    assert torch.allclose(plain["inputs"].float(), with_cartoon["inputs"].float(), atol=1e-2)
    assert torch.allclose(plain["edited"].float(), with_cartoon["edited"][:, :2].float(), atol=1e-2)
    other_seed = build_latent_bank(vae, 3, seed=6, path=tmp_path / "c.pt", edits=PRETRAINING_EDITS[:2])
    assert not torch.allclose(plain["inputs"].float(), other_seed["inputs"].float(), atol=1e-2)
    # cached: the file comes back while crop count and edits match (a marked copy proves it is not rebuilt)
    torch.save({**plain, "scaling_factor": 123.0}, tmp_path / "a.pt")
    assert (
        build_latent_bank(vae, 3, seed=5, path=tmp_path / "a.pt", edits=PRETRAINING_EDITS[:2])["scaling_factor"] == 123
    )
    rebuilt = build_latent_bank(vae, 2, seed=5, path=tmp_path / "a.pt", edits=PRETRAINING_EDITS[:2])
    assert rebuilt["inputs"].shape[0] == 2 and rebuilt["scaling_factor"] != 123
