"""Toy convergence of LoCA's location learning (paper Appendix M).

Can the finite-difference location gradients find where the non-zero DCT coefficients of a weight update are?

Problem (one per seed):

* 5000 inputs ``x ~ N(0, I_6)``;
* a three-layer network ``f(x) = W3 tanh(W2 tanh(W1 x))`` with bias-free 6x6 linear layers (entries of
  ``W1, W2_base, W3`` i.i.d. ``N(0, weight_std^2)``, default 1). The paper only says "a simple three-layer neural
  network"; the tanh between the layers is our choice (``--activation none`` gives a linear network);
* ground truth ``W2 = W2_base + dW*`` with ``dW* = C^T S* C`` (``C`` the orthonormal 6-point DCT-II matrix, built
  here independently of the library), ``S*`` holding exactly 3 non-zero coefficients at distinct random
  ``(row, col)`` locations, values ``sign * U(0.5, 1.5)`` (N(0,1)-like magnitudes, but bounded away from zero so
  that every true location matters for the loss); labels ``y = f(x)`` with the true ``W2``.

Training: the same frozen ``W1, W2_base, W3``; a LoCA adapter (``n_frequency=3``, ``scaling=1``, zero coefficients,
random initial locations from ``random_loc_seed``) on the middle layer through ``peft.get_peft_model``; full-batch
SGD on the MSE (``F.mse_loss``, mean over samples and outputs); coefficient lr 0.02, location lr 0.05 (the
paper's values), :class:`~loca_diffusion.LoCASchedule` with ``B_a = B_l = 10`` and ``T_s`` = 65% of the steps.
Three runs per seed from the same initial state:

``learned``  the paper's alternating schedule (locations learned until ``T_s``, then frozen);
``fixed``    V1: the random initial locations are never learned (coefficients trained at every step);
``oracle``   the locations fixed at the true ones (what perfect location recovery would give in this budget).

The frozen first layer's output ``tanh(W1 x)`` is computed once and the training loop calls the adapted model
from there on (identical maths, checked at the start of each run; saves a third of the per-step cost).

Reported: the fraction of seeds whose learned location set equals the true set (as sets of ``(row, col)``), the
mean number of true locations recovered (0-3), the number within one grid step (L1 distance <= 1, one-to-one
matching), and the final losses. The plot shows the location trajectories of a representative seed (the one
whose learned/fixed final-loss ratio is the median) and its loss curves.

    python -m bench.toy_convergence [--seeds N] [--steps N] [--json PATH] [--quick] [--workers N]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shlex
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import peft  # noqa: E402
import torch
import torch.nn as nn
import torch.nn.functional as F

from bench.machine import machine_info  # noqa: E402
from loca_diffusion import LoCAConfig, LoCALayer, LoCASchedule  # noqa: E402
from loca_diffusion.tuners.loca.ops import indices_to_locations  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ADAPTER = "default"
VARIANTS = ("learned", "fixed", "oracle")

__all__ = [
    "ToyConfig",
    "ToyNet",
    "dct_matrix_reference",
    "make_problem",
    "build_model",
    "train",
    "run_seed",
    "summarize",
    "run_benchmark",
    "matched_within",
]


@dataclass(frozen=True)
class ToyConfig:
    n_samples: int = 5000
    dim: int = 6
    n_frequency: int = 3
    activation: str = "tanh"  # or "none" (linear network)
    weight_std: float = 1.0
    steps: int = 2000
    location_training_fraction: float = 0.65  # T_s = round(fraction * steps)
    lr: float = 0.02
    location_lr: float = 0.05
    coefficient_steps: int = 10
    location_steps: int = 10
    location_grad: str = "central"  # finite difference of the location gradients (LoCAConfig.location_grad)
    log_every: int = 10  # loss-curve subsampling in the JSON

    @property
    def location_training_steps(self) -> int:
        return int(round(self.location_training_fraction * self.steps))


# ----------------------------------------------------------------------------------------------------------------
# problem


def dct_matrix_reference(n: int, dtype=torch.float64) -> torch.Tensor:
    """Orthonormal DCT-II matrix ``C`` (``C @ v`` is the DCT of ``v``), from its textbook formula."""
    k = torch.arange(n, dtype=dtype)[:, None]
    i = torch.arange(n, dtype=dtype)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


class ToyNet(nn.Module):
    """``l3(act(l2(act(l1(x)))))`` with bias-free ``dim x dim`` linear layers."""

    def __init__(self, dim: int, activation: str) -> None:
        super().__init__()
        if activation not in ("tanh", "none"):
            raise ValueError(f"activation must be 'tanh' or 'none', got {activation!r}")
        self.activation = activation
        self.l1 = nn.Linear(dim, dim, bias=False)
        self.l2 = nn.Linear(dim, dim, bias=False)
        self.l3 = nn.Linear(dim, dim, bias=False)

    def act(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z) if self.activation == "tanh" else z

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """Output of the (frozen) first layer."""
        return self.act(self.l1(x))

    def head(self, h: torch.Tensor) -> torch.Tensor:
        """The rest of the network from the first layer's output."""
        return self.l3(self.act(self.l2(h)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(x))


def make_problem(seed: int, cfg: ToyConfig) -> dict:
    """Inputs, frozen weights, the sparse DCT ground truth and the labels of one seed."""
    g = torch.Generator().manual_seed(seed)
    d = cfg.dim
    x = torch.randn(cfg.n_samples, d, generator=g)
    w1, w2, w3 = (torch.randn(d, d, generator=g) * cfg.weight_std for _ in range(3))
    flat = torch.randperm(d * d, generator=g)[: cfg.n_frequency]
    true_indices = torch.stack([flat // d, flat % d])
    magnitudes = 0.5 + torch.rand(cfg.n_frequency, generator=g)
    signs = torch.where(torch.rand(cfg.n_frequency, generator=g) < 0.5, -1.0, 1.0)
    true_coefficients = magnitudes * signs
    spectrum = torch.zeros(d, d, dtype=torch.float64)
    spectrum[true_indices[0], true_indices[1]] = true_coefficients.double()
    c = dct_matrix_reference(d)
    delta = (c.T @ spectrum @ c).float()
    net = ToyNet(d, cfg.activation)
    with torch.no_grad():
        net.l1.weight.copy_(w1)
        net.l2.weight.copy_(w2 + delta)
        net.l3.weight.copy_(w3)
        y = net(x)
    return {
        "seed": seed,
        "x": x,
        "y": y,
        "w1": w1,
        "w2_base": w2,
        "w3": w3,
        "delta": delta,
        "true_indices": true_indices,
        "true_coefficients": true_coefficients,
        "random_loc_seed": 10_000 + seed,
    }


def build_model(problem: dict, cfg: ToyConfig):
    """The frozen network with ``W2_base`` and a fresh LoCA adapter on ``l2``; returns (peft model, LoCA layer)."""
    net = ToyNet(cfg.dim, cfg.activation)
    with torch.no_grad():
        net.l1.weight.copy_(problem["w1"])
        net.l2.weight.copy_(problem["w2_base"])
        net.l3.weight.copy_(problem["w3"])
    config = LoCAConfig(
        target_modules=["l2"],
        n_frequency=cfg.n_frequency,
        scaling=1.0,
        random_loc_seed=problem["random_loc_seed"],
        location_grad=cfg.location_grad,
    )
    model = peft.get_peft_model(net, config)
    layer = model.base_model.model.l2
    assert isinstance(layer, LoCALayer)
    return model, layer


# ----------------------------------------------------------------------------------------------------------------
# training


def _as_pairs(indices: torch.Tensor) -> list[list[int]]:
    return [[int(r), int(c)] for r, c in indices.T.tolist()]


def matched_within(learned: list[list[int]], true: list[list[int]], radius: int) -> int:
    """Most true locations that distinct learned locations can be matched to within L1 distance ``radius``."""
    best = 0
    for perm in itertools.permutations(range(len(learned)), len(true)):
        hits = sum(abs(learned[j][0] - t[0]) + abs(learned[j][1] - t[1]) <= radius for j, t in zip(perm, true))
        best = max(best, hits)
    return best


def train(
    problem: dict,
    cfg: ToyConfig,
    variant: str,
    record_trajectory: bool = False,
    init_indices: torch.Tensor | None = None,
) -> dict:
    """Train one adapter (``learned``, ``fixed`` or ``oracle``) and return its record.

    ``init_indices`` (``[2, B]`` integers) replaces the adapter's random initial locations (``oracle`` uses the
    true ones)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    model, layer = build_model(problem, cfg)
    d = cfg.dim
    if variant == "oracle":
        init_indices = problem["true_indices"]
    if init_indices is not None:
        with torch.no_grad():
            layer.loca_locations[ADAPTER].copy_(indices_to_locations(init_indices, d, d))
    schedule = LoCASchedule(
        model,
        coefficient_steps=cfg.coefficient_steps,
        location_steps=cfg.location_steps,
        location_training_steps=cfg.location_training_steps,
        variant="alternating" if variant == "learned" else "fixed",
    )
    optimizer = torch.optim.SGD(schedule.parameter_groups(lr=cfg.lr, location_lr=cfg.location_lr))
    inner = model.base_model.model
    x, y = problem["x"], problem["y"]
    with torch.no_grad():
        hidden = inner.hidden(x)  # the first layer is frozen and its input needs no gradient
        initial_loss = F.mse_loss(model(x), y).item()
        assert abs(F.mse_loss(inner.head(hidden), y).item() - initial_loss) <= 1e-6 * max(1.0, initial_loss)
    init_locations = _as_pairs(layer.get_locations(ADAPTER))

    losses = torch.empty(cfg.steps)
    trajectory = continuous = None
    if record_trajectory:
        trajectory = torch.empty(cfg.steps + 1, 2, cfg.n_frequency, dtype=torch.long)
        continuous = torch.empty(cfg.steps + 1, 2, cfg.n_frequency)
        scale = torch.tensor([[d - 1.0], [d - 1.0]])
        trajectory[0] = layer.get_locations(ADAPTER)
        continuous[0] = layer.loca_locations[ADAPTER].detach() * scale
    for step in range(cfg.steps):
        loss = F.mse_loss(inner.head(hidden), y)
        loss.backward()
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        losses[step] = loss.detach()
        if record_trajectory:
            trajectory[step + 1] = layer.get_locations(ADAPTER)
            continuous[step + 1] = layer.loca_locations[ADAPTER].detach() * scale

    with torch.no_grad():
        final_loss = F.mse_loss(model(x), y).item()
    learned = _as_pairs(layer.get_locations(ADAPTER))
    true = _as_pairs(problem["true_indices"])
    true_set = {tuple(p) for p in true}
    record = {
        "variant": variant,
        "initial_loss": initial_loss,
        "final_loss": final_loss,
        "init_locations": init_locations,
        "final_locations": learned,
        "final_coefficients": layer.loca_coefficients[ADAPTER].detach().tolist(),
        # the continuous locations in index units; for `learned` they are those at T_s, where they froze
        "final_continuous": (layer.loca_locations[ADAPTER].detach() * (d - 1)).tolist(),
        "recovered": len({tuple(p) for p in learned} & true_set),
        "within_one": matched_within(learned, true, 1),
        "exact": {tuple(p) for p in learned} == true_set,
        "locations_frozen": layer.locations_frozen(ADAPTER),
        "loss_curve": [float(f"{v:.5g}") for v in losses[:: cfg.log_every].tolist()],
    }
    if record_trajectory:
        record["trajectory"] = trajectory.tolist()
        record["trajectory_continuous"] = torch.round(continuous, decimals=4).tolist()
    return record


def run_seed(seed: int, cfg: ToyConfig, variants=VARIANTS, record_trajectory: bool = True) -> dict:
    t0 = time.perf_counter()
    problem = make_problem(seed, cfg)
    runs = {v: train(problem, cfg, v, record_trajectory=record_trajectory and v == "learned") for v in variants}
    return {
        "seed": seed,
        "true_locations": _as_pairs(problem["true_indices"]),
        "true_coefficients": problem["true_coefficients"].tolist(),
        "random_loc_seed": problem["random_loc_seed"],
        "runs": runs,
        "seconds": time.perf_counter() - t0,
    }


def _run_seed_job(args) -> dict:
    seed, cfg = args
    torch.set_num_threads(1)  # one thread per worker process (tiny matrices; results do not depend on workers)
    return run_seed(seed, cfg)


def run_benchmark(seeds, cfg: ToyConfig, workers: int = 1) -> list[dict]:
    jobs = [(s, cfg) for s in seeds]
    if workers <= 1:
        return [_run_seed_job(j) for j in jobs]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        return list(pool.map(_run_seed_job, jobs))


# ----------------------------------------------------------------------------------------------------------------
# summary and reports


def summarize(records: list[dict]) -> dict:
    out: dict = {"n_seeds": len(records)}
    for variant in VARIANTS:
        runs = [r["runs"][variant] for r in records if variant in r["runs"]]
        if not runs:
            continue
        losses = [run["final_loss"] for run in runs]
        out[variant] = {
            "exact_fraction": statistics.mean(float(run["exact"]) for run in runs),
            "mean_recovered": statistics.mean(run["recovered"] for run in runs),
            "mean_within_one": statistics.mean(run["within_one"] for run in runs),
            "final_loss_median": statistics.median(losses),
            "final_loss_mean": statistics.mean(losses),
            "relative_loss_median": statistics.median(run["final_loss"] / run["initial_loss"] for run in runs),
        }
    if all(v in records[0]["runs"] for v in ("learned", "fixed")):
        ratios = [r["runs"]["learned"]["final_loss"] / r["runs"]["fixed"]["final_loss"] for r in records]
        out["learned_beats_fixed_fraction"] = statistics.mean(
            float(r["runs"]["learned"]["final_loss"] < r["runs"]["fixed"]["final_loss"]) for r in records
        )
        out["learned_over_fixed_loss_ratio_median"] = statistics.median(ratios)
        # coordinates of the learned runs that froze within 0.1 index of a rounding boundary (x.5): the
        # central-difference gradient tends to park a location between two grid points
        coords = [v for r in records for row in r["runs"]["learned"]["final_continuous"] for v in row]
        out["learned_near_rounding_boundary_fraction"] = statistics.mean(
            float(abs((v % 1.0) - 0.5) < 0.1) for v in coords
        )
        out["learned_unmoved_fraction"] = statistics.mean(
            float(sorted(r["runs"]["learned"]["final_locations"]) == sorted(r["runs"]["learned"]["init_locations"]))
            for r in records
        )
        out["initial_recovered_mean"] = statistics.mean(
            len({tuple(p) for p in r["runs"]["learned"]["init_locations"]} & {tuple(p) for p in r["true_locations"]})
            for r in records
        )
    return out


def representative_seed(records: list[dict]) -> int:
    """The seed whose learned/fixed final-loss ratio is the (lower) median."""
    ratios = sorted(
        (r["runs"]["learned"]["final_loss"] / r["runs"]["fixed"]["final_loss"], r["seed"]) for r in records
    )
    return ratios[(len(ratios) - 1) // 2][1]


def _fmt_set(pairs) -> str:
    return " ".join(f"({r},{c})" for r, c in sorted(map(tuple, pairs)))


def to_markdown(records, summary, cfg: ToyConfig, info: dict, command: str, runtime: float, rep: int) -> str:
    label = {
        "learned": "learned locations (alternating, paper)",
        "fixed": "fixed random locations (V1)",
        "oracle": "true locations, fixed (oracle)",
    }
    lines = [
        "# LoCA toy convergence (paper Appendix M): do learned locations find the true DCT locations?",
        "",
        f"Machine: `{info['platform']}`, CPU `{info['cpu']}`, python {info['python']}, torch {info['torch']}, "
        f"peft {info.get('peft', '?')}; date {info['date']}; {runtime:.0f} s wall "
        f"({info['workers']} worker process(es), 1 torch thread each).",
        "",
        f"Command: `{command}`",
        "",
        f"{summary['n_seeds']} seeds. Network `W3 {cfg.activation}(W2 {cfg.activation}(W1 x))`"
        if cfg.activation == "tanh"
        else f"{summary['n_seeds']} seeds. Linear network `W3 W2 W1 x`",
        f"({cfg.dim}x{cfg.dim}, bias-free, weights N(0, {cfg.weight_std:g}^2)), {cfg.n_samples} inputs x ~ N(0, I); "
        f"target `W2 = W2_base + C^T S* C` with {cfg.n_frequency} non-zero DCT coefficients (sign * U(0.5, 1.5)) "
        f"at distinct random locations. LoCA adapter on W2 (n_frequency={cfg.n_frequency}, zero coefficients, random "
        f"locations), full-batch SGD on the MSE, {cfg.steps} steps, coefficient lr {cfg.lr:g}, location lr "
        f"{cfg.location_lr:g}, B_a={cfg.coefficient_steps}, B_l={cfg.location_steps}, "
        f"T_s={cfg.location_training_steps}. `fixed` and `oracle` train the coefficients at every step; `learned` "
        "only in its coefficient phases before T_s and at every step after.",
        "",
        f"Chance level: the random initial locations already contain "
        f"{summary.get('initial_recovered_mean', float('nan')):.2f} true locations on average "
        f"(expected {cfg.n_frequency**2 / cfg.dim**2:.2f}).",
        "",
        f"Location gradients: `{cfg.location_grad}` finite difference. At T_s, "
        f"{summary.get('learned_near_rounding_boundary_fraction', float('nan')):.0%} of the learned location "
        "coordinates sat within 0.1 index of a rounding boundary (x.5), against 20% for uniformly spread values "
        "(a higher share means locations parked between two grid points, flipping from one to the other in the "
        "location phases, until the freeze at T_s picks one side).",
        "",
        "| run | exact set recovered | true locations recovered (0-3) | within 1 grid step | final loss median "
        "| final loss mean | median final / initial loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant in VARIANTS:
        if variant not in summary:
            continue
        s = summary[variant]
        lines.append(
            f"| {label[variant]} | {s['exact_fraction']:.0%} | {s['mean_recovered']:.2f} | {s['mean_within_one']:.2f} "
            f"| {s['final_loss_median']:.4g} | {s['final_loss_mean']:.4g} | {s['relative_loss_median']:.3f} |"
        )
    if "learned_beats_fixed_fraction" in summary:
        lines += [
            "",
            f"Learned locations end with a lower loss than fixed random ones in "
            f"{summary['learned_beats_fixed_fraction']:.0%} of the seeds; median loss ratio learned/fixed "
            f"{summary['learned_over_fixed_loss_ratio_median']:.3f}.",
        ]
    if "learned_beats_fixed_fraction" in summary and "oracle" in summary:
        learned, fixed, oracle = (summary[v]["final_loss_median"] for v in ("learned", "fixed", "oracle"))
        lines += [
            "",
            "Reading: the paper's Appendix M shows one run whose locations converge to the true ones. Over these "
            f"{summary['n_seeds']} seeds the learned locations end on the exact true set in "
            f"{summary['learned']['exact_fraction']:.0%} of the seeds and on "
            f"{summary['learned']['mean_recovered']:.2f} "
            f"of the {cfg.n_frequency} true locations on average, against "
            f"{summary.get('initial_recovered_mean', float('nan')):.2f} already in the random starts. In "
            f"{summary['learned_unmoved_fraction']:.0%} of the seeds the learned set at the end is the starting set. "
            f"Knowing the true locations (oracle) would take the median final loss from {fixed:.3g} (fixed random "
            f"locations) to {oracle:.3g}. The learned runs' median is {learned:.3g}, but seed by seed they end below "
            f"the fixed random locations in {summary['learned_beats_fixed_fraction']:.0%} of the seeds (median ratio "
            f"{summary['learned_over_fixed_loss_ratio_median']:.3f}). "
            + (
                "On this toy, location learning mostly finds the true locations, as in the paper."
                if summary["learned"]["exact_fraction"] >= 0.5
                else "On this toy, location learning does not reproduce the paper's convergence to the true locations."
            ),
        ]
    lines += [
        "",
        f"Plot (`{Path(info['png']).name}`): location trajectories and loss curves of seed {rep} "
        "(the seed with the median learned/fixed loss ratio).",
        "",
        "## Per seed",
        "",
        "| seed | true locations | initial | learned | recovered | loss learned | loss fixed | loss oracle |",
        "|---:|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        runs = r["runs"]
        lines.append(
            f"| {r['seed']} | {_fmt_set(r['true_locations'])} | {_fmt_set(runs['learned']['init_locations'])} "
            f"| {_fmt_set(runs['learned']['final_locations'])} | {runs['learned']['recovered']} "
            f"| {runs['learned']['final_loss']:.4g} | {runs['fixed']['final_loss']:.4g} "
            f"| {runs['oracle']['final_loss']:.4g} |"
            if "oracle" in runs
            else f"| {r['seed']} | {_fmt_set(r['true_locations'])} | {_fmt_set(runs['learned']['init_locations'])} "
            f"| {_fmt_set(runs['learned']['final_locations'])} | {runs['learned']['recovered']} "
            f"| {runs['learned']['final_loss']:.4g} | {runs['fixed']['final_loss']:.4g} | n/a |"
        )
    return "\n".join(lines) + "\n"


def plot(record: dict, cfg: ToyConfig, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learned = record["runs"]["learned"]
    traj = torch.tensor(learned["trajectory"])  # [steps + 1, 2, B]
    cont = torch.tensor(learned["trajectory_continuous"])
    true = record["true_locations"]
    final = learned["final_locations"]
    # colour each true location like the coefficient that ends closest to it (one-to-one)
    best_perm = min(
        itertools.permutations(range(len(final)), len(true)),
        key=lambda p: sum(abs(final[j][0] - t[0]) + abs(final[j][1] - t[1]) for j, t in zip(p, true)),
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    steps = torch.arange(traj.shape[0])
    t_s = cfg.location_training_steps
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    for axis, (ax, name) in enumerate(zip(axes[:2], ("row", "column"))):
        for k in range(traj.shape[2]):
            ax.plot(steps, cont[:, axis, k], color=colors[k], alpha=0.3, linewidth=0.8)
            ax.step(steps, traj[:, axis, k], where="post", color=colors[k], linewidth=1.6, label=f"coefficient {k}")
        for j, t in zip(best_perm, true):
            ax.axhline(t[axis] + 0.04 * (j - 1), color=colors[j], linestyle="--", linewidth=1.2)
        ax.axvline(t_s, color="gray", linestyle=":", linewidth=1)
        ax.set_ylim(-0.3, cfg.dim - 0.7)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{name} index")
        ax.set_title(f"{name} of each coefficient (dashed: true, faint: continuous)", fontsize=9)
    axes[0].legend(fontsize=8, loc="upper right")
    ax = axes[2]
    for variant, style in (("learned", "-"), ("fixed", "--"), ("oracle", ":")):
        if variant in record["runs"]:
            curve = record["runs"][variant]["loss_curve"]
            ax.plot([i * cfg.log_every for i in range(len(curve))], curve, style, label=variant)
    ax.axvline(t_s, color="gray", linestyle=":", linewidth=1)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE (full batch)")
    ax.set_title("loss: learned vs fixed random vs true locations", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(
        f"seed {record['seed']}: true {_fmt_set(true)}, initial {_fmt_set(learned['init_locations'])}, "
        f"learned {_fmt_set(final)} (T_s = {t_s})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=None, help="number of seeds 0..N-1 (default 20; 3 with --quick)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (default 2000; 300 with --quick)")
    p.add_argument("--json", type=Path, default=None, help="output JSON (the .md and .png go next to it)")
    p.add_argument("--quick", action="store_true", help="smoke test; outputs in bench/results/tmp/")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: min(2, CPUs))")
    p.add_argument("--activation", choices=("tanh", "none"), default=ToyConfig.activation)
    p.add_argument("--weight-std", type=float, default=ToyConfig.weight_std)
    p.add_argument("--lr", type=float, default=ToyConfig.lr, help="coefficient learning rate")
    p.add_argument("--location-lr", type=float, default=ToyConfig.location_lr)
    p.add_argument("--ts-fraction", type=float, default=ToyConfig.location_training_fraction, help="T_s / steps")
    p.add_argument("--location-grad", choices=("central", "forward", "backward"), default=ToyConfig.location_grad)
    args = p.parse_args(argv)

    n_seeds = args.seeds if args.seeds is not None else (3 if args.quick else 20)
    steps = args.steps if args.steps is not None else (300 if args.quick else 2000)
    cfg = replace(
        ToyConfig(),
        steps=steps,
        activation=args.activation,
        weight_std=args.weight_std,
        lr=args.lr,
        location_lr=args.location_lr,
        location_training_fraction=args.ts_fraction,
        location_grad=args.location_grad,
    )
    workers = args.workers if args.workers is not None else max(1, min(2, os.cpu_count() or 1, n_seeds))
    if args.json is None:  # quick runs must not overwrite the committed results
        args.json = RESULTS / ("tmp/toy_convergence_quick.json" if args.quick else "toy_convergence.json")
    json_path = args.json
    json_path.parent.mkdir(parents=True, exist_ok=True)
    png_path = json_path.with_suffix(".png")
    command = "python " + " ".join(
        shlex.quote(a) for a in [os.path.relpath(__file__)] + list(sys.argv[1:] if argv is None else argv)
    )

    t0 = time.perf_counter()
    records = run_benchmark(range(n_seeds), cfg, workers)
    runtime = time.perf_counter() - t0

    summary = summarize(records)
    rep = representative_seed(records)
    info = machine_info(torch.device("cpu"))
    info.update(workers=workers, png=png_path.name)
    # keep the (long) location trajectories of the representative seed only
    for r in records:
        if r["seed"] != rep:
            r["runs"]["learned"].pop("trajectory", None)
            r["runs"]["learned"].pop("trajectory_continuous", None)
    payload = {
        "config": asdict(cfg) | {"location_training_steps": cfg.location_training_steps},
        "machine": info,
        "command": command,
        "runtime_s": runtime,
        "representative_seed": rep,
        "summary": summary,
        "records": records,
    }
    json_path.write_text(json.dumps(payload, separators=(",", ":")) + "\n")  # compact: long curves inside
    md = to_markdown(records, summary, cfg, info, command, runtime, rep)
    json_path.with_suffix(".md").write_text(md)
    plot(next(r for r in records if r["seed"] == rep), cfg, png_path)
    print(md)
    print(f"wrote {json_path}, {json_path.with_suffix('.md')}, {png_path} in {runtime:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
