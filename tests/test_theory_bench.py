"""Checks of bench/theory.py on a tiny case (n=16) against facts computed independently with numpy."""

import numpy as np
import pytest

from bench.theory import (
    METHODS,
    half_spectrum,
    method_budget,
    params_used,
    reconstruct,
    reconstruction_errors,
    relative_error,
    self_check,
)

from _reference import explicit_dct_matrix

N = 16
RANKS = (1, 2, 4)  # below n/2: at r = n/2 the budget 2rn equals n^2 numbers (see bench/theory.py)


@pytest.fixture(scope="module")
def W():
    return np.random.default_rng(1234).standard_normal((4, N, N))


@pytest.fixture(scope="module")
def errors(W):
    return reconstruction_errors(W, RANKS, METHODS, rng=np.random.default_rng(5))


def test_all_methods_and_ranks_present(errors):
    assert set(errors) == {(m, r) for m in METHODS for r in RANKS}


def test_lora_matches_discarded_singular_values(W, errors):
    s = np.linalg.svd(W, compute_uv=False)
    total = (s**2).sum(axis=1)
    for r in RANKS:
        expected = (s[:, r:] ** 2).sum(axis=1) / total
        np.testing.assert_allclose(errors[("lora", r)], expected, rtol=1e-10, atol=1e-12)
    # and the direct reconstruction agrees with the Eckart-Young error
    np.testing.assert_allclose(
        relative_error(W, reconstruct(W, "lora", 2)), (s[:, 2:] ** 2).sum(axis=1) / total, rtol=1e-10
    )


def _mirror_orbits(F):
    """Energies of the bins of a real matrix's spectrum ``F`` (n x n), one entry per mirror orbit ``{(i, j),
    (-i, -j)}``: ``(orbit energy, energy of its real part, energy of its imaginary part, self-conjugate)``."""
    n = F.shape[0]
    seen, orbits = set(), []
    for i in range(n):
        for j in range(n):
            mirror = ((-i) % n, (-j) % n)
            if (i, j) in seen:
                continue
            seen.update({(i, j), mirror})
            weight = 1.0 if mirror == (i, j) else 2.0
            value = F[i, j]
            orbits.append((weight * abs(value) ** 2, weight * value.real**2, weight * value.imag**2, weight == 1.0))
    return orbits


def test_errors_in_unit_interval(errors, W):
    """Each error against the optimum of its projection, computed here from the full spectra: a wrong projection
    (other coefficients, a lost mirror half, a non-orthonormal transform) misses it, even inside [0, 1]."""
    for key, err in errors.items():
        assert np.all(err >= -1e-12) and np.all(err <= 1 + 1e-12), key
    c = explicit_dct_matrix(N).numpy()
    for sample, w in enumerate(W):
        total = (w**2).sum()
        dct_energy = np.sort(((c @ w @ c.T) ** 2).ravel())[::-1]
        singular = np.linalg.svd(w, compute_uv=False) ** 2
        orbits = _mirror_orbits(np.fft.fft2(w, norm="ortho"))
        assert len(orbits) == N * N // 2 + 2
        by_location = np.sort([o[0] for o in orbits])[::-1]
        coordinates = np.sort([e for o in orbits for e in ((o[1],) if o[3] else (o[1], o[2]))])[::-1]
        for r in RANKS:
            expected = {
                "lora": 1 - singular[:r].sum() / total,
                "dct_topk": 1 - dct_energy[: r * N].sum() / total,
                "fourier_topk_locations": 1 - by_location[: 2 * r * N // 3].sum() / total,
                "fourier_topk_coefficients": 1 - coordinates[: r * N].sum() / total,
            }
            for method, value in expected.items():
                np.testing.assert_allclose(errors[(method, r)][sample], value, rtol=1e-9, err_msg=f"{method} r={r}")
    # random locations keep k of the N^2/2 + 2 orbits: on average the fraction k / (N^2/2 + 2) of the energy
    for r in RANKS:
        expected = 1 - r * N / (N * N // 2 + 2)
        assert abs(errors[("fourier_random", r)].mean() - expected) < 0.05, (r, errors[("fourier_random", r)].mean())


def test_errors_decrease_with_rank(errors):
    for m in METHODS:
        if m == "fourier_random":
            continue  # random locations are redrawn per rank; only monotone in expectation
        vals = [errors[(m, r)].mean() for r in RANKS]
        assert all(a > b for a, b in zip(vals, vals[1:])), (m, vals)


def test_keep_everything_is_lossless():
    errs = self_check(n=N, samples=2)
    assert set(errs) == set(METHODS)
    assert max(errs.values()) < 1e-20


def test_dct_topk_beats_random_fourier(errors):
    for r in RANKS:
        assert np.all(errors[("dct_topk", r)] <= errors[("fourier_random", r)]), r


def test_half_spectrum_counts_and_budgets():
    hs = half_spectrum(N)
    assert hs.size == N * N // 2 + 2 and hs.n_real == N * N and hs.selfconj.sum() == 4
    for m in METHODS:
        for r in RANKS:
            assert params_used(m, N, r) <= 2 * r * N
    assert method_budget("fourier_random", N, N) is None  # N*N locations do not fit in the half spectrum


def test_fourier_reconstruction_against_full_fft(W):
    """Independent of the half-spectrum bookkeeping: the rebuilt spectrum (numpy fft2 of the result) must equal
    W's spectrum on a mirror-symmetric support of ~2k bins, be zero elsewhere, and Parseval gives the error."""
    n = N
    mirror = (-np.arange(n)) % n
    for method in ("fourier_random", "fourier_topk_locations"):
        k = method_budget(method, n, 2)
        rec = reconstruct(W[0], method, 2, rng=np.random.default_rng(0))
        assert rec.shape == (n, n) and np.isrealobj(rec)
        F = np.fft.fft2(W[0], norm="ortho")
        G = np.fft.fft2(rec, norm="ortho")
        support = np.abs(G) > 1e-9
        assert np.array_equal(support, support[mirror][:, mirror])
        assert 2 * k - 4 <= support.sum() <= 2 * k
        np.testing.assert_allclose(G[support], F[support], atol=1e-10)
        np.testing.assert_allclose(np.abs(G[~support]), 0, atol=1e-9)
        parseval = (np.abs(F[~support]) ** 2).sum() / (W[0] ** 2).sum()
        np.testing.assert_allclose(relative_error(W[0], rec), parseval, rtol=1e-9)
