"""Training-step time and peak memory of the SD-1.5-sized InstructPix2Pix UNet: LoCA vs LoRA vs FourierFT.

The UNet is built from its config in code (random weights, 8 input channels, nothing downloaded) and run
at 256 px (32x32 latents), batch 1, with a random 1 x 77 x 768 text context. Adapters sit on
``to_q/to_k/to_v/to_out.0`` of every attention block (128 linear layers):

* LoCA, ``n_frequency`` B per layer (``init_weights=False``, so the adapter is non-trivial), timed in the
  coefficient phase of :class:`LoCASchedule` (most of training); one extra record ``loca_location_phase``
  at the first B is a location step;
* LoRA r=4 (the diffusers InstructPix2Pix/cartoonization recipe) and r=16, ``lora_alpha = r``, gaussian init;
* FourierFT, ``n_frequency`` B per layer, ``scaling=64``.

A training step is: forward with a random timestep, MSE to a random target, backward, AdamW step over the
adapter parameters only (the base is frozen), ``zero_grad(set_to_none=True)`` (for LoCA also the schedule's
``mask_gradients``/``step``). Inference is one UNet forward under ``no_grad`` in eval mode: the base UNet vs
LoCA merged (``merge_adapter``; the adapter wrappers stay in place), LoCA unmerged in eval mode (cached
effective weight) and LoRA r=16 merged.

Every adapted model is a deep copy of one seeded base UNet whose frozen tensors are *shared* with it
(``copy.deepcopy`` with the base parameters pre-seeded in the memo); merged models get private copies of
the target weights. So one 3.4 GB base fits in memory once and all methods are timed round-robin (one
step of each in turn, median over the repetitions). ``peak_bytes`` still counts each model as if it
stood alone: all its parameters and buffers (base included), the AdamW state, the inputs, the
inference weight cache, plus the largest amount allocated during one step (CPU: the profiler's
allocation events; CUDA: ``max_memory_allocated``); see ``bench/timing.py``.

    python -m bench.unet_step [--quick] [--device cpu|cuda] [--resolution PX] [--repeats N] [--json PATH]
    python -m bench.unet_step --curve [...]   # step time vs B (LoCA, FourierFT) and vs rank (LoRA), with a plot

``--quick`` uses a reduced UNet (block_out_channels (32, 64), cross_attention_dim 32, 128 px, B = 100 and
500) so that a smoke test runs in seconds.
"""

from __future__ import annotations

import argparse
import copy
import gc
import itertools
import json
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel  # noqa: E402
from peft import FourierFTConfig, LoraConfig, get_peft_model  # noqa: E402
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

import loca_diffusion  # noqa: E402,F401  (registers LoCA with peft)
from bench.machine import machine_info, machine_line  # noqa: E402
from bench.timing import peak_transient_bytes, sync, time_round_robin  # noqa: E402
from loca_diffusion import LoCAConfig, LoCALayer, LoCASchedule  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
LORA_RANKS = (4, 16)
LR, WEIGHT_DECAY = 1e-4, 1e-2
NEVER = 10**9  # schedule lengths that keep a LoCA model in one phase for the whole benchmark

# SD-1.5 (runwayml/stable-diffusion-v1-5 unet/config.json) with InstructPix2Pix's 8 input channels,
# sample_size 32 for 256 px images (latents are 8x smaller).
SD15_UNET = dict(
    sample_size=32,
    in_channels=8,
    out_channels=4,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    cross_attention_dim=768,
    attention_head_dim=8,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    norm_num_groups=32,
)
QUICK_UNET = dict(
    SD15_UNET,
    sample_size=16,
    block_out_channels=(32, 64),
    layers_per_block=1,
    cross_attention_dim=32,
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
)
FULL_FREQUENCIES = (1000, 5000)
QUICK_FREQUENCIES = (100, 500)  # the quick UNet's smallest target layer is 32x32
# --curve: how the step grows with the adapter's size (LoCA / FourierFT over B, LoRA over its rank)
CURVE_FREQUENCIES = (1000, 2500, 5000, 10000, 20000)
CURVE_RANKS = (4, 8, 16, 32, 64)
QUICK_CURVE_FREQUENCIES = (100, 300, 1000)
QUICK_CURVE_RANKS = (4, 16)
CONTEXT_TOKENS = 77


# ---------------------------------------------------------------------------------------------- models


def build_unet(config: dict, device, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).to(device)
    unet.requires_grad_(False)
    return unet


def is_target_weight(name: str) -> bool:
    return any(name.endswith(f"{t}.weight") for t in TARGET_MODULES)


def clone_sharing(unet: nn.Module, private: Callable[[str], bool] = lambda name: False) -> nn.Module:
    """A deep copy of ``unet`` whose parameters and buffers are the base's own tensors, except those whose
    name satisfies ``private`` (copied). Only valid while the shared tensors stay frozen and unmodified."""
    memo = {}
    for name, tensor in itertools.chain(unet.named_parameters(), unet.named_buffers()):
        if not private(name):
            memo[id(tensor)] = tensor
    return copy.deepcopy(unet, memo)


def adapter_config(method: str, n_frequency: Optional[int], rank: Optional[int]):
    if method.startswith("loca"):
        return LoCAConfig(n_frequency=n_frequency, target_modules=TARGET_MODULES, init_weights=False)
    if method.startswith("lora"):
        return LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGET_MODULES)
    if method == "fourierft":
        return FourierFTConfig(n_frequency=n_frequency, scaling=64.0, target_modules=TARGET_MODULES)
    raise ValueError(method)


def adapted(unet: nn.Module, method: str, n_frequency=None, rank=None, private_targets: bool = False) -> nn.Module:
    seed = 1 + (n_frequency or 0) + (rank or 0)  # the same adapter init for a method whatever else runs
    model = clone_sharing(unet, is_target_weight if private_targets else (lambda name: False))
    torch.manual_seed(seed)
    model = get_peft_model(model, adapter_config(method, n_frequency, rank))
    wanted = sum(1 for name, _ in unet.named_parameters() if is_target_weight(name))
    got = sum(isinstance(m, BaseTunerLayer) for m in model.modules())
    if got != wanted:
        raise RuntimeError(f"{method}: {got} adapted layers, expected {wanted} ({'/'.join(TARGET_MODULES)})")
    return model


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


# ---------------------------------------------------------------------------------------------- steps


class Inputs:
    """Random latents (8 channels: noisy + image latents), text context, target and a timestep source."""

    def __init__(self, config: dict, device, seed: int = 2):
        g = torch.Generator().manual_seed(seed)
        size = config["sample_size"]
        self.sample = torch.randn(1, config["in_channels"], size, size, generator=g).to(device)
        self.context = torch.randn(1, CONTEXT_TOKENS, config["cross_attention_dim"], generator=g).to(device)
        self.target = torch.randn(1, config["out_channels"], size, size, generator=g).to(device)
        self.timesteps = torch.Generator().manual_seed(seed + 1)
        self.device = device

    def timestep(self) -> torch.Tensor:
        return torch.randint(0, 1000, (1,), generator=self.timesteps).to(self.device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.sample, self.context, self.target]


def unet_forward(model: nn.Module, inputs: Inputs) -> torch.Tensor:
    return model(inputs.sample, inputs.timestep(), encoder_hidden_states=inputs.context, return_dict=False)[0]


class TrainCase:
    """One adapted model, its AdamW optimizer (adapter parameters only) and, for LoCA, its schedule."""

    def __init__(self, unet: nn.Module, method: str, n_frequency=None, rank=None):
        self.method, self.n_frequency, self.rank = method, n_frequency, rank
        self.model = adapted(unet, "loca" if method.startswith("loca") else method, n_frequency, rank)
        self.model.train()
        self.schedule = None
        if method == "loca":  # coefficient phase: the B_a steps of a cycle, and every step after T_s
            self.schedule = LoCASchedule(
                self.model, coefficient_steps=NEVER, location_steps=1, location_training_steps=NEVER
            )
        elif method == "loca_location_phase":  # step 0 is a coefficient step, every later one a location step
            self.schedule = LoCASchedule(
                self.model, coefficient_steps=1, location_steps=NEVER, location_training_steps=NEVER
            )
            self.schedule.step()
        if self.schedule is not None:
            groups = self.schedule.parameter_groups(lr=LR, weight_decay=WEIGHT_DECAY)
        else:
            groups = [{"params": trainable(self.model), "lr": LR, "weight_decay": WEIGHT_DECAY}]
        self.optimizer = torch.optim.AdamW(groups)

    @property
    def name(self) -> str:
        return f"{self.method}_r{self.rank}" if self.rank else f"{self.method}_B{self.n_frequency}"

    def phase(self) -> Optional[str]:
        return None if self.schedule is None else self.schedule.phase()

    def step_fn(self, inputs: Inputs):
        model, optimizer, schedule = self.model, self.optimizer, self.schedule

        def step():
            loss = F.mse_loss(unet_forward(model, inputs).float(), inputs.target.float())
            loss.backward()
            if schedule is not None:
                schedule.mask_gradients()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if schedule is not None:
                schedule.step()

        return step


# ---------------------------------------------------------------------------------------------- memory


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def optimizer_state_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v)]


def weight_cache_tensors(model: nn.Module) -> list[torch.Tensor]:
    """The effective weights LoCA layers cache in eval mode (not parameters or buffers)."""
    return [
        m._weight_cache[1]
        for m in model.modules()
        if isinstance(m, LoCALayer) and getattr(m, "_weight_cache", None) is not None
    ]


def model_tensors(model: nn.Module) -> list[torch.Tensor]:
    return list(model.parameters()) + list(model.buffers())


def n_params(tensors) -> int:
    return sum(t.numel() for t in tensors)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# ---------------------------------------------------------------------------------------------- runs


def record(mode: str, method: str, n_frequency, rank, ms: float, persistent: int, transient: int, **extra) -> dict:
    return {
        "mode": mode,
        "method": method,
        "n_frequency": n_frequency,
        "rank": rank,
        "step_ms": round(ms, 3),
        "peak_bytes": persistent + transient,
        "persistent_bytes": persistent,
        "transient_bytes": transient,
        **extra,
    }


def log(message: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s, max RSS {max_rss_bytes() / 2**30:.1f} GiB] {message}", flush=True)


def progress(start: float, verbose: bool):
    """``on_step`` callback of ``time_round_robin``: one line per step (full-size steps take seconds)."""
    if not verbose:
        return None
    return lambda name, label, ms: log(f"{name} {label}: {ms / 1e3:.2f} s", start)


def time_steps(steps: dict, repeats: int, device, warmup: int, start: float, verbose: bool):
    """Round-robin medians (ms) and every timed sample per step, rounded for the JSON."""
    samples = {}
    ms = time_round_robin(steps, repeats, device, warmup=warmup, on_step=progress(start, verbose), samples=samples)
    return ms, {name: [round(t, 1) for t in values] for name, values in samples.items()}


def measure_peak(name: str, step, device, start: float, verbose: bool) -> int:
    t = time.perf_counter()
    peak = peak_transient_bytes(step, device)
    if verbose:
        log(f"{name} peak memory step: {time.perf_counter() - t:.2f} s, transient {peak / 2**20:,.0f} MiB", start)
    return peak


def run_training(unet, inputs, frequencies, device, repeats, warmup, start, verbose) -> list[dict]:
    cases = [TrainCase(unet, "loca", n_frequency=b) for b in frequencies]
    cases.append(TrainCase(unet, "loca_location_phase", n_frequency=frequencies[0]))
    cases += [TrainCase(unet, "lora", rank=r) for r in LORA_RANKS]
    cases += [TrainCase(unet, "fourierft", n_frequency=b) for b in frequencies]
    log(f"built {len(cases)} training models: {', '.join(c.name for c in cases)}", start)
    steps = {c.name: c.step_fn(inputs) for c in cases}
    ms, samples = time_steps(steps, repeats, device, warmup, start, verbose)
    log("training steps timed", start)
    records = []
    for case in cases:
        phase = case.phase()
        transient = measure_peak(case.name, steps[case.name], device, start, verbose)
        if case.phase() != phase:
            raise RuntimeError(f"{case.name} changed phase during the benchmark ({phase} -> {case.phase()})")
        adapter = trainable(case.model)
        persistent = tensor_bytes(
            model_tensors(case.model) + optimizer_state_tensors(case.optimizer) + inputs.tensors()
        )
        records.append(
            record(
                "train",
                case.method,
                case.n_frequency,
                case.rank,
                ms[case.name],
                persistent,
                transient,
                trainable_params=n_params(adapter),
                phase=phase,
                samples_ms=samples[case.name],
            )
        )
    log("training peak memory measured", start)
    return records


def run_inference(unet, inputs, frequencies, device, repeats, warmup, start, verbose) -> list[dict]:
    models = {("base", None, None): unet}
    for b in frequencies:
        fused = adapted(unet, "loca", n_frequency=b, private_targets=True)
        fused.merge_adapter()  # the wrappers stay: their forward is what "fused" costs
        models[("loca_fused", b, None)] = fused
        models[("loca_eval", b, None)] = adapted(unet, "loca", n_frequency=b)
    lora = adapted(unet, "lora", rank=LORA_RANKS[-1], private_targets=True)
    lora.merge_adapter()
    models[("lora_fused", None, LORA_RANKS[-1])] = lora
    names = {key: key[0] + (f"_B{key[1]}" if key[1] else "") + (f"_r{key[2]}" if key[2] else "") for key in models}

    def forward(model):
        def step():
            with torch.no_grad():
                unet_forward(model, inputs)

        return step

    steps = {names[key]: forward(model.eval()) for key, model in models.items()}
    log(f"built {len(models)} inference models: {', '.join(steps)}", start)
    ms, samples = time_steps(steps, repeats, device, warmup, start, verbose)
    log("inference timed", start)
    records = []
    for key, model in models.items():
        transient = measure_peak(names[key], steps[names[key]], device, start, verbose)
        persistent = tensor_bytes(model_tensors(model) + weight_cache_tensors(model) + inputs.tensors())
        records.append(
            record(
                "inference",
                *key,
                ms[names[key]],
                persistent,
                transient,
                samples_ms=samples[names[key]],
            )
        )
    return records


def run(config: dict, frequencies, device, repeats: int, warmup: int = 2, verbose: bool = True) -> list[dict]:
    start = time.perf_counter()
    unet = build_unet(config, device)
    n_base = n_params(unet.parameters())
    n_targets = sum(1 for name, _ in unet.named_parameters() if is_target_weight(name))
    log(f"built the base UNet: {n_base / 1e6:.1f}M parameters, {n_targets} target layers", start)
    inputs = Inputs(config, device)
    records = run_training(unet, inputs, frequencies, device, repeats, warmup, start, verbose)
    gc.collect()
    records += run_inference(unet, inputs, frequencies, device, repeats, warmup, start, verbose)
    sync(device)
    log("done", start)
    return records


def run_curve(config: dict, frequencies, ranks, device, repeats: int, warmup: int, verbose: bool) -> list[dict]:
    """Training steps only: LoCA and FourierFT at every B, LoRA at every rank, all round-robin in one run."""
    start = time.perf_counter()
    unet = build_unet(config, device)
    inputs = Inputs(config, device)
    cases = [TrainCase(unet, "loca", n_frequency=b) for b in frequencies]
    cases += [TrainCase(unet, "fourierft", n_frequency=b) for b in frequencies]
    cases += [TrainCase(unet, "lora", rank=r) for r in ranks]
    log(f"built {len(cases)} training models: {', '.join(c.name for c in cases)}", start)
    steps = {c.name: c.step_fn(inputs) for c in cases}
    ms, samples = time_steps(steps, repeats, device, warmup, start, verbose)
    log("done", start)
    return [
        record(
            "train",
            c.method,
            c.n_frequency,
            c.rank,
            ms[c.name],
            0,
            0,
            trainable_params=n_params(trainable(c.model)),
            samples_ms=samples[c.name],
        )
        for c in cases
    ]


# ---------------------------------------------------------------------------------------------- report


def find(records, mode, method, n_frequency=None, rank=None) -> Optional[dict]:
    for r in records:
        if (r["mode"], r["method"], r["n_frequency"], r["rank"]) == (mode, method, n_frequency, rank):
            return r
    return None


def summary(records: list[dict], frequencies) -> list[dict]:
    """Per B: the ratios the issue's targets are stated in."""
    rows = []
    lora16 = find(records, "train", "lora", rank=16)
    base = find(records, "inference", "base")
    for b in frequencies:
        loca = find(records, "train", "loca", b)
        fourier = find(records, "train", "fourierft", b)
        fused = find(records, "inference", "loca_fused", b)
        eval_ = find(records, "inference", "loca_eval", b)
        rows.append(
            {
                "n_frequency": b,
                "loca_over_lora16": loca["step_ms"] / lora16["step_ms"],
                "loca_over_fourierft": loca["step_ms"] / fourier["step_ms"],
                "memory_loca_over_lora16": loca["peak_bytes"] / lora16["peak_bytes"],
                "fused_over_base": fused["step_ms"] / base["step_ms"],
                "eval_over_base": eval_["step_ms"] / base["step_ms"],
            }
        )
    return rows


TARGETS = [  # (summary key, limit, description)
    ("loca_over_lora16", 1.05, "LoCA step <= 1.05x LoRA r=16"),
    ("loca_over_fourierft", 0.9, "LoCA step <= 0.9x FourierFT"),
    ("memory_loca_over_lora16", 1.05, "LoCA peak memory <= LoRA r=16 + 5%"),
    ("fused_over_base", 1.01, "fused LoCA inference <= 1.01x base"),
]


LARGE_B_TARGETS = [("loca_over_lora16", 1.10, "LoCA step <= 1.10x LoRA r=16")]  # every larger B


def targets(rows: list[dict], frequencies) -> list[dict]:
    """:data:`TARGETS` at the smallest B, :data:`LARGE_B_TARGETS` at each larger one."""
    out = []
    for i, b in enumerate(sorted(frequencies)):
        row = next(r for r in rows if r["n_frequency"] == b)
        for key, limit, text in TARGETS if i == 0 else LARGE_B_TARGETS:
            value = round(row[key], 4)
            out.append({"target": text, "n_frequency": b, "value": value, "limit": limit, "met": row[key] <= limit})
    return out


ROUND_ROBIN_ORDER = "reshuffled every repetition"  # bench.timing.time_round_robin since 2026-12-05


def order_text(meta: dict) -> str:
    """How the repetitions were ordered; results from before the reshuffling have no ``order`` field."""
    return "order reshuffled each time" if meta.get("order") == ROUND_ROBIN_ORDER else "fixed order"


def label(r: dict) -> str:
    if r["rank"] is not None:
        return f"r={r['rank']}"
    return f"B={r['n_frequency']}" if r["n_frequency"] is not None else "-"


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f}"


def header(title: str, result: dict) -> list[str]:
    return ["# " + title, "", machine_line(result["machine"]), "", f"Command: `{result['setup']['command']}`", ""]


def markdown(result: dict) -> str:
    meta, records = result["setup"], result["records"]
    lines = [
        *header("UNet training step: LoCA vs LoRA vs FourierFT (SD-1.5-sized InstructPix2Pix UNet)", result),
        f"UNet built from its config with random weights ({meta['unet_parameters'] / 1e6:.1f}M parameters, "
        f"block_out_channels {tuple(meta['unet_config']['block_out_channels'])}, in_channels "
        f"{meta['unet_config']['in_channels']}, cross_attention_dim {meta['unet_config']['cross_attention_dim']}), "
        f"{meta['resolution_px']} px "
        f"({meta['unet_config']['sample_size']}x{meta['unet_config']['sample_size']} latents), "
        f"batch 1, text context 1x{CONTEXT_TOKENS}x{meta['unet_config']['cross_attention_dim']}. Adapters on "
        f"`{'/'.join(TARGET_MODULES)}` ({meta['target_layers']} layers). Train step = forward at a random timestep, "
        "MSE, backward, AdamW over the adapter only, `zero_grad(set_to_none=True)`; LoCA in the coefficient phase of "
        "`LoCASchedule` (`loca_location_phase`: a location step). Median of "
        f"{meta['repeats']} round-robin repetitions ({order_text(meta)}) after {meta['warmup']} warm-up "
        "steps per method.",
        "",
        "All models share the frozen base tensors (one base in memory; merged models have private copies of the "
        "target weights), so every method is timed round-robin in the same process. `peak MiB` counts each model "
        "as if alone: parameters and buffers (base included), AdamW state, inputs, LoCA's eval weight cache, plus "
        f"the largest allocation during one step ({meta['peak_memory_method']}). "
        f"Max RSS of the whole run: {mib(result['max_rss_bytes'])} MiB; wall time {result['wall_s']:.0f} s.",
        "",
        "## Summary (ratios)",
        "",
        "| B | LoCA/LoRA16 | LoCA/FourierFT | mem LoCA/LoRA16 | fused/base | LoCA eval/base |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["summary"]:
        lines.append(
            f"| {row['n_frequency']} | {row['loca_over_lora16']:.3f} | {row['loca_over_fourierft']:.3f} | "
            f"{row['memory_loca_over_lora16']:.3f} | {row['fused_over_base']:.3f} | {row['eval_over_base']:.3f} |"
        )
    lines += ["", "Targets (same run):", ""]
    if meta["quick"]:
        lines += [
            "(Quick mode: a smoke test of the reduced UNet; the targets are meant for the full UNet at B = 1000.)",
            "",
        ]
    for t in result["targets"]:
        verdict = "met" if t["met"] else "NOT met"
        lines.append(f"- B = {t['n_frequency']}: {t['target']}: {t['value']:.3f} (limit {t['limit']}) -> {verdict}")
    lines += [
        "",
        "## Training step",
        "",
        "| method | B / rank | phase | trainable params | step ms | peak MiB | transient MiB |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for r in records:
        if r["mode"] == "train":
            lines.append(
                f"| {r['method']} | {label(r)} | {r['phase'] or '-'} | {r['trainable_params']:,} | "
                f"{r['step_ms']:.1f} | "
                f"{mib(r['peak_bytes'])} | {mib(r['transient_bytes'])} |"
            )
    base = find(records, "inference", "base")
    lines += [
        "",
        "## Inference (one UNet forward, no_grad, eval mode)",
        "",
        "| method | B / rank | ms | /base | peak MiB |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        if r["mode"] == "inference":
            lines.append(
                f"| {r['method']} | {label(r)} | {r['step_ms']:.1f} | {r['step_ms'] / base['step_ms']:.3f} | "
                f"{mib(r['peak_bytes'])} |"
            )
    return "\n".join(lines) + "\n"


def curve_markdown(result: dict) -> str:
    meta, records = result["setup"], result["records"]
    lines = [
        *header("UNet training step vs adapter size: LoCA and FourierFT over B, LoRA over its rank", result),
        f"The model and step of `unet_step_{result['machine']['device']}.md` ({meta['resolution_px']} px, "
        f"{meta['target_layers']} adapted layers), training steps only, LoCA in the coefficient phase; median of "
        f"{meta['repeats']} round-robin repetitions ({order_text(meta)}) after {meta['warmup']} warm-up "
        f"steps, all {len(records)} models in one run. Plot: `{meta['plot']}`. Wall time {result['wall_s']:.0f} s.",
        "",
        "| method | B / rank | trainable params | step ms | / LoRA r=4 |",
        "|---|---|---:|---:|---:|",
    ]
    smallest = find(records, "train", "lora", rank=min(r["rank"] for r in records if r["rank"]))
    for r in records:
        lines.append(
            f"| {r['method']} | {label(r)} | {r['trainable_params']:,} | {r['step_ms']:.1f} | "
            f"{r['step_ms'] / smallest['step_ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def curve_plot(records: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for method, marker in (("loca", "o"), ("fourierft", "s"), ("lora", "^")):
        rows = [r for r in records if r["method"] == method]
        ax.plot(
            [r["trainable_params"] for r in rows], [r["step_ms"] / 1e3 for r in rows], marker=marker,
            label={"loca": "LoCA (B)", "fourierft": "FourierFT (B)", "lora": "LoRA (rank)"}[method],
        )  # fmt: skip
        for r in rows:
            ax.annotate(label(r), (r["trainable_params"], r["step_ms"] / 1e3), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (whole UNet)")
    ax.set_ylabel("training step (s)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="reduced UNet, B = 100/500: a smoke test in seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None, help="timed steps per method (default 5; quick: 2)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method first")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON (the .md goes next to it)")
    parser.add_argument(
        "--resolution", type=int, default=None, help="image size in px, a multiple of 64 (default 256; quick: 128)"
    )
    parser.add_argument(
        "--curve", action="store_true", help="step time vs B (LoCA, FourierFT) and vs rank (LoRA), with a plot"
    )
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config, frequencies = (QUICK_UNET, QUICK_FREQUENCIES) if args.quick else (SD15_UNET, FULL_FREQUENCIES)
    if args.resolution is not None:
        if args.resolution % 64:  # latents are 8x smaller and the UNet halves them three times
            parser.error(f"--resolution must be a multiple of 64, got {args.resolution}")
        config = dict(config, sample_size=args.resolution // 8)
    repeats = args.repeats or (2 if args.quick else 5)
    tag = "cuda" if device.type == "cuda" else "cpu"
    suffix = ("_quick" if args.quick else "") + (f"_{args.resolution}" if args.resolution not in (None, 256) else "")
    if args.curve:
        return main_curve(args, argv, config, device, repeats, tag, suffix)
    start = time.perf_counter()
    records = run(config, frequencies, device, repeats, args.warmup, verbose=not args.quick)
    wall = time.perf_counter() - start
    rows = summary(records, frequencies)
    unet_parameters, target_layers = count_unet(config)
    result = {
        "machine": machine_info(device),
        "setup": {
            "command": " ".join(["python -m bench.unet_step", *argv]),
            "quick": args.quick,
            "unet_config": config,
            "unet_parameters": unet_parameters,
            "target_modules": TARGET_MODULES,
            "target_layers": target_layers,
            "resolution_px": config["sample_size"] * 8,
            "batch_size": 1,
            "dtype": "float32",
            "n_frequencies": list(frequencies),
            "lora_ranks": list(LORA_RANKS),
            "repeats": repeats,
            "warmup": args.warmup,
            "order": ROUND_ROBIN_ORDER,
            "timing": "round-robin, all models in memory at once (frozen base tensors shared)",
            "peak_memory_method": "torch.cuda.max_memory_allocated"
            if tag == "cuda"
            else "torch.profiler raw allocation events",
        },
        "wall_s": round(wall, 1),
        "max_rss_bytes": max_rss_bytes(),
        "summary": rows,
        "targets": targets(rows, frequencies),
        "records": records,
    }
    json_path = args.json or RESULTS / f"unet_step_{tag}{suffix}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    md = markdown(result)
    json_path.with_suffix(".md").write_text(md)
    print(md)
    return result


def main_curve(args, argv: list[str], config: dict, device, repeats: int, tag: str, suffix: str) -> dict:
    frequencies, ranks = (
        (QUICK_CURVE_FREQUENCIES, QUICK_CURVE_RANKS) if args.quick else (CURVE_FREQUENCIES, CURVE_RANKS)
    )
    start = time.perf_counter()
    records = run_curve(config, frequencies, ranks, device, repeats, args.warmup, verbose=not args.quick)
    json_path = args.json or RESULTS / f"unet_step_curve_{tag}{suffix}.json"
    plot_path = json_path.with_suffix(".png")
    result = {
        "machine": machine_info(device),
        "setup": {
            "command": " ".join(["python -m bench.unet_step", *argv]),
            "quick": args.quick,
            "unet_config": config,
            "target_layers": count_unet(config)[1],
            "resolution_px": config["sample_size"] * 8,
            "n_frequencies": list(frequencies),
            "lora_ranks": list(ranks),
            "repeats": repeats,
            "warmup": args.warmup,
            "order": ROUND_ROBIN_ORDER,
            "plot": plot_path.name,
        },
        "wall_s": round(time.perf_counter() - start, 1),
        "records": records,
    }
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    curve_plot(records, plot_path, f"UNet training step vs adapter size ({result['setup']['resolution_px']} px, "
               f"{result['machine']['cpu']}, {result['machine']['device']})")  # fmt: skip
    md = curve_markdown(result)
    json_path.with_suffix(".md").write_text(md)
    print(md)
    return result


def count_unet(config: dict) -> tuple[int, int]:
    """Parameters and target layers of the UNet, counted on the meta device (no memory, no init)."""
    with torch.device("meta"):
        unet = UNet2DConditionModel(**config)
    return n_params(unet.parameters()), sum(1 for name, _ in unet.named_parameters() if is_target_weight(name))


if __name__ == "__main__":
    main()
