"""LoCA vs FourierFT vs LoRA (matched trainable-parameter budgets) vs the frozen model with its head trained,
on real pretrained models that install offline (issue 10), and the paper's Table 5 ablations.

    nice -n 19 python bench/task_comparison.py minilm            # MiniLM-L6 on BBC News topics
    nice -n 19 python bench/task_comparison.py minilm-ablation   # V1/V2/V3, forward/backward differences
    nice -n 19 python bench/task_comparison.py vit               # ViT-S/14 on a Fashion-MNIST subset
    nice -n 19 python bench/task_comparison.py smollm2           # SmolLM2-135M on BBC headline generation
    nice -n 19 python bench/task_comparison.py cartoonizer       # the embedded InstructPix2Pix's cartoon adapter
    nice -n 19 python bench/task_comparison.py cartoonizer-ablation  # V1 (fixed random locations) there

Every run is one ``train/*.py`` process with one torch thread and the same step count (``--jobs N`` runs N at
once). Learning rates: the classifier head has one fixed lr in every method (so only the adapter differs); each
adapter gets the same budget of two candidate lrs a decade apart around its usual scale, each tried with seed 0
and judged on the evaluation split; the better one is then run with seeds 1..N (fresh seeds: the reported
numbers exclude the selection run, but the lr was chosen on the same split, which favours every method alike).
The head-only runs have nothing to search. The ablation reuses LoCA's chosen lr. Wall time is the training loop
(``train_seconds``; on a shared machine it also counts other people's work, unevenly over the runs), CPU time
the training loop's process CPU time (the fairer cost on a shared machine), memory the process's peak RSS
(model, data and optimizer included).
The cartoonizer runs ``train/instruct_pix2pix_loca.py`` on the embedded model's cartoon pairs (``make assets``
builds them under ``build/embedded/``); each finished adapter is merged into the shipped base and scored by PSNR /
SSIM against the code-made cartoons of the held-out photos (``loca_diffusion.embedded.evaluate``); its time and
memory are the whole training process's (model loading included), from ``os.wait4``.
Results: ``bench/results/<task>.json`` and ``.md`` (machine info from ``bench/machine.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from bench.machine import machine_info, machine_line  # noqa: E402
from loca_diffusion.embedded import BASE_DIR  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = RESULTS / "tmp"

# LoCA's schedule scaled to the short runs: alternate B_a = 2 / B_l = 3 for the first half (T_s), locations at
# lr 1e-3 (in [0, 1] units: up to a few index positions over the location steps).
LOCA_SCHEDULE = "--coefficient_steps 2 --location_steps 3 --location_lr 1e-3"
TASKS = {
    "minilm": dict(
        script="text_classification_loca.py",
        title="MiniLM-L6 (22.7M) on BBC News topic classification (5 classes)",
        args=(
            "--model_name_or_path offline:minilm --dataset_name offline:bbc-news --max_length 32 "
            "--max_train_samples 480 --max_eval_samples 150 --per_device_train_batch_size 16 --max_train_steps 30 "
            "--location_training_steps 15 --n_frequency 1536 --head_learning_rate 1e-2 --lr_scheduler_type linear "
            + LOCA_SCHEDULE
        ).split(),
        metric="eval_accuracy",
        methods={"head only (frozen model)": "none", "LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"},
        lrs={"none": [1e-2], "loca": [3e-3, 3e-2], "fourierft": [3e-3, 3e-2], "lora": [1e-3, 1e-2]},
    ),
    "vit": dict(
        script="image_classification_loca.py",
        title="ViT-S/14 (DINOv2 layout, 22M) on Fashion-MNIST (640 training / 200 test images at 56 px)",
        args=(
            "--model_name_or_path offline:vit-s14 --dataset_name offline:fashion-mnist --resolution 56 "
            "--max_train_samples 640 --max_eval_samples 200 --per_device_train_batch_size 16 --max_train_steps 40 "
            "--location_training_steps 20 --n_frequency 768 --head_learning_rate 3e-3 --lr_scheduler_type linear "
            + LOCA_SCHEDULE
        ).split(),
        metric="eval_accuracy",
        methods={"head only (frozen model)": "none", "LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"},
        lrs={"none": [3e-3], "loca": [3e-3, 3e-2], "fourierft": [3e-3, 3e-2], "lora": [1e-3, 1e-2]},
    ),
    "smollm2": dict(
        script="causal_lm_loca.py",
        title="SmolLM2-135M-Instruct on BBC headline generation (q/v projections)",
        args=(
            "--model_name_or_path offline:smollm2 --dataset_name offline:bbc-headlines --max_length 128 "
            "--max_target_length 24 --max_train_samples 400 --max_eval_samples 40 --num_generation_samples 40 "
            "--max_new_tokens 20 --per_device_train_batch_size 4 --per_device_eval_batch_size 8 --max_train_steps 20 "
            "--location_training_steps 10 --target_modules q_proj,v_proj --n_frequency 960 --lr_scheduler_type linear "
            + LOCA_SCHEDULE
        ).split(),
        metric="eval_rougeL",
        methods={"frozen model (no training)": "frozen", "LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"},
        # no search here (CPU budget): each adapter takes the lr it chose on both MiniLM and the ViT
        lrs={"frozen": [0.0], "loca": [3e-2], "fourierft": [3e-2], "lora": [1e-3]},
    ),
}
EMBEDDED = Path("build") / "embedded"  # relative to ROOT, where the runs start (paths in the results stay portable)
TASKS["cartoonizer"] = dict(
    script="instruct_pix2pix_loca.py",
    title="Cartoonizer on the embedded tiny InstructPix2Pix (UNet to_q/to_k/to_v/to_out.0, 64 px)",
    args=(
        f"--pretrained_model_name_or_path {EMBEDDED / 'base_fp32'} --train_data_dir {EMBEDDED / 'cartoon_pairs'} "
        "--resolution 64 --random_flip --sample_paraphrases --train_batch_size 8 --max_train_steps 150 "
        "--n_frequency 512 --location_training_steps 60 --coefficient_steps 10 --location_steps 10 "
        "--location_lr 1e-3 --checkpointing_steps 100000 "
        "--num_validation_images 1 --validation_inference_steps 10"
    ).split(),
    metric="eval_psnr",
    metrics=["eval_psnr", "eval_ssim", "eval_dinov2", "eval_ink_f1"],
    evaluate="cartoonizer",
    accelerate=True,
    methods={"LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"},
    # 150 steps (a training step of this tiny UNet with LoCA costs ~1.4 s on one CPU thread: 18 runs must fit
    # in about 40 minutes on 2 cores); lrs at the top of the task comparisons' grids, where all three chose
    lrs={"loca": [3e-2, 1e-1], "fourierft": [3e-2, 1e-1], "lora": [3e-3, 1e-2]},
    ablations={
        "LoCA (alternating, central differences)": [],
        "V1: fixed random locations": ["--schedule_variant", "fixed"],
    },
)
ABLATIONS = {
    "LoCA (alternating, central differences)": [],
    "V1: fixed random locations": ["--schedule_variant", "fixed"],
    "V2: alternating throughout (no T_s)": ["--schedule_variant", "alternate_throughout"],
    "V3: joint (both every step until T_s)": ["--schedule_variant", "joint"],
    "forward differences": ["--location_grad", "forward"],
    "backward differences": ["--location_grad", "backward"],
}


def run_one(task: dict, adapter: str, lr: float, seed: int, extra: list[str], tag: str) -> dict:
    out = WORK / tag
    done = out / "all_results.json"
    if done.is_file():  # resumable: a finished run is not repeated
        return json.loads(done.read_text())
    if FINISHED_ONLY:
        return None
    while out.is_dir() and time.time() - out.stat().st_mtime < 1800 and not done.is_file():
        time.sleep(20)  # another driver (e.g. the ablation beside the comparison) is running it right now
    if done.is_file():
        return json.loads(done.read_text())
    args = list(task["args"]) + ["--seed", str(seed), "--output_dir", str(out), "--report_to", "none"]
    if adapter == "frozen":  # the base model as it is: no step, but the same evaluation
        args += ["--adapter", "lora", "--max_train_steps", "0", "--learning_rate", "0"]
    else:
        args += ["--adapter", adapter, "--learning_rate", str(lr)] + (["--match_budget"] if adapter != "none" else [])
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
    )
    command = [sys.executable, str(ROOT / "train" / task["script"])] + args + extra
    if task.get("accelerate"):  # as users run it: `accelerate launch` (one CPU process)
        launch = "-m accelerate.commands.launch --num_machines 1 --num_processes 1 --cpu --mixed_precision no"
        command[1:1] = launch.split() + ["--dynamo_backend", "no"]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        _, status, usage = os.wait4(process.pid, 0)  # this child's own CPU time and peak RSS
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{tag} failed:\n{(out / 'train.log').read_text()[-3000:]}")
    wall = time.perf_counter() - start
    print(f"  {tag}: {wall:.0f} s", flush=True)
    if task.get("evaluate") == "cartoonizer":  # the script trains; the bench scores the adapter
        # one at a time: diffusers' loading patches torch's parameter creation process-wide (to the meta
        # device), which turned a concurrent evaluation's adapter parameters into no-ops
        with EVALUATION_LOCK:
            done.write_text(json.dumps(evaluate_cartoonizer(out, wall, usage), indent=2))
    return json.loads(done.read_text())


def evaluate_cartoonizer(adapter_dir: Path, wall: float, usage) -> dict:
    """Held-out PSNR / SSIM / DINOv2 similarity / ink-line F1 of the adapter merged into the shipped base, with
    the process's cost."""
    from safetensors.torch import load_file

    from loca_diffusion.embedded import RESOLUTION
    from loca_diffusion.embedded.evaluate import merged_adapter_pipeline, score_cartoonizer
    from loca_diffusion.embedded.metrics import DinoV2Similarity
    from loca_diffusion.embedded.photos import held_out_batch

    global DINO
    DINO = DINO or DinoV2Similarity()
    views = held_out_batch(RESOLUTION)
    scores, outputs = score_cartoonizer(merged_adapter_pipeline(BASE_DIR, adapter_dir), views, dino=DINO)
    torch.save(outputs, adapter_dir / "held_out_outputs.pt")  # for the comparison's picture grid
    weights = load_file(adapter_dir / "adapter_model.safetensors")
    return {
        "eval_psnr": scores["psnr"],
        "eval_ssim": scores["ssim"],
        "eval_dinov2": scores["dinov2"],
        **{f"eval_{k}": scores[k] for k in ("ink_precision", "ink_recall", "ink_f1")},
        # the trained numbers: coefficients / spectra / LoRA factors; LoCA's locations are positions, not weights
        "trainable_parameters": sum(
            v.numel() for k, v in weights.items() if v.is_floating_point() and "location" not in k
        ),
        "train_seconds": round(wall, 1),
        "train_cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }


def ship_adapter(name: str, rows: dict, target: Path) -> None:
    """The shipped adapter is one of the measured runs (LoCA, chosen lr, seed 1), not a separate training."""
    import shutil

    row = rows.get("LoCA")
    if row is None or row["lr"] is None or not row["runs"]:
        sys.exit("--ship: LoCA's seed-1 run is not finished")
    source = WORK / f"{name}/loca-lr{row['lr']:g}-s1"
    target.mkdir(parents=True, exist_ok=True)
    for f in ("adapter_config.json", "adapter_model.safetensors", "README.md", "locations.png", "samples.png"):
        shutil.copy2(source / f, target / f)
    for f in ("README.md", "adapter_config.json"):  # name the shipped base, not this machine's training copy
        text = (target / f).read_text().replace(str(EMBEDDED / "base_fp32"), "assets/tiny-instruct-pix2pix")
        (target / f).write_text(text)
    print(f"shipped {source} -> {target}")


def summary(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


JOBS = 1  # runs at once (--jobs): independent processes, one torch thread each
EVALUATION_LOCK = threading.Lock()
DINO = None  # the DINOv2 scorer, loaded once (under EVALUATION_LOCK)
FINISHED_ONLY = False  # --finished_only: tabulate the runs that exist, start none
SEEDS = 3


def prefetch(jobs: list[tuple]) -> None:
    """Run ``run_one(*job)`` for all ``jobs``, ``JOBS`` at a time; later calls find them cached."""
    from concurrent.futures import ThreadPoolExecutor

    if FINISHED_ONLY:
        return
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        for future in [pool.submit(run_one, *job) for job in jobs]:
            future.result()


def all_finished(name: str, adapter: str) -> bool:
    """Whether every selection run of ``adapter`` has finished (without starting any)."""
    lrs = TASKS[name]["lrs"][adapter]
    return len(lrs) > 1 and all((WORK / f"{name}/{adapter}-lr{lr:g}-s0" / "all_results.json").is_file() for lr in lrs)


def search_lr(name: str, adapter: str) -> tuple[float, dict]:
    """The best of ``adapter``'s candidate lrs by the task's metric, each tried with seed 0 (cached runs)."""
    task = TASKS[name]
    candidates = task["lrs"][adapter]
    if len(candidates) == 1:  # nothing to choose, no selection run
        return candidates[0], {}
    search = {lr: run_one(task, adapter, lr, 0, [], f"{name}/{adapter}-lr{lr:g}-s0") for lr in candidates}
    search = {lr: r for lr, r in search.items() if r is not None}
    if len(search) < len(candidates):
        return None, search  # the selection is not finished
    return max(search, key=lambda lr: search[lr][task["metric"]]), search


def compare(name: str, seeds: int) -> dict:
    task = TASKS[name]
    metric = task["metric"]
    rows = {}
    seed_range = range(1, seeds + 1)

    def seeds_of(adapter: str):
        return [1] if adapter == "frozen" else seed_range  # untrained, greedy decoding: one run says it all

    def seed_jobs(adapter: str, lr: float) -> list[tuple]:
        return [(task, adapter, lr, s, [], f"{name}/{adapter}-lr{lr:g}-s{s}") for s in seeds_of(adapter)]

    selection = [(task, a, lr, 0, [], f"{name}/{a}-lr{lr:g}-s0") for a, lrs in task["lrs"].items() for lr in lrs]
    selection = [job for job, lrs in zip(selection, [task["lrs"][job[1]] for job in selection]) if len(lrs) > 1]
    unsearched = [job for a, lrs in task["lrs"].items() if len(lrs) == 1 for job in seed_jobs(a, lrs[0])]
    # adapters whose selection already finished (a resumed run) go on at once, beside the others' selection
    ready = [job for a in task["lrs"] if all_finished(name, a) for job in seed_jobs(a, search_lr(name, a)[0])]
    prefetch(selection + unsearched + ready)
    best = {a: search_lr(name, a)[0] for a in task["lrs"]}
    prefetch([job for a, lr in best.items() if lr is not None for job in seed_jobs(a, lr)])
    for label, adapter in sorted(task["methods"].items(), key=lambda item: item[1] != "loca"):  # LoCA's lr first
        best, search = search_lr(name, adapter)
        runs = (
            [run_one(task, adapter, best, s, [], f"{name}/{adapter}-lr{best:g}-s{s}") for s in seeds_of(adapter)]
            if best is not None
            else []
        )
        runs = [r for r in runs if r is not None]
        search = {f"{k:g}": v[metric] for k, v in search.items()}
        rows[label] = dict(adapter=adapter, lr=best, search=search, runs=runs)
        if runs:
            print(f"{label}: lr {best:g}, {metric} {summary([r[metric] for r in runs])}", flush=True)
    return rows


def ablate(name: str, seeds: int, lr: float) -> dict:
    task = TASKS[name]
    rows = {}

    def tag(extra: list[str], s: int) -> str:
        return f"{name}/loca-lr{lr:g}-s{s}" if not extra else f"{name}-ablation/{'-'.join(extra[1::2])}-s{s}"

    # the variants first: the unchanged LoCA runs are the comparison's, probably finished meanwhile
    ablations = task.get("ablations", ABLATIONS)
    order = sorted(ablations.values(), key=lambda extra: not extra)
    prefetch([(task, "loca", lr, s, extra, tag(extra, s)) for extra in order for s in range(1, seeds + 1)])
    for label, extra in ablations.items():
        runs = [
            run_one(
                task,
                "loca",
                lr,
                s,
                extra,
                tag(extra, s),
            )
            for s in range(1, seeds + 1)
        ]
        runs = [r for r in runs if r is not None]
        rows[label] = dict(adapter="loca", lr=lr, extra=extra, runs=runs)
        if runs:
            print(f"{label}: {summary([r[task['metric']] for r in runs])}", flush=True)
    return rows


def cpu_cell(values: list) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "not recorded"
    return f"{statistics.mean(known):.1f}" + (f" (n={len(known)})" if len(known) != len(values) else "")


def table(rows: dict, metrics: list[str]) -> list[str]:
    head = (
        ["method", "lr", "trainable params"]
        + [f"{m} (mean ± std)" for m in metrics]
        + ["train wall s/run", "train CPU s/run", "peak RSS MiB"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        runs = row["runs"]
        if not runs:
            lines.append(f"| {label} | " + " | ".join(["not run yet"] * (len(head) - 1)) + " |")
            continue
        # the untrained row runs a 0-step LoRA (the identity): it trains nothing
        params = 0 if row["adapter"] == "frozen" else runs[0]["trainable_parameters"]
        cells = [label, f"{row['lr']:g}", f"{params:,}"]
        for m in metrics:
            mean, std = summary([r[m] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}" + (f" (n={len(runs)})" if len(runs) != SEEDS else ""))
        cells += [
            f"{summary([r['train_seconds'] for r in runs])[0]:.1f}",
            cpu_cell([r.get("train_cpu_seconds") for r in runs]),
            f"{max(r['peak_rss_mib'] for r in runs):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=[*TASKS, *[f"{t}-ablation" for t in TASKS]])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=1, help="Runs at once (each one torch thread).")
    p.add_argument("--finished_only", action="store_true", help="Tabulate the finished runs; start none.")
    p.add_argument(
        "--ship",
        metavar="DIR",
        default=None,
        help="cartoonizer: copy LoCA's seed-1 adapter at the chosen lr to DIR (make assets: assets/adapters/...)",
    )
    args = p.parse_args()
    global JOBS, FINISHED_ONLY, SEEDS
    JOBS, FINISHED_ONLY, SEEDS = args.jobs, args.finished_only, args.seeds
    torch.set_num_threads(1)
    name = args.task.removesuffix("-ablation")
    task = TASKS[name]
    metrics = task.get("metrics") or (
        [task["metric"], "eval_loss"] + (["eval_macro_f1"] if task["metric"] == "eval_accuracy" else [])
    )
    if args.task.endswith("-ablation"):
        lr = search_lr(name, "loca")[0]  # the comparison's choice (same cached seed-0 runs)
        if lr is None:
            sys.exit("LoCA's lr selection runs are not finished: run the comparison first")
        rows = ablate(name, args.seeds, lr)
        title = f"Table 5 ablations: {task['title']} (LoCA lr {lr:g})"
    else:
        rows = compare(name, args.seeds)
        title = task["title"]
    if args.ship:
        ship_adapter(name, rows, Path(args.ship))
    info = machine_info(torch.device("cpu"))
    out = RESULTS / args.task
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "task": args.task,
                "title": title,
                "args": task["args"],
                "machine": info,
                "seeds": args.seeds,
                "rows": rows,
            },
            indent=2,
        )
    )
    lines = [
        f"# {title}",
        "",
        f"Command: `nice -n 19 python bench/task_comparison.py {args.task}`",
        "",
        f"Settings: `{' '.join(task['args'])}`; seeds 1..{args.seeds} at the lr chosen with seed 0 "
        f"(lr candidates per method: {json.dumps({k: v for k, v in task['lrs'].items()})}).",
        "",
        *table(rows, metrics),
        "",
        machine_line(info),
        "",
    ]
    md = out.with_suffix(".md")
    previous = md.read_text() if md.is_file() else ""
    if "\n## Reading" in previous:  # the hand-written reading of the numbers survives a re-run (check it!)
        lines += ["## Reading" + previous.split("\n## Reading", 1)[1].rstrip(), ""]
    md.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
