"""train/instruct_pix2pix_loca.py end to end on the tiny offline pipeline (issue: train, resume,
load, two processes, baselines, clear errors). Each run is a real ``accelerate launch`` subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "instruct_pix2pix_loca.py"
ACCELERATE = Path(sys.executable).with_name("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def common_args(pipeline: Path, pairs: Path, output: Path, steps: int) -> list[str]:
    return [
        "--pretrained_model_name_or_path", str(pipeline),
        "--train_data_dir", str(pairs),
        "--output_dir", str(output),
        "--resolution", "32",
        "--train_batch_size", "1",
        "--gradient_accumulation_steps", "2",
        "--max_train_steps", str(steps),
        "--n_frequency", "16",
        "--learning_rate", "1e-2",
        "--location_lr", "0.05",
        "--coefficient_steps", "1",
        "--location_steps", "2",
        "--location_training_steps", "4",
        "--seed", "0",
        "--validation_inference_steps", "2",
        "--num_validation_images", "1",
        "--checkpointing_steps", "2",
    ]


def run(args: list[str], processes: int = 1, env: dict | None = None, launcher: bool = True, timeout: int = 300):
    full_env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    if launcher:
        command = [str(ACCELERATE), "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
        if processes > 1:
            full_env["ACCELERATE_USE_CPU"] = "1"  # gloo DDP on CPU
            command += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", str(free_port())]
        else:
            command += ["--num_processes", "1", "--cpu"]
        command += [str(SCRIPT)]
    else:
        command = [sys.executable, str(SCRIPT)]
    return subprocess.run(command + args, capture_output=True, text=True, env=full_env, timeout=timeout)


def ok(result) -> str:
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def test_train_resume_and_load(tiny_pix2pix_dir, pairs, tmp_path, torch_single_thread):
    # an uninterrupted 6-step run
    straight = tmp_path / "straight"
    ok(run(common_args(tiny_pix2pix_dir, pairs, straight, 6)))

    # 4 steps, then resume from the latest checkpoint up to 6
    out = tmp_path / "out"
    first = ok(run(common_args(tiny_pix2pix_dir, pairs, out, 4) + ["--validation_steps", "2", "--checkpoints_total_limit", "2"]))
    assert "adapter replicas identical across 1 process" in first
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    second = ok(run(common_args(tiny_pix2pix_dir, pairs, out, 6) + ["--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "2"]))
    assert "Resuming from" in second and "checkpoint-4" in second
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]  # total limit
    schedule_state = torch.load(out / "checkpoint-6" / "custom_checkpoint_0.pkl", weights_only=False)
    assert schedule_state["step_count"] == 6 and schedule_state["location_training_steps"] == 4

    # resuming reproduces the uninterrupted run: same step, same schedule phase, same adapter
    resumed, reference = adapter(out), adapter(straight)
    assert resumed.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)

    # output directory: adapter, model card, pictures, TensorBoard images
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOCA" and config["n_frequency"] == 16
    card = (out / "README.md").read_text()
    assert str(tiny_pix2pix_dir) in card and "samples.png" in card and "locations.png" in card
    for picture in ("samples.png", "locations.png", "validation/step-000002.png"):
        assert (out / picture).is_file(), picture
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert "validation" in events.Tags()["images"] and "loss" in events.Tags()["scalars"]

    # the adapter loads into a pipeline with load_loca and changes its output; unload restores it
    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline
    from PIL import Image

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(tiny_pix2pix_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(next((pairs / "original").iterdir())).convert("RGB")

    def edit():
        return pipe("make it a cartoon", image=image, num_inference_steps=2, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    base = edit()
    pipe.load_loca(str(out))
    adapted = edit()
    assert not torch.allclose(adapted, base)
    pipe.fuse_loca()
    torch.testing.assert_close(edit(), adapted, atol=1e-4, rtol=1e-4)
    pipe.unfuse_loca()
    pipe.unload_loca()
    assert torch.equal(edit(), base)


def test_two_processes_end_with_identical_adapters(tiny_pix2pix_dir, pairs, tmp_path):
    output = ok(run(common_args(tiny_pix2pix_dir, pairs, tmp_path / "ddp", 5), processes=2))
    assert "MULTI_CPU" in output
    assert "adapter replicas identical across 2 process(es)" in output  # the script gathers and compares
    assert (tmp_path / "ddp" / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("baseline, peft_type", [("fourierft", "FOURIERFT"), ("lora", "LORA")])
def test_baselines_run_through_the_same_script(tiny_pix2pix_dir, pairs, tmp_path, baseline, peft_type):
    out = tmp_path / baseline
    ok(run(common_args(tiny_pix2pix_dir, pairs, out, 2) + ["--adapter", baseline, "--match_budget"]))
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type
    if baseline == "lora":  # 16 coefficients x 32 layers ~ rank r over sum(d_in + d_out): at least 1
        assert config["r"] >= 1
    else:
        assert config["n_frequency"] == 16


def test_clear_errors(tiny_pix2pix_dir, pairs, tmp_path):
    base = common_args(tiny_pix2pix_dir, pairs, tmp_path / "e", 1)

    wrong_column = run(base + ["--edit_prompt_column", "instruction"], launcher=False)
    text = wrong_column.stdout + wrong_column.stderr
    assert wrong_column.returncode != 0 and "instruction" in text and "edit_prompt" in text
    assert "Traceback" not in text

    missing = run([a if a != str(pairs) else str(tmp_path / "no-such-folder") for a in base], launcher=False)
    text = missing.stdout + missing.stderr
    assert missing.returncode != 0 and "no-such-folder" in text and "Traceback" not in text

    hub_args = [a if a != str(tiny_pix2pix_dir) else "someone/not-a-real-model" for a in base]
    start = time.monotonic()
    offline = run(hub_args, launcher=False, env={"HF_HUB_OFFLINE": "1"})
    text = offline.stdout + offline.stderr
    assert offline.returncode != 0 and "someone/not-a-real-model" in text and "Traceback" not in text
    assert "local" in text.lower()  # says how to pass a local directory instead
    unreachable = run(hub_args, launcher=False, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert unreachable.returncode != 0 and "someone/not-a-real-model" in unreachable.stdout + unreachable.stderr
    assert time.monotonic() - start < 120
