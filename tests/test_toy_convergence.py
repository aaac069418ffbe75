"""Small versions of bench/toy_convergence.py (the paper's Appendix M toy experiment)."""

from dataclasses import replace

import numpy as np
import pytest
import scipy.fft
import scipy.optimize
import torch

from bench.toy_convergence import (
    ADAPTER,
    ToyConfig,
    build_model,
    make_problem,
    matched_within,
    run_seed,
    summarize,
    to_markdown,
    train,
)

CFG = ToyConfig()


# The benchmark runs each seed on one torch thread; keep the (discrete, chaotic) trajectories identical.
pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_ground_truth_uses_the_library_dct_convention():
    """The bench builds dW* = C^T S* C with its own DCT matrix; the LoCA adapter holding the true coefficients at
    the true (row, col) locations must reproduce it and the labels (catches a transposed or unnormalised DCT)."""
    for seed in range(3):
        problem = make_problem(seed, CFG)
        model, layer = build_model(problem, CFG)
        with torch.no_grad():
            layer.loca_locations[ADAPTER].copy_(problem["true_indices"].float() / (CFG.dim - 1))
            layer.loca_coefficients[ADAPTER].copy_(problem["true_coefficients"])
        torch.testing.assert_close(layer.get_locations(ADAPTER), problem["true_indices"])
        torch.testing.assert_close(layer.get_delta_weight(ADAPTER), problem["delta"], atol=1e-5, rtol=0)
        with torch.no_grad():
            torch.testing.assert_close(model(problem["x"]), problem["y"], atol=1e-4, rtol=0)
        # the perturbation matters: without the adapter the labels are far off
        with torch.no_grad(), model.disable_adapter():
            assert torch.nn.functional.mse_loss(model(problem["x"]), problem["y"]) > 1e-2


def test_matched_within():
    true = [[0, 0], [3, 3], [5, 5]]
    assert matched_within([[0, 0], [3, 3], [5, 5]], true, 0) == 3
    assert matched_within([[0, 1], [3, 3], [2, 2]], true, 1) == 2
    assert matched_within([[0, 1], [0, 1], [0, 1]], true, 1) == 1  # one learned location serves one true one


def _neighbour_of(indices: torch.Tensor, generator: torch.Generator, dim: int) -> torch.Tensor:
    """Each location moved by one grid step (row or column, staying inside the grid)."""
    out = indices.clone()
    for k in range(indices.shape[1]):
        moves = [
            (dr, dc)
            for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
            if 0 <= indices[0, k] + dr < dim and 0 <= indices[1, k] + dc < dim
        ]
        dr, dc = moves[int(torch.randint(len(moves), (1,), generator=generator))]
        out[0, k] += dr
        out[1, k] += dc
    return out


def test_location_learning_finds_true_locations_one_step_away():
    """Started one grid step from each true location, learned locations must recover true ones (the same start kept
    fixed recovers none) and reach a lower loss. Guards the sign and scale of the location gradients and the
    schedule: with zero or reversed location gradients this fails.

    Not a measure of the method: over seeds 0-7 (500 steps) learned locations recover 7 of the 24 true locations
    from such starts and end below the fixed start in only 4 of 8 seeds; seeds 3 and 6 are ones where it works (1
    and 2 recovered; loss 0.10/0.06 vs 0.21/0.51 fixed). The full benchmark reports the random-start numbers."""
    cfg = replace(CFG, steps=500)
    recovered, learned_losses, fixed_losses = [], [], []
    for seed in (3, 6):
        problem = make_problem(seed, cfg)
        start = _neighbour_of(problem["true_indices"], torch.Generator().manual_seed(seed), cfg.dim)
        assert len({tuple(p) for p in start.T.tolist()}) == start.shape[1]
        learned = train(problem, cfg, "learned", init_indices=start)
        fixed = train(problem, cfg, "fixed", init_indices=start)
        assert fixed["recovered"] == 0 and fixed["final_locations"] == fixed["init_locations"]
        assert learned["init_locations"] == fixed["init_locations"] and learned["locations_frozen"]
        recovered.append(learned["recovered"])
        learned_losses.append(learned["final_loss"])
        fixed_losses.append(fixed["final_loss"])
    assert sum(recovered) >= 2, recovered
    assert sum(learned_losses) < 0.7 * sum(fixed_losses), (learned_losses, fixed_losses)


def _dense_loss(problem: dict, coefficients, locations) -> float:
    """The full-batch MSE with ``W2 = W2_base + dW``, ``dW`` from scipy's inverse 2-D DCT, in float64."""
    d = problem["w2_base"].shape[0]
    spectrum = np.zeros((d, d))
    for a, (r, c) in zip(coefficients, locations):
        spectrum[r, c] += a
    w2 = problem["w2_base"].double() + torch.from_numpy(scipy.fft.idctn(spectrum, norm="ortho"))
    x = problem["x"].double()
    prediction = torch.tanh(torch.tanh(x @ problem["w1"].double().T) @ w2.T) @ problem["w3"].double().T
    return torch.mean((prediction - problem["y"].double()) ** 2).item()


def test_small_benchmark_pipeline():
    """Two seeds, few steps, the three runs: every reported number against a recomputation from the record
    (dense losses from the reported coefficients and locations, recovery counts, the summary, the report), and
    the learned run's locations move in its location phases and only there."""
    cfg = replace(CFG, steps=120)
    records = [run_seed(seed, cfg) for seed in (0, 1)]  # seed 1: a learned location one step from a true one
    t_s = cfg.location_training_steps
    cycle = cfg.coefficient_steps + cfg.location_steps
    for record in records:
        problem = make_problem(record["seed"], cfg)
        true = {tuple(p) for p in record["true_locations"]}
        assert true == {tuple(p) for p in problem["true_indices"].T.tolist()}
        runs = record["runs"]
        for variant, run in runs.items():
            initial = _dense_loss(problem, [0.0] * cfg.n_frequency, run["init_locations"])
            assert run["initial_loss"] == pytest.approx(initial, rel=1e-4), variant
            final = _dense_loss(problem, run["final_coefficients"], run["final_locations"])
            assert run["final_loss"] == pytest.approx(final, rel=1e-3), variant
            learned = {tuple(p) for p in run["final_locations"]}
            assert run["recovered"] == len(learned & true) and run["exact"] == (learned == true), variant
            distance = np.array([[abs(a - c) + abs(b - d) for c, d in true] for a, b in run["final_locations"]])
            rows, cols = scipy.optimize.linear_sum_assignment(distance <= 1, maximize=True)
            assert run["within_one"] == int((distance[rows, cols] <= 1).sum()), variant
        learned, fixed, oracle = runs["learned"], runs["fixed"], runs["oracle"]
        assert learned["init_locations"] == fixed["init_locations"]  # same start
        assert fixed["final_locations"] == fixed["init_locations"]  # V1 never moves
        assert {tuple(p) for p in oracle["init_locations"]} == true and oracle["final_locations"] == oracle[
            "init_locations"
        ]
        assert oracle["final_loss"] < fixed["final_loss"]  # the true locations fit better
        # the learned continuous locations move in every location phase before T_s, never otherwise
        points = torch.tensor(learned["trajectory_continuous"])
        moved = [not torch.equal(points[t + 1], points[t]) for t in range(cfg.steps)]
        location_steps = [t < t_s and t % cycle >= cfg.coefficient_steps for t in range(cfg.steps)]
        assert not any(m for m, loc in zip(moved, location_steps) if not loc)
        for phase_start in range(cfg.coefficient_steps, t_s, cycle):
            assert any(moved[phase_start : min(phase_start + cfg.location_steps, t_s)]), phase_start
        assert torch.equal(torch.tensor(learned["trajectory"][-1]), torch.tensor(learned["final_locations"]).T)

    summary = summarize(records)
    assert summary["n_seeds"] == 2
    for variant in ("learned", "fixed", "oracle"):
        runs = [r["runs"][variant] for r in records]
        assert summary[variant]["exact_fraction"] == sum(r["exact"] for r in runs) / 2
        assert summary[variant]["mean_recovered"] == sum(r["recovered"] for r in runs) / 2
        assert summary[variant]["final_loss_median"] == pytest.approx(sum(r["final_loss"] for r in runs) / 2)
    beats = [r["runs"]["learned"]["final_loss"] < r["runs"]["fixed"]["final_loss"] for r in records]
    assert summary["learned_beats_fixed_fraction"] == sum(beats) / 2
    unmoved = [
        sorted(r["runs"]["learned"]["final_locations"]) == sorted(r["runs"]["learned"]["init_locations"])
        for r in records
    ]
    assert summary["learned_unmoved_fraction"] == sum(unmoved) / 2
    md = to_markdown(
        records,
        summary,
        cfg,
        {"platform": "p", "cpu": "c", "python": "3", "torch": "t", "date": "d", "workers": 1, "png": "x.png"},
        "cmd",
        1.0,
        0,
    )
    for record in records:
        runs = record["runs"]
        row = next(line for line in md.splitlines() if line.startswith(f"| {record['seed']} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[4] == str(runs["learned"]["recovered"])
        assert [float(c) for c in cells[5:8]] == [
            pytest.approx(runs[v]["final_loss"], rel=1e-3) for v in ("learned", "fixed", "oracle")
        ]
