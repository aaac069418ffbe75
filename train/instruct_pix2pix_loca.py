#!/usr/bin/env python
"""Fine-tune InstructPix2Pix's UNet attention with LoCA (or the FourierFT / LoRA baselines).

    accelerate launch train/instruct_pix2pix_loca.py \
        --pretrained_model_name_or_path timbrooks/instruct-pix2pix \
        --dataset_name instruction-tuning-sd/cartoonization \
        --output_dir loca-cartoonizer

Defaults follow the paper's Table 11 (LoCA on to_q/to_k/to_v/to_out.0, AdamW, weight decay 1e-2,
lr 1e-4, scaling 1, batch 2, gradient accumulation 4, 10 000 steps, T_s = 1200). Reads top to bottom
like diffusers' train_instruct_pix2pix.py; data, adapter, checkpoint and picture helpers live in the
``loca_diffusion`` package.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from tqdm.auto import tqdm

import loca_diffusion  # noqa: F401  (registers LoCA with peft)
from loca_diffusion import LoCASchedule
from loca_diffusion.data import collate_fn, load_edit_dataset, make_train_dataset
from loca_diffusion.hub import HubUnavailableError
from loca_diffusion.training import (
    ADAPTERS,
    UNET_ATTENTION_TARGETS,
    build_adapter_config,
    check_replicas_in_sync,
    conditioning_dropout,
    count_moved_locations,
    image_grid,
    location_heatmap,
    location_snapshot,
    push_to_hub,
    register_checkpoint_hooks,
    save_adapter,
    trainable_parameter_count,
    write_model_card,
)

logger = get_logger(__name__, log_level="INFO")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # model
    p.add_argument("--pretrained_model_name_or_path", default="timbrooks/instruct-pix2pix")
    p.add_argument("--revision", default=None)
    p.add_argument("--variant", default=None)
    # data
    p.add_argument("--dataset_name", default="instruction-tuning-sd/cartoonization")
    p.add_argument("--dataset_config_name", default=None)
    p.add_argument("--train_data_dir", default=None, help="Local imagefolder with metadata.jsonl (wins over --dataset_name).")
    p.add_argument("--original_image_column", default="original_image")
    p.add_argument("--edited_image_column", default="cartoonized_image")
    p.add_argument("--edit_prompt_column", default="edit_prompt")
    p.add_argument("--sample_paraphrases", action="store_true", help="Draw a fresh paraphrased instruction per example.")
    p.add_argument("--max_train_samples", type=int, default=None)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--dataloader_num_workers", type=int, default=0)
    p.add_argument("--resolution", type=int, default=256)
    p.add_argument("--center_crop", action="store_true")
    p.add_argument("--random_flip", action="store_true")
    p.add_argument("--conditioning_dropout_prob", type=float, default=0.05)
    # optimisation
    p.add_argument("--output_dir", default="instruct-pix2pix-loca")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--train_batch_size", type=int, default=2)
    p.add_argument("--num_train_epochs", type=int, default=100)
    p.add_argument("--max_train_steps", type=int, default=10_000)
    p.add_argument("--gradient_accumulation_steps", type=int, default=4)
    p.add_argument("--gradient_checkpointing", action="store_true")
    p.add_argument("--learning_rate", type=float, default=1e-4)
    p.add_argument("--scale_lr", action="store_true")
    p.add_argument("--lr_scheduler", default="constant")
    p.add_argument("--lr_warmup_steps", type=int, default=0)
    p.add_argument("--use_8bit_adam", action="store_true")
    p.add_argument("--adam_beta1", type=float, default=0.9)
    p.add_argument("--adam_beta2", type=float, default=0.999)
    p.add_argument("--adam_weight_decay", type=float, default=1e-2)
    p.add_argument("--adam_epsilon", type=float, default=1e-8)
    p.add_argument("--max_grad_norm", type=float, default=1.0)
    p.add_argument("--allow_tf32", action="store_true")
    p.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    p.add_argument("--enable_xformers_memory_efficient_attention", action="store_true")
    # adapter
    p.add_argument("--adapter", choices=ADAPTERS, default="loca")
    p.add_argument("--target_modules", default=",".join(UNET_ATTENTION_TARGETS))
    p.add_argument("--n_frequency", type=int, default=1000, help="LoCA / FourierFT coefficients per layer.")
    p.add_argument("--scaling", type=float, default=1.0, help="LoCA alpha.")
    p.add_argument("--location_lr", type=float, default=1e-4)
    p.add_argument("--coefficient_steps", type=int, default=10, help="B_a")
    p.add_argument("--location_steps", type=int, default=20, help="B_l")
    p.add_argument("--location_training_steps", type=int, default=1200, help="T_s")
    p.add_argument("--location_grad", choices=["central", "forward", "backward"], default="central")
    p.add_argument("--schedule_variant", choices=["alternating", "fixed", "alternate_throughout", "joint"], default="alternating")
    p.add_argument("--random_loc_seed", type=int, default=777)
    p.add_argument("--fourierft_scaling", type=float, default=64.0)
    p.add_argument("--lora_rank", type=int, default=4)
    p.add_argument("--lora_alpha", type=float, default=None)
    p.add_argument("--match_budget", action="store_true", help="Give the baseline LoCA's parameter count.")
    # checkpoints, validation, logging
    p.add_argument("--checkpointing_steps", type=int, default=500)
    p.add_argument("--checkpoints_total_limit", type=int, default=None)
    p.add_argument("--resume_from_checkpoint", default=None, help='A checkpoint directory or "latest".')
    p.add_argument("--validation_prompt", default="Change the natural image to a cartoon-style image.")
    p.add_argument("--validation_image", default=None, help="Local image path for validation (default: first training image).")
    p.add_argument("--num_validation_images", type=int, default=2)
    p.add_argument("--validation_steps", type=int, default=None, help="Validate every N optimizer steps.")
    p.add_argument("--validation_epochs", type=int, default=None)
    p.add_argument("--validation_inference_steps", type=int, default=20)
    p.add_argument("--report_to", default="tensorboard")
    p.add_argument("--logging_dir", default="logs")
    p.add_argument("--push_to_hub", action="store_true", help="Upload the trained adapter directory to the Hub.")
    p.add_argument("--hub_model_id", default=None, help="Repo for --push_to_hub (default: the output folder name).")
    p.add_argument("--hub_token", default=None)
    args = p.parse_args(argv)
    if args.dataset_name is None and args.train_data_dir is None:
        p.error("Pass --dataset_name or --train_data_dir")
    if not 0 <= args.conditioning_dropout_prob < 1 / 3:
        p.error("--conditioning_dropout_prob must be in [0, 1/3)")
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    args.local_rank = env_rank
    return args


def load_components(args):
    """The frozen InstructPix2Pix parts; a Hub id without network fails fast with what to do instead."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from loca_diffusion.hub import resolve_local_or_hub

    root = resolve_local_or_hub(args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
    common = {"revision": args.revision}
    noise_scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", **common)
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", variant=args.variant, **common)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", variant=args.variant, **common)
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", variant=args.variant, **common)
    return root, noise_scheduler, tokenizer, text_encoder, vae, unet


def checkpoint_dirs(output_dir: str) -> list[Path]:
    dirs = [d for d in Path(output_dir).glob("checkpoint-*") if d.is_dir()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


@torch.no_grad()
def run_validation(args, accelerator, unet, vae, text_encoder, tokenizer, root, image, step, weight_dtype):
    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(
        root,
        unet=accelerator.unwrap_model(unet),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        requires_safety_checker=False,
        torch_dtype=weight_dtype,
        revision=args.revision,
        variant=args.variant,
    ).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed if args.seed is not None else 0)
    was_training = unet.training
    unet.eval()
    with torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []):
        # validation must not shift the training's random stream (resumed runs replay it exactly)
        edited = [
            pipe(
                args.validation_prompt,
                image=image,
                num_inference_steps=args.validation_inference_steps,
                image_guidance_scale=1.5,
                guidance_scale=7.0,
                generator=generator,
            ).images[0]
            for _ in range(args.num_validation_images)
        ]
    unet.train(was_training)
    grid = image_grid([image.resize(edited[0].size)] + edited, columns=len(edited) + 1)
    out = Path(args.output_dir) / "validation"
    out.mkdir(parents=True, exist_ok=True)
    grid.save(out / f"step-{step:06d}.png")
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.writer.add_image("validation", np.asarray(grid), step, dataformats="HWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(grid, caption=args.validation_prompt)]}, step=step)
    del pipe
    return grid


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.report_to if args.report_to != "none" else None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=Path(args.output_dir, args.logging_dir)),
        # each epoch's order is a function of (seed, epoch): a run resumed mid-epoch replays it exactly
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    if args.seed is not None:
        set_seed(args.seed)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    # 1. Frozen base model; only the adapter trains (and stays fp32 under mixed precision).
    try:
        root, noise_scheduler, tokenizer, text_encoder, vae, unet = load_components(args)
    except HubUnavailableError as error:
        sys.exit(f"error: {error}")
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    vae.to(accelerator.device, dtype=weight_dtype)
    text_encoder.to(accelerator.device, dtype=weight_dtype)
    unet.to(accelerator.device, dtype=weight_dtype)

    target_modules = [t.strip() for t in args.target_modules.split(",") if t.strip()]
    adapter_config = build_adapter_config(
        args.adapter,
        unet,
        target_modules,
        n_frequency=args.n_frequency,
        scaling=args.scaling,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        fourierft_scaling=args.fourierft_scaling,
        match_budget=args.match_budget,
        **(
            dict(
                location_grad=args.location_grad,
                random_loc_seed=args.random_loc_seed,
                location_lr=args.location_lr,
                coefficient_steps=args.coefficient_steps,
                location_steps=args.location_steps,
                location_training_steps=args.location_training_steps,
                schedule_variant=args.schedule_variant,
            )
            if args.adapter == "loca"
            else {}
        ),
    )
    unet.add_adapter(adapter_config)
    for p in unet.parameters():  # adapters in fp32 whatever the base dtype
        if p.requires_grad:
            p.data = p.data.float()
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()  # default attention is PyTorch SDPA
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    n_trainable = trainable_parameter_count(unet)
    logger.info(f"{args.adapter}: {n_trainable:,} trainable parameters (LoCA locations not counted)")

    # 2. Optimizer: LoCA's locations get their own group (own lr, no weight decay).
    schedule = None
    if args.adapter == "loca":
        schedule = LoCASchedule(unet)
        groups = schedule.parameter_groups(lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    else:
        groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "weight_decay": args.adam_weight_decay}]
    learning_rate = args.learning_rate
    if args.scale_lr:
        factor = args.gradient_accumulation_steps * args.train_batch_size * accelerator.num_processes
        learning_rate *= factor
        for group in groups:
            group["lr"] = group.get("lr", args.learning_rate) * factor
    if args.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            sys.exit("error: --use_8bit_adam needs bitsandbytes: pip install bitsandbytes")
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(
        groups, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )
    trainable = [p for group in groups for p in group["params"]]  # a list, not a one-shot iterator

    # 3. Data: both images get the same crop and flip; prompts are tokenised up front.
    try:
        dataset = load_edit_dataset(
            dataset_name=None if args.train_data_dir else args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir,
            original_image_column=args.original_image_column,
            edit_prompt_column=args.edit_prompt_column,
            edited_image_column=args.edited_image_column,
            max_train_samples=args.max_train_samples,
            cache_dir=args.cache_dir,
            seed=args.seed,
        )
    except (HubUnavailableError, FileNotFoundError, ValueError) as error:
        sys.exit(f"error: {error}")
    train_dataset = make_train_dataset(
        dataset,
        tokenizer,
        args.resolution,
        center_crop=args.center_crop,
        random_flip=args.random_flip,
        original_image_column=args.original_image_column,
        edit_prompt_column=args.edit_prompt_column,
        edited_image_column=args.edited_image_column,
        random_paraphrase=args.sample_paraphrases,
        seed=args.seed,
    )
    train_dataloader = torch.utils.data.DataLoader(
        train_dataset,
        shuffle=True,
        batch_size=args.train_batch_size,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed) if args.seed is not None else None,
    )
    validation_image = (
        _open_image(args.validation_image) if args.validation_image else dataset[0][args.original_image_column].convert("RGB")
    )

    # 4. Schedule of steps; warmup and total steps count optimizer steps on every process.
    from diffusers.optimization import get_scheduler

    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    register_checkpoint_hooks(accelerator, unet)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(unet, optimizer, train_dataloader, lr_scheduler)
    if schedule is not None:
        accelerator.register_for_checkpointing(schedule)
    if accelerator.is_main_process:
        accelerator.init_trackers("instruct-pix2pix-loca", config={k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))})

    # 5. Resume.
    global_step, first_epoch = 0, 0
    if args.resume_from_checkpoint:
        path = checkpoint_dirs(args.output_dir)[-1] if args.resume_from_checkpoint == "latest" and checkpoint_dirs(args.output_dir) else None
        if args.resume_from_checkpoint != "latest":
            path = Path(args.resume_from_checkpoint)
        if path is None or not path.is_dir():
            accelerator.print(f"Checkpoint '{args.resume_from_checkpoint}' not found; starting a new run.")
        else:
            accelerator.print(f"Resuming from {path}")
            accelerator.load_state(str(path))
            global_step = int(path.name.split("-")[1])
            first_epoch = global_step // updates_per_epoch
    if schedule is not None and schedule.step_count != global_step:
        raise RuntimeError(f"LoCA schedule at step {schedule.step_count}, training at {global_step}")

    # 6. Train.
    null_conditioning = text_encoder(tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(accelerator.device))[0]
    progress = tqdm(range(max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process)
    unwrapped = accelerator.unwrap_model(unet)
    locations_before_phase = location_snapshot(unwrapped) if schedule is not None else None
    finished = global_step >= max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if finished:
            break
        unet.train()
        train_dataloader.set_epoch(epoch)
        skip = (global_step - epoch * updates_per_epoch) * args.gradient_accumulation_steps if epoch == first_epoch else 0
        loader = accelerator.skip_first_batches(train_dataloader, skip) if skip > 0 else train_dataloader
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["edited_pixel_values"].to(weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device).long()
                noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
                encoder_hidden_states = text_encoder(batch["input_ids"])[0]
                original_latents = vae.encode(batch["original_pixel_values"].to(weight_dtype)).latent_dist.mode()
                # the global RNG: accelerate saves and restores it with the checkpoints
                encoder_hidden_states, original_latents = conditioning_dropout(
                    encoder_hidden_states, original_latents, null_conditioning, args.conditioning_dropout_prob
                )
                model_input = torch.cat([noisy_latents, original_latents], dim=1)
                if noise_scheduler.config.prediction_type == "v_prediction":
                    target = noise_scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                prediction = unet(model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
                loss = F.mse_loss(prediction.float(), target.float(), reduction="mean")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if schedule is not None:
                        schedule.mask_gradients()
                    if args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_([p for p in trainable if p.grad is not None], args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            if not accelerator.sync_gradients:
                continue
            phase = schedule.phase() if schedule is not None else "coefficients"
            if schedule is not None:
                schedule.step()
            global_step += 1
            progress.update(1)
            logs = {"loss": loss.detach().item(), "lr": lr_scheduler.get_last_lr()[0]}
            if schedule is not None and schedule.phase() != phase and phase == "locations":
                now = location_snapshot(unwrapped)
                logs["locations_moved"] = count_moved_locations(locations_before_phase, now)
                locations_before_phase = now
                if accelerator.is_main_process:
                    for tracker in accelerator.trackers:
                        if tracker.name == "tensorboard":
                            tracker.writer.add_image("locations", np.asarray(location_heatmap(unwrapped)), global_step, dataformats="HWC")
            progress.set_postfix(**{k: round(v, 5) if isinstance(v, float) else v for k, v in logs.items()})
            accelerator.log(logs, step=global_step)

            if global_step % args.checkpointing_steps == 0 and accelerator.is_main_process:
                if args.checkpoints_total_limit is not None:
                    existing = checkpoint_dirs(args.output_dir)
                    for old in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                        shutil.rmtree(old)
            if global_step % args.checkpointing_steps == 0:
                accelerator.save_state(str(Path(args.output_dir) / f"checkpoint-{global_step}"))
            if args.validation_steps and global_step % args.validation_steps == 0 and accelerator.is_main_process:
                run_validation(args, accelerator, unet, vae, text_encoder, tokenizer, root, validation_image, global_step, weight_dtype)
            if global_step >= max_train_steps:
                finished = True
                break
        if args.validation_epochs and (epoch + 1) % args.validation_epochs == 0 and accelerator.is_main_process:
            run_validation(args, accelerator, unet, vae, text_encoder, tokenizer, root, validation_image, global_step, weight_dtype)

    # 7. Save the adapter (PEFT layout, loadable by pipe.load_loca / PeftModel.from_pretrained) and its card.
    accelerator.wait_for_everyone()
    replicas = check_replicas_in_sync(accelerator, accelerator.unwrap_model(unet))
    logger.info(f"adapter replicas identical across {replicas} process(es)")
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        save_adapter(unet, args.output_dir, base_model_name_or_path=args.pretrained_model_name_or_path)
        pictures = {}
        grid = run_validation(args, accelerator, unet, vae, text_encoder, tokenizer, root, validation_image, global_step, weight_dtype)
        grid.save(Path(args.output_dir) / "samples.png")
        pictures["sample_grid"] = "samples.png"
        if args.adapter == "loca":
            location_heatmap(unet).save(Path(args.output_dir) / "locations.png")
            pictures["heatmap"] = "locations.png"
        write_model_card(
            args.output_dir,
            base_model=args.pretrained_model_name_or_path,
            dataset=args.train_data_dir or args.dataset_name,
            adapter=args.adapter,
            hyperparameters={k: v for k, v in vars(args).items() if k not in ("local_rank",)},
            trainable_parameters=n_trainable,
            **pictures,
        )
        if args.push_to_hub:
            try:
                url = push_to_hub(args.output_dir, args.hub_model_id or Path(args.output_dir).name, token=args.hub_token)
                logger.info(f"adapter uploaded to {url}")
            except HubUnavailableError as error:
                logger.error(f"{error} (the trained adapter is saved in {args.output_dir})")
    # every rank leaves together: a rank exiting while the main one still saves can hang gloo's teardown
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _open_image(path: str):
    from PIL import Image, UnidentifiedImageError

    try:
        return Image.open(path).convert("RGB")
    except (FileNotFoundError, UnidentifiedImageError) as error:
        sys.exit(f"error: --validation_image {path}: {error}")


if __name__ == "__main__":
    main()
