"""Reusable pieces of the adapter training scripts (``train/``): adapter configs with matched budgets,
accelerate checkpoint hooks, InstructPix2Pix's loss and conditioning dropout, location movement and the
model card (pictures: :mod:`loca_diffusion.pictures`; Hub upload: :func:`loca_diffusion.hub.push_to_hub`)."""

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

from .tuners.loca.config import LoCAConfig
from .tuners.loca.layer import iter_loca_layers

logger = logging.getLogger(__name__)

ADAPTERS = ("loca", "fourierft", "lora")
UNET_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


# ----------------------------------------------------------------------------------------------------
# adapter configs


def _targeted_linears(model: nn.Module, target_modules: list[str]) -> list[nn.Linear]:
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and any(name == t or name.endswith("." + t) for t in target_modules):
            found.append(module)
    if not found:
        raise ValueError(f"No nn.Linear module of the model matches target_modules={target_modules}")
    return found


def build_adapter_config(
    adapter: str,
    model: nn.Module,
    target_modules: list[str],
    n_frequency: int = 1000,
    scaling: float = 1.0,
    lora_rank: Optional[int] = None,
    lora_alpha: Optional[float] = None,
    fourierft_scaling: float = 64.0,
    match_budget: bool = False,
    **loca_kwargs,
):
    """The peft config of ``adapter`` (``loca``, ``fourierft`` or ``lora``) on ``target_modules``.

    ``match_budget=True`` gives the baselines LoCA's trainable-parameter count (``n_frequency`` per
    layer; locations are not counted once frozen, as in the paper): FourierFT gets the same
    ``n_frequency``; LoRA the rank whose ``r * (d_in + d_out)`` summed over the layers is closest.
    """
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    from peft import FourierFTConfig, LoraConfig

    if adapter == "loca":
        return LoCAConfig(target_modules=target_modules, n_frequency=n_frequency, scaling=scaling, **loca_kwargs)
    if adapter == "fourierft":
        return FourierFTConfig(target_modules=target_modules, n_frequency=n_frequency, scaling=fourierft_scaling)
    if match_budget:
        layers = _targeted_linears(model, target_modules)
        budget = n_frequency * len(layers)
        per_rank = sum(layer.in_features + layer.out_features for layer in layers)
        lora_rank = max(1, round(budget / per_rank))
    rank = 4 if lora_rank is None else int(lora_rank)
    if rank < 1:
        raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
    return LoraConfig(
        r=rank,
        lora_alpha=lora_alpha if lora_alpha is not None else rank,
        target_modules=target_modules,
        init_lora_weights="gaussian",
    )


def trainable_parameter_count(model: nn.Module, count_loca_locations: bool = False) -> int:
    """Trainable parameters; LoCA locations are left out (they are frozen integers after T_s)."""
    return sum(
        p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and (count_loca_locations or "loca_locations" not in name)
    )


# ----------------------------------------------------------------------------------------------------
# InstructPix2Pix conditioning dropout


def conditioning_dropout(
    encoder_hidden_states: torch.Tensor,
    original_image_latents: torch.Tensor,
    null_conditioning: torch.Tensor,
    probability: float,
    generator: Optional[torch.Generator] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the text only, the image only, or both, each with ``probability`` (InstructPix2Pix's
    classifier-free guidance training): with ``u ~ U(0, 1)`` per example, text is dropped for
    ``u < 2p``, the image for ``p <= u < 3p``; both therefore for ``p <= u < 2p``."""
    if probability <= 0:
        return encoder_hidden_states, original_image_latents
    batch = encoder_hidden_states.shape[0]
    u = torch.rand(batch, device="cpu", generator=generator).to(encoder_hidden_states.device)
    drop_text = (u < 2 * probability).view(batch, 1, 1)
    encoder_hidden_states = torch.where(
        drop_text, null_conditioning.to(encoder_hidden_states.dtype), encoder_hidden_states
    )
    keep_image = 1 - ((u >= probability) & (u < 3 * probability)).to(original_image_latents.dtype)
    return encoder_hidden_states, original_image_latents * keep_image.view(batch, 1, 1, 1)


def instruct_pix2pix_loss(
    unet: nn.Module,
    vae: nn.Module,
    text_encoder: nn.Module,
    noise_scheduler,
    batch: dict[str, torch.Tensor],
    null_conditioning: torch.Tensor,
    dropout_probability: float,
    weight_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """InstructPix2Pix's training loss on one batch (``edited_pixel_values``, ``original_pixel_values`` in
    [-1, 1], ``input_ids``): noise the edited image's latents, condition on the instruction and the original
    image's latents (with :func:`conditioning_dropout`), and regress the scheduler's target (noise or
    velocity). Draws from the global RNG in a fixed order, so a resumed run replays it."""
    latents = vae.encode(batch["edited_pixel_values"].to(weight_dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    noise = torch.randn_like(latents)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device
    ).long()
    noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
    encoder_hidden_states = text_encoder(batch["input_ids"])[0]
    original_latents = vae.encode(batch["original_pixel_values"].to(weight_dtype)).latent_dist.mode()
    encoder_hidden_states, original_latents = conditioning_dropout(
        encoder_hidden_states, original_latents, null_conditioning, dropout_probability
    )
    model_input = torch.cat([noisy_latents, original_latents], dim=1)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    prediction = unet(model_input, timesteps, encoder_hidden_states, return_dict=False)[0]
    return torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="mean")


# ----------------------------------------------------------------------------------------------------
# location movement


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


# ----------------------------------------------------------------------------------------------------
# checkpoints and the model card


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
    from safetensors.torch import save_file

    from .loaders import write_loca_adapter

    target = write_loca_adapter(model, directory, adapter_name, base_model_name_or_path=base_model_name_or_path)
    if live_state:
        live = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items() if ".loca_" in k}
        if live:
            save_file(live, str(target / LIVE_STATE_FILE))
    return target


def register_checkpoint_hooks(accelerator, unet: nn.Module, adapter_name: str = "default") -> None:
    """Make ``accelerator.save_state`` / ``load_state`` save and restore the adapter (PEFT layout in
    ``<checkpoint>/adapter``) instead of the whole UNet. Objects with ``state_dict`` (the LoCA schedule)
    go through ``accelerator.register_for_checkpointing``."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from .loaders import LOCA_WEIGHTS_NAME, to_model_keys

    def unwrap(model):
        return accelerator.unwrap_model(model)

    def is_unet(model) -> bool:
        return unwrap(model) is unwrap(unet)

    def save_hook(models, weights, output_dir):
        if not accelerator.is_main_process:
            return
        for model in models:
            if is_unet(model):
                save_adapter(unwrap(model), Path(output_dir) / ADAPTER_SUBDIR, adapter_name, live_state=True)
        while weights:  # the UNet's full weights are not saved: the base is frozen
            weights.pop()

    def load_hook(models, input_dir):
        for _ in range(len(models)):
            model = models.pop()
            if not is_unet(model):
                continue
            source = Path(input_dir) / ADAPTER_SUBDIR
            live_file = source / LIVE_STATE_FILE
            if live_file.is_file():
                result = unwrap(model).load_state_dict(load_file(live_file), strict=False)
                if result.unexpected_keys:
                    raise ValueError(f"{live_file} does not fit the model: {result.unexpected_keys[:3]}")
            else:
                weights = source / LOCA_WEIGHTS_NAME
                state = to_model_keys(load_file(weights))  # the file holds PeftModel's keys
                result = set_peft_model_state_dict(unwrap(model), state, adapter_name=adapter_name)
                if result.unexpected_keys:
                    raise ValueError(f"{weights} does not fit the model: {result.unexpected_keys[:3]}")

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


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


# The card's "Use" snippet: runnable as written once the adapter path and photo are filled in. dtype=float32 for
# diffusers' own class: transformers 5 would load an fp16-saved text encoder in fp16 next to an fp32 UNet
# (the LoCA pipeline class loads float32 by default and takes the base folder's call_defaults.json).
_CARD_USAGE = {
    "loca": (
        "from PIL import Image",
        "from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline",
        "",
        'pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained("{base}")',
        'pipe.load_loca("path/to/this/directory")',
        'edited = pipe({instruction!r}, image=Image.open("photo.jpg").convert("RGB")).images[0]',
    ),
    "lora": (
        "import torch",
        "from diffusers import StableDiffusionInstructPix2PixPipeline",
        "from PIL import Image",
        "",
        'pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("{base}", dtype=torch.float32)',
        'pipe.load_lora_weights("path/to/this/directory")',
        'edited = pipe({instruction!r}, image=Image.open("photo.jpg").convert("RGB")).images[0]',
    ),
    "fourierft": (
        "import torch",
        "from diffusers import StableDiffusionInstructPix2PixPipeline",
        "from peft import PeftModel",
        "from PIL import Image",
        "",
        'pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("{base}", dtype=torch.float32)',
        'pipe.unet = PeftModel.from_pretrained(pipe.unet, "path/to/this/directory")',
        'edited = pipe({instruction!r}, image=Image.open("photo.jpg").convert("RGB")).images[0]',
    ),
}
DEFAULT_CARD_INSTRUCTION = "Change the natural image to a cartoon-style image."
ADAPTER_TITLES = {"loca": "LoCA", "lora": "LoRA", "fourierft": "FourierFT"}


def write_model_card(
    output_dir: str | Path,
    base_model: str,
    adapter: str,
    hyperparameters: dict,
    trainable_parameters: int,
    dataset_name: Optional[str] = None,
    train_data_dir: Optional[str] = None,
    sample_grid: Optional[str] = None,
    heatmap: Optional[str] = None,
    instruction: str = DEFAULT_CARD_INSTRUCTION,
) -> Path:
    """``README.md`` of a trained ``adapter`` (``loca``, ``lora`` or ``fourierft``): base model, training
    data (a Hub ``dataset_name`` goes into the card's metadata; a local ``train_data_dir`` does not), how
    to load it with that adapter's own loader and edit a photo with ``instruction``, hyperparameters,
    parameter count, pictures.
    ``hyperparameters`` is written as given: leave secrets out."""
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    title = ADAPTER_TITLES[adapter]
    front = ["---", f"base_model: {base_model}", "library_name: peft"]
    if dataset_name:
        front.append(f"datasets: [{dataset_name}]")
    front += [f"tags: [{adapter}, instruct-pix2pix, diffusers, peft, image-to-image]", "---"]
    if dataset_name:
        data = f"the Hub dataset `{dataset_name}`"
    else:
        data = f"a local pair folder (`{train_data_dir}`)" if train_data_dir else "not recorded"
    counted = " (coefficients; the frozen integer locations are not counted)" if adapter == "loca" else ""
    lines = front + [
        "",
        f"# {title} adapter for InstructPix2Pix",
        "",
        f"- Base model: `{base_model}`",
        f"- Training data: {data}",
        f"- Adapter: {title} on the UNet attention projections",
        f"- Trainable parameters{counted}: {trainable_parameters:,}",
        "",
        "## Use",
        "",
        "```python",
        *(line.format(base=base_model, instruction=instruction) for line in _CARD_USAGE[adapter]),
        "```",
        "",
        "## Hyperparameters",
        "",
        "```json",
        json.dumps(hyperparameters, indent=2, sort_keys=True, default=str),
        "```",
        "",
    ]
    if sample_grid:
        lines += ["## Samples", "", f"![samples]({sample_grid})", ""]
    if heatmap:
        lines += ["## Learned frequency locations", "", f"![locations]({heatmap})", ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


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
