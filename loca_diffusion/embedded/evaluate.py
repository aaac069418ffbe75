"""Run edits with an InstructPix2Pix pipeline on tensors, and score them against code-made targets."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import RESOLUTION
from .edits import Edit
from .metrics import psnr, ssim
from .photos import to_image

# Sampling settings of the embedded model: 20 DDIM steps and the guidance pair that
# `bench/embedded_quality.py --sweep_guidance` chose on training photos (bench/results/embedded_guidance.md).
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 2.0
DEFAULT_IMAGE_GUIDANCE = 1.5
# what `--stage export` writes into the model folder as call_defaults.json: a plain `pipe(prompt, image=photo)`
# with the LoCA pipeline classes then runs at these settings (tests/test_embedded.py checks the shipped file)
CALL_DEFAULTS = {
    "resolution": RESOLUTION,
    "num_inference_steps": DEFAULT_STEPS,
    "guidance_scale": DEFAULT_GUIDANCE,
    "image_guidance_scale": DEFAULT_IMAGE_GUIDANCE,
}


@torch.no_grad()
def run_edit(
    pipe,
    images: torch.Tensor,
    instructions: Sequence[str],
    *,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE,
    seed: int = 0,
) -> torch.Tensor:
    """Edit ``images`` (B, 3, H, W) in [0, 1], one instruction each; returns (B, 3, H, W) in [0, 1]."""
    if len(instructions) != len(images):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    out = pipe(
        prompt=list(instructions),
        image=[to_image(x) for x in images],
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        image_guidance_scale=image_guidance_scale,
        generator=torch.Generator().manual_seed(seed),
        output_type="pt",
    ).images
    return out.float().clamp(0, 1).cpu()


@torch.no_grad()
def vae_roundtrip(vae, images: torch.Tensor) -> torch.Tensor:
    """Decode(encode(x)) with the posterior mode: the best any edit through this VAE can do."""
    dtype = next(vae.parameters()).dtype
    z = vae.encode((images * 2 - 1).to(dtype)).latent_dist.mode()
    return ((vae.decode(z).sample.float() + 1) / 2).clamp(0, 1)


def mean_scores(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {
        "psnr": sum(psnr(o, t) for o, t in zip(outputs, targets)) / len(targets),
        "ssim": sum(ssim(o, t) for o, t in zip(outputs, targets)) / len(targets),
    }


def edit_outputs(pipe, views: torch.Tensor, edits: Sequence[Edit], **kwargs) -> torch.Tensor:
    """The model's edits of ``views`` (B, 3, H, W) with each edit's canonical instruction, as one batch:
    (len(edits), B, 3, H, W)."""
    batch = torch.cat([views] * len(edits))
    instructions = [e.instructions[0] for e in edits for _ in range(len(views))]
    return run_edit(pipe, batch, instructions, **kwargs).unflatten(0, (len(edits), len(views)))


def evaluate_edits(
    pipe, views: torch.Tensor, edits: Sequence[Edit], outputs: torch.Tensor | None = None, **kwargs
) -> dict[str, dict[str, float]]:
    """Per edit: the model's mean PSNR / SSIM against the edit's target on ``views`` (canonical
    instruction), and the references output = input and the VAE round trip of the target. ``outputs``:
    the model's edits already made by :func:`edit_outputs` (otherwise they are made here)."""
    if outputs is None:
        outputs = edit_outputs(pipe, views, edits, **kwargs)
    results = {}
    for e, out in zip(edits, outputs):
        targets = e.apply(views)
        model, identity, vae = (mean_scores(x, targets) for x in (out, views, vae_roundtrip(pipe.vae, targets)))
        results[e.name] = {
            "psnr": model["psnr"],
            "ssim": model["ssim"],
            "identity_psnr": identity["psnr"],
            "identity_ssim": identity["ssim"],
            "vae_psnr": vae["psnr"],
            "vae_ssim": vae["ssim"],
        }
    return results


def merged_adapter_pipeline(base_dir, adapter_dir):
    """The pipeline at ``base_dir`` (float32) with the PEFT adapter at ``adapter_dir`` merged into its UNet.

    One route for every method (LoCA, FourierFT, LoRA: ``PeftModel.from_pretrained`` + ``merge_and_unload``),
    so a comparison of methods compares the adapters, not their loaders."""
    from peft import PeftConfig, get_peft_model, load_peft_weights, set_peft_model_state_dict

    import loca_diffusion  # noqa: F401  (registers LoCA with peft)

    from .pipeline import load_pipeline

    pipe = load_pipeline(base_dir)
    model = get_peft_model(pipe.unet, PeftConfig.from_pretrained(str(adapter_dir)))
    weights = load_peft_weights(str(adapter_dir))
    # files written for the bare UNet (no PeftModel around it) name its layers without peft's prefix
    weights = {k if k.startswith("base_model.model.") else f"base_model.model.{k}": v for k, v in weights.items()}
    result = set_peft_model_state_dict(model, weights)
    if result.unexpected_keys:  # peft only warns: a layout it cannot place would score the bare base
        raise ValueError(
            f"{adapter_dir}: {len(result.unexpected_keys)} tensors match no adapted layer of the UNet at {base_dir}, "
            f"e.g. {result.unexpected_keys[0]!r}"
        )
    meta = [name for name, parameter in model.named_parameters() if parameter.is_meta]
    if meta:  # e.g. created while another thread was inside a loader's empty-weights context
        raise RuntimeError(f"{adapter_dir}: {len(meta)} adapter parameters were never materialised, e.g. {meta[0]!r}")
    pipe.unet = model.merge_and_unload()
    return pipe


def cartoon_scores(outputs: torch.Tensor, targets: torch.Tensor, dino=None) -> dict[str, float]:
    """Scores of cartoon ``outputs`` against the code-made ``targets``: PSNR / SSIM, ink-line precision /
    recall / F1 (a line one pixel off counts, which PSNR does not forgive) and, given a
    :class:`~loca_diffusion.embedded.metrics.DinoV2Similarity`, the DINOv2 similarity."""
    from .edits import ink_mask
    from .metrics import ink_scores

    scores = {**mean_scores(outputs, targets), **ink_scores(outputs, ink_mask(targets))}
    if dino is not None:
        scores["dinov2"] = dino(outputs, targets)
    return scores


def score_cartoonizer(pipe, views: torch.Tensor, dino=None, **kwargs) -> tuple[dict[str, float], torch.Tensor]:
    """:func:`cartoon_scores` of ``pipe``'s cartoon edits of ``views``; and the outputs."""
    from .edits import CARTOON_INSTRUCTION, cartoon_targets

    outputs = run_edit(pipe, views, [CARTOON_INSTRUCTION] * len(views), **kwargs)
    return cartoon_scores(outputs, cartoon_targets(views), dino), outputs
