"""The accelerate training loop of the ``train/`` scripts, with LoCA's alternating schedule, gradient
clipping, the lr scheduler, checkpoints and exact resume; and the task scripts' setup around it (accelerator,
data loaders, adapter, optimizer) and their outputs (PEFT-format adapter, model card, ``all_results.json``)."""

from __future__ import annotations

import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..tuners.loca.schedule import LoCASchedule
from ..tuners.loca.utils import iter_loca_layers
from .args import adapter_config_from_args, trainable_parameter_count
from .cards import write_task_model_card
from .checkpoints import (
    checkpoint_global_step,
    epoch_batches,
    latest_checkpoint,
    register_checkpoint_hooks,
    save_checkpoint,
    trainable_state,
)

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


def label_config(label_names: Sequence[str]) -> dict:
    """``from_pretrained`` keywords that give a classifier a head for ``label_names``: ``num_labels``,
    ``id2label`` and ``label2id``."""
    return dict(
        num_labels=len(label_names),
        id2label=dict(enumerate(label_names)),
        label2id={n: i for i, n in enumerate(label_names)},
    )


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

    config = adapter_config_from_args(args, model)
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



@dataclass
class TrainOutput:
    model: nn.Module
    eval_dataloader: Optional[torch.utils.data.DataLoader]
    global_step: int
    train_seconds: float
    last_loss: float
    train_cpu_seconds: float = float("nan")


def training_loop(
    accelerator,
    model: nn.Module,
    optimizer,
    lr_scheduler,
    train_dataloader,
    compute_loss: Callable[[nn.Module, dict], torch.Tensor],
    *,
    schedule: Optional[LoCASchedule],
    max_train_steps: int,
    updates_per_epoch: int,
    gradient_accumulation_steps: int,
    max_grad_norm: Optional[float],
    global_step: int = 0,
    loss_name: str = "train_loss",
    on_step: Optional[Callable[[int, dict], None]] = None,
    on_epoch_end: Optional[Callable[[int, int], None]] = None,
) -> tuple[int, float]:
    """The one accelerate training loop of the ``train/`` scripts (all of them call it).

    Args:
        accelerator: The ``Accelerator`` that prepared ``model``, ``optimizer``, ``lr_scheduler`` and
            ``train_dataloader``.
        compute_loss: ``compute_loss(model, batch)``, the script's loss on one batch.
        schedule: LoCA's :class:`LoCASchedule` (gradient masking and phase steps), or None for other adapters.
        max_train_steps: Optimizer steps to reach; ``updates_per_epoch`` of them per epoch of the prepared loader.
        gradient_accumulation_steps: Batches per optimizer step (exact mid-epoch resume skips that many per step).
        max_grad_norm: Gradient clipping norm over the trainable parameters (None or 0: no clipping).
        global_step: The step a resumed run starts from (0 for a new run).
        loss_name: The key of the loss in the step's logs.
        on_step: Called after each optimizer step with ``(global_step, logs)``: logs hold the loss, the lr and,
            at the end of each LoCA location phase, ``locations_moved``. Logging, checkpoints and validation go
            here.
        on_epoch_end: Called with ``(epoch, global_step)`` after each epoch trained, the last (partial) one
            included.

    Returns:
        ``(global_step, last_loss)``.
    """
    from tqdm.auto import tqdm

    num_epochs = math.ceil(max_train_steps / updates_per_epoch)  # 0 steps: nothing to train
    first_epoch = global_step // updates_per_epoch
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    unwrapped = accelerator.unwrap_model(model)
    before_phase = location_snapshot(unwrapped) if schedule is not None else None
    progress = tqdm(
        range(max_train_steps), initial=global_step, desc="steps", disable=not accelerator.is_local_main_process
    )
    loss_value, finished = float("nan"), global_step >= max_train_steps
    for epoch in range(first_epoch, num_epochs):
        if finished:
            break
        model.train()
        loader = epoch_batches(
            accelerator, train_dataloader, epoch, first_epoch, global_step, updates_per_epoch,
            gradient_accumulation_steps,
        )  # fmt: skip
        for batch in loader:
            with accelerator.accumulate(model):
                # the global RNG (noise, timesteps, dropout): accelerate saves and restores it with the checkpoints
                loss = compute_loss(model, batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    if schedule is not None:
                        schedule.mask_gradients()
                    if max_grad_norm and max_grad_norm > 0:
                        accelerator.clip_grad_norm_([p for p in trainable if p.grad is not None], max_grad_norm)
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
            logs = {loss_name: loss_value, "lr": lr_scheduler.get_last_lr()[0]}
            if phase == "locations" and schedule.phase() != phase:
                now = location_snapshot(unwrapped)
                logs["locations_moved"] = count_moved_locations(before_phase, now)
                before_phase = now
            progress.set_postfix(loss=round(loss_value, 5))
            if on_step is not None:
                on_step(global_step, logs)
            if global_step >= max_train_steps:
                finished = True
                break
        if on_epoch_end is not None:  # also after the epoch the run ends in (as diffusers' examples validate)
            on_epoch_end(epoch, global_step)
    return global_step, loss_value


def resume_checkpoint(output_dir: str | Path, resume_from_checkpoint: Optional[str]) -> Optional[Path]:
    """The checkpoint that ``--resume_from_checkpoint`` names: ``latest`` is the newest complete one of
    ``output_dir`` (None if there is none); a path is returned as given (None if it is not a folder)."""
    if not resume_from_checkpoint:
        return None
    path = latest_checkpoint(output_dir) if resume_from_checkpoint == "latest" else Path(resume_from_checkpoint)
    return path if path is not None and path.is_dir() else None


def train(
    args,
    accelerator,
    model: nn.Module,
    train_dataloader: torch.utils.data.DataLoader,
    eval_dataloader: Optional[torch.utils.data.DataLoader] = None,
    compute_loss: Callable[[nn.Module, dict], torch.Tensor] = lambda model, batch: model(**batch).loss,
) -> TrainOutput:
    """The task scripts' training: the optimizer and lr scheduler from the flags, accelerate's preparation,
    ``--resume_from_checkpoint`` (mid-epoch resume replays the same batches), then :func:`training_loop` with
    the loss logged every ``--logging_steps`` (and, for LoCA, how many locations moved in each location
    phase) and a checkpoint every ``--checkpointing_steps``."""
    from transformers import get_scheduler

    updates_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = (
        args.num_train_epochs * updates_per_epoch if args.max_train_steps is None else args.max_train_steps
    )
    optimizer, schedule = build_optimizer(args, model, max_train_steps)
    lr_scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer=optimizer,
        num_warmup_steps=args.num_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    register_checkpoint_hooks(accelerator, model, contents="trainable")
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

    global_step = 0
    path = resume_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if args.resume_from_checkpoint and path is None:
        accelerator.print(f"Checkpoint '{args.resume_from_checkpoint}' not found; starting a new run.")
    elif path is not None:
        accelerator.print(f"Resuming from {path}")
        accelerator.load_state(str(path))
        global_step = checkpoint_global_step(path)
    if schedule is not None and schedule.step_count != global_step:
        raise RuntimeError(f"LoCA schedule at step {schedule.step_count}, training at {global_step}")

    def on_step(step: int, logs: dict) -> None:
        if step % max(1, args.logging_steps) == 0 or "locations_moved" in logs:
            accelerator.log(logs, step=step)
        if args.checkpointing_steps and step % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, step, args.adapter, args.checkpoints_total_limit)

    # CPU time next to wall time: on a shared machine the wall time also counts other people's work
    start, cpu_start = time.perf_counter(), time.process_time()
    global_step, loss_value = training_loop(
        accelerator, model, optimizer, lr_scheduler, train_dataloader, compute_loss,
        schedule=schedule, max_train_steps=max_train_steps, updates_per_epoch=updates_per_epoch,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_grad_norm=args.max_grad_norm,
        global_step=global_step, on_step=on_step,
    )  # fmt: skip
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return TrainOutput(model, eval_dataloader, global_step, wall, loss_value, cpu)


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
        from ..loaders import save_safetensors
        from .checkpoints import save_adapter

        unwrapped = accelerator.unwrap_model(model)
        out = Path(args.output_dir)
        if args.adapter == "none":
            save_safetensors(trainable_state(unwrapped), out / "head_model.safetensors")
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
