"""How a LoCA layer computes: the cost model that picks the DCT transform (matrix or FFT) and the strategy
(materialise the weight, hybrid, or transform the activations) per layer shape and token count, and the
per-step cache of the input's DCT that layers sharing an input reuse."""

from __future__ import annotations

import weakref
from functools import lru_cache

import torch

from .dct import _scipy_fft, dct_t

# Seconds per unit of work, by device type: ``mac`` a multiply-add of a dense GEMM; ``dct`` an element of a
# fast DCT of a (T, n) block (log factor included at typical sizes; ``dct_fft`` the torch.fft form, ``dct``
# scipy's native one); ``sparse`` an (entry, token) pair of a CSR product or sampled product; ``mem`` an element
# of an elementwise pass; ``op`` the fixed cost of one op launch. CPU: measured on one core of a shared 2-core
# AMD EPYC with MKL (bench/unet_layers.py). CUDA: H100-class estimates, NOT calibrated (no GPU run yet).
_COSTS = {
    "cpu": {"mac": 3.0e-11, "dct": 2.2e-9, "dct_fft": 4.0e-9, "sparse": 2.0e-10, "mem": 0.6e-9, "op": 1.0e-5},
    "cuda": {"mac": 2.0e-14, "dct": 1.5e-11, "dct_fft": 1.5e-11, "sparse": 5.0e-12, "mem": 4.0e-12, "op": 8.0e-6},
}


COSTS_CALIBRATED = {"cpu": True, "cuda": False}


def _constants(device_type: str) -> dict:
    return _COSTS.get(device_type, _COSTS["cuda"])


@lru_cache(maxsize=4096)
def choose_transform(device_type: str, n: int, tokens: int) -> str:
    """The cheaper DCT method for ``tokens`` vectors of length ``n``: a dense product with the DCT matrix
    (``n * n`` multiply-adds per vector) or a fast transform (scipy's on CPU when available, else torch.fft)."""
    k = _constants(device_type)
    fast = "scipy" if device_type == "cpu" and _scipy_fft() is not None else "fft"
    fast_cost = k["dct" if fast == "scipy" else "dct_fft"] * tokens * n + 2 * k["op"]
    return "matrix" if k["mac"] * tokens * n * n + k["op"] <= fast_cost else fast


def _transform_cost(k: dict, device_type: str, n: int, tokens: int) -> float:
    method = choose_transform(device_type, n, tokens)
    if method == "matrix":
        return k["mac"] * tokens * n * n + k["op"]
    return k["dct" if method == "scipy" else "dct_fft"] * tokens * n + 2 * k["op"]


def keeps_weight(d_out: int, d_in: int, tokens: int) -> bool:
    """Whether ``W + dW`` is kept from forward to backward (else rebuilt): when no larger than the input."""
    return d_out * d_in <= tokens * d_in


@lru_cache(maxsize=4096)
def _strategy_costs(
    device_type: str, d_out: int, d_in: int, tokens: int, n_coef: int, n_points: int, grads: bool, input_grad: bool
) -> dict[str, float]:
    k = _constants(device_type)
    square = d_out * d_in
    t_in = _transform_cost(k, device_type, d_in, tokens)
    t_out = _transform_cost(k, device_type, d_out, tokens)
    if n_coef >= 3 * d_in:  # delta_weight's dense form: a 2-D inverse DCT
        build = 2 * _transform_cost(k, device_type, d_in, d_out) + k["mem"] * 3 * square
    else:  # scattered DCT rows and one inverse DCT pass
        build = _transform_cost(k, device_type, d_in, d_out) + k["mem"] * (n_coef * d_out + 2 * square)
    sparse = k["sparse"] * tokens * n_coef + 4 * k["op"]
    activation = t_in + sparse + t_out + k["mem"] * tokens * d_out
    costs = {"weight": build, "hybrid": build, "activation": activation}
    if grads:
        sampled = k["sparse"] * tokens * n_points + 4 * k["op"]
        rebuild = 0.0 if (keeps_weight(d_out, d_in, tokens) or not input_grad) else build
        costs["weight"] += rebuild + k["mac"] * tokens * square + _transform_cost(k, device_type, d_in, d_out)
        costs["hybrid"] += rebuild + t_in + t_out + sampled
        costs["activation"] += t_out + sampled
        if input_grad:
            costs["activation"] += sparse + t_in + k["mem"] * tokens * d_in
    return costs


def choose_strategy(
    device_type: str,
    d_out: int,
    d_in: int,
    tokens: int,
    n_coef: int,
    n_points: int,
    grads: bool,
    input_grad: bool = True,
) -> str:
    """The cheapest strategy for one call by the cost model (ties go to the materialized forms).

    ``n_points``: stencil points of the gradient (``B``, or ``5B`` in a location step); ``grads``: whether a
    backward follows; ``input_grad``: whether it needs the input gradient.
    """
    costs = _strategy_costs(device_type, d_out, d_in, tokens, n_coef, n_points, grads, input_grad)
    return min(("weight", "hybrid", "activation"), key=lambda s: costs[s])


_shared = {"entries": []}


# Self-attention's q/k/v read one tensor; cross-attention's q reads the hidden states and k/v the text states,
# which every cross-attention block of a UNet reads again: with the least recently used entry dropped first,
# three entries keep the text's DCT for the whole step.
_SHARED_ENTRIES = 3


def shared_input_dct(x: torch.Tensor, method: str) -> torch.Tensor:
    """``dct_t`` of the rows of ``x`` (any leading shape), computed once for layers that read the same tensor.

    Sibling projections (``to_q``, ``to_k``, ``to_v``) are called one after another on the same input tensor:
    the last few results are remembered, keyed by the tensor itself (weakly referenced) and its version
    counter, so that an in-place change or a new tensor at the same address is never mistaken for it.
    """
    if x.is_inference():  # no version counter to key on (and no backward to share with)
        with torch.no_grad():
            return dct_t(x.reshape(-1, x.shape[-1]), method)
    entries = _shared["entries"]
    for i, (ref, version, key, value) in enumerate(entries):
        if ref() is x and version == x._version and key == method:
            entries.insert(0, entries.pop(i))
            return value
    with torch.no_grad():
        value = dct_t(x.reshape(-1, x.shape[-1]), method)
    entries.insert(0, (weakref.ref(x), x._version, method, value))
    del entries[_SHARED_ENTRIES:]
    return value


def clear_shared_input_dct() -> None:
    """Forget the remembered input DCTs (they are also replaced as new inputs arrive)."""
    _shared["entries"].clear()
