"""DCT machinery against scipy's orthonormal DCT-II and the explicit cosine formula."""

import numpy as np
import pytest
import scipy.fft
import torch

from loca_diffusion.dct import (
    dct,
    dct2,
    dct_columns,
    dct_matrix,
    dct_spectrum,
    idct,
    idct2,
    idct_sparse_columns,
)

from _reference import explicit_dct_matrix

SIZES = [1, 2, 3, 4, 5, 8, 17, 64, 320, 321, 768]


@pytest.mark.parametrize("n", SIZES)
def test_matrix_matches_formula_and_is_orthonormal(n):
    c = dct_matrix(n, dtype=torch.float64).numpy()
    np.testing.assert_allclose(c, explicit_dct_matrix(n).numpy(), atol=1e-12)
    np.testing.assert_allclose(c @ c.T, np.eye(n), atol=1e-12)


def test_matrix_is_cached_per_size_device_dtype():
    assert dct_matrix(10) is dct_matrix(10)
    assert dct_matrix(10, dtype=torch.float64) is not dct_matrix(10)


@pytest.mark.parametrize("n", SIZES)
def test_fast_dct_matches_scipy_along_any_dim(n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    ref = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    np.testing.assert_allclose(dct(x).numpy(), ref, atol=1e-12)
    moved = x.movedim(-1, 1).contiguous()
    np.testing.assert_allclose(dct(moved, dim=1).movedim(1, -1).numpy(), ref, atol=1e-12)
    inv = scipy.fft.idct(x.numpy(), type=2, norm="ortho", axis=-1)
    np.testing.assert_allclose(idct(x).numpy(), inv, atol=1e-12)
    np.testing.assert_allclose(idct(dct(x)).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("shape", [(1, 1), (6, 10), (7, 5), (32, 48)])
def test_2d_transforms_match_scipy_and_round_trip(shape):
    x = torch.randn(2, *shape, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(idct2(dct2(x)).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_run_in_float32(dtype):
    # the half-precision values are exact in float64: scipy on them is the reference, and a transform
    # computed in half precision would miss it by ~1e-2 (float32 arithmetic: ~1e-6)
    x = (torch.randn(4, 40) * 3).to(dtype)
    exact = x.double().numpy()
    for transform, reference in ((dct, scipy.fft.dct), (idct, scipy.fft.idct)):
        out = transform(x)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), reference(exact, type=2, norm="ortho", axis=-1), rtol=0, atol=2e-5)


@pytest.mark.parametrize("n", SIZES)
def test_dct_columns_from_spectrum(n):
    x = torch.randn(9, n, dtype=torch.float64)
    cols = torch.randint(0, n, (23,))
    torch.testing.assert_close(dct_columns(dct_spectrum(x), n, cols), dct(x)[:, cols])


@pytest.mark.parametrize("n", SIZES)
def test_idct_of_sparse_columns_with_repeats(n):
    cols = torch.cat([torch.randint(0, n, (15,)), torch.tensor([0, n - 1, n - 1])])
    values = torch.randn(6, cols.numel(), dtype=torch.float64)
    dense = torch.zeros(6, n, dtype=torch.float64).index_add_(1, cols, values)
    torch.testing.assert_close(idct_sparse_columns(values, cols, n), idct(dense))
