"""Forward+backward time and peak memory of one adapted linear layer.

LoCA (each strategy and the automatic choice) vs PEFT LoRA (r=16 and a rank matched to LoCA's
parameter budget) vs PEFT FourierFT (same n_frequency) vs the frozen base layer, over the SD-1.5 UNet
attention shapes; plus inference: LoCA in eval mode (cached weight) and merged, vs the base layer.

All methods of one case are timed round-robin (one repetition of each in turn), so drift of the machine
affects them alike; the reported time is the median. The input requires grad, as inside a network whose
earlier layers are adapted. Peak memory is the persistent tensors (weights, adapter, input) plus the
largest amount allocated during the step (CPU: from the profiler's allocation events; CUDA:
``max_memory_allocated``).

    python -m bench.layer_speed [--quick] [--json PATH] [--device cpu|cuda] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn as nn
from peft import FourierFTConfig, LoraConfig, get_peft_model  # noqa: E402

import loca_diffusion  # noqa: E402,F401  (registers LoCA with peft)
from bench.machine import machine_info, machine_line  # noqa: E402
from bench.timing import peak_transient_bytes, time_round_robin  # noqa: E402
from loca_diffusion import LoCAConfig, LoCALayer  # noqa: E402

SHAPES = [(320, 320), (640, 640), (1280, 1280), (320, 768), (1280, 768)]  # (d_out, d_in)
TOKENS = [154, 2048, 8192]
FREQUENCIES = [1000, 10000]
LOCA_METHODS = ["loca_auto", "loca_weight", "loca_hybrid", "loca_activation"]
RESULTS = Path(__file__).resolve().parent / "results"


def build(method: str, d_out: int, d_in: int, n_frequency: int, device) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(d_in, d_out)).to(device)
    model.requires_grad_(False)
    if method == "base":
        return model
    if method == "lora_r16":
        return get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=["0"]))
    if method == "lora_budget":
        rank = max(1, round(n_frequency / (d_in + d_out)))
        return get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=["0"]))
    if method == "fourierft":
        return get_peft_model(model, FourierFTConfig(n_frequency=n_frequency, scaling=64.0, target_modules=["0"]))
    if method.startswith("loca"):
        strategy = method.split("_")[1]
        config = LoCAConfig(n_frequency=n_frequency, target_modules=["0"], strategy=strategy, init_weights=False)
        return get_peft_model(model, config)
    raise ValueError(method)


def set_location_phase(model: nn.Module, on: bool) -> None:
    for module in model.modules():
        if isinstance(module, LoCALayer):
            for name in module.loca_learn_locations:
                module.loca_learn_locations[name] = on


def persistent_bytes(model: nn.Module, x: torch.Tensor) -> int:
    tensors = list(model.parameters()) + list(model.buffers()) + [x]
    return sum(t.numel() * t.element_size() for t in tensors)


def train_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor):
    """Forward + backward on a fresh copy of ``x`` (inside a network every step has a new input tensor: nothing
    computed from the input, such as LoCA's shared input DCT, carries over from the previous step)."""

    def step():
        model.zero_grad(set_to_none=True)
        out = model(x.detach().clone().requires_grad_(x.requires_grad))
        if out.requires_grad:  # the frozen base layer on an input without gradient has no backward
            out.backward(grad)

    return step


def inference_step(model: nn.Module, x: torch.Tensor):
    def step():
        with torch.no_grad():
            model(x)

    return step


def run_case(d_out, d_in, tokens, n_frequency, device, repeats, methods) -> list[dict]:
    torch.manual_seed(1)
    x = torch.randn(tokens, d_in, device=device, requires_grad=True)
    grad = torch.randn(tokens, d_out, device=device)
    models = {m: build(m, d_out, d_in, n_frequency, device) for m in methods}
    for model in models.values():
        model.train()
    steps = {m: train_step(models[m], x, grad) for m in methods}
    location_model = build("loca_auto", d_out, d_in, n_frequency, device)
    steps["loca_auto_location_phase"] = train_step(location_model, x, grad)
    for m in methods:
        if m.startswith("loca"):
            set_location_phase(models[m], False)  # the coefficient phase: most of training
    set_location_phase(location_model, True)
    ms = time_round_robin(steps, repeats, device)
    records = []
    shape = f"{d_out}x{d_in}"
    all_models = dict(models, loca_auto_location_phase=location_model)
    for m, value in ms.items():
        records.append(
            {
                "mode": "train",
                "shape": shape,
                "tokens": tokens,
                "n_frequency": n_frequency,
                "method": m,
                "ms": round(value, 4),
                "peak_bytes": persistent_bytes(all_models[m], x) + peak_transient_bytes(steps[m], device),
            }
        )
    # inference: eval-mode LoCA (cached weight) and merged LoCA / LoRA vs the base layer
    x_inf = x.detach()
    eval_model = build("loca_auto", d_out, d_in, n_frequency, device).eval()
    merged = build("loca_auto", d_out, d_in, n_frequency, device).eval()
    merged.merge_adapter()
    lora_merged = build("lora_r16", d_out, d_in, n_frequency, device).eval()
    lora_merged.merge_adapter()
    inf = {
        "base": inference_step(models["base"].eval(), x_inf),
        "loca_eval": inference_step(eval_model, x_inf),
        "loca_merged": inference_step(merged, x_inf),
        "lora_r16_merged": inference_step(lora_merged, x_inf),
    }
    for m, value in time_round_robin(inf, repeats, device).items():
        records.append(
            {
                "mode": "inference",
                "shape": shape,
                "tokens": tokens,
                "n_frequency": n_frequency,
                "method": m,
                "ms": round(value, 4),
            }
        )
    return records


# Targets for cases with >= 2048 tokens: speed over LoRA r=16 by B (B=1000: 1.3x, larger B: 1.4x),
# over FourierFT, and peak memory over LoRA r=16.
SPEED_LIMITS = {1000: 1.3}
SPEED_LIMIT_LARGE_B = 1.4
FOURIERFT_LIMIT = 0.8
MEMORY_LIMIT = 1.25


def target_lines(train: list[dict], cases: list[tuple]) -> list[str]:
    """How many of the >= 2048-token cases meet each target (same run), and which miss."""
    counted = [c for c in cases if c[1] >= 2048]
    if not counted:
        return []
    checks = {
        "speed vs LoRA r=16 (<= 1.3x at B=1000, <= 1.4x above)": lambda row, b: (
            row["loca_auto"]["ms"] / row["lora_r16"]["ms"],
            SPEED_LIMITS.get(b, SPEED_LIMIT_LARGE_B),
        ),
        f"speed vs FourierFT (<= {FOURIERFT_LIMIT}x)": lambda row, b: (
            row["loca_auto"]["ms"] / row["fourierft"]["ms"],
            FOURIERFT_LIMIT,
        ),
        f"peak memory vs LoRA r=16 (<= {MEMORY_LIMIT}x)": lambda row, b: (
            row["loca_auto"]["peak_bytes"] / row["lora_r16"]["peak_bytes"],
            MEMORY_LIMIT,
        ),
    }
    lines = ["", f"Targets, cases with >= 2048 tokens ({len(counted)}), automatic strategy:", ""]
    for name, check in checks.items():
        misses = []
        for case in counted:
            row = {r["method"]: r for r in train if (r["shape"], r["tokens"], r["n_frequency"]) == case}
            value, limit = check(row, case[2])
            if value > limit:
                misses.append(f"{case[0]} / {case[1]} / B={case[2]}: {value:.2f}")
        lines.append(
            f"- {name}: met in {len(counted) - len(misses)}/{len(counted)}"
            + (f"; missed: {', '.join(misses)}" if misses else "")
        )
    return lines


def table(records: list[dict], info: dict, command: str) -> str:
    lines = [
        "# Layer speed: one adapted linear layer, LoCA vs LoRA vs FourierFT",
        "",
        machine_line(info),
        "",
        f"Command: `{command}`. Median of round-robin repetitions, forward+backward with the input requiring",
        "grad; LoCA timed in the coefficient phase (`loca_auto_location_phase`: a location step). `lora_budget`",
        "has the rank whose parameter count matches `n_frequency`. Ratios: `loca_auto` over LoRA r=16 and over",
        "FourierFT; memory ratio: peak bytes of `loca_auto` over LoRA r=16.",
        "",
    ]
    train = [r for r in records if r["mode"] == "train"]
    methods = list(dict.fromkeys(r["method"] for r in train))
    lines.append(
        "| shape | tokens | B | " + " | ".join(methods) + " | auto/LoRA16 | auto/FourierFT | mem auto/LoRA16 |"
    )
    lines.append("|---|---:|---:|" + "---:|" * (len(methods) + 3))
    cases = list(dict.fromkeys((r["shape"], r["tokens"], r["n_frequency"]) for r in train))
    for case in cases:
        row = {r["method"]: r for r in train if (r["shape"], r["tokens"], r["n_frequency"]) == case}
        ratio = row["loca_auto"]["ms"] / row["lora_r16"]["ms"]
        ratio_f = row["loca_auto"]["ms"] / row["fourierft"]["ms"]
        mem = row["loca_auto"]["peak_bytes"] / row["lora_r16"]["peak_bytes"]
        cells = " | ".join(f"{row[m]['ms']:.2f}" for m in methods)
        lines.append(f"| {case[0]} | {case[1]} | {case[2]} | {cells} | {ratio:.2f} | {ratio_f:.2f} | {mem:.2f} |")
    lines += target_lines(train, cases)
    lines += ["", "Inference (no grad, ms):", ""]
    inference = [r for r in records if r["mode"] == "inference"]
    inf_methods = list(dict.fromkeys(r["method"] for r in inference))
    lines.append("| shape | tokens | B | " + " | ".join(inf_methods) + " | merged/base | eval/base |")
    lines.append("|---|---:|---:|" + "---:|" * (len(inf_methods) + 2))
    for case in cases:
        row = {r["method"]: r for r in inference if (r["shape"], r["tokens"], r["n_frequency"]) == case}
        cells = " | ".join(f"{row[m]['ms']:.2f}" for m in inf_methods)
        lines.append(
            f"| {case[0]} | {case[1]} | {case[2]} | {cells} | {row['loca_merged']['ms'] / row['base']['ms']:.3f} | "
            f"{row['loca_eval']['ms'] / row['base']['ms']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="640x640, 2048 tokens, B=1000 only")
    parser.add_argument("--json", type=Path, default=None, help="where to write the JSON records")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    shapes, tokens_list, frequencies = ([(640, 640)], [2048], [1000]) if args.quick else (SHAPES, TOKENS, FREQUENCIES)
    repeats = args.repeats or (5 if args.quick else 5)
    methods = ["base", "lora_r16", "lora_budget", "fourierft"] + LOCA_METHODS
    records = []
    for d_out, d_in in shapes:
        for tokens in tokens_list:
            for n_frequency in frequencies:
                start = time.perf_counter()
                records += run_case(d_out, d_in, tokens, n_frequency, device, repeats, methods)
                print(
                    f"{d_out}x{d_in} tokens={tokens} B={n_frequency}: {time.perf_counter() - start:.1f}s", flush=True
                )
    info = machine_info(device)
    suffix = "" if not args.quick else "_quick"
    tag = "cuda" if device.type == "cuda" else "cpu"
    json_path = args.json or RESULTS / f"layer_speed_{tag}{suffix}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps({"machine": info, "records": records}, indent=1))
    command = (
        "python -m bench.layer_speed" + (" --quick" if args.quick else "") + ("" if tag == "cpu" else " --device cuda")
    )
    md = table(records, info, command)
    json_path.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
