"""DCT machinery against scipy's orthonormal DCT-II and the explicit cosine formula, for every method."""

import numpy as np
import pytest
import scipy.fft
import torch

from loca_diffusion.tuners.loca.dct import (
    TRANSFORM_METHODS,
    dct,
    dct2,
    dct_matrix,
    dct_t,
    idct,
    idct2,
    idct_t,
    resolve_method,
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


def explicit_dct(x: np.ndarray) -> np.ndarray:
    """The DCT along the last axis by the cosine formula (float64): independent of every method and of scipy."""
    return x @ explicit_dct_matrix(x.shape[-1]).numpy().T


@pytest.mark.parametrize("method", TRANSFORM_METHODS)
@pytest.mark.parametrize("n", SIZES)
def test_dct_matches_formula_along_any_dim(method, n):
    x = torch.randn(3, 5, n, dtype=torch.float64)
    ref = explicit_dct(x.numpy())
    np.testing.assert_allclose(dct(x, method=method).numpy(), ref, atol=1e-12)
    moved = x.movedim(-1, 1).contiguous()
    np.testing.assert_allclose(dct(moved, dim=1, method=method).movedim(1, -1).numpy(), ref, atol=1e-12)
    inv = x.numpy() @ explicit_dct_matrix(n).numpy()
    np.testing.assert_allclose(idct(x, method=method).numpy(), inv, atol=1e-12)
    np.testing.assert_allclose(idct(dct(x, method=method), method=method).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("n", SIZES)
def test_default_dct_matches_scipy(n):
    x = torch.randn(4, n, dtype=torch.float64)
    ref = scipy.fft.dct(x.numpy(), type=2, norm="ortho", axis=-1)
    np.testing.assert_allclose(dct(x).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(idct(torch.from_numpy(ref)).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("method", TRANSFORM_METHODS)
@pytest.mark.parametrize("shape", [(1, 1), (6, 10), (7, 5), (32, 48)])
def test_2d_transforms_match_scipy_and_round_trip(method, shape):
    x = torch.randn(2, *shape, dtype=torch.float64)
    ref = scipy.fft.dctn(x.numpy(), norm="ortho", axes=(-2, -1))
    np.testing.assert_allclose(dct2(x, method).numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(idct2(dct2(x, method), method).numpy(), x.numpy(), atol=1e-12)


@pytest.mark.parametrize("method", TRANSFORM_METHODS)
@pytest.mark.parametrize("n", SIZES)
def test_feature_major_transforms(method, n):
    # dct_t: (T, n) -> (n, T) = C @ x.T, contiguous; idct_t: (n, T) -> (T, n) = y.T @ C, contiguous
    x = torch.randn(6, n, dtype=torch.float64)
    c = explicit_dct_matrix(n)
    out = dct_t(x, method)
    assert out.shape == (n, 6) and out.is_contiguous()
    torch.testing.assert_close(out, c @ x.T)
    y = torch.randn(n, 6, dtype=torch.float64)
    back = idct_t(y, method)
    assert back.shape == (6, n) and back.is_contiguous()
    torch.testing.assert_close(back, y.T @ c)
    # strided inputs (a transposed view) give the same result
    torch.testing.assert_close(dct_t(x.T.contiguous().T, method), out)
    torch.testing.assert_close(idct_t(y.T.contiguous().T, method), back)


def test_method_resolution():
    assert resolve_method(None, "cpu") == "scipy"  # scipy is installed with the test extra
    assert resolve_method("fft", "cpu") == "fft"
    with pytest.raises(ValueError, match="one of"):
        resolve_method("wavelet", "cpu")
    with pytest.raises(ValueError, match="CPU tensors only"):
        resolve_method("scipy", "cuda")


@pytest.mark.parametrize("method", TRANSFORM_METHODS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs_run_in_float32(method, dtype):
    # the half-precision values are exact in float64: scipy on them is the reference, and a transform
    # computed in half precision would miss it by ~1e-2 (float32 arithmetic: ~1e-6)
    x = (torch.randn(4, 40) * 3).to(dtype)
    exact = x.double().numpy()
    for transform, reference in ((dct, scipy.fft.dct), (idct, scipy.fft.idct)):
        out = transform(x, method=method)
        assert out.dtype == torch.float32
        np.testing.assert_allclose(out.numpy(), reference(exact, type=2, norm="ortho", axis=-1), rtol=0, atol=2e-5)
