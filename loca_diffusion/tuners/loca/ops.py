"""The LoCA math: delta weights, location gradients and the fused linear autograd function.

For a weight ``W`` of shape ``(d_out, d_in)`` one adapter adds ``dW = scale * C_out^T S C_in`` where
``S`` holds ``B`` coefficients ``a`` at integer locations ``(rows, cols)``. With ``G = C_out Gw C_in^T``
(the 2-D DCT of the weight gradient ``Gw = dL/d(dW)``):

* ``dL/da_b = scale * G[r_b, c_b]`` exactly;
* ``dL/dr_b ~= scale * a_b * (G[r_b + 1, c_b] - G[r_b - 1, c_b]) / 2`` (central difference; one-sided at
  borders and in the ``forward`` / ``backward`` variants), times ``d_out - 1`` for locations scaled to
  ``[0, 1]``; likewise for columns.

Only the ``G`` entries at those stencil points are ever computed. Three strategies compute the layer:

* ``weight``: forward with ``W + dW`` (one GEMM); backward rebuilds ``W + dW`` for the input gradient
  and reads ``G`` from the dense weight gradient (one extra GEMM plus a fast 2-D DCT);
* ``hybrid``: the same forward; ``G`` entries come from the DCT spectra of ``x`` and ``grad_y``
  (``G[r, c] = sum_t DCT(grad_y)[t, r] DCT(x)[t, c]``), which avoids the extra GEMM;
* ``activation``: never builds ``dW``: ``y = base(x) + scale * iDCT_out(scatter_rows(a * DCT_in(x)[:, cols]))``
  and the same spectral gradients; cheapest when there are few tokens.

``auto`` picks the cheapest by a cost model (:func:`choose_strategy`). Nothing ``d_out x d_in`` sized is
kept between forward and backward.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

from ...dct import (
    _column_map,
    dct,
    dct_columns,
    dct_matrix,
    dct_spectrum,
    idct,
    idct2,
    idct_sparse_columns,
    working_dtype,
)

LOCATION_GRAD_MODES = ("central", "forward", "backward")
STRATEGIES = ("auto", "weight", "hybrid", "activation")

# Bound on the temporary (tokens x stencil points) blocks of the sampled gradient, in elements.
_SAMPLED_BLOCK_ELEMENTS = 1 << 20


def locations_to_indices(locations: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Round continuous locations in ``[0, 1]`` (shape ``[2, B]``) to integer ``(row, col)`` indices."""
    sizes = torch.tensor([[d_out - 1], [d_in - 1]], device=locations.device, dtype=torch.float32)
    index = torch.round(locations.detach().float() * sizes)
    return torch.minimum(index.clamp(min=0), sizes).long()


def indices_to_locations(indices: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Inverse of :func:`locations_to_indices` on integers: the continuous point of each index."""
    sizes = torch.tensor([[max(d_out - 1, 1)], [max(d_in - 1, 1)]], device=indices.device, dtype=torch.float32)
    return indices.float() / sizes


def delta_weight(
    coefficients: torch.Tensor, indices: torch.Tensor, d_out: int, d_in: int, scale: float
) -> torch.Tensor:
    """``scale * C_out^T S C_in`` in float32, shape ``(d_out, d_in)``; coincident locations add up.

    Built as ``(C_out^T S) C_in``: the left factor is a scatter of ``B`` scaled DCT rows (``B * d_out``
    work) and the right one a single fast inverse DCT pass. A pass costs about eight elementwise sweeps
    of the matrix, so only beyond ~3 coefficients per column do a dense ``S`` and a fast 2-D inverse
    DCT (two passes) win.
    """
    device = coefficients.device
    dtype = working_dtype(coefficients.dtype)
    values = coefficients.detach().to(dtype) * scale
    rows, cols = indices[0], indices[1]
    if values.numel() >= 3 * d_in:
        spectrum = torch.zeros(d_out, d_in, device=device, dtype=dtype)
        spectrum.index_put_((rows, cols), values, accumulate=True)
        return idct2(spectrum)
    left = torch.zeros(d_out, d_in, device=device, dtype=dtype)
    left.index_add_(1, cols, (dct_matrix(d_out, device, dtype).index_select(0, rows) * values[:, None]).T)
    return idct(left, dim=-1)


def dense_delta_weight(
    coefficients: torch.Tensor, indices: torch.Tensor, d_out: int, d_in: int, scale: float
) -> torch.Tensor:
    """Reference ``scale * C_out^T S C_in`` by explicit dense matrix products (tests, small layers).

    Differentiable in ``coefficients``.
    """
    spectrum = torch.zeros(d_out, d_in, device=coefficients.device, dtype=coefficients.dtype)
    spectrum = spectrum.index_put((indices[0], indices[1]), coefficients, accumulate=True)
    c_out = dct_matrix(d_out, coefficients.device, coefficients.dtype)
    c_in = dct_matrix(d_in, coefficients.device, coefficients.dtype)
    return scale * c_out.T @ spectrum @ c_in


# ----------------------------------------------------------------------------------------------------
# location-gradient stencil


@dataclass
class Stencil:
    """The ``G`` entries one adapter's gradients need, and how to combine them."""

    rows: torch.Tensor  # [P] row of each needed G entry
    cols: torch.Tensor  # [P] col of each needed G entry
    n_coefficients: int
    with_locations: bool
    row_step: torch.Tensor | None = None  # [B] index distance of the row difference (0 at size-1 axes)
    col_step: torch.Tensor | None = None


def make_stencil(indices: torch.Tensor, d_out: int, d_in: int, mode: str | None) -> Stencil:
    """Stencil points: the centre ``(r, c)`` and, when ``mode`` is given, the difference neighbours."""
    r, c = indices[0], indices[1]
    if mode is None:
        return Stencil(rows=r, cols=c, n_coefficients=r.numel(), with_locations=False)

    def neighbours(i: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if mode == "central":
            hi, lo = (i + 1).clamp(max=n - 1), (i - 1).clamp(min=0)
        elif mode == "forward":
            hi = (i + 1).clamp(max=n - 1)
            lo = (hi - 1).clamp(min=0)
        elif mode == "backward":
            lo = (i - 1).clamp(min=0)
            hi = (lo + 1).clamp(max=n - 1)
        else:
            raise ValueError(f"location_grad must be one of {LOCATION_GRAD_MODES}, got {mode!r}")
        return hi, lo

    r_hi, r_lo = neighbours(r, d_out)
    c_hi, c_lo = neighbours(c, d_in)
    return Stencil(
        rows=torch.cat([r, r_hi, r_lo, r, r]),
        cols=torch.cat([c, c, c, c_hi, c_lo]),
        n_coefficients=r.numel(),
        with_locations=True,
        row_step=r_hi - r_lo,
        col_step=c_hi - c_lo,
    )


def gradients_from_stencil(
    values: torch.Tensor, stencil: Stencil, coefficients: torch.Tensor, scale: float, d_out: int, d_in: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Coefficient and ``[0, 1]``-scaled location gradients from the ``G`` values at the stencil points."""
    b = stencil.n_coefficients
    grad_coefficients = scale * values[:b]
    if not stencil.with_locations:
        return grad_coefficients, None
    a = coefficients.detach().to(values.dtype)
    g_r_hi, g_r_lo, g_c_hi, g_c_lo = values[b:].view(4, b)
    d_row = (g_r_hi - g_r_lo) / stencil.row_step.clamp(min=1)
    d_col = (g_c_hi - g_c_lo) / stencil.col_step.clamp(min=1)
    grad_locations = torch.stack([d_row * (d_out - 1), d_col * (d_in - 1)]) * (scale * a)
    return grad_coefficients, grad_locations


def sampled_dct_products(
    spectrum_g: torch.Tensor, spectrum_x: torch.Tensor, d_out: int, d_in: int, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``G[rows[p], cols[p]]`` with ``G = DCT(grad_y)^T DCT(x)``, from the two half spectra (``[T, h]``).

    A DCT column is ``re_k * Re(V[:, k']) + im_k * Im(V[:, k'])`` of a half-spectrum column, so each entry
    is a 2x2 block of token inner products between real/imaginary planes, contracted with the twiddles:
    one batched matmul over the gathered planes, without materialising the DCT columns.
    """
    src_r, re_r, im_r = _column_map(d_out, rows, spectrum_g.device, spectrum_g.real.dtype)
    src_c, re_c, im_c = _column_map(d_in, cols, spectrum_x.device, spectrum_x.real.dtype)
    planes_g = torch.view_as_real(spectrum_g).permute(1, 2, 0)  # (h_out, 2, T) view
    planes_x = torch.view_as_real(spectrum_x).permute(1, 2, 0)
    tokens = spectrum_g.shape[0]
    out = torch.empty(rows.numel(), device=spectrum_g.device, dtype=spectrum_g.real.dtype)
    block = max(1, _SAMPLED_BLOCK_ELEMENTS // max(2 * tokens, 1))
    for start in range(0, rows.numel(), block):
        sl = slice(start, min(start + block, rows.numel()))
        blocks = torch.bmm(planes_g.index_select(0, src_r[sl]), planes_x.index_select(0, src_c[sl]).transpose(1, 2))
        w_g = torch.stack([re_r[sl], im_r[sl]], dim=-1)  # (p, 2)
        w_x = torch.stack([re_c[sl], im_c[sl]], dim=-1)
        out[sl] = torch.einsum("pi,pij,pj->p", w_g, blocks, w_x)
    return out


def weight_gradient_dct_products(grad_weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``G[rows[p], cols[p]]`` with ``G = C_out Gw C_in^T``, from the dense weight gradient ``Gw``."""
    d_out, d_in = grad_weight.shape
    half = dct(grad_weight, dim=-1)  # Gw C_in^T
    if rows.numel() > d_in:
        return dct(half, dim=0)[rows, cols]
    c_out = dct_matrix(d_out, grad_weight.device, grad_weight.dtype)
    return torch.linalg.vecdot(c_out.index_select(0, rows), half.index_select(1, cols).T, dim=-1)


# ----------------------------------------------------------------------------------------------------
# strategy choice


# Seconds per unit of work, by device type: a multiply-add of a GEMM, an element of an FFT pass (the
# reorder and real FFT, log factor included at typical sizes), an element of an elementwise or gather
# pass, and an element of the sampled gradient (two column reconstructions and a dot product).
# CPU numbers were measured on a 2-core x86 machine with MKL; CUDA numbers are H100-class estimates.
_COSTS = {
    "cpu": {"mac": 1.6e-11, "fft": 2.8e-9, "mem": 0.5e-9, "sample": 7.0e-9},
    "cuda": {"mac": 2.0e-14, "fft": 1.5e-11, "mem": 4.0e-12, "sample": 2.0e-11},
}


@lru_cache(maxsize=4096)
def _strategy_costs(device_type: str, d_out: int, d_in: int, tokens: int, n_coef: int, n_points: int, grads: bool):
    k = _COSTS.get(device_type, _COSTS["cuda"])
    square = d_out * d_in
    build = k["fft"] * square + k["mem"] * (min(n_coef * d_out, square) + 2 * square)  # dW and W + dW
    activation_forward = k["fft"] * tokens * (d_in + d_out) + k["mem"] * tokens * (2 * n_coef + d_out)
    costs = {"weight": build, "hybrid": build, "activation": activation_forward}
    if grads:
        gemm = k["mac"] * tokens * square
        spectra = k["fft"] * tokens * (d_in + d_out)
        sampled = k["sample"] * tokens * n_points
        weight_grad = gemm + k["fft"] * square + k["mem"] * min(n_points * d_out, square)
        costs["weight"] += build + weight_grad
        costs["hybrid"] += build + spectra + sampled
        costs["activation"] += (
            k["fft"] * tokens * d_out + sampled + k["fft"] * tokens * d_in + k["mem"] * tokens * n_coef
        )
    return costs


def choose_strategy(
    device_type: str, d_out: int, d_in: int, tokens: int, n_coef: int, n_points: int, grads: bool
) -> str:
    """The cheapest strategy for one call by the cost model (ties go to the materialized forms)."""
    costs = _strategy_costs(device_type, d_out, d_in, tokens, n_coef, n_points, grads)
    return min(("weight", "hybrid", "activation"), key=lambda s: costs[s])


# ----------------------------------------------------------------------------------------------------
# the fused function


@dataclass
class AdapterCall:
    """One active adapter as the fused function sees it (tensors are passed to autograd separately)."""

    scale: float
    location_grad: str | None  # stencil mode when location gradients are wanted, else None


def _sparse_through_spectrum(spectrum, n_read, n_write, coefficients, calls, read, write) -> torch.Tensor:
    """The activation strategy's product with the sparse spectrum, ``sum_i scale_i * S_i`` between two DCTs: the
    DCT columns ``read[i]`` of ``spectrum`` (the real-FFT spectrum of inputs of length ``n_read``), weighted by
    the coefficients, summed into the columns ``write[i]`` of an inverse DCT of length ``n_write``. Forward:
    read the input columns, write the output rows; backward (the transpose): the other way round."""
    values = [
        dct_columns(spectrum, n_read, where) * (coef.detach().to(spectrum.real.dtype) * call.scale)
        for coef, where, call in zip(coefficients, read, calls)
    ]
    return idct_sparse_columns(torch.cat(values, dim=-1), torch.cat(list(write)), n_write)


def effective_weight(
    weight: torch.Tensor, fan_in_fan_out: bool, coefficients, indices, calls, d_out: int, d_in: int
) -> torch.Tensor:
    """``W + sum_i dW_i`` in the base weight's dtype, ``(d_out, d_in)`` orientation."""
    base = weight.T if fan_in_fan_out else weight
    total = base.to(working_dtype(base.dtype))
    for coef, index, call in zip(coefficients, indices, calls):
        total = total + delta_weight(coef, index, d_out, d_in, call.scale)
    return total.to(weight.dtype)


class LoCALinearFunction(torch.autograd.Function):
    """``y = x (W + sum_i dW_i)^T + b`` with LoCA coefficient and location gradients.

    Inputs after the fixed ones come in groups of three per adapter: ``coefficients`` ``[B]``,
    ``locations`` (the ``[2, B]`` float parameter, or None when frozen) and ``indices`` ``[2, B]``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, fan_in_fan_out, strategy, calls, *adapter_tensors):
        coefficients = adapter_tensors[0::3]
        locations = adapter_tensors[1::3]
        indices = adapter_tensors[2::3]
        d_in = x.shape[-1]
        d_out = weight.shape[1] if fan_in_fan_out else weight.shape[0]
        lead = x.shape[:-1]
        x2d = x.reshape(-1, d_in)
        saved_spectrum = None
        if strategy == "activation":
            base = weight.T if fan_in_fan_out else weight
            y = F.linear(x2d, base.to(x.dtype), None if bias is None else bias.to(x.dtype))
            spectrum_x = dct_spectrum(x2d)
            cols, rows = [index[1] for index in indices], [index[0] for index in indices]
            y = y + _sparse_through_spectrum(spectrum_x, d_in, d_out, coefficients, calls, cols, rows).to(y.dtype)
            saved_spectrum = spectrum_x
        else:
            w_eff = effective_weight(weight, fan_in_fan_out, coefficients, indices, calls, d_out, d_in)
            y = F.linear(x2d, w_eff.to(x.dtype), None if bias is None else bias.to(x.dtype))
        ctx.strategy, ctx.calls, ctx.fan_in_fan_out = strategy, calls, fan_in_fan_out
        ctx.d_out, ctx.d_in, ctx.n_adapters = d_out, d_in, len(calls)
        ctx.has_locations = [loc is not None for loc in locations]
        ctx.save_for_backward(x2d, weight, bias, saved_spectrum, *coefficients, *indices)
        return y.reshape(*lead, d_out)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight, bias, spectrum_x, *rest = ctx.saved_tensors
        n = ctx.n_adapters
        coefficients, indices = rest[:n], rest[n:]
        d_out, d_in, calls = ctx.d_out, ctx.d_in, ctx.calls
        g2d = grad_y.reshape(-1, d_out)
        needs = ctx.needs_input_grad
        coef_needed = [needs[6 + 3 * i] for i in range(n)]
        loc_needed = [needs[7 + 3 * i] for i in range(n)]

        grad_x = grad_weight = grad_bias = None
        if needs[0]:
            if ctx.strategy == "activation":
                base = weight.T if ctx.fan_in_fan_out else weight
                grad_x = g2d @ base.to(g2d.dtype)
            else:
                w_eff = effective_weight(weight, ctx.fan_in_fan_out, coefficients, indices, calls, d_out, d_in)
                grad_x = g2d @ w_eff.to(g2d.dtype)
        dense_gw = None
        if needs[1]:
            work = working_dtype(g2d.dtype)
            dense_gw = g2d.to(work).T @ x2d.to(work)
            grad_weight = (dense_gw.T if ctx.fan_in_fan_out else dense_gw).to(weight.dtype)
        if needs[2] and bias is not None:
            grad_bias = g2d.sum(0).to(bias.dtype)

        stencils = []
        for i in range(n):
            mode = calls[i].location_grad if (loc_needed[i] and calls[i].location_grad) else None
            stencils.append(make_stencil(indices[i], d_out, d_in, mode) if (coef_needed[i] or loc_needed[i]) else None)
        active = [s for s in stencils if s is not None]
        spectrum_g = None
        if active:
            rows = torch.cat([s.rows for s in active])
            cols = torch.cat([s.cols for s in active])
            if ctx.strategy == "weight":
                if dense_gw is None:
                    work = working_dtype(g2d.dtype)
                    dense_gw = g2d.to(work).T @ x2d.to(work)
                values = weight_gradient_dct_products(dense_gw, rows, cols)
            else:
                spectrum_g = dct_spectrum(g2d)
                if spectrum_x is None:
                    spectrum_x = dct_spectrum(x2d)
                values = sampled_dct_products(spectrum_g, spectrum_x, d_out, d_in, rows, cols)
            chunks = iter(values.split([s.rows.numel() for s in active]))

        if needs[0] and ctx.strategy == "activation":
            if spectrum_g is None:
                spectrum_g = dct_spectrum(g2d)
            rows, cols = [index[0] for index in indices], [index[1] for index in indices]
            grad_x = grad_x + _sparse_through_spectrum(spectrum_g, d_out, d_in, coefficients, calls, rows, cols).to(
                grad_x.dtype
            )

        adapter_grads = []
        for i in range(n):
            grad_coef = grad_loc = None
            if stencils[i] is not None:
                grad_coef, grad_loc = gradients_from_stencil(
                    next(chunks), stencils[i], coefficients[i], calls[i].scale, d_out, d_in
                )
                grad_coef = grad_coef.to(coefficients[i].dtype) if coef_needed[i] else None
            if loc_needed[i] and grad_loc is None:
                # the location parameter is in the graph but its phase is off: a zero gradient keeps
                # DistributedDataParallel's bucket bookkeeping intact
                grad_loc = torch.zeros(2, coefficients[i].numel(), device=g2d.device, dtype=torch.float32)
            elif grad_loc is not None:
                grad_loc = grad_loc.float()
            if not loc_needed[i]:
                grad_loc = None
            adapter_grads += [grad_coef, grad_loc, None]
        if grad_x is not None:
            grad_x = grad_x.reshape(*grad_y.shape[:-1], d_in).to(x2d.dtype)
        return (grad_x, grad_weight, grad_bias, None, None, None, *adapter_grads)


def loca_linear(x, weight, bias, fan_in_fan_out, strategy, calls, coefficients, locations, indices):
    """Functional entry point: see :class:`LoCALinearFunction`. ``strategy`` must be resolved (not auto)."""
    flat = []
    for coef, loc, index in zip(coefficients, locations, indices):
        flat += [coef, loc, index]
    return LoCALinearFunction.apply(x, weight, bias, fan_in_fan_out, strategy, calls, *flat)
