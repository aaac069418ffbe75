"""The model card (``README.md``) written next to a trained adapter: one writer, :func:`write_card`, and what
differs per script passed to it by :func:`write_model_card` (InstructPix2Pix) and :func:`write_task_model_card`
(the task scripts)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .args import ADAPTERS

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


def write_card(
    output_dir: str | Path,
    *,
    base_model: str,
    tags: list[str],
    title: str,
    facts: list[str],
    usage: str,
    sections: list[tuple[str, str]],
    datasets: Optional[list[str]] = None,
    metrics: Optional[dict] = None,
) -> Path:
    """Write ``README.md`` in ``output_dir``: the one model-card writer of the training scripts.

    Args:
        output_dir: Where the card goes (next to the adapter).
        base_model: The base model's id or path, for the front matter and the first fact.
        tags: The front matter's tags.
        title: The card's ``#`` heading.
        facts: Bullet lines after ``- Base model: ...`` (without the ``- ``).
        usage: The ``## Use`` snippet: Python that loads the adapter (a ``python`` code block).
        sections: ``(heading, body)`` pairs written, in order, after the snippet.
        datasets: Hub datasets for the front matter (local data is not named there).
        metrics: An ``## Evaluation`` table before the snippet: every ``eval_*`` entry, floats to 4 decimals.

    Returns:
        The card's path.
    """
    lines = ["---", f"base_model: {base_model}", "library_name: peft"]
    if datasets:
        lines.append(f"datasets: [{', '.join(datasets)}]")
    lines += [f"tags: [{', '.join(tags)}]", "---", "", f"# {title}", "", f"- Base model: `{base_model}`"]
    lines += [f"- {fact}" for fact in facts] + [""]
    if metrics is not None:
        lines += ["## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [
            f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |"
            for k, v in metrics.items()
            if k.startswith("eval_")
        ]
        lines.append("")
    lines += ["## Use", "", "```python", usage.strip(), "```", ""]
    for heading, body in sections:
        lines += [f"## {heading}", "", body.strip(), ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def hyperparameters_section(hyperparameters: dict) -> tuple[str, str]:
    """The cards' ``Hyperparameters`` section: ``hyperparameters`` as sorted JSON, written as given (leave
    secrets out)."""
    return "Hyperparameters", "\n".join(
        ["```json", json.dumps(hyperparameters, indent=2, sort_keys=True, default=str), "```"]
    )


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
    """``README.md`` of a trained InstructPix2Pix ``adapter`` (``loca``, ``lora`` or ``fourierft``): base model,
    training data (a Hub ``dataset_name`` goes into the card's metadata; a local ``train_data_dir`` does not), how
    to load it with that adapter's own loader and edit a photo with ``instruction``, hyperparameters,
    parameter count, pictures.
    ``hyperparameters`` is written as given: leave secrets out."""
    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {ADAPTERS}, got {adapter!r}")
    title = ADAPTER_TITLES[adapter]
    if dataset_name:
        data = f"the Hub dataset `{dataset_name}`"
    else:
        data = f"a local pair folder (`{train_data_dir}`)" if train_data_dir else "not recorded"
    counted = " (coefficients; the frozen integer locations are not counted)" if adapter == "loca" else ""
    sections = [hyperparameters_section(hyperparameters)]
    if sample_grid:
        sections.append(("Samples", f"![samples]({sample_grid})"))
    if heatmap:
        sections.append(("Learned frequency locations", f"![locations]({heatmap})"))
    return write_card(
        output_dir,
        base_model=base_model,
        tags=[adapter, "instruct-pix2pix", "diffusers", "peft", "image-to-image"],
        datasets=[dataset_name] if dataset_name else None,
        title=f"{title} adapter for InstructPix2Pix",
        facts=[
            f"Training data: {data}",
            f"Adapter: {title} on the UNet attention projections",
            f"Trainable parameters{counted}: {trainable_parameters:,}",
        ],
        usage="\n".join(line.format(base=base_model, instruction=instruction) for line in _CARD_USAGE[adapter]),
        sections=sections,
    )


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
    """``README.md`` of a trained task adapter: base model, task, data, evaluation, how to load, hyperparameters."""
    adapter = "frozen model, head only" if args.adapter == "none" else args.adapter.upper()
    hyper = {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))}
    return write_card(
        output_dir,
        base_model=base_model,
        tags=["loca", "peft", task],
        title=f"{adapter} adapter: {task}",
        facts=[
            f"Data: `{dataset}`",
            f"Adapter: `{args.adapter}` on `{args.target_modules}`",
            f"Trainable parameters (LoCA: coefficients only; head included): {n_trainable:,}",
            f"Steps: {results['train_steps']}, wall time {results['train_seconds']:.1f} s",
        ],
        metrics=results,
        usage="import loca_diffusion  # registers LoCA with peft\n" + usage.strip(),
        sections=[*(extra_sections or {}).items(), hyperparameters_section(hyper)],
    )
