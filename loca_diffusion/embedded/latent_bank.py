"""The UNet stage's training data: random crops of the training photos and their edits, encoded once."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from . import RESOLUTION
from .edits import PRETRAINING_EDITS, Edit
from .photos import RandomCrops, require_photos


@torch.no_grad()
def build_latent_bank(vae, num_crops: int, seed: int, path: Path, edits: Sequence[Edit] = PRETRAINING_EDITS) -> dict:
    """Encode ``num_crops`` random crops of the training photos and each crop's ``edits`` with ``vae`` (posterior
    means, fp16): ``{"inputs": (N, C, h, w), "edited": (N, E, C, h, w), "edits": names, "scaling_factor"}``.

    The bank is cached at ``path`` and reused while its crop count and edits match. The crops depend on ``seed``
    only, not on ``edits``: banks of the same seed with different edits share their inputs."""
    path = Path(path)
    if path.is_file():
        bank = torch.load(path)
        if bank["inputs"].shape[0] == num_crops and bank["edits"] == [e.name for e in edits]:
            return bank
    crops = RandomCrops(require_photos(held_out=False), RESOLUTION)
    gen = torch.Generator().manual_seed(seed + 2)
    inputs, edited = [], []
    start = time.time()
    for i in range(0, num_crops, 50):
        x = crops.sample(min(50, num_crops - i), gen)
        batch = torch.cat([x] + [e.apply(x) for e in edits])  # (1 + E) * b images
        z = vae.encode(batch * 2 - 1).latent_dist.mean.half().unflatten(0, (1 + len(edits), len(x)))
        inputs.append(z[0])
        edited.append(z[1:].transpose(0, 1))
        print(f"latent bank: {i + len(x)}/{num_crops} crops ({time.time() - start:.0f} s)", flush=True)
    bank = {"inputs": torch.cat(inputs), "edited": torch.cat(edited), "edits": [e.name for e in edits]}
    # scale the diffusion latents to unit variance, as SD's 0.18215 does for its VAE
    bank["scaling_factor"] = float(1.0 / bank["edited"].float().std())
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(bank, path)
    return bank
