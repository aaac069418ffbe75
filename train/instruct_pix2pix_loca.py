#!/usr/bin/env python
"""Fine-tune InstructPix2Pix's UNet attention with LoCA (or the FourierFT / LoRA baselines).

    accelerate launch train/instruct_pix2pix_loca.py \
        --pretrained_model_name_or_path timbrooks/instruct-pix2pix \
        --dataset_name instruction-tuning-sd/cartoonization \
        --max_train_steps 10000 --output_dir loca-cartoonizer

Defaults follow the paper's Table 11 (LoCA on to_q/to_k/to_v/to_out.0, AdamW, weight decay 1e-2,
lr 1e-4, scaling 1, batch 2, gradient accumulation 4, T_s = 1200); its 10 000 steps are
``--max_train_steps 10000`` (without it, ``--num_train_epochs`` decides, as in diffusers). Reads top to bottom
like diffusers' train_instruct_pix2pix.py; data, adapter, checkpoint and picture helpers live in the
``loca_diffusion`` package.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from pathlib import Path
from typing import NoReturn, Optional

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

import loca_diffusion  # noqa: F401  (registers LoCA with peft)
from loca_diffusion import LoCASchedule
from loca_diffusion.data import (
    DEFAULT_DATASET_NAME,
    DEFAULT_EDIT_PROMPT_COLUMN,
    DEFAULT_EDITED_IMAGE_COLUMN,
    DEFAULT_ORIGINAL_IMAGE_COLUMN,
    EditPairTransform,
    collate_fn,
    load_edit_dataset,
    make_train_dataset,
)
from loca_diffusion.hub import HubUnavailableError, push_to_hub
from loca_diffusion.images import image_grid, load_rgb
from loca_diffusion.training import (
    ADAPTERS,
    CHECKPOINT_INFO_FILE,
    UNET_ATTENTION_TARGETS,
    check_replicas_in_sync,
    checkpoint_info,
    complete_checkpoints,
    instruct_pix2pix_loss,
    latest_checkpoint,
    register_checkpoint_hooks,
    save_adapter,
    save_checkpoint,
    trainable_parameter_count,
    write_model_card,
)
from loca_diffusion.training.args import ScriptArgumentParser, adapter_config_from_args, add_adapter_arguments
from loca_diffusion.training.loop import training_loop
from loca_diffusion.training.pix2pix import location_heatmap

logger = get_logger(__name__, log_level="INFO")

#: T_s of the paper's Table 11 run (10 000 steps); LoCAConfig's own default (None) means 10% of the run.
PAPER_LOCATION_TRAINING_STEPS = 1200


def build_parser() -> argparse.ArgumentParser:
    """The script's flags (diffusers' names where diffusers has the same flag), each with help and default."""
    p = ScriptArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    # model
    p.add_argument(
        "--pretrained_model_name_or_path",
        default="timbrooks/instruct-pix2pix",
        help="InstructPix2Pix pipeline: Hub id or local directory.",
    )
    p.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of the pretrained pipeline.")
    p.add_argument("--variant", default=None, help="Weight file variant of the pretrained pipeline, e.g. fp16.")
    # data
    p.add_argument(
        "--dataset_name",
        default=DEFAULT_DATASET_NAME,
        help="Hub dataset of edit pairs (ignored when --train_data_dir is given).",
    )
    p.add_argument("--dataset_config_name", default=None, help="Config of --dataset_name, if it has several.")
    p.add_argument(
        "--train_data_dir", default=None, help="Local imagefolder with metadata.jsonl (wins over --dataset_name)."
    )
    p.add_argument(
        "--original_image_column", default=DEFAULT_ORIGINAL_IMAGE_COLUMN, help="Column of the images before the edit."
    )
    p.add_argument(
        "--edited_image_column", default=DEFAULT_EDITED_IMAGE_COLUMN, help="Column of the images after the edit."
    )
    p.add_argument("--edit_prompt_column", default=DEFAULT_EDIT_PROMPT_COLUMN, help="Column of the edit instructions.")
    p.add_argument(
        "--sample_paraphrases", action="store_true", help="Draw a fresh paraphrased instruction per example."
    )
    p.add_argument(
        "--max_train_samples", type=int, default=None, help="Train on this many rows (a seeded random subset)."
    )
    p.add_argument("--cache_dir", default=None, help="Cache directory for downloaded models and datasets.")
    p.add_argument(
        "--dataloader_num_workers",
        type=int,
        default=0,
        help="DataLoader worker processes (0: load in the main process).",
    )
    p.add_argument(
        "--resolution", type=int, default=256, help="Training (and validation) image size; a positive multiple of 8."
    )
    p.add_argument("--center_crop", action="store_true", help="Centre crops instead of random crops.")
    p.add_argument(
        "--random_flip", action="store_true", help="Flip both images of a pair left-right with probability 1/2."
    )
    p.add_argument(
        "--conditioning_dropout_prob",
        type=float,
        default=0.05,
        help="InstructPix2Pix conditioning dropout p, in [0, 1/3).",
    )
    # optimisation
    p.add_argument(
        "--output_dir", default="instruct-pix2pix-loca", help="Where the adapter, checkpoints, logs and pictures go."
    )
    p.add_argument("--seed", type=int, default=None, help="Seed for a reproducible run.")
    p.add_argument("--train_batch_size", type=int, default=2, help="Batch size per device.")
    p.add_argument(
        "--num_train_epochs", type=int, default=100, help="Epochs to train (used when --max_train_steps is not given)."
    )
    p.add_argument(
        "--max_train_steps", type=int, default=None, help="Optimizer steps to train; overrides --num_train_epochs."
    )
    p.add_argument(
        "--gradient_accumulation_steps", type=int, default=4, help="Batches accumulated per optimizer step."
    )
    p.add_argument("--gradient_checkpointing", action="store_true", help="Trade compute for memory in the UNet.")
    p.add_argument("--learning_rate", type=float, default=1e-4, help="Learning rate of the adapter coefficients.")
    p.add_argument(
        "--scale_lr", action="store_true", help="Multiply the learning rates by accumulation x batch size x processes."
    )
    p.add_argument(
        "--lr_scheduler",
        default="constant",
        help="diffusers scheduler: constant, linear, cosine, constant_with_warmup, ...",
    )
    p.add_argument(
        "--lr_warmup_steps", type=int, default=0, help="Warm-up optimizer steps of the learning-rate scheduler."
    )
    p.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW.")
    p.add_argument("--adam_beta1", type=float, default=0.9, help="AdamW beta1.")
    p.add_argument("--adam_beta2", type=float, default=0.999, help="AdamW beta2.")
    p.add_argument(
        "--adam_weight_decay", type=float, default=1e-2, help="AdamW weight decay (not applied to LoCA locations)."
    )
    p.add_argument("--adam_epsilon", type=float, default=1e-8, help="AdamW epsilon.")
    p.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm (0: no clipping).")
    p.add_argument("--allow_tf32", action="store_true", help="Allow TF32 matmuls on Ampere and newer GPUs.")
    p.add_argument(
        "--mixed_precision",
        choices=["no", "fp16", "bf16"],
        default=None,
        help="Mixed precision (default: accelerate's config).",
    )
    p.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        help="xformers attention (default: PyTorch SDPA).",
    )
    # adapter: the flags every train/ script shares, LoCA's defaults from LoCAConfig
    add_adapter_arguments(
        p,
        target_modules=",".join(UNET_ATTENTION_TARGETS),
        adapters=ADAPTERS,
        location_training_steps=PAPER_LOCATION_TRAINING_STEPS,
        lora_rank=4,
    )
    # checkpoints, validation, logging
    p.add_argument(
        "--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N optimizer steps."
    )
    p.add_argument("--checkpoints_total_limit", type=int, default=None, help="Keep at most this many checkpoints.")
    p.add_argument(
        "--resume_from_checkpoint", default=None, help='A checkpoint directory or "latest" (of --output_dir).'
    )
    p.add_argument(
        "--validation_prompt",
        default="Change the natural image to a cartoon-style image.",
        help="Instruction of the validation edits.",
    )
    p.add_argument(
        "--validation_image", default=None, help="Local image path for validation (default: first training image)."
    )
    p.add_argument("--num_validation_images", type=int, default=2, help="Edits generated per validation.")
    p.add_argument("--validation_steps", type=int, default=None, help="Validate every N optimizer steps.")
    p.add_argument("--validation_epochs", type=int, default=None, help="Validate every N epochs.")
    p.add_argument(
        "--validation_inference_steps", type=int, default=20, help="Denoising steps of the validation edits."
    )
    p.add_argument("--report_to", default="tensorboard", help='Tracker: tensorboard, wandb, ... or "none".')
    p.add_argument("--logging_dir", default="logs", help="Tracker logs, relative to --output_dir.")
    p.add_argument("--push_to_hub", action="store_true", help="Upload the trained adapter directory to the Hub.")
    p.add_argument("--hub_model_id", default=None, help="Repo for --push_to_hub (default: the output folder name).")
    p.add_argument(
        "--hub_token",
        default=None,
        help="Hub token for --push_to_hub (never written anywhere). Prefer `hf auth login` or the HF_TOKEN "
        "environment variable: a token on the command line shows in `ps`, and `accelerate launch` prints the "
        "whole command line when a run fails.",
    )
    return p


# flags that are never recorded (model card, trackers): secrets and per-process details
UNRECORDED_ARGS = frozenset({"hub_token", "local_rank"})
ADAPTER_ONLY_ARGS = {
    "loca": {
        "scaling",
        "location_lr",
        "coefficient_steps",
        "location_steps",
        "location_training_steps",
        "location_grad",
        "schedule_variant",
        "random_loc_seed",
    },
    "fourierft": {"fourierft_scaling"},
    "lora": {"lora_rank", "lora_alpha"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.train_data_dir:
        args.dataset_name = args.dataset_config_name = None  # the local folder is what is used (and recorded)
    elif not args.dataset_name:
        p.error("Pass --dataset_name or --train_data_dir")
    if not 0 <= args.conditioning_dropout_prob < 1 / 3:
        p.error("--conditioning_dropout_prob must be in [0, 1/3)")
    if args.resolution < 8 or args.resolution % 8:
        # Stable Diffusion's VAE downsamples by 8 (the embedded tiny one by 2): whole latents either way
        p.error(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    if args.lora_rank < 1:
        p.error(f"--lora_rank must be >= 1, got {args.lora_rank}")
    for flag in (
        "train_batch_size",
        "num_train_epochs",
        "gradient_accumulation_steps",
        "checkpointing_steps",
        "num_validation_images",
    ):
        if getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    for flag in ("max_train_steps", "validation_steps", "validation_epochs", "checkpoints_total_limit"):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            p.error(f"--{flag} must be >= 1, got {getattr(args, flag)}")
    env_rank = int(os.environ.get("LOCAL_RANK", -1))
    args.local_rank = env_rank
    return args


def recorded_hyperparameters(args: argparse.Namespace) -> dict:
    """The flags to record in the model card and the trackers: no secrets, nothing of the other adapters."""
    other_adapters = set().union(*(names for adapter, names in ADAPTER_ONLY_ARGS.items() if adapter != args.adapter))
    unused_data = {"train_data_dir"} if not args.train_data_dir else {"dataset_name", "dataset_config_name"}
    return {k: v for k, v in vars(args).items() if k not in UNRECORDED_ARGS | other_adapters | unused_data}


def fail(message: str) -> NoReturn:
    """A user error: one ``error:`` line, exit status 2 (as argparse), no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def check_inputs(args: argparse.Namespace) -> Optional[Path]:
    """Everything about the run's inputs that can be wrong, checked before the (slow) model load: the
    output folder, the checkpoint to resume from, the validation image. Returns the checkpoint."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        fail(f"--output_dir {output_dir} exists and is not a folder")
    others = [c for c in complete_checkpoints(output_dir) if checkpoint_info(c).get("adapter") != args.adapter]
    if others:
        kinds = sorted({str(checkpoint_info(c).get("adapter")) for c in others})
        fail(
            f"--output_dir {output_dir} holds checkpoints of another adapter type ({', '.join(kinds)}: "
            f"{', '.join(c.name for c in others)}); training a {args.adapter} adapter there would mix them. "
            f"Pass another --output_dir or move those checkpoints away."
        )
    resume = None
    if args.resume_from_checkpoint == "latest":
        resume = latest_checkpoint(output_dir)
        if resume is None:
            logger.info(f"no complete checkpoint in {output_dir}; starting a new run")
    elif args.resume_from_checkpoint:
        given = Path(args.resume_from_checkpoint)
        resume = next((c for c in (given, output_dir / given) if c.is_dir()), None)
        if resume is None:
            fail(
                f"--resume_from_checkpoint {given}: no such checkpoint folder (pass a checkpoint-N folder or 'latest')"
            )
        info = checkpoint_info(resume)
        if info is None:
            fail(
                f"--resume_from_checkpoint {resume} is not a complete checkpoint (no {CHECKPOINT_INFO_FILE}; "
                "an interrupted save?)"
            )
        if info.get("adapter") != args.adapter:
            fail(
                f"--resume_from_checkpoint {resume} holds a {info.get('adapter')} adapter, "
                f"not --adapter {args.adapter}"
            )
    if args.validation_image:
        try:
            load_rgb(args.validation_image)
        except OSError as error:
            fail(f"--validation_image {args.validation_image}: {error}")
    return resume


def load_components(args, weight_dtype: torch.dtype):
    """The frozen InstructPix2Pix parts in ``weight_dtype`` (loaded so, not cast after: diffusers keeps the modules
    a model marks fp32 in fp32); a Hub id without network fails fast with what to do instead."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    from loca_diffusion.hub import resolve_local_or_hub

    root = resolve_local_or_hub(args.pretrained_model_name_or_path, revision=args.revision, cache_dir=args.cache_dir)
    noise_scheduler = DDPMScheduler.from_pretrained(root, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", revision=args.revision)
    common = {"revision": args.revision, "dtype": weight_dtype}
    text_encoder = CLIPTextModel.from_pretrained(root, subfolder="text_encoder", variant=args.variant, **common)
    vae = AutoencoderKL.from_pretrained(root, subfolder="vae", variant=args.variant, **common)
    unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", variant=args.variant, **common)
    return root, noise_scheduler, tokenizer, text_encoder, vae, unet


@torch.no_grad()
def run_validation(args, accelerator, unet, vae, text_encoder, tokenizer, root, image, step, weight_dtype):
    """Edit ``image`` (already at the training resolution) with the current adapter; save and log the grid."""
    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    logger.info(
        f"Running validation at step {step}: {args.num_validation_images} edit(s) of a {image.width}x{image.height} "
        f"image, {args.validation_inference_steps} denoising steps, prompt: {args.validation_prompt!r}"
    )
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(
        root,
        unet=accelerator.unwrap_model(unet),
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        safety_checker=None,
        requires_safety_checker=False,
        dtype=weight_dtype,
        revision=args.revision,
        variant=args.variant,
    ).to(accelerator.device)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator(device="cpu").manual_seed(args.seed if args.seed is not None else 0)
    was_training = unet.training
    unet.eval()
    # validation must not shift the training's random stream (resumed runs replay it exactly); autocast:
    # the fp32 adapter makes the UNet return fp32 latents, which the fp16/bf16 VAE must accept
    with (
        torch.random.fork_rng(devices=[accelerator.device] if accelerator.device.type == "cuda" else []),
        accelerator.autocast(),
    ):
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
    grid = image_grid([image] + edited, columns=len(edited) + 1)
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
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=Path(args.output_dir, args.logging_dir)
        ),
        # each epoch's order is a function of (seed, epoch): a run resumed mid-epoch replays it exactly
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    logger.info(accelerator.state, main_process_only=False)
    args.mixed_precision = accelerator.mixed_precision  # as resolved with accelerate's config, for the record
    if args.seed is not None:
        set_seed(args.seed)

    # 1. Inputs first (output folder, checkpoint, data, validation image): a mistake costs no model load
    #    and leaves no empty output folder behind.
    resume_path = check_inputs(args)
    try:
        dataset = load_edit_dataset(
            dataset_name=args.dataset_name,
            dataset_config_name=args.dataset_config_name,
            train_data_dir=args.train_data_dir,
            original_image_column=args.original_image_column,
            edit_prompt_column=args.edit_prompt_column,
            edited_image_column=args.edited_image_column,
            max_train_samples=args.max_train_samples,
            cache_dir=args.cache_dir,
            seed=args.seed,
        )
    except (HubUnavailableError, OSError, ValueError) as error:
        fail(str(error))
    pair_transform = EditPairTransform(args.resolution, center_crop=True)
    # validation sees what training sees: the same resize to --resolution
    validation_image = pair_transform.validation_view(
        load_rgb(args.validation_image) if args.validation_image else load_rgb(dataset[0][args.original_image_column])
    )

    # 2. Frozen base model; only the adapter trains (and stays fp32 under mixed precision).
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    try:
        root, noise_scheduler, tokenizer, text_encoder, vae, unet = load_components(args, weight_dtype)
    except HubUnavailableError as error:
        fail(str(error))
    for module in (vae, text_encoder, unet):
        module.requires_grad_(False)
        module.to(accelerator.device)
    try:  # a wrong --target_modules / --n_frequency is the user's: one line, no traceback
        adapter_config = adapter_config_from_args(args, unet)
        unet.add_adapter(adapter_config)
    except ValueError as error:
        fail(f"--adapter {args.adapter}: {error}")
    from diffusers.training_utils import cast_training_params

    cast_training_params(unet, dtype=torch.float32)  # adapters in fp32 whatever the base dtype
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if args.enable_xformers_memory_efficient_attention:
        unet.enable_xformers_memory_efficient_attention()  # default attention is PyTorch SDPA
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
    n_trainable = trainable_parameter_count(unet)
    logger.info(f"{args.adapter}: {n_trainable:,} trainable parameters (LoCA locations not counted)")

    # 3. Optimizer: LoCA's locations get their own group (own lr, no weight decay).
    schedule = None
    if args.adapter == "loca":
        schedule = LoCASchedule(unet)
        groups = schedule.parameter_groups(lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    else:
        groups = [
            {"params": [p for p in unet.parameters() if p.requires_grad], "weight_decay": args.adam_weight_decay}
        ]
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
            fail("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes")
        optimizer_cls = bnb.optim.AdamW8bit
    else:
        optimizer_cls = torch.optim.AdamW
    optimizer = optimizer_cls(
        groups, lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon
    )

    # 4. Data: both images get the same crop and flip; prompts are tokenised up front.
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

    # 5. Schedule of steps (as diffusers): optimizer steps per epoch on each process after sharding;
    #    --max_train_steps, when not given, from --num_train_epochs.
    from diffusers.optimization import get_scheduler

    updates_per_epoch = math.ceil(
        math.ceil(len(train_dataloader) / accelerator.num_processes) / args.gradient_accumulation_steps
    )
    max_train_steps = args.max_train_steps or args.num_train_epochs * updates_per_epoch
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    register_checkpoint_hooks(accelerator, unet)
    unet, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        unet, optimizer, train_dataloader, lr_scheduler
    )
    updates_per_epoch = math.ceil(
        len(train_dataloader) / args.gradient_accumulation_steps
    )  # the prepared (sharded) loader
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)
    if schedule is not None:
        accelerator.register_for_checkpointing(schedule)
    if accelerator.is_main_process:  # the first write: a run that failed before leaves no empty folder
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        config = {k: v for k, v in recorded_hyperparameters(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers("instruct-pix2pix-loca", config=config)

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    logger.info("***** Running training *****")
    logger.info(f"  Num examples = {len(train_dataset)}")
    logger.info(f"  Num Epochs = {num_epochs}")
    logger.info(f"  Instantaneous batch size per device = {args.train_batch_size}")
    logger.info(f"  Total train batch size (w. parallel, distributed & accumulation) = {total_batch_size}")
    logger.info(f"  Gradient Accumulation steps = {args.gradient_accumulation_steps}")
    logger.info(f"  Total optimization steps = {max_train_steps}")
    if args.adapter == "loca" and args.location_training_steps >= max_train_steps:
        # the default T_s is the paper's, for a 10 000-step run: a short run would pay for location steps throughout
        logger.warning(
            f"--location_training_steps {args.location_training_steps} >= the run's {max_train_steps} steps: "
            "LoCA's locations keep learning to the end and never freeze (the paper freezes them after 12% of "
            "the run); pass a smaller --location_training_steps for a short run"
        )

    # 6. Resume.
    global_step = 0
    if resume_path is not None:
        accelerator.print(f"Resuming from {resume_path}")
        accelerator.load_state(str(resume_path))
        global_step = checkpoint_info(resume_path)["global_step"]
    if schedule is not None and schedule.step_count != global_step:
        raise RuntimeError(f"LoCA schedule at step {schedule.step_count}, training at {global_step}")

    # 7. Train.
    null_conditioning = text_encoder(
        tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(
            accelerator.device
        )
    )[0]
    unwrapped = accelerator.unwrap_model(unet)

    def compute_loss(unet, batch):
        return instruct_pix2pix_loss(
            unet, vae, text_encoder, noise_scheduler, batch, null_conditioning,
            args.conditioning_dropout_prob, weight_dtype,
        )  # fmt: skip

    validated = {}  # step -> grid: a step's adapter is validated once (steps, epochs and the final validation)

    def validate(step):
        if step in validated:
            return
        validated.clear()
        validated[step] = run_validation(
            args, accelerator, unet, vae, text_encoder, tokenizer, root, validation_image, step, weight_dtype
        )

    def on_step(step, logs):
        if "locations_moved" in logs and accelerator.is_main_process:
            for tracker in accelerator.trackers:
                if tracker.name == "tensorboard":
                    tracker.writer.add_image(
                        "locations", np.asarray(location_heatmap(unwrapped)), step, dataformats="HWC"
                    )
        accelerator.log(logs, step=step)
        if step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, step, args.adapter, args.checkpoints_total_limit)
        if args.validation_steps and step % args.validation_steps == 0 and accelerator.is_main_process:
            validate(step)

    def on_epoch_end(epoch, step):
        if args.validation_epochs and (epoch + 1) % args.validation_epochs == 0 and accelerator.is_main_process:
            validate(step)

    global_step, _ = training_loop(
        accelerator, unet, optimizer, lr_scheduler, train_dataloader, compute_loss,
        schedule=schedule, max_train_steps=max_train_steps, updates_per_epoch=updates_per_epoch,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=args.max_grad_norm,
        global_step=global_step, loss_name="loss", on_step=on_step, on_epoch_end=on_epoch_end,
    )  # fmt: skip

    # 8. Save the adapter (PEFT layout, loadable by pipe.load_loca / PeftModel.from_pretrained) and its card.
    accelerator.wait_for_everyone()
    replicas = check_replicas_in_sync(accelerator, accelerator.unwrap_model(unet))
    logger.info(f"adapter replicas identical across {replicas} process(es)")
    push_error = None
    if accelerator.is_main_process:
        unet = accelerator.unwrap_model(unet)
        save_adapter(unet, args.output_dir, base_model_name_or_path=args.pretrained_model_name_or_path)
        card = dict(
            base_model=args.pretrained_model_name_or_path,
            adapter=args.adapter,
            hyperparameters=recorded_hyperparameters(args),
            trainable_parameters=n_trainable,
            dataset_name=args.dataset_name,
            train_data_dir=args.train_data_dir,
            instruction=args.validation_prompt,
        )
        write_model_card(args.output_dir, **card)  # before the final validation: a card even if it fails
        validate(global_step)  # unless --validation_steps / --validation_epochs just did
        grid = validated[global_step]
        grid.save(Path(args.output_dir) / "samples.png")
        card["sample_grid"] = "samples.png"
        if args.adapter == "loca":
            location_heatmap(unet).save(Path(args.output_dir) / "locations.png")
            card["heatmap"] = "locations.png"
        write_model_card(args.output_dir, **card)
        if args.push_to_hub:
            try:
                url = push_to_hub(
                    args.output_dir, args.hub_model_id or Path(args.output_dir).name, token=args.hub_token
                )
                logger.info(f"adapter uploaded to {url}")
            except Exception as error:  # noqa: BLE001 - any upload failure: the adapter is saved, the run failed
                push_error = (
                    f"--push_to_hub failed ({type(error).__name__}: {error}); "
                    f"the trained adapter is saved in {args.output_dir}"
                )
    # every rank leaves together: a rank exiting while the main one still saves can hang gloo's teardown
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    if push_error is not None:
        print(f"error: {push_error}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
