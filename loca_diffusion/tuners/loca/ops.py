"""The LoCA math: delta weights, location gradients and the fused linear autograd function.

For a weight ``W`` of shape ``(d_out, d_in)`` one adapter adds ``dW = scale * C_out^T S C_in`` where
``S`` holds ``B`` coefficients ``a`` at integer locations ``(rows, cols)``. With ``G = C_out Gw C_in^T``
(the 2-D DCT of the weight gradient ``Gw = dL/d(dW)``):

* ``dL/da_b = scale * G[r_b, c_b]`` exactly;
* ``dL/dr_b ~= scale * a_b * (G[r_b + 1, c_b] - G[r_b - 1, c_b]) / 2`` (central difference; one-sided at
  borders and in the ``forward`` / ``backward`` variants), times ``d_out - 1`` for locations scaled to
  ``[0, 1]``; likewise for columns.

Only the ``G`` entries at those stencil points are ever computed. ``S`` is a sparse matrix: its pattern (a CSR
structure, :class:`SparsePattern`) depends only on the locations and is built once per set of locations
(:class:`LayerPlan`), its values are the coefficients of the step. With the DCTs of the tokens in feature-major
layout (``dct_t``: one coefficient per row), every product with ``S`` is a sparse-dense matrix product over
``B x T`` entries, and the ``G`` entries are a sampled product ``G[p] = DCT(grad_y)[r_p, :] . DCT(x)[c_p, :]``
(``torch.sparse.sampled_addmm``). Three strategies compute the layer:

* ``weight``: forward with ``W + dW`` (one GEMM); ``G`` from the dense weight gradient (one extra GEMM plus a
  fast DCT);
* ``hybrid``: the same forward; ``G`` from the DCTs of ``x`` and ``grad_y`` by the sampled product, which avoids
  the extra GEMM;
* ``activation``: never builds ``dW``: ``y = base(x) + iDCT_out(S DCT_in(x))`` (and ``S^T`` for the input
  gradient), the same sampled ``G``; cheapest when there are few tokens.

``auto`` picks the cheapest by a cost model (:func:`choose_strategy`), and each transform its method
(:func:`choose_transform`: a dense DCT-matrix product for small sizes, else a fast DCT). Layers reading the same
input (``to_q``/``to_k``/``to_v``) share one DCT of it (:func:`shared_input_dct`). ``W + dW`` is kept between
forward and backward only when it is no larger than the layer's input.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .dct import dct, dct_matrix, dct_t, idct, idct2, idct_t, working_dtype
from .strategy import (  # noqa: F401  (COSTS_CALIBRATED, _shared, clear_shared_input_dct: imported from here too)
    COSTS_CALIBRATED,
    _shared,
    choose_strategy,
    choose_transform,
    clear_shared_input_dct,
    keeps_weight,
    shared_input_dct,
)

LOCATION_GRAD_MODES = ("central", "forward", "backward")
STRATEGIES = ("auto", "weight", "hybrid", "activation")

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
    coefficients: torch.Tensor,
    indices: torch.Tensor,
    d_out: int,
    d_in: int,
    scale: float,
    method: str | None = None,
) -> torch.Tensor:
    """``scale * C_out^T S C_in`` in float32, shape ``(d_out, d_in)``; coincident locations add up.

    Built as ``(C_out^T S) C_in``: the left factor is a scatter of ``B`` scaled DCT rows (``B * d_out``
    work) and the right one a single inverse DCT pass. A pass costs several elementwise sweeps of the
    matrix, so only beyond ~3 coefficients per column do a dense ``S`` and a 2-D inverse DCT (two passes)
    win. ``method``: the DCT implementation (see :mod:`loca_diffusion.tuners.loca.dct`).
    """
    device = coefficients.device
    dtype = working_dtype(coefficients.dtype)
    values = coefficients.detach().to(dtype) * scale
    rows, cols = indices[0], indices[1]
    if values.numel() >= 3 * d_in:
        spectrum = torch.zeros(d_out, d_in, device=device, dtype=dtype)
        spectrum.index_put_((rows, cols), values, accumulate=True)
        return idct2(spectrum, method)
    left = torch.zeros(d_out, d_in, device=device, dtype=dtype)
    left.index_add_(1, cols, (dct_matrix(d_out, device, dtype).index_select(0, rows) * values[:, None]).T)
    return idct(left, dim=-1, method=method)


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


def weight_gradient_dct_products(grad_weight: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``G[rows[p], cols[p]]`` with ``G = C_out Gw C_in^T``, from the dense weight gradient ``Gw``."""
    d_out, d_in = grad_weight.shape
    half = dct(grad_weight, dim=-1)  # Gw C_in^T
    if rows.numel() > d_in:
        return dct(half, dim=0)[rows, cols]
    c_out = dct_matrix(d_out, grad_weight.device, grad_weight.dtype)
    return torch.linalg.vecdot(c_out.index_select(0, rows), half.index_select(1, cols).T, dim=-1)



# ----------------------------------------------------------------------------------------------------
# sparse patterns and per-location plans


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    with warnings.catch_warnings():  # torch flags every CSR tensor as a beta feature (once per process)
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


@dataclass
class SparsePattern:
    """``P`` points of an ``(n_rows, n_cols)`` grid as a CSR structure; repeated points share one entry.

    ``slot[p]`` is the CSR entry of point ``p``. Depends only on the points: built once per set of locations.
    """

    crow: torch.Tensor
    col: torch.Tensor
    slot: torch.Tensor
    shape: tuple[int, int]
    _masks: dict = field(default_factory=dict, repr=False)

    @classmethod
    def build(cls, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int) -> "SparsePattern":
        unique, slot = torch.unique(rows * n_cols + cols, sorted=True, return_inverse=True)
        crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.bincount(unique // n_cols, minlength=n_rows).cumsum(0)
        return cls(crow=crow, col=unique % n_cols, slot=slot, shape=(n_rows, n_cols))

    def matrix(self, values: torch.Tensor) -> torch.Tensor:
        """The sparse matrix holding ``values[p]`` at point ``p`` (repeated points add up)."""
        entries = values.new_zeros(self.col.numel()).index_add_(0, self.slot, values)
        return _csr(self.crow, self.col, entries, self.shape)

    def sample(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """``(left @ right)[rows[p], cols[p]]`` for every point, computing only those entries.

        ``left`` is ``(n_rows, T)``, ``right`` ``(T, n_cols)``; fastest with contiguous rows of ``left`` and
        contiguous columns of ``right`` (the transposed view of a feature-major DCT).
        """
        mask = self._masks.get(left.dtype)
        if mask is None:
            mask = self._masks[left.dtype] = _csr(
                self.crow, self.col, left.new_zeros(self.col.numel()), self.shape
            )
        return torch.sparse.sampled_addmm(mask, left, right, beta=0.0).values()[self.slot]


@dataclass
class LayerPlan:
    """What one call of a layer needs that depends only on its adapters' locations and stencil modes.

    ``forward``: ``S`` on the ``(d_out, d_in)`` grid (all adapters' coefficients, concatenated); ``transpose``:
    ``S^T``; ``gradient``: the stencil points whose ``G`` entries the gradients need; ``stencils``: one per
    adapter, in the order of the gradient pattern's points.
    """

    forward: SparsePattern
    transpose: SparsePattern
    gradient: SparsePattern
    stencils: list[Stencil]
    rows: torch.Tensor
    cols: torch.Tensor


def build_plan(indices, modes, d_out: int, d_in: int) -> LayerPlan:
    """The :class:`LayerPlan` of adapters with integer ``indices`` (``[2, B_i]`` each) and stencil ``modes``
    (a location-gradient mode, or None for coefficients only)."""
    rows = torch.cat([index[0] for index in indices])
    cols = torch.cat([index[1] for index in indices])
    stencils = [make_stencil(index, d_out, d_in, mode) for index, mode in zip(indices, modes)]
    forward = SparsePattern.build(rows, cols, d_out, d_in)
    if all(mode is None for mode in modes):
        gradient = forward
    else:
        gradient = SparsePattern.build(
            torch.cat([st.rows for st in stencils]), torch.cat([st.cols for st in stencils]), d_out, d_in
        )
    return LayerPlan(
        forward=forward,
        transpose=SparsePattern.build(cols, rows, d_in, d_out),
        gradient=gradient,
        stencils=stencils,
        rows=rows,
        cols=cols,
    )


# ----------------------------------------------------------------------------------------------------
# cost model



# ----------------------------------------------------------------------------------------------------
# the input DCT shared by sibling layers



# ----------------------------------------------------------------------------------------------------
# the fused function


@dataclass
class AdapterCall:
    """One active adapter as the fused function sees it (tensors are passed to autograd separately)."""

    scale: float
    location_grad: str | None  # stencil mode when location gradients are wanted, else None


@dataclass(frozen=True)
class Route:
    """How one call computes: the strategy and the DCT method of each side (``dct_t`` / ``idct_t``)."""

    strategy: str
    method_in: str | None = None
    method_out: str | None = None


def resolve_route(
    device_type: str, strategy: str, d_out: int, d_in: int, tokens: int, transform: str | None = None
) -> Route:
    """A resolved ``strategy`` with the transform methods the cost model picks for this call (or ``transform``
    for both sides when given)."""
    if transform is not None:
        return Route(strategy, transform, transform)
    return Route(
        strategy, choose_transform(device_type, d_in, tokens), choose_transform(device_type, d_out, tokens)
    )


def effective_weight(
    weight: torch.Tensor, fan_in_fan_out: bool, coefficients, indices, calls, d_out: int, d_in: int
) -> torch.Tensor:
    """``W + sum_i dW_i`` in the base weight's dtype, ``(d_out, d_in)`` orientation."""
    base = weight.T if fan_in_fan_out else weight
    total = base.to(working_dtype(base.dtype))
    for coef, index, call in zip(coefficients, indices, calls):
        total = total + delta_weight(coef, index, d_out, d_in, call.scale)
    return total.to(weight.dtype)


def _scaled_values(coefficients, calls, dtype) -> torch.Tensor:
    return torch.cat([coef.detach().to(dtype) * call.scale for coef, call in zip(coefficients, calls)])


class LoCALinearFunction(torch.autograd.Function):
    """``y = x (W + sum_i dW_i)^T + b`` with LoCA coefficient and location gradients.

    Inputs after the fixed ones come in groups of three per adapter: ``coefficients`` ``[B]``,
    ``locations`` (the ``[2, B]`` float parameter, or None when frozen) and ``indices`` ``[2, B]``.
    ``x_dct``: ``dct_t`` of the input rows when the caller has it (shared by sibling layers), else None.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, fan_in_fan_out, route, calls, plan, x_dct, *adapter_tensors):
        # (the location parameters, adapter_tensors[1::3], are inputs only so that autograd routes their gradients)
        coefficients = adapter_tensors[0::3]
        indices = adapter_tensors[2::3]
        d_in = x.shape[-1]
        d_out = weight.shape[1] if fan_in_fan_out else weight.shape[0]
        lead = x.shape[:-1]
        x2d = x.reshape(-1, d_in)
        base = weight.T if fan_in_fan_out else weight
        kept_weight = None
        if route.strategy == "activation":
            y = F.linear(x2d, base.to(x.dtype), None if bias is None else bias.to(x.dtype))
            if x_dct is None:
                x_dct = dct_t(x2d, route.method_in)
            values = _scaled_values(coefficients, calls, x_dct.dtype)
            delta = idct_t(torch.sparse.mm(plan.forward.matrix(values), x_dct), route.method_out)
            y = y.add_(delta) if y.dtype == delta.dtype else y + delta.to(y.dtype)
        else:
            w_eff = effective_weight(weight, fan_in_fan_out, coefficients, indices, calls, d_out, d_in)
            y = F.linear(x2d, w_eff.to(x.dtype), None if bias is None else bias.to(x.dtype))
            if keeps_weight(d_out, d_in, x2d.shape[0]):
                kept_weight = w_eff
        ctx.route, ctx.calls, ctx.plan, ctx.fan_in_fan_out = route, calls, plan, fan_in_fan_out
        ctx.d_out, ctx.d_in, ctx.n_adapters = d_out, d_in, len(calls)
        # the input itself is needed only for a weight gradient or the weight strategy's dense G; the spectral
        # strategies need its DCT instead (the same size, and shared with sibling layers)
        keep_x = ctx.needs_input_grad[1] or route.strategy == "weight"
        ctx.save_for_backward(
            x2d if keep_x else None,
            weight,
            bias,
            x_dct if route.strategy != "weight" else None,
            kept_weight,
            *coefficients,
            *indices,
        )
        ctx.x_meta = (x2d.shape, x2d.dtype)
        return y.reshape(*lead, d_out)

    @staticmethod
    def backward(ctx, grad_y):
        x2d, weight, bias, x_dct, kept_weight, *rest = ctx.saved_tensors
        n = ctx.n_adapters
        coefficients, indices = rest[:n], rest[n:]
        d_out, d_in, calls, plan, route = ctx.d_out, ctx.d_in, ctx.calls, ctx.plan, ctx.route
        x_shape, x_dtype = ctx.x_meta
        g2d = grad_y.reshape(-1, d_out)
        needs = ctx.needs_input_grad
        coef_needed = [needs[8 + 3 * i] for i in range(n)]
        loc_needed = [needs[9 + 3 * i] for i in range(n)]
        sampling = any(coef_needed) or any(
            loc and st.with_locations for loc, st in zip(loc_needed, plan.stencils)
        )
        base = weight.T if ctx.fan_in_fan_out else weight

        grad_x = grad_weight = grad_bias = None
        g_dct = None
        if route.strategy != "weight" and (sampling or (needs[0] and route.strategy == "activation")):
            g_dct = dct_t(g2d, route.method_out)
        if needs[0]:
            if route.strategy == "activation":
                grad_x = g2d @ base.to(g2d.dtype)
                values = _scaled_values(coefficients, calls, g_dct.dtype)
                delta = idct_t(torch.sparse.mm(plan.transpose.matrix(values), g_dct), route.method_in)
                grad_x = grad_x.add_(delta) if grad_x.dtype == delta.dtype else grad_x + delta.to(grad_x.dtype)
            else:
                w_eff = kept_weight
                if w_eff is None:
                    w_eff = effective_weight(weight, ctx.fan_in_fan_out, coefficients, indices, calls, d_out, d_in)
                grad_x = g2d @ w_eff.to(g2d.dtype)
        dense_gw = None
        if needs[1]:
            work = working_dtype(g2d.dtype)
            dense_gw = g2d.to(work).T @ x2d.to(work)
            grad_weight = (dense_gw.T if ctx.fan_in_fan_out else dense_gw).to(weight.dtype)
        if needs[2] and bias is not None:
            grad_bias = g2d.sum(0).to(bias.dtype)

        chunks = None
        if sampling:
            if route.strategy == "weight":
                if dense_gw is None:
                    work = working_dtype(g2d.dtype)
                    dense_gw = g2d.to(work).T @ x2d.to(work)
                rows = torch.cat([st.rows for st in plan.stencils])
                cols = torch.cat([st.cols for st in plan.stencils])
                values = weight_gradient_dct_products(dense_gw, rows, cols)
            else:
                values = plan.gradient.sample(g_dct, x_dct.T)
            chunks = iter(values.split([st.rows.numel() for st in plan.stencils]))

        adapter_grads = []
        for i in range(n):
            grad_coef = grad_loc = None
            if chunks is not None:
                grad_coef, grad_loc = gradients_from_stencil(
                    next(chunks), plan.stencils[i], coefficients[i], calls[i].scale, d_out, d_in
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
            grad_x = grad_x.reshape(*grad_y.shape[:-1], x_shape[-1]).to(x_dtype)
        return (grad_x, grad_weight, grad_bias, None, None, None, None, None, *adapter_grads)


def loca_linear(
    x, weight, bias, fan_in_fan_out, strategy, calls, coefficients, locations, indices, plan=None, transform=None
):
    """Functional entry point: see :class:`LoCALinearFunction`. ``strategy`` must be resolved (not auto).

    ``plan``: the :class:`LayerPlan` of ``indices`` and the calls' stencil modes (built here when None; layers
    cache it). ``transform``: the DCT method of every transform (default: the cost model's choice per size).
    """
    d_in = x.shape[-1]
    d_out = weight.shape[1] if fan_in_fan_out else weight.shape[0]
    if plan is None:
        plan = build_plan(indices, [call.location_grad for call in calls], d_out, d_in)
    route = resolve_route(x.device.type, strategy, d_out, d_in, x.numel() // max(d_in, 1), transform)
    flat = []
    for coef, loc, index in zip(coefficients, locations, indices):
        flat += [coef, loc, index]
    backward_follows = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or any(t is not None and t.requires_grad for t in flat)
    )
    x_dct = None
    if route.strategy == "activation" or (route.strategy == "hybrid" and backward_follows):
        x_dct = shared_input_dct(x, route.method_in)
    return LoCALinearFunction.apply(x, weight, bias, fan_in_fan_out, route, calls, plan, x_dct, *flat)
