"""The UNet pretraining stage's data and step: random crops of the training photos and their edits, encoded once
(the latent bank), batches drawn from it, and one optimizer step with its EMA update."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

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


def instruction_tokens(tokenizer, edits: Sequence[Edit]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """CLIP token ids of each edit's instructions ((I_e, 77) per edit) and of the empty prompt ((77,))."""

    def ids(texts: list[str]) -> torch.Tensor:
        return tokenizer(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids

    return [ids(list(e.instructions)) for e in edits], ids([""])[0]


def pretraining_batch(
    bank: dict,
    idx: torch.Tensor,
    which: torch.Tensor,
    tokens: list[torch.Tensor],
    empty: torch.Tensor,
    scaling: float,
    scheduler,
    dropout_prob: float,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One UNet-stage batch: crops ``idx`` of the bank with their edits ``which``, an instruction paraphrase each,
    InstructPix2Pix's conditioning dropout and a noised target. Returns the UNet input (edited latents noised,
    input latents appended on channels), the timesteps, the token ids and the v-prediction target."""
    b = len(idx)
    latents = bank["edited"][idx, which].float() * scaling
    image_latents = bank["inputs"][idx].float()
    ids = torch.stack(
        [tokens[e][int(torch.randint(len(tokens[e]), (1,), generator=generator))] for e in which.tolist()]
    )
    # u < 2p: no text; p <= u < 3p: no image (the split of loca_diffusion.training.conditioning_dropout)
    u = torch.rand(b, generator=generator)
    ids[u < 2 * dropout_prob] = empty
    image_latents = image_latents * (1 - ((u >= dropout_prob) & (u < 3 * dropout_prob)).float()).view(b, 1, 1, 1)
    noise = torch.randn(latents.shape, generator=generator)
    t = torch.randint(scheduler.config.num_train_timesteps, (b,), generator=generator)
    noisy = torch.cat([scheduler.add_noise(latents, noise, t), image_latents], dim=1)
    return noisy, t, ids, scheduler.get_velocity(latents, noise, t)


def pretraining_step(
    unet,
    text_encoder,
    optimizer: torch.optim.Optimizer,
    params: list[torch.Tensor],
    ema_params: list[torch.Tensor],
    ema_decay: float,
    batch: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """One optimizer step of the UNet and text encoder on a :func:`pretraining_batch` (v-prediction MSE, gradients
    clipped to norm 1), then the EMA copies move towards the weights by ``1 - ema_decay``. Returns the loss."""
    noisy, t, ids, target = batch
    loss = F.mse_loss(unet(noisy, t, text_encoder(ids)[0]).sample, target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    optimizer.step()
    with torch.no_grad():
        torch._foreach_lerp_(ema_params, params, 1 - ema_decay)
    return loss.detach()
