#!/usr/bin/env python
"""Quality of the embedded default on the held-out photos (issue 8's table).

    python -m bench.embedded_quality                 # -> bench/results/embedded_quality.{md,json} + grids
    python -m bench.embedded_quality --write_examples    # also (re)writes assets/examples/
    python -m bench.embedded_quality --cartoon_references   # only the cartoon references: code and VAE (seconds)
    python -m bench.embedded_quality --sample_spread 6   # only the cartoonizer, 6 sampling seeds and their mean

Every number is a mean over the held-out photos' 64 px centre views (photos never seen in training),
PSNR / SSIM against the code-made target of each edit. Reference rows: output = input (doing
nothing) and the VAE round trip of the target (the best any edit through this VAE can reach); for the
cartoonizer also the target split in two: its exact flat colours without ink lines, and the input with
the target's ink lines drawn on it (how much of the score each part carries). An
edit ships when the model beats output = input by >= 3 dB; the LoCA cartoonizer must beat it by
>= 2 dB. Sampling: the embedded model's defaults (20 DDIM steps, the guidance chosen by ``--sweep_guidance``
on training photos), seed 0 (deterministic).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]

from bench.machine import machine_info  # noqa: E402
from loca_diffusion.edit import load_pipeline  # noqa: E402
from loca_diffusion.embedded import ADAPTERS_DIR, BASE_DIR, EXAMPLES_DIR, RESOLUTION  # noqa: E402
from loca_diffusion.embedded.edits import (  # noqa: E402
    CARTOON_INSTRUCTION,
    EDITS_BY_NAME,
    PRETRAINING_EDITS,
    cartoon_reference_outputs,
    cartoon_targets,
    ink_mask,
)
from loca_diffusion.embedded.evaluate import (  # noqa: E402
    DEFAULT_GUIDANCE,
    DEFAULT_IMAGE_GUIDANCE,
    DEFAULT_STEPS,
    cartoon_scores,
    edit_outputs,
    evaluate_edits,
    mean_scores,
    merged_adapter_pipeline,
    run_edit,
    score_cartoonizer,
    vae_roundtrip,
)
from loca_diffusion.embedded.metrics import DinoV2Similarity  # noqa: E402
from loca_diffusion.embedded.photos import held_out_views, selection_views, to_image, write_examples  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CARTOON_OF_VAE_INPUT = "exact cartoon of the VAE round trip of the input"
SHIP_MARGIN_DB = 3.0
ADAPTER_MARGIN_DB = 2.0


def picture_grid(rows: list[list[torch.Tensor]], header: list[str], path: Path, scale: int = 2) -> None:
    s = RESOLUTION * scale
    grid = Image.new("RGB", (len(header) * (s + 2), 14 + len(rows) * (s + 2)), "white")
    draw = ImageDraw.Draw(grid)
    for j, title in enumerate(header):
        draw.text((j * (s + 2) + 2, 1), title[: s // 6], fill="black")
    for i, row in enumerate(rows):
        for j, x in enumerate(row):
            grid.paste(to_image(x).resize((s, s), Image.Resampling.NEAREST), (j * (s + 2), 14 + i * (s + 2)))
    grid.save(path)


def default_adapters() -> list[str]:
    """The shipped LoCA cartoonizer, and the FourierFT and LoRA runs of the comparison it was chosen in (seed 1
    at each method's chosen lr, as the shipped LoCA adapter), when ``bench/task_comparison.py cartoonizer`` ran."""
    adapters = [f"LoCA={ADAPTERS_DIR / 'cartoonizer'}"]
    comparison = RESULTS / "cartoonizer.json"
    if comparison.is_file():
        rows = json.loads(comparison.read_text())["rows"]
        for label in ("FourierFT", "LoRA"):
            row = rows.get(label) or {"lr": None}
            if row["lr"] is None:
                continue
            run = RESULTS / "tmp" / "cartoonizer" / f"{row['adapter']}-lr{row['lr']:g}-s1"
            if (run / "adapter_model.safetensors").is_file():
                adapters.append(f"{label}={run}")
    return adapters


def load_held_out() -> tuple[list[str], torch.Tensor]:
    """Names and (N, 3, H, W) views of the held-out photos at the embedded resolution."""
    named = held_out_views(RESOLUTION)
    return [n for n, _ in named], torch.stack([x for _, x in named])


def cartoon_table(rows: dict[str, dict[str, float]]) -> list[str]:
    """Markdown rows of cartoon scores (:func:`~loca_diffusion.embedded.evaluate.cartoon_scores`), with the
    gain over the ``output = input`` row."""
    ident = rows["output = input"]["psnr"]

    def cell(v: dict, key: str, fmt: str) -> str:
        return format(v[key], fmt) if key in v else "-"

    return [
        "| output | PSNR (dB) | gain over output = input (dB) | SSIM | DINOv2 similarity | ink precision | "
        "ink recall | ink F1 |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {k} | {v['psnr']:.2f} | {v['psnr'] - ident:+.2f} | {v['ssim']:.3f} | {cell(v, 'dinov2', '.3f')} | "
            f"{cell(v, 'ink_precision', '.3f')} | {cell(v, 'ink_recall', '.3f')} | {cell(v, 'ink_f1', '.3f')} |"
            for k, v in rows.items()
        ),
    ]


def write_result(out: Path, result: dict, lines: list[str]) -> dict:
    """``out``.json (``result`` and the machine it ran on) and ``out``.md (``lines``, also printed)."""
    result = {**result, "machine": machine_info(torch.device("cpu"))}
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return result


def write_cartoon_references(out: Path, model: str | Path = BASE_DIR) -> dict:
    """The cartoon target's reference rows on the held-out views, without sampling: what doing nothing, the
    exact flat colours alone and the input with the target's ink lines score against it; and, with the VAE of
    the pipeline at ``model``, the target's own code applied to the input as that VAE reconstructs it."""
    from diffusers import AutoencoderKL

    names, views = load_held_out()
    targets = cartoon_targets(views)
    dino = DinoV2Similarity()
    rows = {"output = input": cartoon_scores(views, targets, dino)}
    rows.update({k: cartoon_scores(v, targets, dino) for k, v in cartoon_reference_outputs(views, targets).items()})
    vae = AutoencoderKL.from_pretrained(Path(model) / "vae", torch_dtype=torch.float32).eval()
    rows[CARTOON_OF_VAE_INPUT] = cartoon_scores(cartoon_targets(vae_roundtrip(vae, views)), targets, dino)
    ink = ink_mask(targets).float().mean(dim=(1, 2, 3))
    shown_model = Path(model).resolve()  # the repository-relative path when it is inside the checkout
    shown_model = shown_model.relative_to(ROOT) if shown_model.is_relative_to(ROOT) else shown_model
    result = {
        "held_out_photos": names,
        "resolution": RESOLUTION,
        "ink_fraction": {n: round(float(f), 4) for n, f in zip(names, ink)},
        "rows": rows,
    }
    lines = [
        "# Cartoon target: where its distance from the input lies",
        "",
        "Reproduce: `python -m bench.embedded_quality --cartoon_references` (code-made outputs and the VAE of "
        f"`{shown_model}`; no sampling).",
        f"Held-out photos: {', '.join(names)}; {RESOLUTION} px centre views; the cartoonizer's target style "
        "(`loca_diffusion.embedded.edits.CARTOON_STYLE`).",
        "",
        f"Ink lines cover {100 * float(ink.mean()):.1f}% of the pixels (per photo "
        f"{100 * float(ink.min()):.1f}-{100 * float(ink.max()):.1f}%).",
        "",
        *cartoon_table(rows),
        "",
        f"*{CARTOON_OF_VAE_INPUT}*: the target's own code applied to the photo as the VAE reconstructs it. The "
        "UNet sees the input only through those latents, and the ink lines hang on detail finer than the VAE "
        "keeps, so this row measures how much of the target the latents still pin down. It is not a strict "
        "bound: a model can hedge where the latents leave a line open, or read them better than the VAE's "
        "decoder does.",
        "",
    ]
    return write_result(out, result, lines)


def write_sample_spread(out: Path, model: str | Path, adapter: str | Path, samples: int = 6) -> dict:
    """The cartoonizer at ``adapter`` sampled with seeds 0..``samples``-1 on the held-out views, each sample
    scored against the target, and the pixel mean of the samples: how much PSNR the model loses by committing
    to one guess where it is unsure (the comparison scores one sample, seed 0)."""
    names, views = load_held_out()
    targets = cartoon_targets(views)
    dino = DinoV2Similarity()
    pipe = merged_adapter_pipeline(model, adapter)
    outputs = [run_edit(pipe, views, [CARTOON_INSTRUCTION] * len(views), seed=seed) for seed in range(samples)]
    rows = {"output = input": cartoon_scores(views, targets, dino)}
    rows.update({f"sample, seed {seed}": cartoon_scores(o, targets, dino) for seed, o in enumerate(outputs)})
    rows[f"pixel mean of the {samples} samples"] = cartoon_scores(torch.stack(outputs).mean(0), targets, dino)
    single = [rows[f"sample, seed {seed}"]["psnr"] for seed in range(samples)]
    result = {
        "model": str(model),
        "adapter": str(adapter),
        "held_out_photos": names,
        "rows": rows,
    }
    lines = [
        "# Cartoonizer: one sample against the mean of several",
        "",
        f"Reproduce: `python -m bench.embedded_quality --sample_spread {samples}` (adapter `{adapter}` merged "
        f"into `{model}`).",
        f"Held-out photos: {', '.join(names)}; {RESOLUTION} px; {DEFAULT_STEPS} DDIM steps, guidance "
        f"{DEFAULT_GUIDANCE:g} / {DEFAULT_IMAGE_GUIDANCE:g}; the same adapter, only the sampling seed changes.",
        "",
        *cartoon_table(rows),
        "",
        f"Single samples: {min(single):.2f}-{max(single):.2f} dB (mean {sum(single) / samples:.2f}). Their pixel "
        "mean is not a cartoon (it blurs the ink the samples disagree on); the row says how much of the PSNR gap "
        "is the model's uncertainty about where a 1-px line goes, which a sample resolves at random.",
        "",
    ]
    return write_result(out, result, lines)


# (guidance_scale, image_guidance_scale) candidates: no guidance, and text guidance at a few strengths
GUIDANCE_SWEEP = ((1.0, 1.0), (2.0, 1.5), (3.0, 1.5), (5.0, 1.5), (3.0, 1.0))


def sweep_guidance(pipe, out: Path) -> tuple[float, float]:
    """Mean gain over output = input (dB, over all base edits) of each guidance pair on training-photo views;
    the best pair is the embedded model's default (``loca_diffusion.embedded.evaluate``)."""
    names = [n for n, _ in selection_views(RESOLUTION)]
    views = torch.stack([x for _, x in selection_views(RESOLUTION)])
    rows = {}
    for g, ig in GUIDANCE_SWEEP:
        scores = evaluate_edits(pipe, views, PRETRAINING_EDITS, guidance_scale=g, image_guidance_scale=ig)
        gains = {k: v["psnr"] - v["identity_psnr"] for k, v in scores.items()}
        rows[(g, ig)] = {"mean_gain": sum(gains.values()) / len(gains), "gains": gains}
        print(f"guidance {g} / image guidance {ig}: mean gain {rows[(g, ig)]['mean_gain']:+.2f} dB", flush=True)
    best = max(rows, key=lambda k: rows[k]["mean_gain"])
    lines = [
        "# Embedded default: sampling guidance, chosen on training photos",
        "",
        "Reproduce: `python -m bench.embedded_quality --sweep_guidance`.",
        f"Views: 64 px centre crops of training photos ({', '.join(names)}), never the held-out ones; 20 DDIM "
        "steps, seed 0. Gain: PSNR of the model's edit minus PSNR of output = input, against each edit's target.",
        "",
        "| guidance / image guidance | mean gain (dB) | " + " | ".join(e.name for e in PRETRAINING_EDITS) + " |",
        "|---|---|" + "---|" * len(PRETRAINING_EDITS),
    ]
    for (g, ig), row in rows.items():
        cells = " | ".join(f"{row['gains'][e.name]:+.2f}" for e in PRETRAINING_EDITS)
        lines.append(f"| {g:g} / {ig:g}{' (chosen)' if (g, ig) == best else ''} | {row['mean_gain']:+.2f} | {cells} |")
    lines += [
        "",
        f"Chosen: {best[0]:g} / {best[1]:g} (the embedded model's DEFAULT_GUIDANCE / DEFAULT_IMAGE_GUIDANCE in "
        "`loca_diffusion/embedded/evaluate.py`; tests/test_embedded.py checks they agree).",
        "",
    ]
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    return best


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=str(BASE_DIR))
    p.add_argument(
        "--adapter",
        action="append",
        default=None,
        metavar="LABEL=DIR",
        help="cartoonizer adapters (PEFT folders: LoCA, FourierFT, LoRA) to compare (default: the shipped LoCA "
        "adapter and the FourierFT / LoRA runs of bench/task_comparison.py cartoonizer)",
    )
    p.add_argument("--write_examples", action="store_true", help="write assets/examples/ from the shipped edits")
    p.add_argument(
        "--sweep_guidance",
        action="store_true",
        help="only choose the sampling guidance on training-photo views -> bench/results/embedded_guidance.md",
    )
    p.add_argument(
        "--cartoon_references",
        action="store_true",
        help="only the cartoon reference rows (code-made, and the VAE of --model; no sampling) -> "
        "bench/results/embedded_cartoon_references.md",
    )
    p.add_argument(
        "--sample_spread",
        type=int,
        default=0,
        metavar="K",
        help="only the cartoonizer (the first --adapter, default the shipped one) sampled with K seeds, and the "
        "pixel mean of the samples -> bench/results/embedded_sample_spread.md",
    )
    p.add_argument("--out", default=str(RESULTS / "embedded_quality"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.cartoon_references:
        write_cartoon_references(RESULTS / "embedded_cartoon_references", args.model)
        return
    adapters = dict(a.split("=", 1) for a in (args.adapter or default_adapters()))
    if args.sample_spread:
        write_sample_spread(
            RESULTS / "embedded_sample_spread", args.model, next(iter(adapters.values())), args.sample_spread
        )
        return

    start = time.time()
    pipe = load_pipeline(args.model)
    if args.sweep_guidance:
        sweep_guidance(pipe, RESULTS / "embedded_guidance.md")
        return
    names, views = load_held_out()
    # one sampling pass: the same outputs fill the table and the grid
    model_out = edit_outputs(pipe, views, PRETRAINING_EDITS)
    base = evaluate_edits(pipe, views, PRETRAINING_EDITS, outputs=model_out)
    recon = mean_scores(vae_roundtrip(pipe.vae, views), views)
    shipped = [k for k, v in base.items() if v["psnr"] - v["identity_psnr"] >= SHIP_MARGIN_DB]

    targets = cartoon_targets(views)
    prompts = [CARTOON_INSTRUCTION] * len(views)
    dino = DinoV2Similarity()
    cartoon = {
        "output = input": cartoon_scores(views, targets, dino),
        "VAE round trip of the target": cartoon_scores(vae_roundtrip(pipe.vae, targets), targets, dino),
        **{k: cartoon_scores(v, targets, dino) for k, v in cartoon_reference_outputs(views, targets).items()},
    }
    outputs = {"base (no adapter)": run_edit(pipe, views, prompts)}
    for label, path in adapters.items():  # any PEFT method, merged: LoCA, FourierFT, LoRA
        outputs[label] = score_cartoonizer(merged_adapter_pipeline(args.model, path), views)[1]
    cartoon.update({k: cartoon_scores(v, targets, dino) for k, v in outputs.items()})
    if "LoCA" in outputs:  # where the shipped adapter's error lies: on the target's ink lines, or off them
        ink, loca = ink_mask(targets), outputs["LoCA"]
        cartoon["LoCA, with the target's ink lines drawn in"] = cartoon_scores(
            loca.masked_fill(ink, 0.0), targets, dino
        )
        cartoon["LoCA on the ink lines, the exact flat colours off them"] = cartoon_scores(
            torch.where(ink, loca, targets), targets, dino
        )

    RESULTS.mkdir(parents=True, exist_ok=True)
    picture_grid(
        [[v, t, *(o[i] for o in outputs.values())] for i, (v, t) in enumerate(zip(views, targets))],
        ["input", "target", *outputs],
        RESULTS / "embedded_cartoon_grid.png",
    )
    edited = [e.apply(views) for e in PRETRAINING_EDITS]
    rows = []
    for i in range(len(views)):
        rows.append([views[i], *(t[i] for t in edited)])
        rows.append([views[i], *(m[i] for m in model_out)])
    picture_grid(rows, ["input", *(e.name for e in PRETRAINING_EDITS)], RESULTS / "embedded_edits_grid.png")

    result = {
        "held_out_photos": names,
        "resolution": RESOLUTION,
        "sampling": {
            "steps": DEFAULT_STEPS,
            "guidance_scale": DEFAULT_GUIDANCE,
            "image_guidance_scale": DEFAULT_IMAGE_GUIDANCE,
            "seed": 0,
        },
        "vae_reconstruction": recon,
        "base_edits": base,
        "shipped_edits": shipped,
        "dropped_edits": [k for k in base if k not in shipped],
        "cartoonizer": cartoon,
        "machine": machine_info(torch.device("cpu")),
        "seconds": round(time.time() - start, 1),
    }
    Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    lines = [
        "# Embedded default: held-out quality",
        "",
        f"Reproduce: `python -m bench.embedded_quality` "
        f"({result['seconds']:.0f} s on {result['machine']['cpu']}, 1 thread).",
        f"Held-out photos ({len(names)}, never seen in training): {', '.join(names)}; {RESOLUTION} px centre views.",
        f"Sampling: {DEFAULT_STEPS} DDIM steps, guidance {DEFAULT_GUIDANCE:g}, image guidance "
        f"{DEFAULT_IMAGE_GUIDANCE:g} (chosen on training photos: `embedded_guidance.md`), seed 0.",
        "",
        f"VAE reconstruction of the photos: PSNR {recon['psnr']:.2f} dB, SSIM {recon['ssim']:.3f}.",
        "",
        "## Base edits (PSNR dB / SSIM against the code-made target)",
        "",
        "| edit | model | output = input | VAE limit | gain (dB) | ships (gain >= 3 dB) |",
        "|---|---|---|---|---|---|",
    ]
    for k, v in base.items():
        lines.append(
            f"| {k} | {v['psnr']:.2f} / {v['ssim']:.3f} | {v['identity_psnr']:.2f} / {v['identity_ssim']:.3f} | "
            f"{v['vae_psnr']:.2f} / {v['vae_ssim']:.3f} | {v['psnr'] - v['identity_psnr']:+.2f} | "
            f"{'yes' if k in shipped else 'no'} |"
        )
    lines += [
        "",
        f'## Cartoonizer (instruction: "{CARTOON_INSTRUCTION}")',
        "",
        *cartoon_table(cartoon),
        "",
        *(
            [
                "The last two rows are LoCA's output with one part made exact: what its ink lines cost, and what "
                "its colours off the lines cost.",
                "",
            ]
            if "LoCA" in outputs
            else []
        ),
        "Grids: `embedded_edits_grid.png` (per photo: targets row, then model row), "
        "`embedded_cartoon_grid.png` (input / target / base / adapters).",
        "",
    ]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))

    if args.write_examples:
        files = write_examples(EXAMPLES_DIR, 192)  # the app shows them; edits resize to 64 px
        rows = (
            [
                {
                    "image": f,
                    "instruction": EDITS_BY_NAME[shipped[i % len(shipped)]].instructions[0],
                    "adapter": None,
                }
                for i, f in enumerate(files)
            ]
            if shipped
            else []
        )
        rows += [{"image": f, "instruction": CARTOON_INSTRUCTION, "adapter": "cartoonizer"} for f in files[:3]]
        (EXAMPLES_DIR / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"wrote {len(rows)} examples to {EXAMPLES_DIR}")


if __name__ == "__main__":
    main()
