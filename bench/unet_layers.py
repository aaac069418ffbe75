"""Where the UNet training step's extra time over LoRA goes: per adapted layer shape and token count.

The adapted layers of the SD-1.5-sized InstructPix2Pix UNet (``bench/unet_step.py``'s model) are found by
running one forward of the LoRA-adapted UNet with hooks that record, for every ``to_q/to_k/to_v/to_out.0``
call, its shape, token count and whether its input needs a gradient (the first self-attention block and the
cross-attention keys and values read tensors that do not). Layers with the same (shape, tokens, input
gradient) form a group; one layer of each group is then timed alone, forward + backward with the same
input-gradient setting, for the frozen base layer, LoRA r=16 and LoCA (automatic strategy, coefficient phase,
and one location step), round-robin, median. ``extra`` columns are (LoCA - LoRA r=16) x the number of layers
in the group: summed, they estimate the whole step's difference, which ``bench/unet_step.py`` measures.
The top LoCA ops of each group (profiler self time, GEMMs of the base layer excluded) say what the extra is.

    python -m bench.unet_layers [--quick] [--resolution 256|512] [--device cpu|cuda] [--baseline OLD.json]

``--baseline`` adds the LoCA times and totals of an earlier run (e.g. before a change) next to this one.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
from peft.tuners.tuners_utils import BaseTunerLayer  # noqa: E402

import loca_diffusion  # noqa: E402,F401  (registers LoCA with peft)
from bench.layer_speed import build, set_location_phase, train_step  # noqa: E402
from bench.machine import machine_info, machine_line  # noqa: E402
from bench.timing import time_round_robin  # noqa: E402
from bench.unet_step import QUICK_UNET, SD15_UNET, Inputs, adapted, build_unet, unet_forward  # noqa: E402
from loca_diffusion import LoCALayer  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = ["base", "lora_r16", "loca_auto"]
GEMM_OPS = ("aten::mm", "aten::addmm", "aten::linear", "aten::matmul")


def layer_calls(config: dict, device) -> list[dict]:
    """Every adapted layer call of one UNet forward: name, shape, tokens, whether the input needs a gradient."""
    unet = build_unet(config, device)
    model = adapted(unet, "lora", rank=16)
    calls = []

    def hook(name):
        def record(module, args, output):
            x = args[0]
            base = module.get_base_layer()
            calls.append(
                {
                    "name": name,
                    "d_out": base.out_features,
                    "d_in": base.in_features,
                    "tokens": x.numel() // x.shape[-1],
                    "input_grad": bool(x.requires_grad),
                }
            )

        return record

    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module.register_forward_hook(hook(name.replace("base_model.model.", "")))
    unet_forward(model, Inputs(config, device))
    return calls


def groups_of(calls: list[dict]) -> list[dict]:
    grouped = OrderedDict()
    for c in calls:
        key = (c["d_out"], c["d_in"], c["tokens"], c["input_grad"])
        grouped.setdefault(key, []).append(c["name"])
    return [
        {"d_out": k[0], "d_in": k[1], "tokens": k[2], "input_grad": k[3], "count": len(v), "example": v[0]}
        for k, v in grouped.items()
    ]


def strategy_of(model: nn.Module) -> str:
    return next(getattr(m, "last_strategy", "-") for m in model.modules() if isinstance(m, LoCALayer))


def top_ops(step, n: int = 4) -> list[tuple[str, float]]:
    """The ``n`` largest non-GEMM ops of one step by profiler self time, in ms per step (3 steps averaged)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    rows = [(e.key, e.self_cpu_time_total / 3e3) for e in prof.key_averages() if e.key not in GEMM_OPS]
    rows.sort(key=lambda item: -item[1])
    return [(name, round(ms, 3)) for name, ms in rows[:n]]


def time_group(group: dict, n_frequency: int, device, repeats: int) -> dict:
    d_out, d_in, tokens = group["d_out"], group["d_in"], group["tokens"]
    torch.manual_seed(1)
    x = torch.randn(tokens, d_in, device=device, requires_grad=group["input_grad"])
    grad = torch.randn(tokens, d_out, device=device)
    models = {m: build(m, d_out, d_in, n_frequency, device).train() for m in METHODS}
    models["loca_location_step"] = build("loca_auto", d_out, d_in, n_frequency, device).train()
    set_location_phase(models["loca_auto"], False)
    set_location_phase(models["loca_location_step"], True)

    steps = {m: train_step(model, x, grad) for m, model in models.items()}
    ms = time_round_robin(steps, repeats, device)
    ops = top_ops(steps["loca_auto"]) if device.type == "cpu" else []
    return {
        **group,
        "n_frequency": n_frequency,
        "ms": {m: round(v, 4) for m, v in ms.items()},
        "strategy": strategy_of(models["loca_auto"]),
        "location_strategy": strategy_of(models["loca_location_step"]),
        "extra_over_lora_ms": round((ms["loca_auto"] - ms["lora_r16"]) * group["count"], 3),
        "lora_over_base_ms": round((ms["lora_r16"] - ms["base"]) * group["count"], 3),
        "top_loca_ops": ops,
    }


def totals(rows: list[dict]) -> dict:
    out = {}
    for b in sorted({r["n_frequency"] for r in rows}):
        sel = [r for r in rows if r["n_frequency"] == b]
        out[str(b)] = {
            m: round(sum(r["ms"][m] * r["count"] for r in sel), 2)
            for m in ["base", "lora_r16", "loca_auto", "loca_location_step"]
        }
    return out


def markdown(result: dict, baseline: dict | None) -> str:
    setup = result["setup"]
    lines = [
        f"# Where the UNet step's time goes: adapted layers by shape and token count ({setup['resolution_px']} px)",
        "",
        machine_line(result["machine"]),
        "",
        f"Command: `{setup['command']}`",
        "",
        "Each row is a group of adapted layers of one UNet step with the same shape, token count and input-gradient "
        "setting (found by hooks on a real forward); one layer of the group is timed alone, forward + backward, "
        f"median of {setup['repeats']} round-robin repetitions (ms per layer). `extra` = (LoCA - LoRA r=16) x count: "
        "the group's share of the step's difference. LoCA: automatic strategy in the coefficient phase (the "
        "strategy column), `loc` a location step. Top ops: profiler self time per step of the LoCA layer, base "
        "GEMMs excluded.",
    ]
    base_rows = {}
    if baseline is not None:
        lines += ["", f"`before`: {baseline['setup'].get('label') or baseline['setup']['command']}"]
        for r in baseline["rows"]:
            base_rows[(r["d_out"], r["d_in"], r["tokens"], r["input_grad"], r["n_frequency"])] = r
    for b in setup["n_frequencies"]:
        lines += [
            "",
            f"## B = {b}",
            "",
            "| layers | shape (out x in) | tokens | input grad | count | base | LoRA r16 | LoCA | strategy "
            "| LoCA loc |"
            + (" LoCA before | extra before |" if baseline else "")
            + " extra ms | top LoCA ops (ms) |",
            "|---|---|---:|---|---:|---:|---:|---:|---|---:|" + ("---:|---:|" if baseline else "") + "---:|---|",
        ]
        for r in (r for r in result["rows"] if r["n_frequency"] == b):
            ms = r["ms"]
            ops = ", ".join(f"{name.replace('aten::', '')} {v:.2f}" for name, v in r["top_loca_ops"])
            before = ""
            if baseline:
                old = base_rows.get((r["d_out"], r["d_in"], r["tokens"], r["input_grad"], b))
                before = f" {old['ms']['loca_auto']:.2f} | {old['extra_over_lora_ms']:.0f} |" if old else " - | - |"
            lines.append(
                f"| {r['example']} | {r['d_out']}x{r['d_in']} | {r['tokens']} | "
                f"{'yes' if r['input_grad'] else 'no'} | "
                f"{r['count']} | {ms['base']:.2f} | {ms['lora_r16']:.2f} | {ms['loca_auto']:.2f} | {r['strategy']} | "
                f"{ms['loca_location_step']:.2f} |{before} {r['extra_over_lora_ms']:.0f} | {ops} |"
            )
        t = result["totals"][str(b)]
        lines += [
            "",
            f"Sum over all adapted layers (ms per step): base {t['base']:.0f}, LoRA r16 {t['lora_r16']:.0f}, "
            f"LoCA {t['loca_auto']:.0f} (extra over LoRA {t['loca_auto'] - t['lora_r16']:.0f}), LoCA location step "
            f"{t['loca_location_step']:.0f}.",
        ]
        if baseline and str(b) in baseline["totals"]:
            old = baseline["totals"][str(b)]
            lines.append(
                f"Before: LoCA {old['loca_auto']:.0f} (extra over LoRA {old['loca_auto'] - old['lora_r16']:.0f}, "
                f"LoRA {old['lora_r16']:.0f} in that run), location step {old['loca_location_step']:.0f}."
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the reduced UNet of unet_step.py --quick")
    parser.add_argument("--resolution", type=int, default=256, help="image size in px (latents are 8x smaller)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frequencies", type=int, nargs="+", default=None, help="B values (default 1000 5000)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--baseline", type=Path, default=None, help="an earlier JSON of this script to compare")
    parser.add_argument("--label", default="", help="what this run measures (shown when used as a baseline)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = dict(QUICK_UNET if args.quick else SD15_UNET, sample_size=args.resolution // 8)
    frequencies = args.frequencies or ([100, 500] if args.quick else [1000, 5000])
    start = time.perf_counter()
    groups = groups_of(layer_calls(config, device))
    print(f"{sum(g['count'] for g in groups)} adapted layer calls in {len(groups)} groups", flush=True)
    rows = []
    for b in frequencies:
        for g in groups:
            rows.append(time_group(g, b, device, args.repeats))
            print(f"B={b} {g['d_out']}x{g['d_in']} T={g['tokens']}: {rows[-1]['ms']}", flush=True)
    tag = "cuda" if device.type == "cuda" else "cpu"
    result = {
        "machine": machine_info(device),
        "setup": {
            "command": " ".join(["python -m bench.unet_layers", *argv]),
            "label": args.label,
            "quick": args.quick,
            "resolution_px": args.resolution,
            "n_frequencies": frequencies,
            "repeats": args.repeats,
        },
        "wall_s": round(time.perf_counter() - start, 1),
        "rows": rows,
        "totals": totals(rows),
    }
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    name = (
        f"unet_layers_{tag}{'_quick' if args.quick else ''}{'' if args.resolution == 256 else f'_{args.resolution}'}"
    )
    json_path = args.json or RESULTS / f"{name}.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    md = markdown(result, baseline)
    json_path.with_suffix(".md").write_text(md)
    print(md)
    return result


if __name__ == "__main__":
    main()
