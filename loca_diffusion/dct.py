"""Orthonormal DCT-II machinery shared by every LoCA layer.

Two interchangeable implementations of the same transforms:

* explicit basis matrices ``C_n`` (``C[k, i] = s_k cos(pi (2i + 1) k / 2n)``), cached once per
  ``(n, device, dtype)`` and shared by all layers; used for row gathers and small sizes;
* fast transforms through ``torch.fft`` (Makhoul's reordering: one real FFT of length ``n``), for any
  ``n`` including the non powers of two of real models (320, 640, 768, 1280, ...).

All transforms act on the last dimension (``dct2``/``idct2`` on the last two) and run in float32
(float64 stays float64): ``torch.fft`` lacks half-precision kernels on several builds, and the
adapter math is fp32 anyway. Results are returned in the working dtype, callers cast back.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = [
    "dct_matrix",
    "dct",
    "idct",
    "dct2",
    "idct2",
    "dct_spectrum",
    "dct_columns",
    "idct_sparse_columns",
    "working_dtype",
]


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


def dct(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` (for ``dim=-1``: ``x @ C.T``), through one real FFT."""
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


def idct(y: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Inverse of :func:`dct` along ``dim`` (orthonormal DCT-III; for ``dim=-1``: ``y @ C``)."""
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


def dct2(x: torch.Tensor) -> torch.Tensor:
    """2-D orthonormal DCT-II over the last two dimensions: ``C_rows @ x @ C_cols.T``."""
    return dct(dct(x, -1), -2)


def idct2(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dct2`: ``C_rows.T @ y @ C_cols``."""
    return idct(idct(y, -1), -2)


def dct_spectrum(x: torch.Tensor) -> torch.Tensor:
    """The half spectrum behind :func:`dct` along the last dimension: ``rfft`` of the reordered input.

    Use with :func:`dct_columns` when only some DCT columns are needed: it skips the full-width
    twiddle passes, which on CPU cost several times the FFT itself.
    """
    dtype = working_dtype(x.dtype)
    n = x.shape[-1]
    t = _fft_tables(n, _cache_key_device(x.device), dtype)
    return torch.fft.rfft(x.to(dtype).index_select(-1, t["perm"]), dim=-1)


def _column_map(n: int, columns: torch.Tensor, device: torch.device, dtype: torch.dtype):
    t = _fft_tables(n, _cache_key_device(device), dtype)
    h = n // 2 + 1
    low = columns < h
    source = torch.where(low, columns, n - columns)
    lo_index = columns.clamp(max=h - 1)
    hi_index = (columns - h).clamp(min=0, max=max(n - h - 1, 0))
    if n > h:
        re = torch.where(low, t["f_re_lo"][lo_index], t["f_re_hi"][hi_index])
        im = torch.where(low, t["f_im_lo"][lo_index], t["f_im_hi"][hi_index])
    else:
        re, im = t["f_re_lo"][lo_index], t["f_im_lo"][lo_index]
    return source, re, im


def dct_columns(spectrum: torch.Tensor, n: int, columns: torch.Tensor) -> torch.Tensor:
    """``dct(x)[..., columns]`` computed from ``spectrum = dct_spectrum(x)`` (length-``n`` DCT).

    Costs a gather of ``len(columns)`` spectrum columns instead of a full-width transform.
    """
    if n == 1:
        return spectrum.real.index_select(-1, columns)
    dtype = spectrum.real.dtype
    source, re, im = _column_map(n, columns, spectrum.device, dtype)
    picked = spectrum.index_select(-1, source)
    out = picked.real * re
    return out.addcmul_(picked.imag, im)


def idct_sparse_columns(values: torch.Tensor, columns: torch.Tensor, n: int) -> torch.Tensor:
    """``idct(Z)`` for the ``(..., n)`` matrix ``Z`` that is zero except ``Z[..., columns[j]] += values[..., j]``.

    The half spectrum is built by scattering the columns straight into it, so the cost is one inverse
    real FFT plus work proportional to ``len(columns)``; repeated columns add up.
    """
    dtype = working_dtype(values.dtype)
    values = values.to(dtype)
    lead = values.shape[:-1]
    if n == 1:
        out = values.new_zeros(*lead, 1)
        return out.index_add_(-1, columns, values)
    t = _fft_tables(n, _cache_key_device(values.device), dtype)
    h = n // 2 + 1
    complex_dtype = torch.complex128 if dtype == torch.float64 else torch.complex64
    # column k feeds bin k (k < h) with e^{i theta_k} / s_k and bin n - k (0 < n - k < h) with
    # -i e^{i theta_{n-k}} / s_k; these weights are the inverse tables read at those bins
    # Fixed shapes and zero weights instead of boolean masks: no host synchronisation on GPUs.
    spectrum = torch.zeros(*lead, h, dtype=complex_dtype, device=values.device)
    values = values.to(complex_dtype)
    direct_bin = columns.clamp(max=h - 1)
    direct_weight = torch.complex(t["i_p"][direct_bin], t["i_q"][direct_bin]) * (columns < h)
    spectrum.index_add_(-1, direct_bin, values * direct_weight)
    mirror_bin = (n - columns).clamp(min=1, max=h - 1)
    mirror_weight = torch.complex(t["i_r"][mirror_bin - 1], t["i_u"][mirror_bin - 1]) * (
        (columns > 0) & (n - columns < h)
    )
    spectrum.index_add_(-1, mirror_bin, values * mirror_weight)
    v = torch.fft.irfft(spectrum, n=n, dim=-1)
    return v.index_select(-1, t["inv_perm"])
