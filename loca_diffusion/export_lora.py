"""Export a LoCA adapter as a LoRA (truncated SVD of each layer's ``dW``), for tools that read only LoRA.

``python -m loca_diffusion.export_lora ADAPTER_DIR OUTPUT_DIR (--rank R | --energy E)`` writes, in ``OUTPUT_DIR``:

* the PEFT layout of a LoRA (``adapter_config.json`` + ``adapter_model.safetensors``), loaded by
  ``PeftModel.from_pretrained(base, OUTPUT_DIR)``;
* diffusers' ``pytorch_lora_weights.safetensors`` (keys ``unet.<module>.lora_A.weight``, the LoRA config in its
  header), loaded by ``pipe.load_lora_weights(OUTPUT_DIR)``.

The update of each layer needs only the adapter file (coefficients, integer locations, the layer shape and the
scaling): no base model is read. ``dW = B A`` with ``B = U_r S_r`` and ``A = V_r^T``, the LoRA scaling folded in
(``lora_alpha = r``). Printed: the relative Frobenius error ``||dW - B A|| / ||dW||`` per layer and overall. PEFT's
own ``convert_to_lora`` / ``save_as_lora`` also work on a LoCA model in memory (LoCA layers opt in).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import torch

from .loaders.adapter_files import PEFT_PREFIX, _write_diffusers_lora, read_loca_adapter, save_safetensors
from .tuners.loca.ops import delta_weight


@dataclass
class LayerExport:
    """One layer's LoRA factors and how well they reproduce the LoCA update."""

    name: str
    lora_A: torch.Tensor  # [r, d_in]
    lora_B: torch.Tensor  # [d_out, r]
    rank: int
    relative_error: float
    delta_norm: float
    error_norm: float


def _rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    """The smallest rank whose singular values hold ``energy`` of ``sum S^2`` (at least 1)."""
    cumulative = torch.cumsum(singular_values.double() ** 2, 0)
    total = float(cumulative[-1])
    if total == 0:
        return 1
    kept = torch.searchsorted(cumulative / total, torch.tensor(energy, dtype=torch.float64))
    return min(int(kept) + 1, len(cumulative))


def export_layers(
    adapter: Union[str, Path], rank: Optional[int] = None, energy: Optional[float] = None
) -> tuple[object, list[LayerExport]]:
    """The LoRA factors of every layer of a LoCA adapter.

    Args:
        adapter: a LoCA adapter directory (PEFT layout) or anything :func:`read_loca_adapter` reads.
        rank: a fixed LoRA rank for every layer (capped at the layer's smaller side).
        energy: instead of ``rank``: per layer, the smallest rank keeping this fraction (0 < E <= 1) of ``||dW||^2``.

    Returns:
        The adapter's :class:`LoCAConfig` and one :class:`LayerExport` per adapted layer.
    """
    if (rank is None) == (energy is None):
        raise ValueError("Pass exactly one of rank (a fixed LoRA rank) or energy (a fraction of ||dW||^2 to keep)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
    if energy is not None and not 0 < energy <= 1:
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    loaded = read_loca_adapter(str(adapter))
    config, tensors = loaded.config, loaded.state_dict
    layers = []
    for key in sorted(k for k in tensors if k.endswith(".loca_coefficients")):
        stem = key[: -len("loca_coefficients")]
        name = stem.removeprefix(PEFT_PREFIX).rstrip(".")
        shape = tensors.get(f"{stem}loca_shape")
        if shape is None:
            raise ValueError(
                f"Layer '{name}' of {loaded.source} has no 'loca_shape' (a file written before it was saved): load it "
                "into its base model and use peft.tuners.lora.conversion.save_as_lora instead"
            )
        d_out, d_in = (int(v) for v in shape.flatten().tolist())
        delta = delta_weight(
            tensors[key].float(), tensors[f"{stem}loca_locations"].long(), d_out, d_in, float(config.scaling)
        ).double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        r = min(rank, len(s)) if rank is not None else _rank_for_energy(s, float(energy))
        lora_b, lora_a = u[:, :r] * s[:r], vh[:r]
        delta_norm = float(torch.linalg.norm(delta))
        error_norm = float(torch.linalg.norm(delta - lora_b @ lora_a))
        layers.append(
            LayerExport(
                name=name,
                lora_A=lora_a.float().contiguous(),
                lora_B=lora_b.float().contiguous(),
                rank=r,
                relative_error=error_norm / delta_norm if delta_norm else 0.0,
                delta_norm=delta_norm,
                error_norm=error_norm,
            )
        )
    if not layers:
        raise ValueError(f"{loaded.source} holds no LoCA layers")
    return config, layers


def overall_relative_error(layers: list[LayerExport]) -> float:
    """``sqrt(sum ||dW - BA||^2 / sum ||dW||^2)`` over the layers."""
    total = math.sqrt(sum(layer.delta_norm**2 for layer in layers))
    return math.sqrt(sum(layer.error_norm**2 for layer in layers)) / total if total else 0.0


def export_lora(
    adapter: Union[str, Path],
    output_dir: Union[str, Path],
    rank: Optional[int] = None,
    energy: Optional[float] = None,
    diffusers_prefix: Optional[str] = "unet",
) -> list[LayerExport]:
    """Write the LoRA export of ``adapter`` to ``output_dir`` (see the module docstring) and return its layers.

    Args:
        adapter: the LoCA adapter directory.
        output_dir: where the LoRA goes (created).
        rank: fixed rank; or ``energy``: fraction of ``||dW||^2`` kept per layer.
        diffusers_prefix: the pipeline component of diffusers' LoRA file (``None``: no such file).
    """
    from peft import LoraConfig

    config, layers = export_layers(adapter, rank=rank, energy=energy)
    top = max(layer.rank for layer in layers)
    lora_config = LoraConfig(
        r=top,
        lora_alpha=top,  # scaling 1: the LoCA scaling is already in B
        target_modules=sorted(layer.name for layer in layers),  # exact names: nothing else gets a LoRA
        rank_pattern={layer.name: layer.rank for layer in layers if layer.rank != top},
        alpha_pattern={layer.name: layer.rank for layer in layers if layer.rank != top},
        fan_in_fan_out=bool(config.fan_in_fan_out),
        base_model_name_or_path=config.base_model_name_or_path,
        task_type=config.task_type,
    )
    state_dict = {}
    for layer in layers:
        state_dict[f"{PEFT_PREFIX}{layer.name}.lora_A.weight"] = layer.lora_A
        state_dict[f"{PEFT_PREFIX}{layer.name}.lora_B.weight"] = layer.lora_B
    directory = Path(output_dir)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    lora_config.save_pretrained(str(directory))
    if diffusers_prefix:
        _write_diffusers_lora(state_dict, lora_config, directory, diffusers_prefix)
    return layers


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loca_diffusion.export_lora", description="Export a LoCA adapter as a LoRA (truncated SVD)."
    )
    parser.add_argument("adapter_dir", help="the LoCA adapter directory (PEFT layout)")
    parser.add_argument("output_dir", help="where the LoRA is written")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int, help="fixed LoRA rank of every layer")
    group.add_argument("--energy", type=float, help="per layer, keep this fraction (0 < E <= 1) of ||dW||^2")
    parser.add_argument("--diffusers_prefix", default="unet", help="component name in diffusers' LoRA file")
    args = parser.parse_args(argv)
    try:
        layers = export_lora(args.adapter_dir, args.output_dir, args.rank, args.energy, args.diffusers_prefix)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    width = max(len(layer.name) for layer in layers)
    for layer in layers:
        print(f"{layer.name:<{width}}  rank {layer.rank:>4}  relative error {layer.relative_error:.4e}")
    print(f"overall relative error {overall_relative_error(layers):.4e} ({len(layers)} layers) -> {args.output_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
