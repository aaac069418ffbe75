"""LoCA vs FourierFT vs LoRA (matched trainable-parameter budgets) vs the frozen model with its head trained,
on real pretrained models that install offline (issue 10), and the paper's Table 5 ablations.

    nice -n 19 python -m bench.task_comparison minilm            # MiniLM-L6 on BBC News topics
    nice -n 19 python -m bench.task_comparison minilm-ablation   # V1/V2/V3, forward/backward differences
    nice -n 19 python -m bench.task_comparison vit               # ViT-S/14 on a Fashion-MNIST subset
    nice -n 19 python -m bench.task_comparison smollm2           # SmolLM2-135M on BBC headline generation
    nice -n 19 python -m bench.task_comparison cartoonizer       # the embedded InstructPix2Pix's cartoon adapter
    nice -n 19 python -m bench.task_comparison cartoonizer-ablation  # V1 (fixed random locations) there
    nice -n 19 python -m bench.task_comparison minilm-long --jobs 2   # issue 18: 1,000 steps, 5 seeds, val/test
    nice -n 19 python -m bench.task_comparison minilm-long-ablation   # (also bbc-headlines-long, vit-long)
    nice -n 19 python -m bench.task_comparison minilm-long-sweep      # Fig. 4: rank-1/2/8 budgets, plot

The issue-18 tasks (``*-long``) choose each method's lr among three on a validation split carved out of the
training data (the seed-0 runs, ``--eval_split validation``) and report seeds 1..5 on the test split; their
results add the paired-by-seed differences with a 95% CI (``bench/stats.py``) and, for LoCA, how far the
locations moved (``bench/location_movement.py``).

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
SSIM / DINOv2 / ink F1 against the code-made cartoons of the held-out photos (``loca_diffusion.embedded.evaluate``),
and by PSNR on training-photo views (``selection_psnr``), which is what its three lrs are chosen on; its time and
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
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]

import torch  # noqa: E402

from bench.machine import machine_info, machine_line  # noqa: E402
from bench.report import write_markdown  # noqa: E402
from bench.stats import mean_ci  # noqa: E402

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
# The base the cartoonizer runs train on, and the one they are scored on: the float32 copy of the last
# `--stage export`. Scoring on the shipped assets instead silently mixes bases whenever build/ holds a newer one.
CARTOON_BASE = EMBEDDED / "base_fp32"
TASKS["cartoonizer"] = dict(
    script="instruct_pix2pix_loca.py",
    title="Cartoonizer on the embedded tiny InstructPix2Pix (UNet to_q/to_k/to_v/to_out.0, 64 px)",
    args=(
        f"--pretrained_model_name_or_path {CARTOON_BASE} --train_data_dir {EMBEDDED / 'cartoon_pairs'} "
        "--resolution 64 --random_flip --sample_paraphrases --train_batch_size 8 --max_train_steps 150 "
        "--n_frequency 512 --location_training_steps 60 --coefficient_steps 10 --location_steps 10 "
        "--location_lr 1e-3 --checkpointing_steps 100000 "
        "--num_validation_images 1 --validation_inference_steps 10"
    ).split(),
    metric="eval_psnr",
    metrics=["eval_psnr", "eval_ssim", "eval_dinov2", "eval_ink_f1"],
    # lrs are chosen on training-photo views (as the sampling guidance is), never on the held-out photos the
    # table reports
    selection_metric="selection_psnr",
    evaluate="cartoonizer",
    accelerate=True,
    methods={"LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"},
    # 150 steps (a training step of this UNet with LoCA costs ~3 s on one CPU thread: the 21 runs take about
    # 80 minutes on 2 cores). Three lrs each, a factor ~3 apart: the two-lr grids had FourierFT and LoRA choose
    # their top lr and LoCA its bottom one, so each grid grew one step on that side.
    lrs={"loca": [1e-2, 3e-2, 1e-1], "fourierft": [3e-2, 1e-1, 3e-1], "lora": [3e-3, 1e-2, 3e-2]},
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


# Issue 18: budgets where locations have time to move. 1,000 optimizer steps, T_s = 100 (10%), the paper's
# B_a = 10 / B_l = 20, 5 seeds, three lr candidates per method chosen on a validation split carved out of the
# training data (seed-0 runs with --eval_split validation); the reported seeds 1..5 evaluate on the test split
# (--eval_split test) and train on the same examples (the validation examples are never trained on). Budgets:
# a rank-2 LoRA's parameter count on the query/value layers (--budget_lora_rank 2: 1,536 coefficients per layer
# on MiniLM and the ViT-S/14); the sweep adds rank 1 and 8.
LONG_STEPS, LONG_T_S, LONG_SEEDS = 1000, 100, 5
LONG_SCHEDULE = (
    f"--max_train_steps {LONG_STEPS} --location_training_steps {LONG_T_S} --coefficient_steps 10 "
    "--location_steps 20 --location_lr 1e-3 --lr_scheduler_type linear --per_device_train_batch_size 16"
)
SELECTION_ARGS, FINAL_ARGS = ["--eval_split", "validation"], ["--eval_split", "test"]
# BBC News has 2,225 articles, fewer than the 2,000 training + 1,000 test: 1,000 are the test split
# (class-stratified, fixed), 225 of the other 1,225 the validation split, 1,000 train.
BBC_SPLITS = "--max_length 32 --test_size 1000 --validation_from_train 225"
BBC_SIZES = "1,000 training / 225 validation / 1,000 test articles (all 2,225)"
LONG_TEXT_LRS = {
    "none": [3e-3, 1e-2, 3e-2],  # head only: its one lr is the head's
    "loca": [3e-3, 1e-2, 3e-2],
    "fourierft": [3e-3, 1e-2, 3e-2],
    "lora": [1e-3, 3e-3, 1e-2],
}
LONG_METHODS = {"head only (frozen model)": "none", "LoCA": "loca", "FourierFT": "fourierft", "LoRA": "lora"}
TASKS["minilm-long"] = dict(
    script="text_classification_loca.py",
    title=f"MiniLM-L6 on BBC News topics (5 classes), {BBC_SIZES}, {LONG_STEPS} steps",
    args=(
        f"--model_name_or_path offline:minilm --dataset_name offline:bbc-news {BBC_SPLITS} --budget_lora_rank 2 "
        f"--head_learning_rate 1e-2 {LONG_SCHEDULE}"
    ).split(),
    metric="eval_accuracy",
    methods=LONG_METHODS,
    lrs=LONG_TEXT_LRS,
    selection_args=SELECTION_ARGS,
    final_args=FINAL_ARGS,
    seeds=LONG_SEEDS,
    sweep={1: "minilm-long-r1", 2: "minilm-long", 8: "minilm-long-r8"},
)
TASKS["bbc-headlines-long"] = dict(
    TASKS["minilm-long"],
    title=f"MiniLM-L6 on BBC News topics from the headline alone (5 classes), {BBC_SIZES}, {LONG_STEPS} steps",
    args=[a.replace("offline:bbc-news", "offline:bbc-headlines") for a in TASKS["minilm-long"]["args"]],
    sweep=None,
)
TASKS["vit-long"] = dict(
    script="image_classification_loca.py",
    title=(
        "ViT-S/14 (DINOv2 layout) on Fashion-MNIST at 56 px: 2,000 training images (a subset per seed), 1,000 "
        f"validation (carved from the training set), 1,000 test, {LONG_STEPS} steps"
    ),
    args=(
        "--model_name_or_path offline:vit-s14 --dataset_name offline:fashion-mnist --resolution 56 "
        "--validation_from_train 1000 --max_train_samples 2000 --max_eval_samples 1000 --budget_lora_rank 2 "
        f"--head_learning_rate 3e-3 {LONG_SCHEDULE}"
    ).split(),
    metric="eval_accuracy",
    methods=LONG_METHODS,
    lrs={
        "none": [1e-3, 3e-3, 1e-2],
        "loca": [3e-3, 1e-2, 3e-2],
        "fourierft": [3e-3, 1e-2, 3e-2],
        "lora": [3e-4, 1e-3, 3e-3],
    },
    selection_args=SELECTION_ARGS,
    final_args=FINAL_ARGS,
    seeds=LONG_SEEDS,
)
for _rank in (1, 8):  # the Fig. 4 sweep's other budgets (rank 2 is minilm-long itself)
    TASKS[f"minilm-long-r{_rank}"] = dict(
        TASKS["minilm-long"],
        title=TASKS["minilm-long"]["title"] + f", rank-{_rank} LoRA budget",
        args=[
            a if a != "2" or b != "--budget_lora_rank" else str(_rank)
            for b, a in zip([""] + TASKS["minilm-long"]["args"], TASKS["minilm-long"]["args"])
        ],  # fmt: skip
        methods={k: v for k, v in LONG_METHODS.items() if v != "none"},
        lrs={k: v for k, v in LONG_TEXT_LRS.items() if k != "none"},
        sweep=None,
    )
# the pairs the paper's claims rest on: (claimed better, compared with)
PAIRS = [("LoCA", "LoRA"), ("LoCA", "FourierFT")]
ABLATION_REFERENCE = "LoCA (alternating, central differences)"


def phase_args(task: dict, seed: int) -> list[str]:
    """Seed 0 is the lr-selection run (``selection_args``: evaluated on the validation split where the task has
    one), seeds 1.. the reported runs (``final_args``: the test split)."""
    return list(task.get("selection_args" if seed == 0 else "final_args", []))


def run_command(task: dict, adapter: str, lr: float, seed: int, extra: list[str], out: Path) -> list[str]:
    """The ``train/*.py`` command line of one run."""
    args = list(task["args"]) + ["--seed", str(seed), "--output_dir", str(out), "--report_to", "none"]
    if adapter == "frozen":  # the base model as it is: no step, but the same evaluation
        args += ["--adapter", "lora", "--max_train_steps", "0", "--learning_rate", "0"]
    elif adapter == "none":  # head only: the lr searched is the head's
        args += ["--adapter", "none", "--learning_rate", str(lr), "--head_learning_rate", str(lr)]
    else:
        args += ["--adapter", adapter, "--learning_rate", str(lr), "--match_budget"]
    return [sys.executable, str(ROOT / "train" / task["script"])] + args + phase_args(task, seed) + extra


def run_tag(name: str, adapter: str, lr: float, seed: int, extra: Optional[list[str]] = None) -> str:
    """The folder of one run under ``WORK``. An ablation variant's names its flags' values and its lr: a
    finished run is reused by name, so a variant run at another lr (before the comparison chose anew) must
    not pass for this one."""
    if extra:
        return f"{name}-ablation/{'-'.join(extra[1::2])}-lr{lr:g}-s{seed}"
    return f"{name}/{adapter}-lr{lr:g}-s{seed}"


DRIVER_PID = "driver.pid"


def driver_alive(out: Path) -> bool:
    """Whether a live process other than this one is running the unfinished run in ``out`` (the PID its driver
    wrote there). A folder left by a killed driver is not waited for: it is trained again from the start."""
    try:
        pid = int((out / DRIVER_PID).read_text())
    except (FileNotFoundError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def run_one(task: dict, adapter: str, lr: float, seed: int, extra: list[str], tag: str) -> dict:
    out = WORK / tag
    done = out / "all_results.json"
    if done.is_file():  # resumable: a finished run is not repeated
        return dict(json.loads(done.read_text()), seed=seed)
    if FINISHED_ONLY:
        return None
    while not done.is_file() and driver_alive(out):
        time.sleep(20)  # another driver (e.g. the ablation beside the comparison) is running it right now
    if done.is_file():
        return dict(json.loads(done.read_text()), seed=seed)
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
    )
    command = run_command(task, adapter, lr, seed, extra, out)
    if task.get("accelerate"):  # as users run it: `accelerate launch` (one CPU process)
        launch = "-m accelerate.commands.launch --num_machines 1 --num_processes 1 --cpu --mixed_precision no"
        command[1:1] = launch.split() + ["--dynamo_backend", "no"]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    (out / DRIVER_PID).write_text(str(os.getpid()))
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
    return dict(json.loads(done.read_text()), seed=seed)


def cartoonizer_selection_psnr(pipe) -> float:
    """PSNR of ``pipe``'s cartoons of training-photo views (:func:`~loca_diffusion.embedded.photos.selection_views`):
    what the cartoonizer's lr is chosen on."""
    from loca_diffusion.embedded import RESOLUTION
    from loca_diffusion.embedded.evaluate import score_cartoonizer
    from loca_diffusion.embedded.photos import selection_views

    views = torch.stack([x for _, x in selection_views(RESOLUTION)])
    return score_cartoonizer(pipe, views)[0]["psnr"]


def add_selection_score(task: dict, result: Optional[dict], out: Path) -> Optional[dict]:
    """The task's ``selection_metric`` of a finished selection (seed 0) run, added to its results the first time
    the lr search needs it (evaluation only: the reported seeds never pay for it)."""
    key = task.get("selection_metric")
    if result is None or key is None or key in result:
        return result
    if task.get("evaluate") != "cartoonizer":
        raise RuntimeError(f"{out}: no {key} in its results and no way to add it; rerun it")
    from loca_diffusion.embedded.evaluate import merged_adapter_pipeline

    with EVALUATION_LOCK:
        record = json.loads((out / "all_results.json").read_text())
        record[key] = cartoonizer_selection_psnr(merged_adapter_pipeline(ROOT / CARTOON_BASE, out))
        (out / "all_results.json").write_text(json.dumps(record, indent=2))
    return dict(result, **{key: record[key]})


def evaluate_cartoonizer(adapter_dir: Path, wall: float, usage) -> dict:
    """Held-out PSNR / SSIM / DINOv2 similarity / ink-line F1 of the adapter merged into the base it trained on
    (:data:`CARTOON_BASE`), with the process's cost."""
    from safetensors.torch import load_file

    from loca_diffusion.embedded import RESOLUTION
    from loca_diffusion.embedded.evaluate import merged_adapter_pipeline, score_cartoonizer
    from loca_diffusion.embedded.metrics import DinoV2Similarity
    from loca_diffusion.embedded.photos import held_out_batch

    global DINO
    DINO = DINO or DinoV2Similarity()
    views = held_out_batch(RESOLUTION)
    scores, outputs = score_cartoonizer(merged_adapter_pipeline(ROOT / CARTOON_BASE, adapter_dir), views, dino=DINO)
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
    source = WORK / run_tag(name, "loca", row["lr"], 1)
    target.mkdir(parents=True, exist_ok=True)
    for f in ("adapter_config.json", "adapter_model.safetensors", "README.md", "locations.png", "samples.png"):
        shutil.copy2(source / f, target / f)
    for f in ("README.md", "adapter_config.json"):  # name the shipped base, not this machine's training copy
        text = (target / f).read_text().replace(str(CARTOON_BASE), "assets/tiny-instruct-pix2pix")
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
    return len(lrs) > 1 and all((WORK / run_tag(name, adapter, lr, 0) / "all_results.json").is_file() for lr in lrs)


def search_lr(name: str, adapter: str) -> tuple[float, dict]:
    """The best of ``adapter``'s candidate lrs by the task's metric, each tried with seed 0 (cached runs)."""
    task = TASKS[name]
    candidates = task["lrs"][adapter]
    if len(candidates) == 1:  # nothing to choose, no selection run
        return candidates[0], {}
    search = {lr: run_one(task, adapter, lr, 0, [], run_tag(name, adapter, lr, 0)) for lr in candidates}
    search = {lr: add_selection_score(task, r, WORK / run_tag(name, adapter, lr, 0)) for lr, r in search.items()}
    search = {lr: r for lr, r in search.items() if r is not None}
    if task.get("selection_args"):  # chosen on the validation split, never on the test split
        wrong = {lr: r.get("eval_split") for lr, r in search.items() if r.get("eval_split") != "validation"}
        if wrong:
            raise RuntimeError(f"{name}/{adapter}: selection runs not evaluated on the validation split: {wrong}")
    if len(search) < len(candidates):
        return None, search  # the selection is not finished
    return max(search, key=lambda lr: search[lr][task.get("selection_metric", task["metric"])]), search


def compare(name: str, seeds: int, adapters: Optional[set[str]] = None) -> dict:
    """The methods of task ``name`` (only ``adapters`` when given): lr selection, then seeds 1..``seeds``."""
    task = dict(TASKS[name])
    if adapters is not None:
        task["lrs"] = {a: lrs for a, lrs in task["lrs"].items() if a in adapters}
        task["methods"] = {label: a for label, a in task["methods"].items() if a in adapters}
    metric = task["metric"]
    rows = {}
    seed_range = range(1, seeds + 1)

    def seeds_of(adapter: str):
        return [1] if adapter == "frozen" else seed_range  # untrained, greedy decoding: one run says it all

    def seed_jobs(adapter: str, lr: float) -> list[tuple]:
        return [(task, adapter, lr, s, [], run_tag(name, adapter, lr, s)) for s in seeds_of(adapter)]

    selection = [(task, a, lr, 0, [], run_tag(name, a, lr, 0)) for a, lrs in task["lrs"].items() for lr in lrs]
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
            [run_one(task, adapter, best, s, [], run_tag(name, adapter, best, s)) for s in seeds_of(adapter)]
            if best is not None
            else []
        )
        runs = [r for r in runs if r is not None]
        search = {f"{k:g}": v[task.get("selection_metric", metric)] for k, v in search.items()}
        rows[label] = dict(adapter=adapter, lr=best, search=search, runs=runs)
        if runs:
            print(f"{label}: lr {best:g}, {metric} {summary([r[metric] for r in runs])}", flush=True)
    return rows


def ablate(name: str, seeds: int, lr: float) -> dict:
    task = TASKS[name]
    rows = {}

    def tag(extra: list[str], s: int) -> str:
        return run_tag(name, "loca", lr, s, extra)

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


def sweep(name: str, seeds: int) -> dict:
    """The Fig. 4 budget sweep: LoCA, FourierFT and LoRA at each LoRA-rank budget of ``TASKS[name]["sweep"]``
    (the rank-2 point is the comparison's own runs)."""
    out = {}
    for rank, budget_task in sorted(TASKS[name]["sweep"].items()):
        print(f"-- rank-{rank} budget ({budget_task})", flush=True)
        out[rank] = dict(task=budget_task, rows=compare(budget_task, seeds, adapters={"loca", "fourierft", "lora"}))
    return out


def by_seed(row: dict, metric: str) -> dict[int, float]:
    return {r["seed"]: r[metric] for r in row.get("runs", []) if r is not None and "seed" in r}


def pair_rows(rows: dict, pairs: list[tuple[str, str]], metric: str) -> list[dict]:
    """:func:`bench.stats.paired_difference` of each (claimed better, other) pair present in ``rows``."""
    from bench.stats import paired_difference

    return [
        dict(better=a, other=b, **paired_difference(by_seed(rows[a], metric), by_seed(rows[b], metric)))
        for a, b in pairs
        if a in rows and b in rows
    ]


def pair_table(pairs: list[dict], metric: str, prefix: str = "") -> list[str]:
    lines = [
        f"| claim (paper) | seeds | mean difference in {metric} | std | 95% CI (Student t) | label |",
        "|---|---|---|---|---|---|",
    ]
    for p in pairs:
        if not p["n"]:
            lines.append(f"| {prefix}{p['better']} > {p['other']} | 0 | not run yet | | | |")
            continue
        lines.append(
            f"| {prefix}{p['better']} > {p['other']} | {p['n']} | {p['mean']:+.4f} | {p['std']:.4f} | "
            f"[{p['low']:+.4f}, {p['high']:+.4f}] | {p['label']} |"
        )
    return lines


def movement(name: str, row: dict, extra: Optional[list[str]] = None) -> Optional[dict]:
    """Location movement (:mod:`bench.location_movement`) of a LoCA row's finished runs, per layer."""
    from bench import location_movement as lm

    if row.get("adapter") != "loca" or not row.get("runs"):
        return None
    dirs = [WORK / run_tag(name, "loca", row["lr"], r["seed"], extra) for r in row["runs"]]
    per_run = [lm.adapter_movement(d) for d in dirs if (d / "adapter_model.safetensors").is_file()]
    return lm.summarize(per_run) if per_run else None


def movement_overview(summaries: dict[str, Optional[dict]]) -> list[str]:
    """One line per row: the means over layers of the per-layer movement numbers."""
    lines = [
        "| method | layers | moved share (mean over layers) | energy share of the moved "
        "| mean energy moved / unmoved |",
        "|---|---|---|---|---|",
    ]
    for label, summary in summaries.items():
        if not summary:
            continue
        mean = {k: statistics.fmean([v[k] for v in summary.values()]) for k in next(iter(summary.values()))}
        lines.append(
            f"| {label} | {len(summary)} | {mean['moved_share']:.3f} | {mean['moved_energy_share']:.3f} | "
            f"{mean['energy_ratio']:.2f} |"
        )
    return lines


def sweep_plot(result: dict, metric: str, path: Path) -> None:
    """Mean ``metric`` with its 95% CI against the budget, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.stats import mean_ci

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for label in ("LoCA", "FourierFT", "LoRA"):
        points = []
        for rank, point in sorted(result.items()):
            runs = point["rows"].get(label, {}).get("runs", [])
            if runs:
                mean, low, high = mean_ci([r[metric] for r in runs])
                points.append((rank, mean, mean - low if low == low else 0.0))
        if points:
            ranks, means, errors = zip(*points)
            ax.errorbar(ranks, means, yerr=errors, marker="o", capsize=3, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(result))
    ax.set_xticklabels([f"r={r}" for r in sorted(result)])
    ax.set_xlabel("budget (LoRA-rank equivalent on the query/value layers)")
    ax.set_ylabel(f"test {metric.removeprefix('eval_')} (mean, 95% CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_cell(values: list) -> str:
    known = [v for v in values if v is not None]
    if not known:
        return "not recorded"
    return f"{statistics.mean(known):.1f}" + (f" (n={len(known)})" if len(known) != len(values) else "")


def table(rows: dict, metrics: list[str]) -> list[str]:
    head = (
        ["method", "lr", "trainable params", "seeds"]
        + [f"{m} (mean ± std)" for m in metrics]
        + [f"{metrics[0]} 95% CI", "train wall s/run", "train CPU s/run", "peak RSS MiB"]
    )
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, row in rows.items():
        runs = row["runs"]
        if not runs:
            lines.append(f"| {label} | " + " | ".join(["not run yet"] * (len(head) - 1)) + " |")
            continue
        # the untrained row runs a 0-step LoRA (the identity): it trains nothing
        params = 0 if row["adapter"] == "frozen" else runs[0]["trainable_parameters"]
        cells = [label, f"{row['lr']:g}", f"{params:,}", ",".join(str(r.get("seed", "?")) for r in runs)]
        for m in metrics:
            mean, std = summary([r[m] for r in runs])
            cells.append(f"{mean:.4f} ± {std:.4f}" + (f" (n={len(runs)})" if len(runs) != SEEDS else ""))
        _, low, high = mean_ci([r[metrics[0]] for r in runs])
        cells += [
            f"[{low:.4f}, {high:.4f}]" if low == low else "n/a (1 seed)",
            f"{summary([r['train_seconds'] for r in runs])[0]:.1f}",
            cpu_cell([r.get("train_cpu_seconds") for r in runs]),
            f"{max(r['peak_rss_mib'] for r in runs):.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main(argv: Optional[list[str]] = None) -> None:
    sweeps = [f"{t}-sweep" for t, task in TASKS.items() if task.get("sweep")]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("task", choices=[*TASKS, *[f"{t}-ablation" for t in TASKS], *sweeps])
    p.add_argument("--seeds", type=int, default=None, help="Seeds 1..N per method (default: the task's, else 3).")
    p.add_argument("--jobs", type=int, default=1, help="Runs at once (each one torch thread).")
    p.add_argument("--finished_only", action="store_true", help="Tabulate the finished runs; start none.")
    p.add_argument(
        "--ship",
        metavar="DIR",
        default=None,
        help="cartoonizer: copy LoCA's seed-1 adapter at the chosen lr to DIR (make assets: assets/adapters/...)",
    )
    args = p.parse_args(argv)
    name = args.task.removesuffix("-ablation").removesuffix("-sweep")
    task = TASKS[name]
    global JOBS, FINISHED_ONLY, SEEDS
    JOBS, FINISHED_ONLY = args.jobs, args.finished_only
    SEEDS = args.seeds or task.get("seeds", 3)
    torch.set_num_threads(1)
    metric = task["metric"]
    metrics = task.get("metrics") or ([metric, "eval_loss"] + (["eval_macro_f1"] if metric == "eval_accuracy" else []))
    extra_lines: list[str] = []
    record: dict = {}
    if args.task.endswith("-sweep"):
        result = sweep(name, SEEDS)
        record["sweep"] = {str(k): v for k, v in result.items()}
        title = f"Budget sweep (Fig. 4): {task['title']}"
        rows = {}
        for rank, point in result.items():
            for label, row in point["rows"].items():
                rows[f"{label} (rank-{rank} budget)"] = row
        pairs = []
        for rank, point in result.items():
            pairs += [dict(p, rank=rank) for p in pair_rows(point["rows"], PAIRS, metric)]
        record["pairs"] = pairs
        plot = RESULTS / f"{args.task}.png"
        sweep_plot(result, metric, plot)
        extra_lines += ["## Paired differences by budget (seeds paired; CI over seeds)", ""]
        for rank in result:
            extra_lines += pair_table([p for p in pairs if p["rank"] == rank], metric, prefix=f"rank {rank}: ")
            extra_lines.append("")
        extra_lines += [f"![budget sweep]({plot.name})", ""]
    elif args.task.endswith("-ablation"):
        lr = search_lr(name, "loca")[0]  # the comparison's choice (same cached seed-0 runs)
        if lr is None:
            sys.exit("LoCA's lr selection runs are not finished: run the comparison first")
        rows = ablate(name, SEEDS, lr)
        title = f"Table 5 ablations: {task['title']} (LoCA lr {lr:g})"
        if task.get("final_args"):  # the issue-18 tasks: paired differences and location movement
            variants = [label for label in rows if label != ABLATION_REFERENCE]
            record["pairs"] = pair_rows(rows, [(ABLATION_REFERENCE, v) for v in variants], metric)
            moves = {label: movement(name, row, row.get("extra")) for label, row in rows.items()}
            record["movement"] = moves
            extra_lines += ["## Learned locations vs each variant (paired by seed)", ""]
            extra_lines += pair_table(record["pairs"], metric) + [""]
            extra_lines += ["## How far the locations moved (final vs initial integer cell)", ""]
            extra_lines += movement_overview(moves) + [""]
    else:
        rows = compare(name, SEEDS)
        title = task["title"]
        if task.get("final_args"):
            record["pairs"] = pair_rows(rows, PAIRS, metric)
            extra_lines += ["## LoCA vs the baselines (paired by seed)", ""]
            extra_lines += pair_table(record["pairs"], metric) + [""]
            moves = movement(name, rows.get("LoCA", {}))
            record["movement"] = moves
            if moves:
                from bench.location_movement import table as movement_table

                extra_lines += ["## How far LoCA's locations moved, per layer (final vs initial integer cell)", ""]
                extra_lines += movement_table(moves) + [""]
    if args.ship:
        ship_adapter(name, rows, Path(args.ship))
    info = machine_info(torch.device("cpu"))
    out = RESULTS / args.task
    command = f"nice -n 19 python -m bench.task_comparison {args.task}" + (
        f" --seeds {args.seeds}" if args.seeds else ""
    )
    out.with_suffix(".json").write_text(
        json.dumps(
            {
                "task": args.task,
                "title": title,
                "command": command,
                "args": task["args"],
                "machine": info,
                "seeds": SEEDS,
                "rows": rows,
                **record,
            },
            indent=2,
        )
    )
    lines = [
        f"# {title}",
        "",
        f"Command: `{command}`",
        "",
        f"Settings: `{' '.join(task['args'])}`; seeds 1..{SEEDS} at the lr chosen with seed 0 "
        f"(lr candidates per method: {json.dumps({k: v for k, v in task['lrs'].items()})}"
        + (f", chosen by `{task['selection_metric']}`" if task.get("selection_metric") else "")
        + ")"
        + (
            f"; selection runs `{' '.join(task['selection_args'])}`, reported runs `{' '.join(task['final_args'])}`."
            if task.get("final_args")
            else "."
        ),
        "",
        *table(rows, metrics),
        "",
        *extra_lines,
        machine_line(info),
        "",
    ]
    print(write_markdown(out.with_suffix(".md"), "\n".join(lines)))


if __name__ == "__main__":
    main()
