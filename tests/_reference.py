"""Independent references for the tests: the orthonormal DCT-II matrix from its definition, a dense
``dW = scale * C_out^T S C_in``, and ``W + sum_i w_i dW_i`` plugged into a fresh base model through
``torch.func.functional_call``. Nothing here calls the implementation's DCT: the tests check LoCA against
these (and the base model's own output, and the tensors in the saved files), never against itself."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from safetensors.torch import load_file
from torch.func import functional_call

from loca_diffusion import LoCAConfig, LoCALayer

from _models import Spec, run, run_eval

PEFT_PREFIX = "base_model.model."


def explicit_dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix, float64, from its definition."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def dense_dw(coefficients, rows, cols, d_out, d_in, scale=1.0):
    """scale * C_out^T S C_in in float64 (differentiable in ``coefficients``)."""
    s = torch.zeros(d_out, d_in, dtype=torch.float64)
    s = s.index_put((rows.long(), cols.long()), coefficients.to(torch.float64), accumulate=True)
    return scale * explicit_dct_matrix(d_out).T @ s @ explicit_dct_matrix(d_in)


def loca_layers(model: nn.Module) -> dict[str, LoCALayer]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoCALayer):
            out[name.removeprefix(PEFT_PREFIX)] = module
    return out


def integer_locations(layer: LoCALayer, adapter: str) -> torch.Tensor:
    """The (row, col) integers the layer should use, derived from its raw state (not get_locations)."""
    fixed = layer.loca_fixed_locations[adapter]
    if (fixed >= 0).all():  # frozen (all -1 while the locations are learned)
        return fixed.clone()
    points = layer.loca_locations[adapter].detach().double()
    sizes = torch.tensor([[layer.out_features - 1], [layer.in_features - 1]], dtype=torch.float64)
    return torch.round(points * sizes).long()


def adapter_state(model: nn.Module, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name in the base model: (coefficients, integer locations, scaling)} of one adapter."""
    return {
        name: (
            layer.loca_coefficients[adapter].detach().clone(),
            integer_locations(layer, adapter),
            layer.loca_scaling[adapter],
        )
        for name, layer in loca_layers(model).items()
        if adapter in layer.loca_coefficients
    }


def state_from_file(path: str, config: LoCAConfig) -> dict:
    """The same mapping, read from a saved adapter file."""
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
    out = {}
    for key, coefficients in sd.items():
        if key.endswith(".loca_coefficients"):
            module = key.removeprefix(PEFT_PREFIX).removesuffix(".loca_coefficients")
            out[module] = (coefficients, sd[key.replace("loca_coefficients", "loca_locations")], config.scaling)
    return out


def dense_weights(
    base: nn.Module, adapters: list[tuple[dict, float]], differentiable=False
) -> dict[str, torch.Tensor]:
    """Parameter overrides ``{"<module>.weight": W + sum_i w_i dW_i}`` for ``functional_call`` on ``base``."""
    modules = dict(base.named_modules())
    overrides = {}
    for state, weight in adapters:
        for name, (coefficients, locations, scaling) in state.items():
            module = modules[name]
            fan_in_fan_out = not isinstance(module, nn.Linear)  # transformers Conv1D stores (in, out)
            w = module.weight
            d_out, d_in = (w.shape[1], w.shape[0]) if fan_in_fan_out else tuple(w.shape)
            dw = dense_dw(coefficients, locations[0], locations[1], d_out, d_in, scaling * weight)
            if fan_in_fan_out:
                dw = dw.T
            key = f"{name}.weight"
            current = overrides.get(key, w.detach().double())
            overrides[key] = current + dw
    return {k: (v.float() if differentiable else v.float().detach()) for k, v in overrides.items()}


@torch.no_grad()
def reference_output(spec: Spec, adapters: list[tuple[dict, float]], seed: int = 0) -> torch.Tensor:
    base = spec.base(seed)
    return reference_call(base, spec, dense_weights(base, adapters))


def reference_call(base, spec, overrides):
    out = functional_call(base, overrides, args=(), kwargs=spec.inputs(), strict=False)
    if isinstance(out, torch.Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out.last_hidden_state


def assert_close(a, b, atol=1e-5, rtol=1e-5, msg=""):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.float() - b.float()).abs().max().item()
    assert torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol), f"{msg} max abs err {err}"


def assert_matches_in_eval_and_train(model: nn.Module, spec: Spec, reference: torch.Tensor) -> None:
    """The model's output equals ``reference`` in eval mode and in train mode (no dropout in the tiny models)."""
    assert_close(run_eval(model, spec), reference)
    model.train()
    assert_close(run(model, spec).detach(), reference)
