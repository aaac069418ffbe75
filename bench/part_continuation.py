"""Does more practice on the parts of a cartoon lift the cartoonizer? (issue 21)

The shipped base draws its ink-line edits weakly (``embedded_quality.md``: black outlines +0.7 dB over output =
input). This probe continues the base's own pretraining from the shipped weights, with the same loss, data and
conditioning dropout as ``train/pretrain_tiny_pix2pix.py --stage unet``, for ``--steps`` more steps, drawing
the parts of a cartoon (``PART_EDITS``) ``--part_weight`` times as often as each other edit; ``--part_weight
1`` is the control (the same extra steps, the pretraining's uniform mix). The cartoon itself stays out. Then
the LoCA cartoonizer is trained on the continued base exactly as in ``bench/results/cartoonizer.md`` (lr 0.01,
``--seeds``) and scored on the held-out photos::

    OMP_NUM_THREADS=1 python -m bench.part_continuation --part_weight 4 --seeds 1 2 3 &
    OMP_NUM_THREADS=1 python -m bench.part_continuation --part_weight 1 --seeds 1 2 3
    python -m bench.part_continuation --report     # -> bench/results/part_continuation.{md,json}

``--cartoon_weight W`` is the upper bound, never a base an adapter is trained on: the cartoon itself joins the mix
(drawn ``W`` times as often), and the continued base is scored on it directly, no adapter.

Each run works in ``build/probe/part-w<weight>[-cartoon<W>]/`` (``run.log``, the continued bases ``step<N>/``,
the adapters ``cartoonizer/``; finished steps are not repeated). Needs ``build/embedded/cartoon_pairs`` (``make
assets`` builds it).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
from pathlib import Path

import torch

from bench import task_comparison as tc
from bench.machine import machine_info, machine_line
from bench.report import write_markdown
from bench.stats import mean_ci
from loca_diffusion.data.prompts import CARTOONIZATION_PARAPHRASES
from loca_diffusion.embedded import BASE_DIR, RESOLUTION
from loca_diffusion.embedded.edits import (
    CARTOON_INSTRUCTION,
    PART_EDITS,
    PRETRAINING_EDITS,
    Edit,
    cartoon_targets,
)
from loca_diffusion.embedded.evaluate import cartoon_scores, evaluate_edits, score_cartoonizer
from loca_diffusion.embedded.metrics import DinoV2Similarity
from loca_diffusion.embedded.models import build_scheduler
from loca_diffusion.embedded.photos import held_out_batch
from loca_diffusion.embedded.pretraining import (
    build_latent_bank,
    instruction_tokens,
    pretraining_batch,
    pretraining_step,
)
from loca_diffusion.pipelines import StableDiffusionInstructPix2PixLoCAPipeline
from loca_diffusion.tiny_pix2pix import build_clip_tokenizer

ROOT = Path(__file__).resolve().parents[1]
PROBE = Path("build") / "probe"  # relative to ROOT
RESULTS = ROOT / "bench" / "results" / "part_continuation"
# the parts, and three shipped edits whose 3 dB margin the extra steps must not eat
WATCHED = ("invert", "warm", "blur", "flat_colors", "black_outlines", "line_drawing", "smooth")
EVAL_LINE = re.compile(r"^step (\d+): (.*)$")
RUN_NAME = re.compile(r"part-w([\d.]+)(?:-cartoon([\d.]+))?")
# only in the upper-bound probe: what the UNet itself makes of the cartoon when it is a pretraining edit
CARTOON_EDIT = Edit(
    "cartoon",
    cartoon_targets,
    (CARTOON_INSTRUCTION, *(p for p in CARTOONIZATION_PARAPHRASES if p != CARTOON_INSTRUCTION)),
)
LOCA_LR = 0.01  # LoCA's lr in cartoonizer.md, chosen on training views on the shipped base


def run_dir(part_weight: float, cartoon_weight: float = 0.0) -> Path:
    name = f"part-w{part_weight:g}" + (f"-cartoon{cartoon_weight:g}" if cartoon_weight else "")
    return ROOT / PROBE / name


def log(out: Path, line: str) -> None:
    """Print ``line`` and append it to the run's ``run.log`` (what :func:`report` reads)."""
    print(line, flush=True)
    with open(out / "run.log", "a") as f:
        f.write(line + "\n")


def edit_mix(part_weight: float, cartoon_weight: float = 0.0) -> tuple[tuple[Edit, ...], torch.Tensor]:
    """The edits of the continued pretraining and how often each is drawn: the parts of a cartoon
    ``part_weight``, every other pretraining edit 1; the cartoon itself only with ``cartoon_weight`` > 0 (the
    upper-bound probe, never a base an adapter is trained on)."""
    edits = PRETRAINING_EDITS + ((CARTOON_EDIT,) if cartoon_weight else ())
    weights = [cartoon_weight if e is CARTOON_EDIT else part_weight if e in PART_EDITS else 1.0 for e in edits]
    return edits, torch.tensor(weights)


def continue_pretraining(
    out: Path, part_weight: float, cartoon_weight: float, steps: int, lr: float, eval_every: int
) -> Path:
    """Continue the shipped base's pretraining (EMA weights exported at ``eval_every`` steps); returns the last."""
    last = out / f"step{steps}"
    if (last / "model_index.json").is_file():
        return last
    out.mkdir(parents=True, exist_ok=True)
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(ROOT / BASE_DIR, dtype=torch.float32)
    pipe.text_encoder.to(torch.float32)
    pipe.set_progress_bar_config(disable=True)
    vae, unet, text_encoder = pipe.vae.eval().requires_grad_(False), pipe.unet, pipe.text_encoder
    edits, weights = edit_mix(part_weight, cartoon_weight)
    # the UNet stage's bank (same crop count and seed), encoded by the shipped VAE, kept out of build/embedded
    bank = build_latent_bank(vae, 1500, 0, out / "unet" / "bank.pt", edits)
    scaling = vae.config.scaling_factor  # the shipped UNet's latent scale, not the new bank's estimate
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    ema_text = copy.deepcopy(text_encoder).requires_grad_(False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_text.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    tokenizer = build_clip_tokenizer(out / "tokenizer")
    tokens, empty = instruction_tokens(tokenizer, edits)
    scheduler, gen = build_scheduler(), torch.Generator().manual_seed(1)
    n, views, p = bank["inputs"].shape[0], held_out_batch(RESOLUTION), 0.05
    watched = [e for e in edits if e.name in WATCHED or e is CARTOON_EDIT]

    def evaluate(step: int) -> None:
        pipe.unet, pipe.text_encoder = ema_unet.eval(), ema_text.eval()
        scores = evaluate_edits(pipe, views, watched, steps=10)
        log(
            out,
            f"step {step}: " + ", ".join(f"{k} {v['psnr']:.2f}/{v['identity_psnr']:.2f}" for k, v in scores.items()),
        )
        pipe.save_pretrained(out / f"step{step}", safe_serialization=True)

    evaluate(0)
    unet.train()
    text_encoder.train()
    start = time.time()
    for step in range(1, steps + 1):
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, step / 100)
        b = 16
        idx = torch.randint(n, (b,), generator=gen)
        which = torch.multinomial(weights, b, replacement=True, generator=gen)
        batch = pretraining_batch(bank, idx, which, tokens, empty, scaling, scheduler, p, gen)
        loss = pretraining_step(
            unet, text_encoder, opt, params, ema_params, min(0.999, (1 + step) / (10 + step)), batch
        )
        if step % 50 == 0:
            log(out, f"step {step} loss {loss.item():.4f} {step / (time.time() - start):.2f} step/s")
        if step % eval_every == 0:
            evaluate(step)
            unet.train()
            text_encoder.train()
    return last


def train_cartoonizers(out: Path, base: Path, seeds: list[int]) -> list[dict]:
    """LoCA cartoonizers on ``base``, as ``bench.task_comparison cartoonizer`` trains and scores them."""
    tc.CARTOON_BASE = base.relative_to(ROOT)
    tc.WORK = out / "cartoonizer"
    task = dict(tc.TASKS["cartoonizer"])
    args = list(task["args"])
    args[args.index("--pretrained_model_name_or_path") + 1] = str(tc.CARTOON_BASE)
    task["args"] = args
    return [tc.run_one(task, "loca", LOCA_LR, seed, [], f"loca-lr{LOCA_LR:g}-s{seed}") for seed in seeds]


def base_alone(out: Path, base: Path) -> dict[str, float]:
    """The continued base given the cartoon instruction, no adapter (the issue's second bar is this + 2 dB)."""
    path = out / "base_alone.json"
    if not path.is_file():
        pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(base, dtype=torch.float32)
        pipe.set_progress_bar_config(disable=True)
        views = held_out_batch(RESOLUTION)
        scores = score_cartoonizer(pipe, views, dino=DinoV2Similarity())[0]
        scores["identity_psnr"] = cartoon_scores(views, cartoon_targets(views))["psnr"]
        path.write_text(json.dumps(scores, indent=2))
    return json.loads(path.read_text())


def read_evaluations(log: Path) -> dict[int, dict[str, tuple[float, float]]]:
    """{step: {edit: (model PSNR, output = input PSNR)}} from a run's log."""
    evals = {}
    for line in log.read_text().splitlines():
        m = EVAL_LINE.match(line)
        if m:
            pairs = (item.rsplit(" ", 1) for item in m.group(2).split(", "))
            evals[int(m.group(1))] = {k: tuple(float(x) for x in v.split("/")) for k, v in pairs}
    return evals


def run_label(name: str) -> tuple[str, bool]:
    """The heading of run folder ``name`` (``part-w4``, ``part-w4-cartoon4``); and whether the cartoon was in it."""
    m = RUN_NAME.fullmatch(name)
    part, cartoon = float(m.group(1)), float(m.group(2) or 0)
    if cartoon:
        return f"Upper bound: the cartoon itself in the mix (weight {cartoon:g}, parts {part:g})", True
    if part == 1:
        return "Part weight 1 (the control: uniform mix)", False
    return f"Part weight {part:g} (parts of a cartoon drawn {part:g}x as often)", False


def report() -> None:
    """Write ``bench/results/part_continuation.{md,json}`` from every ``build/probe/part-w*`` run."""
    runs = {}
    dirs = [d for d in (ROOT / PROBE).glob("part-w*") if RUN_NAME.fullmatch(d.name)]
    for d in sorted(dirs, key=lambda d: (run_label(d.name)[1], -float(RUN_NAME.fullmatch(d.name).group(1)))):
        results = [json.loads(f.read_text()) for f in sorted((d / "cartoonizer").glob("*/all_results.json"))]
        alone = d / "base_alone.json"
        runs[d.name] = {
            "evaluations": read_evaluations(d / "run.log"),
            "cartoonizer": results,
            "base_alone": json.loads(alone.read_text()) if alone.is_file() else None,
        }
    record = {"machine": machine_info(torch.device("cpu")), "runs": runs}
    lines = [
        "# More practice on the parts of a cartoon: continued pretraining of the shipped base",
        "",
        "Reproduce: `python -m bench.part_continuation --part_weight W --seeds 1 2 3` for W in 4 and 1 (and",
        "`--part_weight 4 --cartoon_weight 4 --seeds` for the upper bound), then `--report`.",
        "Held-out photos, PSNR dB of the model's edit (its gain over output = input) at 10 DDIM steps, guidance",
        "2 / 1.5, seed 0. The LoCA cartoonizer (lr 0.01, 150 steps) and the base alone on the continued base: the",
        "comparison's settings and scoring (20 DDIM steps). Each continuation: 1,500 steps at batch 16, ~21 min on",
        "one thread.",
        "",
    ]
    for name, run in runs.items():
        heading, with_cartoon = run_label(name)
        evals = run["evaluations"]
        columns = [k for k in (*WATCHED, "cartoon") if any(k in scores for scores in evals.values())]
        lines += [f"## {heading}", ""]
        lines += ["| step | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        for step, scores in sorted(evals.items()):
            cells = [
                f"{scores[k][0]:.2f} ({scores[k][0] - scores[k][1]:+.2f})" if k in scores else "" for k in columns
            ]
            lines.append(f"| {step} | " + " | ".join(cells) + " |")
        psnrs = [r["eval_psnr"] for r in run["cartoonizer"]]
        if psnrs:
            lo, hi = mean_ci(psnrs)[1:] if len(psnrs) > 1 else (psnrs[0], psnrs[0])
            lines += [
                "",
                f"LoCA cartoonizer on the last step, {len(psnrs)} seed(s): PSNR "
                + ", ".join(f"{v:.2f}" for v in psnrs)
                + f" (mean {sum(psnrs) / len(psnrs):.2f}, 95% CI [{lo:.2f}, {hi:.2f}]); DINOv2 "
                + ", ".join(f"{r['eval_dinov2']:.3f}" for r in run["cartoonizer"])
                + "; ink F1 "
                + ", ".join(f"{r['eval_ink_f1']:.3f}" for r in run["cartoonizer"]),
            ]
        alone = run["base_alone"]
        if alone:
            scores = f"PSNR {alone['psnr']:.2f} (DINOv2 {alone['dinov2']:.3f}, ink F1 {alone['ink_f1']:.3f})"
            if with_cartoon:  # this base learned the cartoon: what the UNet itself can do, not a bar
                lines += ["", f"The continued base, trained on the cartoon, given the cartoon instruction: {scores}."]
            else:
                lines += [
                    "",
                    f"The continued base alone, cartoon instruction: {scores}. Bars: output = input + 2 ="
                    f" {alone['identity_psnr'] + 2:.2f}, base + 2 = {alone['psnr'] + 2:.2f}.",
                ]
        lines.append("")
    lines.append(machine_line(record["machine"]))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.with_suffix(".json").write_text(json.dumps(record, indent=2))
    print(write_markdown(RESULTS.with_suffix(".md"), "\n".join(lines) + "\n"))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part_weight", type=float, default=4.0, help="how much more often the parts are drawn")
    p.add_argument(
        "--cartoon_weight", type=float, default=0.0, help="> 0: the cartoon itself in the mix (the upper bound)"
    )
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--lr", type=float, default=1e-4, help="after 100 warm-up steps, constant")
    p.add_argument("--eval_every", type=int, default=500)
    p.add_argument(
        "--seeds", type=int, nargs="*", default=[1], help="LoCA cartoonizer seeds on the last step (none: `--seeds`)"
    )
    p.add_argument("--report", action="store_true", help="only write bench/results/part_continuation.{md,json}")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    if args.report:
        report()
        return
    out = run_dir(args.part_weight, args.cartoon_weight)
    base = continue_pretraining(out, args.part_weight, args.cartoon_weight, args.steps, args.lr, args.eval_every)
    for result in train_cartoonizers(out, base, args.seeds):
        log(out, f"LoCA cartoonizer seed {result['seed']}: held-out PSNR {result['eval_psnr']:.2f} dB")
    log(out, f"base alone, cartoon instruction: held-out PSNR {base_alone(out, base)['psnr']:.2f} dB")


if __name__ == "__main__":
    main()
