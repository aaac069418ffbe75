"""Orthonormal DCT-II machinery shared by every LoCA layer.

Three interchangeable implementations of the same transforms (``method``):

* ``"matrix"``: products with the explicit basis ``C_n`` (``C[k, i] = s_k cos(pi (2i + 1) k / 2n)``), cached once
  per ``(n, device, dtype)`` and shared by all layers; the cheapest for small ``n``, and on GPUs;
* ``"fft"``: fast transforms through ``torch.fft`` (Makhoul's reordering: one real FFT of length ``n``), for any
  ``n`` including the non powers of two of real models (320, 640, 768, 1280, ...), on any device;
* ``"scipy"``: ``scipy.fft``'s native real DCT-II / DCT-III (pocketfft: no complex intermediate, reordering and
  twiddles fused into one pass, any axis without a transposed copy), about twice as fast as ``"fft"`` on CPU.
  scipy is optional; without it CPU tensors use ``"fft"``.

``method=None`` picks ``"scipy"`` for CPU tensors when scipy is importable and ``"fft"`` otherwise; callers with
a cost model (``strategy.choose_transform``) pass it explicitly. All transforms act on the last dimension (``dct2`` /
``idct2`` on the last two) unless told otherwise and run in float32 (float64 stays float64): ``torch.fft``
lacks half-precision kernels on several builds, and the adapter math is fp32 anyway. Results are returned in
the working dtype, callers cast back.

``dct_t`` / ``idct_t`` are the feature-major forms the LoCA layers use: tokens along the columns, so that the
sparse products with the ``B`` coefficients read and write contiguous rows.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = [
    "TRANSFORM_METHODS",
    "dct_matrix",
    "dct",
    "idct",
    "dct2",
    "idct2",
    "dct_t",
    "idct_t",
    "resolve_method",
    "working_dtype",
]

TRANSFORM_METHODS = ("matrix", "fft", "scipy")


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the transforms compute in: float64 stays, everything else becomes float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _cache_key_device(device: torch.device | str | None) -> torch.device:
    device = torch.device("cpu") if device is None else torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return device


@lru_cache(maxsize=64)
def _dct_matrix_cached(n: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64).unsqueeze(1)
    i = torch.arange(n, dtype=torch.float64).unsqueeze(0)
    basis = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.to(device=device, dtype=dtype)


def dct_matrix(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The orthonormal DCT-II matrix ``C_n`` (``C @ x`` is the DCT of ``x``; ``C.T`` is its inverse).

    One tensor per ``(n, device, dtype)`` is built and shared; treat it as read-only.
    """
    if n < 1:
        raise ValueError(f"DCT size must be >= 1, got {n}")
    return _dct_matrix_cached(int(n), _cache_key_device(device), dtype)


@lru_cache(maxsize=128)
def _fft_tables(n: int, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Permutations and twiddles of the length-``n`` Makhoul DCT, shared by all calls.

    With ``v = [x0, x2, x4, ..., x5, x3, x1]`` and ``V = rfft(v)`` (``h = n // 2 + 1`` bins), the DCT is
    ``X[k] = s_k Re(V[k] e^{-i pi k / 2n})`` for ``k < h`` and, by Hermitian symmetry,
    ``X[k] = s_k Re(conj(V[n - k]) e^{-i pi k / 2n})`` above. The inverse rebuilds the half spectrum
    ``V[k] = e^{i pi k / 2n} (X[k] / s_k - i X[n - k] / s_{n-k})``. Everything is written as real
    multiply-adds on half-length slices: gathers and size-2 reductions cost several FFTs on CPU.
    """
    h = n // 2 + 1
    k = torch.arange(n, dtype=torch.float64)
    perm = torch.cat([torch.arange(0, n, 2), torch.arange(max(n - 1 - (n % 2), 0), 0, -2)]).long()
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(n)
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=torch.float64)
    scale[0] = math.sqrt(1.0 / n)
    theta = math.pi * k / (2 * n)
    cos, sin = torch.cos(theta), torch.sin(theta)
    kh = torch.arange(1, h)  # bins with a mirrored partner n - k
    tables = {
        "perm": perm.to(device),
        "inv_perm": inv_perm.to(device),
        # forward, low bins k < h and high bins k >= h (read from V[n - k], stored flipped)
        "f_re_lo": (cos * scale)[:h],
        "f_im_lo": (sin * scale)[:h],
        "f_re_hi": (cos * scale)[h:],
        "f_im_hi": -(sin * scale)[h:],
        # inverse: real = X[k] P + X[n-k] R, imag = X[k] Q - X[n-k] U
        "i_p": (cos / scale)[:h],
        "i_q": (sin / scale)[:h],
        "i_r": sin[kh] / scale[n - kh],
        "i_u": -cos[kh] / scale[n - kh],
    }
    return {
        key: (value if key in ("perm", "inv_perm") else value.to(device=device, dtype=dtype))
        for key, value in tables.items()
    }


def _along(table: torch.Tensor, ndim: int, dim: int) -> torch.Tensor:
    """View a 1-D table so that it broadcasts along ``dim`` of an ``ndim``-D tensor."""
    return table.view((-1,) + (1,) * (ndim - 1 - dim))


def _prepare(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, int, int, dict[str, torch.Tensor] | None]:
    """``x`` in its working dtype, ``dim`` made non-negative, the length ``n`` along it and the FFT tables of
    that length (``None`` for ``n == 1``, where both transforms are the identity)."""
    dtype = working_dtype(x.dtype)
    x = x.to(dtype)
    dim = dim % x.ndim
    n = x.shape[dim]
    return x, dim, n, (None if n == 1 else _fft_tables(n, _cache_key_device(x.device), dtype))


def _fft_dct(x: torch.Tensor, dim: int) -> torch.Tensor:
    x, dim, n, t = _prepare(x, dim)
    if t is None:
        return x.clone()
    h = n // 2 + 1
    spec = torch.fft.rfft(x.index_select(dim, t["perm"]), dim=dim)
    out = torch.empty_like(x)
    lo = out.narrow(dim, 0, h)
    torch.mul(spec.real, _along(t["f_re_lo"], x.ndim, dim), out=lo)
    lo.addcmul_(spec.imag, _along(t["f_im_lo"], x.ndim, dim))
    if n > h:
        mirrored = spec.narrow(dim, 1, n - h).flip(dim)
        hi = out.narrow(dim, h, n - h)
        torch.mul(mirrored.real, _along(t["f_re_hi"], x.ndim, dim), out=hi)
        hi.addcmul_(mirrored.imag, _along(t["f_im_hi"], x.ndim, dim))
    return out


def _fft_idct(y: torch.Tensor, dim: int) -> torch.Tensor:
    y, dim, n, t = _prepare(y, dim)
    if t is None:
        return y.clone()
    h = n // 2 + 1
    low = y.narrow(dim, 0, h)
    mirrored = y.narrow(dim, n - h + 1, h - 1).flip(dim)  # y[n - k] for k = 1 .. h - 1
    real = low * _along(t["i_p"], y.ndim, dim)
    imag = low * _along(t["i_q"], y.ndim, dim)
    real.narrow(dim, 1, h - 1).addcmul_(mirrored, _along(t["i_r"], y.ndim, dim))
    imag.narrow(dim, 1, h - 1).addcmul_(mirrored, _along(t["i_u"], y.ndim, dim))
    v = torch.fft.irfft(torch.complex(real, imag), n=n, dim=dim)
    return v.index_select(dim, t["inv_perm"])


@lru_cache(maxsize=1)
def _scipy_fft():
    """``scipy.fft`` if it can be imported, else None (scipy is an optional dependency)."""
    try:
        import scipy.fft
    except ImportError:
        return None
    return scipy.fft


def resolve_method(method: str | None, device: torch.device | str) -> str:
    """``method`` checked, or for ``None`` the default of ``device``: ``"scipy"`` on CPU when available, else
    ``"fft"``. ``"scipy"`` on a CUDA tensor is an error."""
    device = torch.device(device)
    if method is None:
        return "scipy" if device.type == "cpu" and _scipy_fft() is not None else "fft"
    if method not in TRANSFORM_METHODS:
        raise ValueError(f"DCT method must be one of {TRANSFORM_METHODS}, got {method!r}")
    if method == "scipy":
        if device.type != "cpu":
            raise ValueError(f"the scipy DCT runs on CPU tensors only, got a tensor on {device}")
        if _scipy_fft() is None:
            raise ImportError("the scipy DCT needs scipy (pip install scipy)")
    return method


def _scipy_transform(kind: str, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
    """scipy's orthonormal DCT-II (``kind="dct"``) or its inverse along ``axes`` of ``x`` (working dtype).

    scipy writes a C-contiguous result whatever the strides of its input, so a transposed view goes in
    without a copy and comes out in the transposed memory layout.
    """
    sfft = _scipy_fft()
    array = x.detach().to(working_dtype(x.dtype)).numpy()
    transform = {"dct": sfft.dctn, "idct": sfft.idctn}[kind]
    out = transform(array, type=2, norm="ortho", axes=axes, workers=torch.get_num_threads())
    return torch.from_numpy(out)


def _matrix_along(x: torch.Tensor, dim: int, inverse: bool) -> torch.Tensor:
    x = x.to(working_dtype(x.dtype))
    c = dct_matrix(x.shape[dim], x.device, x.dtype)
    moved = x.movedim(dim, -1)
    return (moved @ (c if inverse else c.T)).movedim(-1, dim)


def _transform(x: torch.Tensor, dim: int, method: str | None, inverse: bool) -> torch.Tensor:
    method = resolve_method(method, x.device)
    if method == "scipy":
        return _scipy_transform("idct" if inverse else "dct", x, (dim,))
    if method == "matrix":
        return _matrix_along(x, dim, inverse=inverse)
    return _fft_idct(x, dim) if inverse else _fft_dct(x, dim)


def dct(x: torch.Tensor, dim: int = -1, method: str | None = None) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` (for ``dim=-1``: ``x @ C.T``)."""
    return _transform(x, dim, method, inverse=False)


def idct(y: torch.Tensor, dim: int = -1, method: str | None = None) -> torch.Tensor:
    """Inverse of :func:`dct` along ``dim`` (orthonormal DCT-III; for ``dim=-1``: ``y @ C``)."""
    return _transform(y, dim, method, inverse=True)


def dct2(x: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dimensions: ``C_rows @ x @ C_cols.T``."""
    if resolve_method(method, x.device) == "scipy":
        return _scipy_transform("dct", x, (-2, -1))
    return dct(dct(x, -1, method), -2, method)


def idct2(y: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Inverse of :func:`dct2`: ``C_rows.T @ y @ C_cols``."""
    if resolve_method(method, y.device) == "scipy":
        return _scipy_transform("idct", y, (-2, -1))
    return idct(idct(y, -1, method), -2, method)


def dct_t(x: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """The DCT of every row of the ``(T, n)`` matrix ``x``, transposed: ``C_n @ x.T``, a contiguous ``(n, T)``.

    Feature-major output: one DCT coefficient per row, so that gathering or scattering ``B`` coefficients (the
    sparse products of a LoCA layer) moves contiguous rows of ``T`` values.
    """
    method = resolve_method(method, x.device)
    if method == "scipy":
        return _scipy_transform("dct", x.T, (0,))
    x = x.to(working_dtype(x.dtype))
    if method == "matrix":
        return dct_matrix(x.shape[-1], x.device, x.dtype) @ x.T
    return _fft_dct(x, -1).T.contiguous()


def idct_t(y: torch.Tensor, method: str | None = None) -> torch.Tensor:
    """Inverse of :func:`dct_t`: the inverse DCT of every column of the ``(n, T)`` matrix ``y``, as ``(T, n)``
    (``y.T @ C_n``), contiguous."""
    method = resolve_method(method, y.device)
    if method == "scipy":
        return _scipy_transform("idct", y.T, (1,))
    y = y.to(working_dtype(y.dtype))
    if method == "matrix":
        return y.T @ dct_matrix(y.shape[0], y.device, y.dtype)
    return _fft_idct(y.T, -1)
