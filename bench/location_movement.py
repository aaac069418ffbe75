"""How far LoCA's locations moved (issue 18): per adapted layer, the share of coefficients whose final integer
cell differs from the one they started in, and whether the moved ones carry more of the update's energy than the
unmoved ones.

The starting cells are not saved: they follow from the adapter config's ``random_loc_seed`` and each layer's
name (:func:`loca_diffusion.tuners.loca.layer.initial_location_indices`, what the layer itself calls). Energy
is the squared coefficient (with the orthonormal DCT, ``||dW||_F^2 = scale^2 * sum(a^2)`` for distinct cells);
"carry more" compares the mean energy per location, moved vs unmoved (the raw sums would mostly follow the
counts).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

PREFIX = "base_model.model."


def layer_movement(initial: torch.Tensor, final: torch.Tensor, coefficients: torch.Tensor) -> dict:
    """Movement of one layer from its ``[2, B]`` integer locations before and after and its ``B`` coefficients."""
    if initial.shape != final.shape or initial.shape[1] != coefficients.numel():
        raise ValueError(f"shapes differ: {tuple(initial.shape)}, {tuple(final.shape)}, {coefficients.numel()}")
    moved = (initial != final).any(dim=0)
    energy = coefficients.detach().double().flatten() ** 2
    count, total = int(moved.sum()), float(energy.sum())
    mean_moved = float(energy[moved].mean()) if count else math.nan
    mean_unmoved = float(energy[~moved].mean()) if count < moved.numel() else math.nan
    return dict(
        locations=int(moved.numel()),
        moved=count,
        moved_share=count / moved.numel(),
        moved_energy_share=float(energy[moved].sum()) / total if total > 0 else math.nan,
        mean_energy_moved=mean_moved,
        mean_energy_unmoved=mean_unmoved,
        energy_ratio=mean_moved / mean_unmoved if mean_unmoved and not math.isnan(mean_unmoved) else math.nan,
    )


def adapter_movement(directory: str | Path) -> dict[str, dict]:
    """:func:`layer_movement` of every layer of a saved LoCA adapter (``adapter_config.json`` +
    ``adapter_model.safetensors``), by layer name."""
    from safetensors.torch import load_file

    from loca_diffusion.tuners.loca.layer import initial_location_indices

    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    if config.get("peft_type") != "LOCA":
        raise ValueError(f"{directory} holds a {config.get('peft_type')} adapter, not LoCA")
    tensors = load_file(str(directory / "adapter_model.safetensors"))
    out = {}
    for key in sorted(k for k in tensors if k.endswith(".loca_coefficients")):
        module = key.removesuffix(".loca_coefficients")
        final = tensors[f"{module}.loca_locations"]
        d_out, d_in = (int(v) for v in tensors[f"{module}.loca_shape"])
        name = module.removeprefix(PREFIX)
        initial = initial_location_indices(config["random_loc_seed"], name, d_out, d_in, final.shape[1])
        out[name] = layer_movement(initial, final, tensors[key])
    return out


def summarize(per_run: list[dict[str, dict]]) -> dict[str, dict]:
    """Per layer, the mean over runs of the moved share, the energy share of the moved and the energy ratio."""
    layers = sorted(set().union(*per_run)) if per_run else []
    out = {}
    for name in layers:
        rows = [run[name] for run in per_run if name in run]
        out[name] = {
            key: _nanmean([r[key] for r in rows]) for key in ("moved_share", "moved_energy_share", "energy_ratio")
        } | {"runs": len(rows), "locations": rows[0]["locations"]}
    return out


def _nanmean(values: list[float]) -> float:
    known = [v for v in values if not math.isnan(v)]
    return sum(known) / len(known) if known else math.nan


def table(summary: dict[str, dict]) -> list[str]:
    """A markdown table of :func:`summarize`'s result."""
    lines = [
        "| layer | locations | runs | moved share | energy share of the moved | mean energy moved / unmoved |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary.items():
        lines.append(
            f"| {name} | {row['locations']} | {row['runs']} | {row['moved_share']:.3f} | "
            f"{row['moved_energy_share']:.3f} | {row['energy_ratio']:.2f} |"
        )
    return lines
