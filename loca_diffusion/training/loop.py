"""The accelerate training loop of the ``train/`` scripts, with LoCA's alternating schedule, gradient
clipping, the lr scheduler, checkpoints and exact resume; and the task scripts' setup around it (accelerator,
data loaders, adapter, optimizer) and their outputs (PEFT-format adapter, model card, ``all_results.json``)."""

from __future__ import annotations

import json
import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn

from ..tuners.loca.layer import iter_loca_layers
from ..tuners.loca.schedule import LoCASchedule
from .args import build_adapter_config, target_list, trainable_parameter_count
from .cards import write_task_model_card
from .checkpoints import epoch_batches, register_trainable_checkpoint_hooks, trainable_state

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------
# accelerator, adapter, optimizer


def make_accelerator(args):
    """An ``Accelerator`` with TensorBoard (or other) tracking in ``<output_dir>/<logging_dir>`` and a seedable
    sampler (each epoch's order is a function of seed and epoch, so a mid-epoch resume replays it)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed

    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=str(Path(args.output_dir, args.logging_dir))
        ),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    set_seed(args.seed)
    if accelerator.is_main_process:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    return accelerator


def make_dataloaders(args, train_dataset, eval_dataset, collate_fn=None):
    """Training (shuffled) and evaluation loaders. The training loader draws its worker seed from its own
    generator, not the global RNG: otherwise creating its iterator after a resume would shift the dropout
    masks by one draw and the resumed run would differ from an uninterrupted one."""
    train_loader = torch.utils.data.DataLoader(
        train_dataset,
        batch_size=args.per_device_train_batch_size,
        shuffle=True,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        generator=torch.Generator().manual_seed(args.seed),
    )
    eval_loader = torch.utils.data.DataLoader(
        eval_dataset,
        batch_size=args.per_device_eval_batch_size,
        collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(args.seed),
    )
    return train_loader, eval_loader


def head_module_names(model: nn.Module, candidates: tuple[str, ...] = ("classifier", "score")) -> list[str]:
    """The task head(s) of a transformers model that train with the adapter (``classifier`` for BERT, RoBERTa,
    ViT and DINOv2; ``score`` for decoder classifiers)."""
    return [c for c in candidates if any(name == c or name.endswith("." + c) for name, _ in model.named_modules())]


def apply_adapter(args, model: nn.Module, modules_to_save: Optional[list[str]] = None) -> tuple[nn.Module, int]:
    """Wrap ``model`` with the adapter ``args.adapter`` on ``args.target_modules`` (``modules_to_save`` train in
    full and are saved with it); ``none`` freezes everything but ``modules_to_save``. Returns the model and its
    trainable-parameter count (LoCA locations not counted, as in the paper)."""
    if args.adapter == "none":
        if not modules_to_save:
            raise ValueError("--adapter none trains the task head only, and this model has none (use an adapter)")
        model.requires_grad_(False)
        for name, module in model.named_modules():
            if any(name == m or name.endswith("." + m) for m in modules_to_save):
                module.requires_grad_(True)
        return model, trainable_parameter_count(model)
    from peft import get_peft_model

    loca_options = dict(
        location_grad=args.location_grad,
        random_loc_seed=args.random_loc_seed,
        location_lr=args.location_lr,
        coefficient_steps=args.coefficient_steps,
        location_steps=args.location_steps,
        location_training_steps=args.location_training_steps,
        schedule_variant=args.schedule_variant,
    )
    config = build_adapter_config(
        args.adapter,
        model,
        target_list(args.target_modules),
        n_frequency=args.n_frequency,
        scaling=args.scaling,
        lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha,
        fourierft_scaling=args.fourierft_scaling,
        match_budget=args.match_budget,
        **(loca_options if args.adapter == "loca" else {}),
    )
    config.modules_to_save = list(modules_to_save) if modules_to_save else None
    model = get_peft_model(model, config)
    return model, trainable_parameter_count(model)


def build_optimizer(args, model: nn.Module, total_steps: int):
    """AdamW over the trainable parameters; with LoCA, its :class:`LoCASchedule` (locations in their own group:
    own lr, no weight decay). The head gets ``--head_learning_rate`` when given. Returns (optimizer, schedule)."""
    schedule = LoCASchedule(model, total_steps=total_steps) if args.adapter == "loca" else None
    head_lr = args.head_learning_rate
    head = [p for n, p in model.named_parameters() if p.requires_grad and "modules_to_save" in n] if head_lr else []
    head_ids = {id(p) for p in head}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
    if schedule is not None:
        groups = schedule.parameter_groups(
            lr=args.learning_rate, weight_decay=args.weight_decay, other_parameters=rest
        )
    else:
        groups = [{"params": rest, "lr": args.learning_rate, "weight_decay": args.weight_decay}]
    if head:
        groups.append({"params": head, "lr": head_lr, "weight_decay": args.weight_decay, "name": "head"})
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=args.learning_rate), schedule


# ----------------------------------------------------------------------------------------------------
# checkpoints



def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    dirs = [d for d in Path(output_dir).glob("checkpoint-*") if d.is_dir() and d.name.split("-")[1].isdigit()]
    return sorted(dirs, key=lambda d: int(d.name.split("-")[1]))


# ----------------------------------------------------------------------------------------------------
# the training loop


@dataclass
class TrainOutput:
    model: nn.Module
    eval_dataloader: Optional[torch.utils.data.DataLoader]
    global_step: int
    train_seconds: float
    last_loss: float
    train_cpu_seconds: float = float("nan")


def train(
    args,
    accelerator,
    model: nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    eval_dataloader: Optional[torch.utils.data.DataLoader] = None,
    compute_loss: Callable[[nn.Module, dict], torch.Tensor] = lambda model, batch: model(**batch).loss,
) -> TrainOutput:
    """Train ``model``'s trainable parameters for ``--max_train_steps`` optimizer steps (or the epochs), with
    LoCA's schedule, gradient clipping, the lr scheduler, checkpoints every ``--checkpointing_steps`` and
    ``--resume_from_checkpoint`` (mid-epoch resume replays the same batches). Logs the loss (and, for LoCA,
    how many locations moved in each location phase) to the trackers."""
    from transformers import get_scheduler

    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = (
        args.num_train_epochs * updates_per_epoch if args.max_train_steps is None else args.max_train_steps
    )
    num_epochs = math.ceil(max_train_steps / updates_per_epoch)  # 0 steps: evaluate the model as it is
    optimizer, schedule = build_optimizer(args, model, max_train_steps)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    register_trainable_checkpoint_hooks(accelerator, model)
    model, optimizer, train_dataloader, lr_scheduler = accelerator.prepare(
        model, optimizer, train_dataloader, lr_scheduler
    )
    if eval_dataloader is not None:
        eval_dataloader = accelerator.prepare(eval_dataloader)
    if schedule is not None:
        accelerator.register_for_checkpointing(schedule)
    if accelerator.is_main_process:
        config = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool))}
        accelerator.init_trackers(args.project_name, config=config)

    global_step, first_epoch = 0, 0
    if args.resume_from_checkpoint:
        found = checkpoint_dirs(args.output_dir)
        path = (
            (found[-1] if found else None)
            if args.resume_from_checkpoint == "latest"
            else Path(args.resume_from_checkpoint)
        )
        if path is None or not path.is_dir():
            accelerator.print(f"Checkpoint '{args.resume_from_checkpoint}' not found; starting a new run.")
        else:
            accelerator.print(f"Resuming from {path}")
            accelerator.load_state(str(path))
            global_step = int(path.name.split("-")[1])
            first_epoch = global_step // updates_per_epoch
    if schedule is not None and schedule.step_count != global_step:
        raise RuntimeError(f"LoCA schedule at step {schedule.step_count}, training at {global_step}")

    from tqdm.auto import tqdm

    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    unwrapped = accelerator.unwrap_model(model)
    before_phase = location_snapshot(unwrapped) if schedule is not None else None
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    # CPU time next to wall time: on a shared machine the wall time also counts other people's work
    start, cpu_start = time.perf_counter(), time.process_time()
    loss_value, finished = float("nan"), global_step >= max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if finished:
            break
        model.train()
        loader = epoch_batches(
            accelerator, train_dataloader, epoch, first_epoch, global_step, updates_per_epoch,
            args.gradient_accumulation_steps,
        )  # fmt: skip
        for batch in loader:
            with accelerator.accumulate(model):
                loss = compute_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if schedule is not None:
                        schedule.mask_gradients()
                    if args.max_grad_norm and args.max_grad_norm > 0:
                        accelerator.clip_grad_norm_([p for p in trainable if p.grad is not None], args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            phase = schedule.phase() if schedule is not None else None
            if schedule is not None:
                schedule.step()
            global_step += 1
            progress.update(1)
            loss_value = loss.detach().float().item()
            logs = {"train_loss": loss_value, "lr": lr_scheduler.get_last_lr()[0]}
            if phase == "locations" and schedule.phase() != phase:
                now = location_snapshot(unwrapped)
                logs["locations_moved"] = count_moved_locations(before_phase, now)
                before_phase = now
            if global_step % max(1, args.logging_steps) == 0 or "locations_moved" in logs:
                accelerator.log(logs, step=global_step)
            progress.set_postfix(loss=round(loss_value, 4))
            if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
                if accelerator.is_main_process and args.checkpoints_total_limit is not None:
                    existing = checkpoint_dirs(args.output_dir)
                    for old in existing[: max(0, len(existing) - args.checkpoints_total_limit + 1)]:
                        shutil.rmtree(old)
                accelerator.save_state(str(Path(args.output_dir) / f"checkpoint-{global_step}"))
            if global_step >= max_train_steps:
                finished = True
                break
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return TrainOutput(model, eval_dataloader, global_step, wall, loss_value, cpu)


# ----------------------------------------------------------------------------------------------------
# evaluation



# ----------------------------------------------------------------------------------------------------
# saving


def data_source(args) -> str:
    """The data a run used, for the model card: the first of the data options that is set."""
    for option in ("task_name", "dataset_name", "train_file", "train_dir", "idx_dir"):
        if getattr(args, option, None):
            return str(getattr(args, option))
    return "unknown"


def save_outputs(
    args,
    accelerator,
    output: TrainOutput,
    metrics: dict,
    n_trainable: int,
    task: str,
    usage: str,
    extra_sections: Optional[dict[str, str]] = None,
) -> None:
    """Write the adapter in the PEFT on-disk format (``adapter_config.json`` + ``adapter_model.safetensors``,
    the head included as modules_to_save; ``--adapter none``: ``head_model.safetensors``), a model card and
    ``all_results.json`` (metrics, steps, wall time, peak memory), then close the trackers."""
    model, base_model, dataset = output.model, args.model_name_or_path, data_source(args)
    accelerator.wait_for_everyone()
    results = dict(
        metrics,
        adapter=args.adapter,
        trainable_parameters=n_trainable,
        train_steps=output.global_step,
        train_seconds=round(output.train_seconds, 3),
        train_cpu_seconds=round(output.train_cpu_seconds, 3),
        train_loss=output.last_loss,
        peak_rss_mib=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    if accelerator.is_main_process:
        from safetensors.torch import save_file

        from .checkpoints import save_adapter

        unwrapped = accelerator.unwrap_model(model)
        out = Path(args.output_dir)
        if args.adapter == "none":
            save_file(trainable_state(unwrapped), str(out / "head_model.safetensors"))
        else:
            save_adapter(unwrapped, out)
        (out / "all_results.json").write_text(json.dumps(results, indent=2))
        write_task_model_card(out, args, task, base_model, dataset, n_trainable, results, usage, extra_sections)
        accelerator.log({k: v for k, v in metrics.items() if isinstance(v, (int, float))}, step=output.global_step)
        logger.info(json.dumps(results))
    accelerator.wait_for_everyone()
    accelerator.end_training()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()



def exit_on_data_error(function: Callable, *args, **kwargs):
    """Run a data loader; bad input (missing file/column, unknown label, empty file, Hub unreachable) ends the
    script with one clear line instead of a traceback."""
    from ..hub import HubUnavailableError

    try:
        return function(*args, **kwargs)
    except (HubUnavailableError, FileNotFoundError, ValueError, KeyError, ImportError, PermissionError) as error:
        sys.exit(f"error: {error}")


def location_snapshot(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Each LoCA layer's integer locations now (CPU copies), by layer name."""
    return {
        name: layer.get_locations(adapter_name).detach().cpu().clone()
        for name, layer in iter_loca_layers(model)
        if adapter_name in layer.loca_coefficients
    }


def count_moved_locations(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> int:
    """How many coefficients sit at another (row, col) than in ``before``."""
    return int(sum((before[k] != after[k]).any(dim=0).sum() for k in before if k in after))


def check_replicas_in_sync(accelerator, model: nn.Module) -> int:
    """Raise if the adapter differs between processes (DDP and the schedule must keep the replicas
    equal); returns how many processes were compared."""
    values = [v.detach().double().flatten() for k, v in sorted(model.state_dict().items()) if _is_adapter_key(k)]
    flat = torch.cat(values) if values else torch.zeros(1, dtype=torch.float64)
    local = torch.stack([flat.sum(), flat.abs().sum(), flat.square().sum()])
    gathered = accelerator.gather(local.to(accelerator.device)[None]).cpu()
    if not torch.equal(gathered, gathered[:1].expand_as(gathered)):
        raise RuntimeError(f"Adapter replicas differ between processes: {gathered.tolist()}")
    return gathered.shape[0]


def _is_adapter_key(key: str) -> bool:
    return any(tag in key for tag in (".loca_", ".lora_", ".fourierft_"))
