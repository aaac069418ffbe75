"""What the task training scripts (``train/text_classification_loca.py``, ``image_classification_loca.py``,
``causal_lm_loca.py``) share: their adapter / schedule / optimisation / checkpoint arguments, the adapter
(LoCA, FourierFT, LoRA with ``--match_budget``, or none: the frozen model with its head trained), the
optimizer with LoCA's alternating schedule, the accelerate training loop with exact resume, evaluation
helpers, and the PEFT-format output with its model card and ``all_results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..tuners.loca.schedule import LoCASchedule
from .checkpoints import (
    ADAPTERS,
    build_adapter_config,
    count_moved_locations,
    epoch_batches,
    location_snapshot,
    trainable_parameter_count,
)

logger = logging.getLogger(__name__)

TASK_ADAPTERS = ADAPTERS + ("none",)
TRAINABLE_STATE_FILE = "trainable_state.safetensors"


# ----------------------------------------------------------------------------------------------------
# arguments


def add_adapter_arguments(parser: argparse.ArgumentParser, target_modules: str, n_frequency: int = 1000) -> None:
    """``--adapter`` and its options, LoCA's schedule (paper Sec. 4.4 and the Table 5 variants) included."""
    g = parser.add_argument_group("adapter")
    g.add_argument(
        "--adapter", choices=TASK_ADAPTERS, default="loca", help="none: frozen model, only the head trains."
    )
    g.add_argument("--target_modules", default=target_modules, help="Comma-separated linear-layer name suffixes.")
    g.add_argument("--n_frequency", type=int, default=n_frequency, help="LoCA / FourierFT coefficients per layer.")
    g.add_argument("--scaling", type=float, default=1.0, help="LoCA alpha.")
    g.add_argument("--location_lr", type=float, default=1e-4)
    g.add_argument("--coefficient_steps", type=int, default=10, help="B_a")
    g.add_argument("--location_steps", type=int, default=20, help="B_l")
    g.add_argument("--location_training_steps", type=int, default=None, help="T_s (default: 10%% of the steps)")
    g.add_argument("--location_grad", choices=["central", "forward", "backward"], default="central")
    g.add_argument(
        "--schedule_variant",
        choices=["alternating", "fixed", "alternate_throughout", "joint"],
        default="alternating",
        help="alternating (paper), fixed (V1), alternate_throughout (V2), joint (V3).",
    )
    g.add_argument("--random_loc_seed", type=int, default=777)
    g.add_argument("--fourierft_scaling", type=float, default=64.0)
    g.add_argument("--lora_rank", type=int, default=8)
    g.add_argument("--lora_alpha", type=float, default=None)
    g.add_argument("--match_budget", action="store_true", help="Give the baseline LoCA's trainable-parameter count.")


def add_training_arguments(parser: argparse.ArgumentParser, project: str, **defaults) -> None:
    """Optimisation, checkpoint and logging options (``defaults`` overrides any of their defaults)."""
    g = parser.add_argument_group("training")
    g.add_argument("--output_dir", default=project)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--per_device_train_batch_size", type=int, default=16)
    g.add_argument("--per_device_eval_batch_size", type=int, default=32)
    g.add_argument("--gradient_accumulation_steps", type=int, default=1)
    g.add_argument("--num_train_epochs", type=int, default=3)
    g.add_argument("--max_train_steps", type=int, default=None, help="Overrides --num_train_epochs.")
    g.add_argument("--learning_rate", type=float, default=5e-3, help="Adapter coefficients (and the head).")
    g.add_argument(
        "--head_learning_rate", type=float, default=None, help="The trained head (default: --learning_rate)."
    )
    g.add_argument("--weight_decay", type=float, default=0.0)
    g.add_argument("--lr_scheduler_type", default="linear")
    g.add_argument("--num_warmup_steps", type=int, default=0)
    g.add_argument("--max_grad_norm", type=float, default=1.0)
    g.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default=None)
    g.add_argument("--checkpointing_steps", type=int, default=None, help="Save the training state every N steps.")
    g.add_argument("--checkpoints_total_limit", type=int, default=None)
    g.add_argument("--resume_from_checkpoint", default=None, help='A checkpoint directory or "latest".')
    g.add_argument("--report_to", default="tensorboard", help='tensorboard, wandb, all or "none".')
    g.add_argument("--logging_dir", default="logs")
    g.add_argument("--logging_steps", type=int, default=10)
    g.add_argument("--project_name", default=project, help="Tracker project name.")
    parser.set_defaults(**defaults)


def target_list(spec: str) -> list[str]:
    return [t.strip() for t in spec.split(",") if t.strip()]


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


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything a resume needs from the model: trainable parameters and LoCA's live buffers (continuous
    locations, frozen flags). The frozen base is not saved."""
    params = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items() if k in params or ".loca_" in k
    }


def register_trainable_checkpoint_hooks(accelerator, model: nn.Module) -> None:
    """``accelerator.save_state`` / ``load_state`` write and read :func:`trainable_state` (adapter and head)
    instead of the full model."""
    from safetensors.torch import load_file, save_file

    def is_model(m) -> bool:
        return accelerator.unwrap_model(m) is accelerator.unwrap_model(model)

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for m in models:
                if is_model(m):
                    save_file(
                        trainable_state(accelerator.unwrap_model(m)), str(Path(output_dir) / TRAINABLE_STATE_FILE)
                    )
        while weights:
            weights.pop()

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            m = models.pop()
            if not is_model(m):
                continue
            path = Path(input_dir) / TRAINABLE_STATE_FILE
            if not path.is_file():
                raise FileNotFoundError(f"{path} missing: {input_dir} is not a checkpoint of this script")
            result = accelerator.unwrap_model(m).load_state_dict(load_file(str(path)), strict=False)
            if result.unexpected_keys:
                raise ValueError(
                    f"{path} does not fit the model (other adapter or model?): {result.unexpected_keys[:3]}"
                )

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


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


@torch.no_grad()
def evaluate_classification(accelerator, model: nn.Module, dataloader, num_labels: int) -> dict[str, float]:
    """Accuracy, macro-F1 and mean cross-entropy over the whole evaluation set (all processes)."""
    model.eval()
    predictions, references, losses = [], [], []
    for batch in dataloader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        loss = nn.functional.cross_entropy(logits, batch["labels"], reduction="none")
        p, r, l_ = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"], loss))
        predictions.append(p.cpu())
        references.append(r.cpu())
        losses.append(l_.cpu())
    pred, ref = torch.cat(predictions), torch.cat(references)
    f1 = []
    for c in range(num_labels):
        tp = ((pred == c) & (ref == c)).sum().item()
        fp = ((pred == c) & (ref != c)).sum().item()
        fn = ((pred != c) & (ref == c)).sum().item()
        if tp + fp + fn:
            f1.append(2 * tp / (2 * tp + fp + fn))
    return {
        "eval_accuracy": (pred == ref).float().mean().item(),
        "eval_macro_f1": sum(f1) / max(len(f1), 1),
        "eval_loss": torch.cat(losses).mean().item(),
        "eval_samples": len(ref),
    }


@torch.no_grad()
def evaluate_loss(accelerator, model: nn.Module, dataloader) -> dict[str, float]:
    """Token-weighted mean loss of a causal LM over the evaluation set (labels of -100 ignored)."""
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch in dataloader:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.float()
        labels = batch["labels"][:, 1:]
        loss = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        n = (labels != -100).sum()
        total += accelerator.reduce(loss.double().reshape(1), "sum").cpu()[0]
        count += accelerator.reduce(n.double().reshape(1), "sum").cpu()[0]
    mean = (total / count.clamp(min=1)).item()
    return {"eval_loss": mean, "eval_perplexity": math.exp(min(mean, 50.0)), "eval_tokens": int(count.item())}


@torch.no_grad()
def generate_responses(model: nn.Module, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of tokenised prompts, one at a time (no padding side to get wrong), decoded."""
    model.eval()
    outputs = []
    for ids in prompts:
        input_ids = torch.tensor([ids], device=next(model.parameters()).device)
        generated = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        outputs.append(tokenizer.decode(generated[0, len(ids) :], skip_special_tokens=True).strip())
    return outputs


def rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L F1 (``rouge-score``, with stemming) of ``predictions`` against ``references``."""
    try:
        from rouge_score import rouge_scorer
    except ImportError as err:
        raise ImportError("ROUGE-L needs `rouge-score`: pip install rouge-score") from err
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return float(sum(scores) / max(len(scores), 1))


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


def usage_snippet(auto_class: str, base_model: str, **kwargs) -> str:
    """How to load the saved adapter onto its base model, for the model card."""
    extra = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    return (
        f"from peft import PeftModel\nfrom transformers import {auto_class}\n\n"
        f'base = {auto_class}.from_pretrained("{base_model}"{extra})\n'
        'model = PeftModel.from_pretrained(base, "path/to/this/directory")'
    )


def write_task_model_card(
    output_dir: Path,
    args,
    task: str,
    base_model: str,
    dataset: str,
    n_trainable: int,
    results: dict,
    usage: str,
    extra_sections: Optional[dict[str, str]] = None,
) -> Path:
    """``README.md`` of a trained adapter: base model, task, data, evaluation, how to load, hyperparameters."""
    adapter = "frozen model, head only" if args.adapter == "none" else args.adapter.upper()
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: peft",
        f"tags: [loca, peft, {task}]",
        "---",
        "",
        f"# {adapter} adapter: {task}",
        "",
        f"- Base model: `{base_model}`",
        f"- Data: `{dataset}`",
        f"- Adapter: `{args.adapter}` on `{args.target_modules}`",
        f"- Trainable parameters (LoCA: coefficients only; head included): {n_trainable:,}",
        f"- Steps: {results['train_steps']}, wall time {results['train_seconds']:.1f} s",
        "",
        "## Evaluation",
        "",
        "| metric | value |",
        "|---|---|",
        *(
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in results.items()
            if k.startswith("eval_")
        ),
        "",
        "## Use",
        "",
        "```python",
        "import loca_diffusion  # registers LoCA with peft",
        usage.strip(),
        "```",
        "",
    ]
    for title, body in (extra_sections or {}).items():
        lines += [f"## {title}", "", body.strip(), ""]
    hyper = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    lines += ["## Hyperparameters", "", "```json", json.dumps(hyper, indent=2, sort_keys=True), "```", ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def exit_on_data_error(function: Callable, *args, **kwargs):
    """Run a data loader; bad input (missing file/column, unknown label, empty file, Hub unreachable) ends the
    script with one clear line instead of a traceback."""
    from ..hub import HubUnavailableError

    try:
        return function(*args, **kwargs)
    except (HubUnavailableError, FileNotFoundError, ValueError, KeyError, ImportError, PermissionError) as error:
        sys.exit(f"error: {error}")
