"""The LoCA math against independent references.

* ``dW`` of every construction vs the dense ``scale * C_out^T S C_in`` built from the explicit formula;
* outputs and input/coefficient gradients of every strategy vs autograd through that dense reference;
* location gradients vs a brute-force finite difference of the loss, computed by actually moving each
  coefficient one index (exact for a loss that is linear in the weight, first-order otherwise).
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from loca_diffusion.tuners.loca.ops import (
    AdapterCall,
    choose_strategy,
    delta_weight,
    dense_delta_weight,
    indices_to_locations,
    loca_linear,
    locations_to_indices,
)

from _reference import explicit_dct_matrix

STRATEGIES = ["weight", "hybrid", "activation"]
# every strategy, and the spectral ones with every DCT method (the weight strategy uses no feature-major DCT)
ROUTES = [("weight", None)] + [(s, m) for s in ("hybrid", "activation") for m in ("matrix", "fft", "scipy")]


def formula_delta(coefficients, indices, d_out, d_in, scale):
    """dW from the paper's definition, in numpy float64: sum of B outer products of DCT rows."""
    c_out, c_in = explicit_dct_matrix(d_out).numpy(), explicit_dct_matrix(d_in).numpy()
    out = np.zeros((d_out, d_in))
    for a, r, c in zip(coefficients.tolist(), indices[0].tolist(), indices[1].tolist()):
        out += scale * a * np.outer(c_out[r], c_in[c])
    return torch.from_numpy(out)


def border_indices(d_out, d_in, b, seed=0):
    """Random locations that include all four corners and two coincident pairs."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, d_out, (b,), generator=g), torch.randint(0, d_in, (b,), generator=g)])
    idx[:, 0] = torch.tensor([0, 0])
    idx[:, 1] = torch.tensor([d_out - 1, d_in - 1])
    idx[:, 2] = torch.tensor([0, d_in - 1])
    idx[:, 3] = torch.tensor([d_out - 1, 0])
    idx[:, 4] = idx[:, 5]
    idx[:, 6] = idx[:, 1]
    return idx


@pytest.mark.parametrize("shape", [(9, 7), (7, 9), (1, 6), (6, 1), (16, 16)])
@pytest.mark.parametrize("b", [8, 40])
def test_delta_weight_matches_formula(shape, b):
    d_out, d_in = shape
    if b > d_out * d_in:
        b = d_out * d_in
    idx = (
        border_indices(d_out, d_in, b)
        if min(shape) > 1 and b >= 7
        else torch.stack([torch.randint(0, d_out, (b,)), torch.randint(0, d_in, (b,))])
    )
    coef = torch.randn(b, dtype=torch.float64)
    ref = formula_delta(coef, idx, d_out, d_in, 0.7)
    torch.testing.assert_close(delta_weight(coef, idx, d_out, d_in, 0.7), ref)
    torch.testing.assert_close(dense_delta_weight(coef, idx, d_out, d_in, 0.7), ref)


def test_delta_weight_float32_at_model_sizes():
    d_out, d_in, b = 320, 768, 1000
    idx = border_indices(d_out, d_in, b)
    coef = torch.randn(b)
    ref = formula_delta(coef.double(), idx, d_out, d_in, 1.0)
    torch.testing.assert_close(delta_weight(coef, idx, d_out, d_in, 1.0).double(), ref, atol=2e-5, rtol=1e-4)


def test_locations_round_trip_and_clamp():
    idx = torch.tensor([[0, 5, 9], [0, 3, 6]])
    torch.testing.assert_close(locations_to_indices(indices_to_locations(idx, 10, 7), 10, 7), idx)
    wild = torch.tensor([[-0.3, 1.7], [0.5, 2.0]])
    torch.testing.assert_close(locations_to_indices(wild, 10, 7), torch.tensor([[0, 9], [3, 6]]))


def test_locations_round_to_the_nearest_index():
    # a location is its nearest grid point: x.6 goes up, x.4 down, in both axes (floor or ceil would not)
    d_out, d_in = 10, 7
    rows = np.array([0.4, 2.6, 4.4, 8.6, 3.0])
    cols = np.array([5.6, 0.4, 3.6, 1.4, 6.0])
    points = torch.tensor(np.stack([rows / (d_out - 1), cols / (d_in - 1)]), dtype=torch.float32)
    expected = torch.tensor([[0, 3, 4, 9, 3], [6, 0, 4, 1, 6]])
    torch.testing.assert_close(locations_to_indices(points, d_out, d_in), expected)


def _setup(d_out=9, d_in=7, b=12, tokens=(2, 5), seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    x = torch.randn(*tokens, d_in, dtype=dtype, requires_grad=True)
    w = torch.randn(d_out, d_in, dtype=dtype)
    bias = torch.randn(d_out, dtype=dtype)
    coef = torch.randn(b, dtype=dtype, requires_grad=True)
    idx = border_indices(d_out, d_in, b, seed)
    loc = indices_to_locations(idx, d_out, d_in).to(dtype).requires_grad_(True)
    return x, w, bias, coef, loc, idx


@pytest.mark.parametrize("strategy,transform", ROUTES)
@pytest.mark.parametrize("fan_in_fan_out", [False, True])
def test_output_and_gradients_match_dense_reference(strategy, transform, fan_in_fan_out):
    x, w, bias, coef, loc, idx = _setup()
    scale = 0.7
    target = torch.randn(2, 5, 9, dtype=torch.float64)
    ref_out = F.linear(x, w + dense_delta_weight(coef, idx, 9, 7, scale), bias)
    ref_gx, ref_gc = torch.autograd.grad((ref_out * target).sum(), [x, coef])

    weight = w.T.contiguous() if fan_in_fan_out else w
    out = loca_linear(
        x,
        weight,
        bias,
        fan_in_fan_out,
        strategy,
        [AdapterCall(scale, "central")],
        [coef],
        [loc],
        [idx],
        transform=transform,
    )
    gx, gc = torch.autograd.grad((out * target).sum(), [x, coef])
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(gx, ref_gx)
    torch.testing.assert_close(gc, ref_gc)


def brute_force_location_grad(loss_of_indices, idx, d_out, d_in, mode):
    """d loss / d location (scaled to [0, 1]) by moving each coefficient one index."""
    grad = torch.zeros(2, idx.shape[1], dtype=torch.float64)
    for b in range(idx.shape[1]):
        for axis, n in ((0, d_out), (1, d_in)):
            i = int(idx[axis, b])
            if mode == "central":
                hi, lo = min(i + 1, n - 1), max(i - 1, 0)
            elif mode == "forward":
                hi = min(i + 1, n - 1)
                lo = max(hi - 1, 0)
            else:
                lo = max(i - 1, 0)
                hi = min(lo + 1, n - 1)
            if hi == lo:
                continue
            moved_hi, moved_lo = idx.clone(), idx.clone()
            moved_hi[axis, b], moved_lo[axis, b] = hi, lo
            grad[axis, b] = (loss_of_indices(moved_hi) - loss_of_indices(moved_lo)) / (hi - lo) * (n - 1)
    return grad


@pytest.mark.parametrize("strategy,transform", ROUTES)
@pytest.mark.parametrize("mode", ["central", "forward", "backward"])
def test_location_gradient_equals_brute_force_for_linear_loss(strategy, transform, mode):
    x, w, bias, coef, loc, idx = _setup()
    target = torch.randn(2, 5, 9, dtype=torch.float64)
    scale = 1.3

    def loss(indices):
        return (F.linear(x, w + dense_delta_weight(coef, indices, 9, 7, scale), bias) * target).sum()

    out = loca_linear(
        x, w, bias, False, strategy, [AdapterCall(scale, mode)], [coef], [loc], [idx], transform=transform
    )
    (grad_loc,) = torch.autograd.grad((out * target).sum(), [loc])
    expected = brute_force_location_grad(lambda i: loss(i).detach(), idx, 9, 7, mode)
    torch.testing.assert_close(grad_loc.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy,transform", ROUTES)
def test_location_gradient_is_first_order_for_nonlinear_loss(strategy, transform):
    x, w, bias, coef, loc, idx = _setup()
    with torch.no_grad():
        coef.mul_(1e-3)  # small dW: the loss is close to linear in it
    target = torch.randn(2, 5, 9, dtype=torch.float64)

    def loss(indices):
        out = F.linear(x, w + dense_delta_weight(coef, indices, 9, 7, 1.0), bias)
        return ((torch.tanh(out) - target) ** 2).mean()

    out = loca_linear(
        x, w, bias, False, strategy, [AdapterCall(1.0, "central")], [coef], [loc], [idx], transform=transform
    )
    (grad_loc,) = torch.autograd.grad(((torch.tanh(out) - target) ** 2).mean(), [loc])
    expected = brute_force_location_grad(lambda i: loss(i).detach(), idx, 9, 7, "central")
    scale = expected.abs().max()
    assert scale > 0
    assert (grad_loc.double() - expected).abs().max() / scale < 1e-2


@pytest.mark.parametrize("strategy,transform", ROUTES)
def test_two_adapters_add_up_and_location_grad_off_gives_zeros(strategy, transform):
    x, w, bias, coef, loc, idx = _setup()
    coef2 = torch.randn(5, dtype=torch.float64, requires_grad=True)
    idx2 = torch.tensor([[1, 2, 3, 1, 8], [0, 6, 2, 0, 3]])
    loc2 = indices_to_locations(idx2, 9, 7).double().requires_grad_(True)
    ref = F.linear(x, w + dense_delta_weight(coef, idx, 9, 7, 0.5) + dense_delta_weight(coef2, idx2, 9, 7, 2.0), bias)
    calls = [AdapterCall(0.5, "central"), AdapterCall(2.0, None)]
    out = loca_linear(x, w, bias, False, strategy, calls, [coef, coef2], [loc, loc2], [idx, idx2], transform=transform)
    torch.testing.assert_close(out, ref)
    g_ref = torch.autograd.grad(ref.square().sum(), [coef, coef2])
    g = torch.autograd.grad(out.square().sum(), [coef, coef2, loc2])
    torch.testing.assert_close(g[0], g_ref[0])
    torch.testing.assert_close(g[1], g_ref[1])
    assert torch.count_nonzero(g[2]) == 0  # off-phase locations get exact zeros (DDP still sees a grad)


@pytest.mark.parametrize("strategy,transform", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_base_weights(strategy, transform, dtype):
    torch.manual_seed(0)
    x = torch.randn(3, 16).to(dtype).requires_grad_(True)
    w = (torch.randn(12, 16) * 0.1).to(dtype)
    coef = (torch.randn(10) * 0.1).requires_grad_(True)
    idx = torch.stack([torch.randint(0, 12, (10,)), torch.randint(0, 16, (10,))])
    out = loca_linear(
        x, w, None, False, strategy, [AdapterCall(1.0, None)], [coef], [None], [idx], transform=transform
    )
    assert out.dtype == dtype
    ref = F.linear(x.double(), w.double() + dense_delta_weight(coef.double(), idx, 12, 16, 1.0))
    torch.testing.assert_close(out.double(), ref, atol=3e-2, rtol=3e-2)
    (gc,) = torch.autograd.grad(out.float().sum(), [coef])
    assert gc.dtype == torch.float32 and torch.isfinite(gc).all()


def test_strategy_choice_follows_cost():
    # few tokens on a big layer: never build the d_out x d_in matrix
    assert choose_strategy("cpu", 1280, 1280, 16, 1000, 1000, True) == "activation"
    # many tokens: materialize dW (one GEMM forward) rather than transforming every token
    assert choose_strategy("cpu", 640, 640, 8192, 1000, 1000, True) in ("weight", "hybrid")
    # many coefficients: the sampled spectral gradient (5B points) loses to the weight-gradient GEMM
    assert choose_strategy("cpu", 640, 640, 8192, 10000, 50000, True) == "weight"
    # inference without gradients on many tokens: the materialized weight
    assert choose_strategy("cpu", 640, 640, 8192, 1000, 1000, False) in ("weight", "hybrid")
