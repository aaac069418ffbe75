"""Small versions of bench/toy_convergence.py (the paper's Appendix M toy experiment)."""

from dataclasses import replace

import pytest
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


@pytest.fixture(autouse=True)
def one_thread():
    """The benchmark runs each seed on one torch thread; keep the (discrete, chaotic) trajectories identical."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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
        moves = [(dr, dc) for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                 if 0 <= indices[0, k] + dr < dim and 0 <= indices[1, k] + dc < dim]
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


def test_small_benchmark_pipeline():
    """Two seeds, few steps, the three runs: structural facts of the schedule and the report."""
    cfg = replace(CFG, steps=120)
    records = [run_seed(seed, cfg) for seed in (0, 5)]
    for record in records:
        runs = record["runs"]
        learned, fixed, oracle = runs["learned"], runs["fixed"], runs["oracle"]
        assert learned["init_locations"] == fixed["init_locations"]  # same start
        assert fixed["final_locations"] == fixed["init_locations"]  # V1 never moves
        assert oracle["exact"] and oracle["final_locations"] == oracle["init_locations"]
        # the learned locations stop changing at T_s
        traj = learned["trajectory"]
        t_s = cfg.location_training_steps
        assert all(step == traj[t_s] for step in traj[t_s:])
        assert traj[-1] == [[r for r, _ in learned["final_locations"]], [c for _, c in learned["final_locations"]]]
        assert learned["initial_loss"] == pytest.approx(fixed["initial_loss"])
        # coefficients at the true locations fit the labels far better than at random ones
        assert oracle["final_loss"] < 0.6 * fixed["final_loss"]
    summary = summarize(records)
    assert summary["n_seeds"] == 2 and summary["oracle"]["exact_fraction"] == 1.0
    md = to_markdown(records, summary, cfg, {"platform": "p", "cpu": "c", "python": "3", "torch": "t",
                                             "date": "d", "workers": 1, "png": "x.png"}, "cmd", 1.0, 0)
    assert "| seed |" in md and md.count("\n| 0 |") == 1 and md.count("\n| 5 |") == 1
