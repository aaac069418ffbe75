"""How far can training reach on the cartoon pairs, by which part of the embedded UNet trains? (issues 8, 21)

    OMP_NUM_THREADS=1 python -m bench.cartoon_ceiling --jobs 2 [--eval_steps 150 300 600 1200]

Is where the cartoonizer adapters (LoCA, FourierFT, LoRA on ``to_q/to_k/to_v/to_out.0``) land on the held-out
photos (``cartoonizer.md``) the adapters' budget, or what the base can reach at all? This trains whole parts of
the shipped base outright, every weight of the part, no adapter, with the training script's loss
(:func:`loca_diffusion.training.instruct_pix2pix_loss`), data and conditioning dropout:

- ``attention``: the projections the adapters target. Any adapter on them is a restricted update of these
  weights, so this curve is the adapters' ceiling (up to optimisation);
- ``resnets``: the convolutional ResNet blocks (the only layers at the 32 x 32 latent level, where one
  latent pixel is 2 x 2 image pixels: attention starts at 16 x 16);
- ``unet``: everything.

Each run is one process with one torch thread (``--jobs N`` runs N at once): AdamW (weight decay 0.01),
batch 8, gradient clipping at 1, the held-out PSNR / SSIM against the code-made cartoons (the comparison's
sampling settings) at each of ``--eval_steps``. Needs the cartoon pairs of ``make assets``
(``build/embedded/cartoon_pairs``). Results: ``bench/results/cartoon_ceiling.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from bench.machine import machine_info, machine_line  # noqa: E402
from bench.report import write_markdown  # noqa: E402
from loca_diffusion.embedded.models import ATTENTION_LAYOUTS  # noqa: E402

RESULTS = ROOT / "bench" / "results"
PAIRS = ROOT / "build" / "embedded" / "cartoon_pairs"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
# (part, learning rate): the attention projections get two lrs, since they are the claim
RUNS = [("attention", 3e-4), ("attention", 1e-3), ("resnets", 3e-4), ("unet", 3e-4)]
PART_TITLES = {
    "attention": "attention projections (to_q/to_k/to_v/to_out.0)",
    "resnets": "ResNet blocks (convolutions, norms, time projections)",
    "unet": "whole UNet",
}


def part_parameters(unet: torch.nn.Module, part: str) -> list[torch.nn.Parameter]:
    """The parameters of ``part`` (``attention``, ``resnets`` or ``unet``) of a diffusers UNet."""
    if part == "unet":
        return list(unet.parameters())
    if part == "attention":
        keep = [m for name, m in unet.named_modules() if any(name.endswith("." + t) for t in ATTENTION)]
    elif part == "resnets":
        keep = [m for name, m in unet.named_modules() if name.split(".")[-2:-1] == ["resnets"]]
    else:
        raise ValueError(f"part must be one of {sorted(PART_TITLES)}, got {part!r}")
    if not keep:
        raise ValueError(f"the UNet has no {part} modules")
    return [p for m in keep for p in m.parameters()]


def train_part(part: str, lr: float, eval_steps: list[int], seed: int, batch_size: int) -> dict:
    """Train ``part`` of the shipped base on the cartoon pairs; held-out scores at each of ``eval_steps``."""
    from diffusers import DDPMScheduler

    from loca_diffusion.data import (
        DEFAULT_EDIT_PROMPT_COLUMN,
        DEFAULT_EDITED_IMAGE_COLUMN,
        DEFAULT_ORIGINAL_IMAGE_COLUMN,
        collate_fn,
        load_edit_dataset,
        make_train_dataset,
    )
    from loca_diffusion.edit import load_pipeline
    from loca_diffusion.embedded import BASE_DIR, RESOLUTION
    from loca_diffusion.embedded.evaluate import score_cartoonizer
    from loca_diffusion.embedded.photos import held_out_batch
    from loca_diffusion.training import instruct_pix2pix_loss

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    pipe = load_pipeline(BASE_DIR)
    unet, vae, text_encoder, tokenizer = pipe.unet, pipe.vae, pipe.text_encoder, pipe.tokenizer
    noise_scheduler = DDPMScheduler.from_pretrained(BASE_DIR, subfolder="scheduler")
    for module in (unet, vae, text_encoder):
        module.requires_grad_(False)
    params = part_parameters(unet, part)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    columns = dict(
        original_image_column=DEFAULT_ORIGINAL_IMAGE_COLUMN,
        edit_prompt_column=DEFAULT_EDIT_PROMPT_COLUMN,
        edited_image_column=DEFAULT_EDITED_IMAGE_COLUMN,
    )
    dataset = load_edit_dataset(
        dataset_name=None, dataset_config_name=None, train_data_dir=str(PAIRS), max_train_samples=None,
        cache_dir=None, seed=seed, **columns,
    )  # fmt: skip
    train = make_train_dataset(
        dataset, tokenizer, RESOLUTION, center_crop=True, random_flip=True, random_paraphrase=True, seed=seed,
        **columns,
    )  # fmt: skip
    loader = torch.utils.data.DataLoader(
        train, shuffle=True, batch_size=batch_size, collate_fn=collate_fn,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    null = text_encoder(
        tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    )[0]
    views = held_out_batch(RESOLUTION)
    curve, step, train_seconds = [], 0, 0.0

    def evaluate() -> None:
        unet.eval()
        scores, _ = score_cartoonizer(pipe, views)
        unet.train()
        curve.append({"step": step, "psnr": scores["psnr"], "ssim": scores["ssim"], "train_seconds": train_seconds})
        print(json.dumps({"part": part, "lr": lr, **curve[-1]}), flush=True)

    evaluate()
    while step < eval_steps[-1]:
        for batch in loader:
            start = time.process_time()
            loss = instruct_pix2pix_loss(unet, vae, text_encoder, noise_scheduler, batch, null, 0.05)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            train_seconds += time.process_time() - start
            step += 1
            if step in eval_steps:
                evaluate()
            if step >= eval_steps[-1]:
                break
    return {"part": part, "lr": lr, "trained_parameters": sum(p.numel() for p in params), "curve": curve}


def run_in_process(part: str, lr: float, args) -> dict:
    out = RESULTS / "tmp" / f"cartoon_ceiling_{part}_{lr:g}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "bench.cartoon_ceiling", "--run", part, str(lr), "--out", str(out)]
    command += ["--seed", str(args.seed), "--batch_size", str(args.batch_size), "--eval_steps"]
    command += [str(step) for step in args.eval_steps]
    # a module run from the repository root, so that `bench` imports however this driver was started
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    subprocess.run(command, check=True, env=env, cwd=ROOT)
    return json.loads(out.read_text())


def references() -> dict[str, float]:
    """Held-out PSNR of output = input, and of the shipped LoCA cartoonizer's comparison (mean over seeds)."""
    from loca_diffusion.embedded import RESOLUTION
    from loca_diffusion.embedded.edits import cartoon_targets
    from loca_diffusion.embedded.evaluate import mean_scores
    from loca_diffusion.embedded.photos import held_out_batch

    views = held_out_batch(RESOLUTION)
    refs = {"output = input": mean_scores(views, cartoon_targets(views))["psnr"]}
    comparison = json.loads((RESULTS / "cartoonizer.json").read_text())["rows"]
    for method in ("LoCA", "FourierFT", "LoRA"):
        runs = [run["eval_psnr"] for run in comparison[method]["runs"]]
        refs[f"{method} adapter ({len(runs)} seeds of cartoonizer.md, 150 steps): mean"] = sum(runs) / len(runs)
    return refs


# the price of moving attention up to the levels where the cartoon's lines are (UNet training step, CPU)
LAYOUTS = {
    "first base: attention on the 8 x 8 and 4 x 4 levels": ATTENTION_LAYOUTS["8x8"],
    "attention from the 16 x 16 level down": ATTENTION_LAYOUTS["16x16"],
    "attention on every level (Stable Diffusion's placement)": (
        ("CrossAttnDownBlock2D",) * 4,
        ("CrossAttnUpBlock2D",) * 4,
    ),
}


def layout_costs(batch_size: int = 16, repeats: int = 5) -> list[dict]:
    """CPU seconds of one forward + backward of the embedded UNet and of the same UNet with attention
    on more levels (the pretraining stage's batch 16, 32 x 32 latents); median of ``repeats``."""
    from diffusers import UNet2DConditionModel

    from loca_diffusion.embedded.models import TEXT_WIDTH, build_unet

    torch.manual_seed(0)
    rows = []
    for name, blocks in LAYOUTS.items():
        config = dict(build_unet().config)
        config.update(down_block_types=blocks[0], up_block_types=blocks[1])
        unet = UNet2DConditionModel.from_config(config)
        size = unet.config.sample_size
        x = torch.randn(batch_size, unet.config.in_channels, size, size)
        t = torch.randint(0, 1000, (batch_size,))
        text = torch.randn(batch_size, 77, TEXT_WIDTH)
        times = []
        for i in range(repeats + 2):  # two warm-up steps
            start = time.process_time()
            unet(x, t, text).sample.mean().backward()
            if i >= 2:
                times.append(time.process_time() - start)
        rows.append(
            {
                "layout": name,
                "parameters": sum(p.numel() for p in unet.parameters()),
                "seconds": sorted(times)[repeats // 2],
            }
        )
    return rows


def report(record: dict) -> str:
    results, refs = record["runs"], record["references"]
    identity = refs["output = input"]
    steps = [point["step"] for point in results[0]["curve"]]
    lines = [
        "# Cartoonizer ceiling: training whole parts of the embedded UNet (no adapter)",
        "",
        f"Command: `{record.get('command', 'OMP_NUM_THREADS=1 python -m bench.cartoon_ceiling --jobs 2')}` "
        f"({record['wall_seconds'] / 60:.0f} min wall).",
        "Held-out PSNR (dB) against the code-made cartoons of the 6 held-out photos, the comparison's sampling",
        "settings; in brackets the gain over output = input. The cartoonizer's bars: output = input + 2 dB = "
        f"{identity + 2:.2f} dB,",
        f"and the base without adapter (step 0) + 2 dB = {results[0]['curve'][0]['psnr'] + 2:.2f} dB.",
        "",
        "| part trained | lr | parameters | " + " | ".join(f"step {s}" for s in steps) + " | CPU s/step |",
        "|---|---|---|" + "---|" * len(steps) + "---|",
    ]
    for r in results:
        cells = [f"{p['psnr']:.2f} ({p['psnr'] - identity:+.2f})" for p in r["curve"]]
        per_step = r["curve"][-1]["train_seconds"] / max(1, r["curve"][-1]["step"])
        lines.append(
            f"| {PART_TITLES[r['part']]} | {r['lr']:g} | {r['trained_parameters']:,} | "
            + " | ".join(cells)
            + f" | {per_step:.2f} |"
        )
    lines += ["", "References (same photos):", ""]
    lines += [f"- {name}: {value:.2f} dB ({value - identity:+.2f})" for name, value in refs.items()]
    if "layout_costs" in record:
        costs = record["layout_costs"]
        base = costs[0]["seconds"]
        lines += [
            "",
            "## The price of attention higher up",
            "",
            "`python -m bench.cartoon_ceiling --layout_costs`: one UNet training step (forward + backward, batch 16, "
            "32 x 32 latents), CPU seconds of one thread, median of 5.",
            "",
            "| UNet layout | parameters | s/step | x first base |",
            "|---|---|---|---|",
            *(
                f"| {c['layout']} | {c['parameters']:,} | {c['seconds']:.2f} | {c['seconds'] / base:.2f}x |"
                for c in costs
            ),
        ]
    lines += ["", machine_line(record["machine"]), ""]
    return "\n".join(lines)


def write_report(record: dict) -> str:
    """``cartoon_ceiling.json`` and ``.md``; a hand-written ``## Reading`` in the old report survives."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cartoon_ceiling.json").write_text(json.dumps(record, indent=2))
    return write_markdown(RESULTS / "cartoon_ceiling.md", report(record))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--jobs", type=int, default=1, help="runs at once (one torch thread each)")
    p.add_argument("--eval_steps", type=int, nargs="+", default=[150, 300, 600, 1200, 1800, 2400])
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--layout_costs", action="store_true",
        help="only time the UNet step with attention on more levels, added to the existing results",
    )  # fmt: skip
    p.add_argument("--run", nargs=2, metavar=("PART", "LR"), help=argparse.SUPPRESS)  # one run, in this process
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.eval_steps = sorted(set(args.eval_steps))
    if args.run:
        result = train_part(args.run[0], float(args.run[1]), args.eval_steps, args.seed, args.batch_size)
        args.out.write_text(json.dumps(result, indent=2))
        return
    torch.set_num_threads(1)
    if args.layout_costs:
        record = json.loads((RESULTS / "cartoon_ceiling.json").read_text())
        record["layout_costs"] = layout_costs()
        record["layout_costs_machine"] = machine_info(torch.device("cpu"))
        print(write_report(record))
        return
    if not (PAIRS / "metadata.jsonl").is_file():
        sys.exit(f"error: no cartoon pairs at {PAIRS}; build them as `make assets` does (see the Makefile)")
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda run: run_in_process(*run, args), RUNS))
    record = {
        "command": " ".join(["OMP_NUM_THREADS=1 python -m bench.cartoon_ceiling", *(argv or sys.argv[1:])]),
        "machine": machine_info(torch.device("cpu")),
        "references": references(),
        "runs": results,
        "wall_seconds": time.time() - start,
    }
    previous = RESULTS / "cartoon_ceiling.json"
    if previous.is_file():  # the layout timings are a separate measurement (--layout_costs): keep them
        old = json.loads(previous.read_text())
        record.update({k: old[k] for k in ("layout_costs", "layout_costs_machine") if k in old})
    print(write_report(record))


if __name__ == "__main__":
    main()
