"""Numerical check of the paper's Theorem 1/2 comparison on standard Gaussian matrices.

For an ``n x n`` matrix ``W`` with i.i.d. N(0, 1) entries we measure the relative reconstruction error
``||W - W_hat||_F^2 / ||W||_F^2`` of several compressions that all use (at most) the parameter budget of a
rank-``r`` LoRA, ``2 r n`` numbers, counting location indices as the paper does:

``lora``
    truncated SVD with rank ``r`` (``2 r n`` numbers).
``fourier_random``
    ``r n`` random locations on the non-redundant half spectrum, real + imaginary part kept (2 numbers per
    location; the locations come from a seed and cost nothing).
``fourier_topk_locations``
    the ``floor(2 r n / 3)`` most energetic locations on the half spectrum (real + imaginary + index = 3 numbers).
``fourier_topk_coefficients``
    the ``r n`` largest individual real-or-imaginary coefficients on the half spectrum (value + index = 2 numbers).
``dct_topk``
    the ``r n`` largest-magnitude coefficients of the orthonormal 2-D DCT-II (value + index = 2 numbers).

Fourier conventions (``numpy.fft.fft2(norm="ortho")``, so Parseval holds: ``||W||_F^2 = sum |F|^2``).
The spectrum of a real matrix is Hermitian, ``F[i, j] = conj(F[-i, -j])``. The *non-redundant half* used here is
the ``rfft2`` layout (columns ``0 .. n/2``) with the duplicates of its two self-mirrored columns removed: columns
``1 .. n/2 - 1`` keep every row, columns ``0`` and ``n/2`` keep rows ``0 .. n/2`` only (rows ``n/2+1 .. n-1`` of
those columns are conjugates of rows already present). That leaves ``U = n^2/2 + 2`` unique bins:

* 4 *self-conjugate* bins ``(i, j)`` with ``i, j in {0, n/2}`` (DC and Nyquist): their value is real, they carry
  one real degree of freedom and their energy appears once in Parseval's sum;
* ``n^2/2 - 2`` *paired* bins: complex, two real degrees of freedom, and each also fixes its mirror bin, so its
  energy appears twice (``2 |F|^2``) in Parseval's sum.

So the half spectrum holds exactly ``4 + 2 (n^2/2 - 2) = n^2`` real numbers, as it should. Choices made for the
self-conjugate bins (they are 4 out of ``n^2/2 + 2`` bins, so none of this moves the numbers visibly):

* ``fourier_random`` draws locations uniformly among all ``U`` unique bins and charges 2 numbers per location even
  for a self-conjugate bin (its imaginary slot is stored but is identically zero: the paper's flat counting);
* ``fourier_topk_locations`` ranks locations by the energy they restore, ``2 |F|^2`` for paired bins and
  ``|F|^2`` for self-conjugate ones (the optimal choice for the Frobenius error), 3 numbers per location;
* ``fourier_topk_coefficients`` picks among the ``n^2`` genuine real coordinates (real parts of all unique bins,
  imaginary parts of paired bins only; the zero imaginary parts of self-conjugate bins are not candidates),
  ranked by restored energy ``2 x^2`` (paired) or ``x^2`` (self-conjugate).

Reconstruction scatters the kept half-spectrum values into an otherwise zero ``n x n`` grid, fills the mirror bin
of every *paired* kept bin with the conjugate (self-conjugate bins are *not* mirrored onto themselves, which would
double them), and runs ``ifft2``; the error is measured on the real part (the imaginary part is asserted ~0).
The script asserts that keeping every half-spectrum coefficient gives ~0 error for every Fourier method, and that
each reconstructed error matches the energy bookkeeping above.

Run: ``python -m bench.theory [--json PATH] [--samples N] [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft

__all__ = [
    "METHODS",
    "SIZES",
    "RANKS",
    "half_spectrum",
    "method_budget",
    "params_used",
    "reconstruct",
    "relative_error",
    "reconstruction_errors",
    "self_check",
    "run_benchmark",
]

METHODS = ("lora", "fourier_random", "fourier_topk_locations", "fourier_topk_coefficients", "dct_topk")
FOURIER_METHODS = ("fourier_random", "fourier_topk_locations", "fourier_topk_coefficients")
SIZES = (64, 128, 256)
RANKS = (1, 2, 4, 8, 16, 32)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------------------------
# Half-spectrum geometry
# --------------------------------------------------------------------------------------------------------------


class HalfSpectrum:
    """Index bookkeeping of the non-redundant half of the 2-D spectrum of a real ``n x n`` matrix (``n`` even)."""

    def __init__(self, n: int):
        if n % 2 or n < 2:
            raise ValueError(f"n must be even and >= 2, got {n}")
        self.n = n
        h = n // 2
        rows = np.arange(n)[:, None]
        cols = np.arange(n)[None, :]
        unique = (cols >= 1) & (cols <= h - 1)
        unique = unique | (((cols == 0) | (cols == h)) & (rows <= h))
        selfconj = np.isin(rows, (0, h)) & np.isin(cols, (0, h))
        mirror = (-np.arange(n)) % n
        # sanity: the unique set and its mirror image tile the grid, overlapping exactly on the self-conjugate bins
        mirrored = unique[mirror[:, None], mirror[None, :]]
        assert np.array_equal(unique | mirrored, np.ones((n, n), bool))
        assert np.array_equal(unique & mirrored, selfconj)
        self.mirror = mirror
        self.selfconj_grid = selfconj
        self.index = np.flatnonzero(unique)  # flat indices (row-major) of the U unique bins
        self.size = self.index.size  # U = n^2/2 + 2
        assert self.size == n * n // 2 + 2
        self.selfconj = selfconj.ravel()[self.index]  # (U,) bool, 4 True
        self.weight = np.where(self.selfconj, 1.0, 2.0)  # Parseval multiplicity of each unique bin
        self.n_real = 2 * self.size - int(self.selfconj.sum())  # genuine real coordinates: n^2

    def gather(self, F: np.ndarray) -> np.ndarray:
        """``(S, n, n)`` full spectra -> ``(S, U)`` values on the unique bins."""
        return F.reshape(F.shape[0], -1)[:, self.index]

    def hermitian(self, half: np.ndarray) -> np.ndarray:
        """``(S, U)`` kept half-spectrum values -> ``(S, n, n)`` full Hermitian spectrum.

        Paired bins also fix their mirror bin (conjugate); self-conjugate bins are written once, not mirrored
        onto themselves (that would double their value and break the energy accounting).
        """
        S, n = half.shape[0], self.n
        G = np.zeros((S, n * n), dtype=np.complex128)
        G[:, self.index] = half
        G = G.reshape(S, n, n)
        mirrored = np.conj(G[:, self.mirror[:, None], self.mirror[None, :]])
        return G + np.where(self.selfconj_grid, 0.0, mirrored)


_HALF_CACHE: dict[int, HalfSpectrum] = {}


def half_spectrum(n: int) -> HalfSpectrum:
    if n not in _HALF_CACHE:
        _HALF_CACHE[n] = HalfSpectrum(n)
    return _HALF_CACHE[n]


# --------------------------------------------------------------------------------------------------------------
# Budgets
# --------------------------------------------------------------------------------------------------------------


def _capacity(method: str, n: int) -> int:
    """Largest number of items (rank / locations / coefficients) a method can keep for an ``n x n`` matrix."""
    if method == "lora":
        return n
    if method in ("fourier_random", "fourier_topk_locations"):
        return half_spectrum(n).size
    if method == "fourier_topk_coefficients":
        return half_spectrum(n).n_real
    if method == "dct_topk":
        return n * n
    raise ValueError(f"unknown method {method!r}")


def method_budget(method: str, n: int, rank: int) -> int | None:
    """Items kept at the budget of a rank-``rank`` LoRA (``2 rank n`` numbers); ``None`` if it does not fit."""
    if method == "lora":
        k = rank
    elif method in ("fourier_random", "fourier_topk_coefficients", "dct_topk"):
        k = rank * n  # 2 numbers per item
    elif method == "fourier_topk_locations":
        k = (2 * rank * n) // 3  # 3 numbers per location
    else:
        raise ValueError(f"unknown method {method!r}")
    return k if 1 <= k <= _capacity(method, n) else None


def params_used(method: str, n: int, rank: int) -> int | None:
    """Numbers actually stored (location indices counted as the paper does)."""
    k = method_budget(method, n, rank)
    if k is None:
        return None
    return {"lora": 2 * n * k, "fourier_topk_locations": 3 * k}.get(method, 2 * k)


# --------------------------------------------------------------------------------------------------------------
# Compressions (all batched over a leading sample axis: W has shape (S, n, n))
# --------------------------------------------------------------------------------------------------------------


def _topk_mask(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the ``k`` largest entries of each row of ``scores`` (``(S, m)``)."""
    mask = np.zeros(scores.shape, dtype=bool)
    if k >= scores.shape[1]:
        mask[:] = True
    elif k > 0:
        idx = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        np.put_along_axis(mask, idx, True, axis=1)
    return mask


def _fourier_from_masks(W: np.ndarray, keep_re: np.ndarray, keep_im: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the selected real / imaginary parts of the half spectrum; returns (W_hat, restored-energy fraction)."""
    hs = half_spectrum(W.shape[-1])
    F = np.fft.fft2(W, norm="ortho")
    Fu = hs.gather(F)
    half = np.where(keep_re, Fu.real, 0.0) + 1j * np.where(keep_im, Fu.imag, 0.0)
    full = hs.hermitian(half)
    rec = np.fft.ifft2(full, norm="ortho")
    scale = np.abs(rec.real).max() + 1e-300
    assert np.abs(rec.imag).max() <= 1e-10 * scale, "rebuilt spectrum is not Hermitian"
    kept = (hs.weight * (np.abs(half) ** 2)).sum(axis=1)
    total = (W.reshape(W.shape[0], -1) ** 2).sum(axis=1)
    return rec.real, kept / total


def _fourier_random(W, k, rng):
    hs = half_spectrum(W.shape[-1])
    keep = _topk_mask(rng.random((W.shape[0], hs.size)), k)  # k uniform random locations per sample
    return _fourier_from_masks(W, keep, keep)


def _fourier_topk_locations(W, k):
    hs = half_spectrum(W.shape[-1])
    Fu = hs.gather(np.fft.fft2(W, norm="ortho"))
    keep = _topk_mask(hs.weight * np.abs(Fu) ** 2, k)  # energy restored by each location
    return _fourier_from_masks(W, keep, keep)


def _fourier_topk_coefficients(W, k):
    hs = half_spectrum(W.shape[-1])
    Fu = hs.gather(np.fft.fft2(W, norm="ortho"))
    score_re = hs.weight * Fu.real**2
    score_im = np.where(hs.selfconj, -np.inf, hs.weight * Fu.imag**2)  # zero imag of self-conj bins: no candidate
    keep = _topk_mask(np.concatenate([score_re, score_im], axis=1), k)
    U = hs.size
    return _fourier_from_masks(W, keep[:, :U], keep[:, U:])


def _dct_topk(W, k):
    C = scipy.fft.dctn(W, type=2, norm="ortho", axes=(-2, -1))
    flat = C.reshape(C.shape[0], -1)
    keep = _topk_mask(flat**2, k)
    kept = np.where(keep, flat, 0.0)
    rec = scipy.fft.idctn(kept.reshape(C.shape), type=2, norm="ortho", axes=(-2, -1))
    return rec, (kept**2).sum(axis=1) / (flat**2).sum(axis=1)


def _lora(W, k, svd=None):
    U, s, Vh = np.linalg.svd(W) if svd is None else svd
    rec = (U[:, :, :k] * s[:, None, :k]) @ Vh[:, :k, :]
    return rec, (s[:, :k] ** 2).sum(axis=1) / (s**2).sum(axis=1)


def _reconstruct_items(W, method, k, rng=None, svd=None):
    """``(W_hat, restored-energy fraction)`` for ``k`` items (rank / locations / coefficients)."""
    if method == "lora":
        return _lora(W, k, svd)
    if method == "fourier_random":
        return _fourier_random(W, k, rng if rng is not None else np.random.default_rng(0))
    if method == "fourier_topk_locations":
        return _fourier_topk_locations(W, k)
    if method == "fourier_topk_coefficients":
        return _fourier_topk_coefficients(W, k)
    if method == "dct_topk":
        return _dct_topk(W, k)
    raise ValueError(f"unknown method {method!r}")


def relative_error(W: np.ndarray, W_hat: np.ndarray) -> np.ndarray:
    """Per-sample ``||W - W_hat||_F^2 / ||W||_F^2`` (``W`` of shape ``(S, n, n)`` or ``(n, n)``)."""
    W = np.asarray(W)
    W_hat = np.asarray(W_hat)
    axes = (-2, -1)
    return ((W - W_hat) ** 2).sum(axis=axes) / (W**2).sum(axis=axes)


def _as_batch(W):
    W = np.asarray(W, dtype=np.float64)
    if W.ndim == 2:
        W = W[None]
    if W.ndim != 3 or W.shape[1] != W.shape[2]:
        raise ValueError(f"expected (n, n) or (S, n, n), got {W.shape}")
    return W


def reconstruct(W, method: str, rank: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """Reconstruction of ``W`` (``(n, n)`` or ``(S, n, n)``) at the budget of a rank-``rank`` LoRA."""
    squeeze = np.ndim(W) == 2
    W = _as_batch(W)
    k = method_budget(method, W.shape[-1], rank)
    if k is None:
        raise ValueError(f"{method} cannot hold the budget of rank {rank} for n={W.shape[-1]}")
    rec, _ = _reconstruct_items(W, method, k, rng)
    return rec[0] if squeeze else rec


def reconstruction_errors(
    W,
    ranks=RANKS,
    methods=METHODS,
    rng: np.random.Generator | None = None,
    check_energy: bool = True,
) -> dict[tuple[str, int], np.ndarray]:
    """Per-sample relative errors ``{(method, rank): (S,) array}`` for ``W`` of shape ``(n, n)`` or ``(S, n, n)``.

    Ranks that do not fit a method's capacity are left out. With ``check_energy`` every measured error is checked
    against the energy bookkeeping (``1 - restored energy / total``), which catches a wrong mirror/self-conjugate
    treatment of the Hermitian spectrum.
    """
    W = _as_batch(W)
    n = W.shape[-1]
    rng = rng if rng is not None else np.random.default_rng(0)
    svd = np.linalg.svd(W) if "lora" in methods else None
    out: dict[tuple[str, int], np.ndarray] = {}
    for method in methods:
        for rank in ranks:
            k = method_budget(method, n, rank)
            if k is None:
                continue
            rec, kept = _reconstruct_items(W, method, k, rng, svd)
            err = relative_error(W, rec)
            if check_energy:
                assert np.allclose(err, 1.0 - kept, atol=1e-9), (method, rank, err, 1.0 - kept)
            out[(method, rank)] = err
    return out


def self_check(n: int = 16, samples: int = 2, seed: int = 0) -> dict[str, float]:
    """Keep *every* half-spectrum coefficient (and every DCT coefficient / singular value): error must be ~0.

    Returns ``{method: max relative error}``; asserts each is below 1e-20.
    """
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((samples, n, n))
    errs = {}
    for method in METHODS:
        rec, kept = _reconstruct_items(W, method, _capacity(method, n), rng)
        errs[method] = float(relative_error(W, rec).max())
        assert errs[method] < 1e-20, f"{method}: keeping everything leaves error {errs[method]:.3e}"
        assert np.allclose(kept, 1.0, atol=1e-12), (method, kept)
    return errs


# --------------------------------------------------------------------------------------------------------------
# Benchmark driver
# --------------------------------------------------------------------------------------------------------------


def run_benchmark(sizes=SIZES, ranks=RANKS, samples: int = 10, seed: int = 0) -> list[dict]:
    records = []
    for n in sizes:
        ss = np.random.SeedSequence([seed, n])
        w_seed, loc_seed = ss.spawn(2)
        W = np.random.default_rng(w_seed).standard_normal((samples, n, n))
        errs = reconstruction_errors(W, ranks, METHODS, rng=np.random.default_rng(loc_seed))
        for rank in ranks:
            for method in METHODS:
                if (method, rank) not in errs:
                    continue
                e = errs[(method, rank)]
                records.append(
                    {
                        "n": n,
                        "rank": rank,
                        "method": method,
                        "relative_error": float(e.mean()),
                        "relative_error_std": float(e.std(ddof=1)) if e.size > 1 else 0.0,
                        "params": params_used(method, n, rank),
                        "samples": samples,
                    }
                )
    return records


def machine_header() -> str:
    import torch  # only for the version string

    return (
        f"Machine: `{platform.platform()}`, processor `{platform.processor() or 'unknown'}`, "
        f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}; date {_dt.datetime.now().astimezone().isoformat(timespec='seconds')}"
    )


def to_markdown(records: list[dict], header: str, runtime_s: float, samples: int) -> str:
    table = {(r["n"], r["rank"], r["method"]): r["relative_error"] for r in records}
    keys = sorted({(r["n"], r["rank"]) for r in records})
    lines = [
        "# LoCA theory check: relative reconstruction error of Gaussian matrices",
        "",
        header,
        "",
        f"Relative error `||W - W_hat||_F^2 / ||W||_F^2`, mean over {samples} i.i.d. N(0,1) `n x n` matrices, "
        f"at the parameter budget of a rank-r LoRA (`2rn` numbers, location indices counted). "
        f"`fourier_topk_locations` keeps `floor(2rn/3)` locations (3 numbers each). Runtime {runtime_s:.1f} s. "
        "Generated by `python -m bench.theory`.",
        "",
        "Note: at `r = n/2` the budget `2rn` equals the `n^2` entries of `W`; `fourier_random` (free locations) then "
        "stores almost the whole half spectrum and becomes nearly lossless, while the top-k methods still pay for "
        "their indices, so the ordering flips there (n=64, r=32).",
        "",
        "| n | rank | " + " | ".join(METHODS) + " |",
        "|---:|---:|" + "---:|" * len(METHODS),
    ]
    for n, rank in keys:
        cells = [f"{table[(n, rank, m)]:.4f}" if (n, rank, m) in table else "n/a" for m in METHODS]
        lines.append(f"| {n} | {rank} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r["n"] for r in records})
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 4), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], sizes):
        for method in METHODS:
            pts = sorted((r["rank"], r["relative_error"]) for r in records if r["n"] == n and r["method"] == method)
            if pts:
                style = {"dct_topk": dict(linestyle="--", marker="x")}.get(method, dict(marker="o"))
                ax.plot(*zip(*pts), label=method, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("rank r (budget 2rn)")
        ax.set_title(f"n = {n}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("relative error ||W - W_hat||² / ||W||²")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="output JSON (the .md and .png go next to it)")
    p.add_argument("--samples", type=int, default=None, help="matrices per (n, rank) (default 10; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: n=64, 2 samples, outputs in bench/results/tmp/")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    sizes = (64,) if args.quick else SIZES
    samples = args.samples if args.samples is not None else (2 if args.quick else 10)
    if args.json is None:  # quick runs must not overwrite the committed results
        args.json = RESULTS_DIR / ("tmp/theory_quick.json" if args.quick else "theory.json")
    json_path = args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    checks = self_check(n=16)
    checks.update({f"{m}@64": v for m, v in self_check(n=64).items()})
    records = run_benchmark(sizes, RANKS, samples, args.seed)
    runtime = time.perf_counter() - t0

    header = machine_header()
    json_path.write_text(json.dumps(records, indent=1) + "\n")
    md = to_markdown(records, header, runtime, samples)
    json_path.with_suffix(".md").write_text(md)
    plot(records, json_path.with_suffix(".png"))
    print(md)
    print(f"self-check (all coefficients kept), max error: {max(checks.values()):.2e}")
    print(f"wrote {json_path}, {json_path.with_suffix('.md')}, {json_path.with_suffix('.png')} in {runtime:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
