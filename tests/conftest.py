"""Shared fixtures."""

from __future__ import annotations

import pytest
import torch

from _models import ALL, SPECS


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
    from loca_diffusion.data.cartoonize import build_cartoon_dataset

    out = tmp_path_factory.mktemp("pairs") / "data"
    build_cartoon_dataset(out, from_package_photos=True, resolution=32, limit=6)
    return out


@pytest.fixture
def pairs_with_bad_prompts(tmp_path):
    """``copy(folder, missing, empty)``: a copy of a pair folder whose row ``missing`` has no
    ``edit_prompt`` and row ``empty`` a blank one; returns the copy and its metadata rows."""
    import json
    import shutil

    def copy(folder, missing: int, empty: int):
        target = tmp_path / f"{folder.name}-bad-prompts"
        shutil.copytree(folder, target)
        rows = [json.loads(line) for line in (target / "metadata.jsonl").read_text().splitlines()]
        del rows[missing]["edit_prompt"]
        rows[empty]["edit_prompt"] = "  "
        (target / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return target, rows

    return copy


@pytest.fixture(params=ALL)
def spec(request):
    """Each tiny model of tests/_models.py (MLP, BERT, RoBERTa, GPT-2, Llama, ViT, UNet) with its inputs."""
    return SPECS[request.param]


@pytest.fixture
def run_quickstart(tmp_path):
    """``run(*python_args)`` runs examples/quickstart.py (after ``python_args``, e.g. ``-c CODE``) in a fresh
    interpreter in ``tmp_path`` and checks that it finished with the README's last line."""
    import subprocess
    import sys
    from pathlib import Path

    quickstart = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"

    def run(*python_args: str) -> None:
        result = subprocess.run(
            [sys.executable, "-W", "ignore", *python_args, str(quickstart)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert "reloaded adapter reproduces the outputs: True; merged model too: True" in result.stdout

    return run
