"""Checkpoints of the training scripts: the adapter writer (PEFT layout plus the live LoCA state for an exact
resume), accelerate's save/load hooks, atomic ``checkpoint-<step>`` folders and finding the latest one, and the
batches still to train in the epoch a run resumes in."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)


ADAPTER_SUBDIR = "adapter"
LIVE_STATE_FILE = "loca_training_state.safetensors"


def save_adapter(
    model: nn.Module,
    directory: str | Path,
    adapter_name: str = "default",
    live_state: bool = False,
    base_model_name_or_path: Optional[str] = None,
) -> Path:
    """Write ``model``'s adapter with the one adapter writer (:func:`~loca_diffusion.loaders.write_loca_adapter`:
    the PEFT layout that ``PeftModel.from_pretrained`` and ``pipe.load_loca`` read, plus diffusers' LoRA file
    for ``pipe.load_lora_weights``). ``live_state=True`` also writes the LoCA training state (continuous
    locations, frozen flags) for an exact resume. ``base_model_name_or_path`` goes into the adapter config."""
    from ..loaders import save_safetensors, write_loca_adapter

    target = write_loca_adapter(model, directory, adapter_name, base_model_name_or_path=base_model_name_or_path)
    if live_state:
        live = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if ".loca_" in k}
        if live:
            save_safetensors(live, target / LIVE_STATE_FILE)
    return target


CHECKPOINT_INFO_FILE = "checkpoint_info.json"
_CHECKPOINT_NAME = re.compile(r"checkpoint-(\d+)")


def checkpoint_dirs(output_dir: str | Path) -> list[Path]:
    """The ``checkpoint-<step>`` folders of ``output_dir``, complete or not, by step."""
    found = [d for d in Path(output_dir).glob("checkpoint-*") if d.is_dir() and _CHECKPOINT_NAME.fullmatch(d.name)]
    return sorted(found, key=checkpoint_step)


def checkpoint_step(path: str | Path) -> int:
    return int(_CHECKPOINT_NAME.fullmatch(Path(path).name).group(1))


def checkpoint_info(path: str | Path) -> Optional[dict]:
    """What :func:`save_checkpoint` recorded (``global_step``, ``adapter``); None for an incomplete folder."""
    info = Path(path) / CHECKPOINT_INFO_FILE
    if not info.is_file():
        return None
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


def checkpoint_global_step(path: str | Path) -> int:
    """The optimizer step a checkpoint was saved at: what :func:`save_checkpoint` recorded, else the
    folder's ``checkpoint-<step>`` name."""
    info = checkpoint_info(path)
    return int(info["global_step"]) if info is not None else checkpoint_step(path)


def complete_checkpoints(output_dir: str | Path, warn: bool = False) -> list[Path]:
    """The checkpoints of ``output_dir`` that were written to the end, by step; ``warn`` logs a warning
    for each incomplete one (a save that was interrupted), which is skipped."""
    complete = []
    for path in checkpoint_dirs(output_dir):
        if checkpoint_info(path) is not None:
            complete.append(path)
        elif warn:
            logger.warning(
                f"skipping incomplete checkpoint {path} (no {CHECKPOINT_INFO_FILE}: its save was interrupted)"
            )
    return complete


def latest_checkpoint(output_dir: str | Path) -> Optional[Path]:
    """The complete checkpoint with the highest step (incomplete ones are skipped with a warning)."""
    complete = complete_checkpoints(output_dir, warn=True)
    return complete[-1] if complete else None


def epoch_batches(
    accelerator,
    train_dataloader,
    epoch: int,
    first_epoch: int,
    global_step: int,
    updates_per_epoch: int,
    gradient_accumulation_steps: int,
):
    """The batches of ``epoch`` still to train: on the epoch a run resumes in, the ones the checkpointed run
    already consumed are skipped (exact mid-epoch resume)."""
    train_dataloader.set_epoch(epoch)
    skip = (global_step - epoch * updates_per_epoch) * gradient_accumulation_steps if epoch == first_epoch else 0
    return accelerator.skip_first_batches(train_dataloader, skip) if skip > 0 else train_dataloader


def save_checkpoint(
    accelerator, output_dir: str | Path, step: int, adapter: str, total_limit: Optional[int] = None
) -> Path:
    """``accelerator.save_state`` into a hidden temporary folder, then renamed to ``checkpoint-<step>``
    once every process has written its part, so an interrupted save never leaves a ``checkpoint-<step>``
    behind. ``total_limit`` removes the oldest complete checkpoints first so that at most that many
    remain. Call it on every process."""
    output_dir = Path(output_dir)
    final = output_dir / f"checkpoint-{step}"
    partial = output_dir / f".checkpoint-{step}.partial"
    if accelerator.is_main_process:
        if total_limit is not None:
            existing = [c for c in complete_checkpoints(output_dir) if c != final]
            for old in existing[: max(0, len(existing) - total_limit + 1)]:
                shutil.rmtree(old)
        if partial.exists():
            shutil.rmtree(partial)  # left by an earlier interrupted save
    accelerator.wait_for_everyone()
    accelerator.save_state(str(partial))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (partial / CHECKPOINT_INFO_FILE).write_text(json.dumps({"global_step": step, "adapter": adapter}))
        stale = output_dir / f".checkpoint-{step}.replaced"
        if final.exists():  # a rerun over the same step: keep the old one until the new one is in place
            os.replace(final, stale)
        os.replace(partial, final)
        if stale.exists():
            shutil.rmtree(stale)
    accelerator.wait_for_everyone()
    return final


TRAINABLE_STATE_FILE = "trainable_state.safetensors"


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Everything a resume needs from the model: trainable parameters and LoCA's live buffers (continuous
    locations, frozen flags). The frozen base is not saved."""
    params = {n for n, p in model.named_parameters() if p.requires_grad}
    return {
        k: v.detach().contiguous().cpu().clone() for k, v in model.state_dict().items() if k in params or ".loca_" in k
    }


def _save_adapter_state(model: nn.Module, folder: Path, adapter_name: str) -> None:
    save_adapter(model, folder / ADAPTER_SUBDIR, adapter_name, live_state=True)


def _load_adapter_state(model: nn.Module, folder: Path, adapter_name: str) -> None:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from ..loaders import LOCA_WEIGHTS_NAME, to_model_keys

    source = folder / ADAPTER_SUBDIR
    live_file = source / LIVE_STATE_FILE
    if live_file.is_file():
        result = model.load_state_dict(load_file(live_file), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"{live_file} does not fit the model: {result.unexpected_keys[:3]}")
    else:
        weights = source / LOCA_WEIGHTS_NAME
        state = to_model_keys(load_file(weights))  # the file holds PeftModel's keys
        result = set_peft_model_state_dict(model, state, adapter_name=adapter_name)
        if result.unexpected_keys:
            raise ValueError(f"{weights} does not fit the model: {result.unexpected_keys[:3]}")


def _save_trainable_state(model: nn.Module, folder: Path, adapter_name: str) -> None:
    from ..loaders import save_safetensors

    save_safetensors(trainable_state(model), folder / TRAINABLE_STATE_FILE)


def _load_trainable_state(model: nn.Module, folder: Path, adapter_name: str) -> None:
    from safetensors.torch import load_file

    path = folder / TRAINABLE_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {folder} is not a checkpoint of this script")
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.unexpected_keys:
        raise ValueError(f"{path} does not fit the model (other adapter or model?): {result.unexpected_keys[:3]}")


# what a checkpoint holds of the model -> (save, load), each called as f(unwrapped model, folder, adapter name)
CHECKPOINT_CONTENTS = {
    # the adapter in the PEFT layout plus the live LoCA state, in <checkpoint>/adapter (the pix2pix script)
    "adapter": (_save_adapter_state, _load_adapter_state),
    # trainable_state(): adapter and task head, in <checkpoint>/trainable_state.safetensors (the task scripts)
    "trainable": (_save_trainable_state, _load_trainable_state),
}


def register_checkpoint_hooks(
    accelerator, model: nn.Module, adapter_name: str = "default", contents: str = "adapter"
) -> None:
    """Make ``accelerator.save_state`` / ``load_state`` save and restore only part of ``model`` instead of all
    its weights (the base is frozen). Objects with ``state_dict`` (the LoCA schedule) go through
    ``accelerator.register_for_checkpointing``.

    Args:
        accelerator: The run's ``accelerate.Accelerator``.
        model: The model whose part is checkpointed (as prepared, or unwrapped).
        adapter_name: The adapter to save and restore (``contents="adapter"``).
        contents: What the checkpoint holds (a key of ``CHECKPOINT_CONTENTS``): ``"adapter"``, the adapter in the
            PEFT layout plus the live LoCA state in ``<checkpoint>/adapter``; ``"trainable"``,
            :func:`trainable_state` (adapter and task head) in ``<checkpoint>/trainable_state.safetensors``.
    """
    if contents not in CHECKPOINT_CONTENTS:
        raise ValueError(f"contents must be one of {sorted(CHECKPOINT_CONTENTS)}, got {contents!r}")
    save, load = CHECKPOINT_CONTENTS[contents]

    def unwrap(m):
        return accelerator.unwrap_model(m)

    def is_model(m) -> bool:
        return unwrap(m) is unwrap(model)

    def save_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            for m in models:
                if is_model(m):
                    save(unwrap(m), Path(output_dir), adapter_name)
        while weights:  # the model's full weights are not saved: the base is frozen
            weights.pop()

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            m = models.pop()
            if is_model(m):
                load(unwrap(m), Path(input_dir), adapter_name)

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
