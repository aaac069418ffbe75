#!/usr/bin/env python
"""Train the embedded tiny InstructPix2Pix from scratch on CPU, one stage per call.

    python train/pretrain_tiny_pix2pix.py --stage vae          # VAE, 4,000 steps at batch 8 (~15 min)
    python train/pretrain_tiny_pix2pix.py --stage decoder      # VAE decoder only, encoder frozen, 600 steps (~4 min)
    python train/pretrain_tiny_pix2pix.py --stage unet         # text encoder + UNet, 5,000 steps at batch 16 (~2 h)
    python train/pretrain_tiny_pix2pix.py --stage export       # fp16 diffusers folder -> assets/tiny-instruct-pix2pix

``decoder`` and ``unet`` both start from the finished ``vae`` stage and can run at the same time as
two processes (the encoder, hence the latent space the UNet learns, is frozen after ``vae``). Times
are for one torch thread of a shared 2-core machine (the UNet stage alone: ~0.6 step/s on one thread, ~1.05
 with ``--threads 2`` when nothing else runs); ``make assets`` runs everything.

Every stage writes ``build/embedded/<stage>/checkpoint.pt`` every ``--save_every`` steps (model,
optimizer, step, RNG) and resumes from it when run again; a finished stage returns at once. Progress
goes to stdout (``build/embedded/<stage>.log`` under ``make assets``).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import torch

from loca_diffusion.embedded import BASE_DIR, RESOLUTION  # noqa: E402
from loca_diffusion.embedded.edits import PART_EDITS, PRETRAINING_EDITS  # noqa: E402
from loca_diffusion.embedded.evaluate import CALL_DEFAULTS, evaluate_edits  # noqa: E402
from loca_diffusion.embedded.metrics import psnr  # noqa: E402
from loca_diffusion.embedded.models import (  # noqa: E402
    assemble_pipeline,
    build_scheduler,
    build_text_encoder,
    build_unet,
    build_vae,
)
from loca_diffusion.embedded.photos import RandomCrops, held_out_batch, require_photos  # noqa: E402
from loca_diffusion.embedded.pretraining import (  # noqa: E402
    build_latent_bank,
    instruction_tokens,
    pretraining_batch,
    pretraining_step,
)
from loca_diffusion.pipelines import StableDiffusionInstructPix2PixLoCAPipeline  # noqa: E402
from loca_diffusion.tiny_pix2pix import build_clip_tokenizer  # noqa: E402

WORK = Path("build/embedded")
DEFAULT_STEPS = {"vae": 4000, "decoder": 600, "unet": 5000}


# ----------------------------------------------------------------------------------------------------
# checkpoints: one file per stage, written atomically


def save_checkpoint(stage: str, **state) -> None:
    path = WORK / stage / "checkpoint.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path.with_suffix(".tmp"))
    os.replace(path.with_suffix(".tmp"), path)


def load_checkpoint(stage: str) -> dict | None:
    path = WORK / stage / "checkpoint.pt"
    return torch.load(path, weights_only=False) if path.is_file() else None


def require_checkpoint(stage: str, for_stage: str) -> dict:
    state = load_checkpoint(stage)
    if state is None or not state.get("done"):
        raise SystemExit(f"--stage {for_stage} needs the finished {stage!r} stage: run --stage {stage} first")
    return state


def lr_at(step: int, max_steps: int, lr: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 5% of ``lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, max_steps - warmup)
    return lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


# ----------------------------------------------------------------------------------------------------
# VAE: reconstruction (L1 + MSE), a chroma loss (without it the VAE drops colour first), an edge loss
# (image gradients: sharper reconstructions), and a tiny KL term (the latents stay a VAE's).


_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])


def vae_loss(recon: torch.Tensor, target: torch.Tensor, posterior) -> tuple[torch.Tensor, dict]:
    diff = recon - target
    ycc = torch.einsum("ij,bjhw->bihw", _YCBCR, diff)
    dx = (recon.diff(dim=-1) - target.diff(dim=-1)).abs().mean()
    dy = (recon.diff(dim=-2) - target.diff(dim=-2)).abs().mean()
    parts = {
        "l1": diff.abs().mean(),
        "mse": diff.pow(2).mean(),
        "chroma": ycc[:, 1:].abs().mean(),
        "edge": dx + dy,
        "kl": posterior.kl().mean() / target[0].numel(),
    }
    weights = {"l1": 1.0, "mse": 1.0, "chroma": 1.0, "edge": 0.5, "kl": 1e-4}
    return sum(weights[k] * v for k, v in parts.items()), {k: float(v.detach()) for k, v in parts.items()}


@torch.no_grad()
def held_out_psnr(vae) -> float:
    """Mean reconstruction PSNR (posterior mode) over the held-out photos' centre crops."""
    views = held_out_batch(RESOLUTION)
    recon = vae.decode(vae.encode(views * 2 - 1).latent_dist.mode()).sample
    recon = (recon + 1) / 2
    return sum(psnr(r, x) for r, x in zip(recon, views)) / len(views)


def decoder_targets(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The decoder stage also learns to draw what the UNet will be asked for: each crop stays a photo
    (1/3), becomes a random pretraining edit (1/3) or one of the parts of a cartoon (1/3: flat colours,
    outlines, line drawings; their sharp edges are what a 2x VAE draws worst). The cartoon itself is
    never a target. The encoder stays frozen, so the latent space the UNet learns on does not move."""
    kind = torch.randint(3, (len(x),), generator=generator)
    out = x.clone()
    for i in range(len(x)):
        if kind[i] > 0:
            pool = PRETRAINING_EDITS if kind[i] == 1 else PART_EDITS
            out[i] = pool[int(torch.randint(len(pool), (1,), generator=generator))].apply(x[i : i + 1])[0]
    return out


def train_vae(args, decoder_only: bool) -> None:
    stage = "decoder" if decoder_only else "vae"
    vae = build_vae()
    state = load_checkpoint(stage)
    if state is None and decoder_only:
        state = dict(require_checkpoint("vae", stage), step=0, optimizer=None, done=False)
    if state is not None:
        vae.load_state_dict(state["model"])
        if state.get("done"):
            print(f"{stage}: finished at step {state['step']} (held-out PSNR {state['psnr']:.2f} dB)")
            return
    if decoder_only:
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)
    params = [p for p in vae.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    step = 0
    gen = torch.Generator().manual_seed(args.seed + (1 if decoder_only else 0))
    if state is not None and state.get("optimizer") is not None:
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        gen.set_state(state["generator"])
    # mostly whole-photo views: the edits are asked of whole photos at 64 px (denser detail than zoomed crops)
    crops = RandomCrops(require_photos(held_out=False), RESOLUTION, scale=(0.5, 1.0))
    vae.train()
    start, last = time.time(), time.time()
    while step < args.max_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.max_steps, args.lr)
        x = crops.sample(args.batch_size, gen)
        if decoder_only:
            x = decoder_targets(x, gen)
        with torch.no_grad() if decoder_only else torch.enable_grad():
            posterior = vae.encode(x * 2 - 1).latent_dist
            z = posterior.sample(generator=gen)
        recon = (vae.decode(z).sample + 1) / 2
        loss, parts = vae_loss(recon, x, posterior)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        if step % args.log_every == 0:
            rate = args.log_every / (time.time() - last)
            last = time.time()
            print(
                f"{stage} step {step}/{args.max_steps} loss {float(loss.detach()):.4f} "
                + " ".join(f"{k} {v:.4f}" for k, v in parts.items())
                + f" ({rate:.2f} step/s)",
                flush=True,
            )
        if step % args.save_every == 0 or step == args.max_steps:
            vae.eval()
            score = held_out_psnr(vae)
            vae.train()
            done = step == args.max_steps
            save_checkpoint(
                stage,
                model=vae.state_dict(),
                optimizer=opt.state_dict(),
                step=step,
                generator=gen.get_state(),
                psnr=score,
                done=done,
            )
            print(
                f"{stage} step {step}: held-out reconstruction PSNR {score:.2f} dB "
                f"({(time.time() - start) / 60:.1f} min this run){' [done]' if done else ''}",
                flush=True,
            )


# ----------------------------------------------------------------------------------------------------
# Text encoder + UNet. The frozen encoder's latents of random training crops and of their edits are
# computed once (the "bank"); training then never runs the VAE. Targets are the edits' posterior
# means times the scaling factor, the image condition the unscaled mode (as InstructPix2Pix and
# train/instruct_pix2pix_loca.py do). Text and image conditioning are dropped 10% of the time each
# (classifier-free guidance stays possible). EMA weights are what gets exported.


@torch.no_grad()
def frozen_vae(stage: str) -> torch.nn.Module:
    vae = build_vae()
    vae.load_state_dict(require_checkpoint(stage, "unet")["model"])
    return vae.eval().requires_grad_(False)


def train_unet(args) -> None:
    vae = frozen_vae("vae")
    unet, text_encoder = build_unet(), build_text_encoder()
    ema_unet, ema_text = build_unet(), build_text_encoder()
    ema_unet.load_state_dict(unet.state_dict())
    ema_text.load_state_dict(text_encoder.state_dict())
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(args.seed)
    step = 0
    state = load_checkpoint("unet")
    if state is not None:
        unet.load_state_dict(state["unet"])
        text_encoder.load_state_dict(state["text_encoder"])
        ema_unet.load_state_dict(state["ema_unet"])
        ema_text.load_state_dict(state["ema_text_encoder"])
        if state.get("done"):
            print(f"unet: finished at step {state['step']}")
            return
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        step = state["step"]
    bank = build_latent_bank(vae, args.bank_crops, args.seed, WORK / "unet" / "bank.pt")
    scaling = bank["scaling_factor"]
    vae.register_to_config(scaling_factor=scaling)
    tokenizer = build_clip_tokenizer(WORK / "tokenizer")
    tokens, empty = instruction_tokens(tokenizer, PRETRAINING_EDITS)
    scheduler = build_scheduler()
    n, num_edits = bank["inputs"].shape[0], len(PRETRAINING_EDITS)
    views = held_out_batch(RESOLUTION)
    p = args.conditioning_dropout_prob
    unet.train()
    text_encoder.train()
    start, last = time.time(), time.time()
    while step < args.max_steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args.max_steps, args.lr, warmup=200)
        b = args.batch_size
        idx = torch.randint(n, (b,), generator=gen)
        which = torch.randint(num_edits, (b,), generator=gen)
        batch = pretraining_batch(bank, idx, which, tokens, empty, scaling, scheduler, p, gen)
        step += 1
        decay = min(args.ema_decay, (1 + step) / (10 + step))
        loss = pretraining_step(unet, text_encoder, opt, params, ema_params, decay, batch)
        if step % args.log_every == 0:
            rate = args.log_every / (time.time() - last)
            last = time.time()
            print(f"unet step {step}/{args.max_steps} loss {float(loss.detach()):.4f} ({rate:.2f} step/s)", flush=True)
        if step % args.save_every == 0 or step == args.max_steps:
            done = step == args.max_steps
            save_checkpoint(
                "unet",
                unet=unet.state_dict(),
                text_encoder=text_encoder.state_dict(),
                ema_unet=ema_unet.state_dict(),
                ema_text_encoder=ema_text.state_dict(),
                optimizer=opt.state_dict(),
                generator=gen.get_state(),
                step=step,
                scaling_factor=scaling,
                done=done,
            )
            if step % args.eval_every and not done:
                continue
            pipe = assemble_pipeline(vae, ema_text.eval(), ema_unet.eval(), WORK / "tokenizer")
            pipe.set_progress_bar_config(disable=True)
            scores = evaluate_edits(pipe, views, PRETRAINING_EDITS, steps=10)
            print(
                f"unet step {step} ({(time.time() - start) / 60:.1f} min this run), held-out PSNR model/identity: "
                + ", ".join(f"{k} {v['psnr']:.1f}/{v['identity_psnr']:.1f}" for k, v in scores.items()),
                flush=True,
            )


# ----------------------------------------------------------------------------------------------------
# Export: fp16 safetensors diffusers folder (VAE from the decoder stage when it finished, else from
# the vae stage; the EMA text encoder and UNet).


def export(args) -> None:
    decoder = load_checkpoint("decoder")
    vae_stage = "decoder" if decoder is not None and decoder.get("done") else "vae"
    vae = frozen_vae(vae_stage)
    state = load_checkpoint("unet")
    if state is None:
        raise SystemExit("--stage export needs a unet checkpoint: run --stage unet first")
    vae.register_to_config(scaling_factor=state["scaling_factor"])
    unet, text_encoder = build_unet(), build_text_encoder()
    unet.load_state_dict(state["ema_unet"])
    text_encoder.load_state_dict(state["ema_text_encoder"])
    pipe = assemble_pipeline(vae, text_encoder.eval(), unet.eval(), WORK / "tokenizer")
    pipe.to(torch.float16)
    # the settings a plain `pipe(prompt, image=photo)` should use on this model (read by the LoCA pipeline
    # classes): its training resolution and the sampling settings chosen on training photos
    pipe.call_defaults = dict(CALL_DEFAULTS)
    pipe.save_pretrained(args.output_dir, safe_serialization=True)
    note = "" if state.get("done") else " (UNET NOT FINISHED)"
    print(f"exported to {args.output_dir}: VAE from the {vae_stage} stage, UNet step {state['step']}{note}")
    # The adapters train on a float32 copy holding exactly the shipped (fp16-rounded) weights:
    # transformers loads a checkpoint in its stored dtype, and fp16 on CPU is slow where it runs at all.
    fp32 = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(args.output_dir, dtype=torch.float32)
    fp32.text_encoder.to(torch.float32)
    fp32.save_pretrained(WORK / "base_fp32", safe_serialization=True)
    print(f"float32 training copy: {WORK / 'base_fp32'}")


# ----------------------------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage", required=True, choices=["vae", "decoder", "unet", "export"])
    p.add_argument("--max_steps", type=int, default=None, help="default: %s" % DEFAULT_STEPS)
    p.add_argument("--batch_size", type=int, default=None, help="default: 8 (vae, decoder), 16 (unet)")
    p.add_argument("--lr", type=float, default=None, help="default: 1e-3 (vae), 5e-4 (decoder), 5e-4 (unet)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=25)
    p.add_argument("--save_every", type=int, default=200)
    p.add_argument(
        "--eval_every", type=int, default=1000, help="unet: held-out edit PSNR (10 DDIM steps) every N steps"
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 was ~8x faster than 2 under load)")
    p.add_argument("--bank_crops", type=int, default=1500, help="unet: crops encoded once, with every edit")
    p.add_argument("--ema_decay", type=float, default=0.999)
    p.add_argument("--conditioning_dropout_prob", type=float, default=0.05, help="text dropped 2p, image 2p, both p")
    p.add_argument("--output_dir", default=str(BASE_DIR), help="export target (default: the shipped assets)")
    args = p.parse_args(argv)
    args.max_steps = args.max_steps or DEFAULT_STEPS.get(args.stage, 0)
    args.batch_size = args.batch_size or (16 if args.stage == "unet" else 8)
    args.lr = args.lr or {"vae": 1e-3, "decoder": 5e-4, "unet": 5e-4}.get(args.stage, 0.0)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.stage in ("vae", "decoder"):
        train_vae(args, decoder_only=args.stage == "decoder")
    elif args.stage == "unet":
        train_unet(args)
    else:
        export(args)


if __name__ == "__main__":
    main()
