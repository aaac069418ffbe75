"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def torch_single_thread():
    """One intra-op thread for the module's tests, restored afterwards.

    The test machines share their cores: small convolutions run up to ~20x slower with two OpenMP
    threads competing with other processes than with one.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_pix2pix_dir(tmp_path_factory):
    """A saved tiny InstructPix2Pix pipeline (random weights, real CLIP tokenizer): a local
    ``pretrained_model_name_or_path`` for ``from_pretrained`` and the training script."""
    from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix

    root = tmp_path_factory.mktemp("tiny_pix2pix")
    pipe = build_tiny_instruct_pix2pix(root / "work")
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


@pytest.fixture(scope="session")
def pairs(tmp_path_factory):
    """Six tiny (32 px) edit pairs from the package photos: ``--train_data_dir`` for the training script."""
    from loca_diffusion.cartoonize import build_cartoon_dataset

    out = tmp_path_factory.mktemp("pairs") / "data"
    build_cartoon_dataset(out, from_package_photos=True, resolution=32, limit=6)
    return out
