"""train/instruct_pix2pix_loca.py end to end on the tiny offline pipeline (issue: train, resume,
load, two processes, baselines, clear errors). Each run is a real ``accelerate launch`` subprocess."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _scripts import launch_command, ok, script_env

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "train" / "instruct_pix2pix_loca.py"


def common_args(pipeline: Path, pairs: Path, output: Path, steps: int | None) -> list[str]:
    """The tiny run's flags; ``steps=None`` leaves --max_train_steps out (epochs decide)."""
    return [
        "--pretrained_model_name_or_path",
        str(pipeline),
        "--train_data_dir",
        str(pairs),
        "--output_dir",
        str(output),
        "--resolution",
        "32",
        "--train_batch_size",
        "1",
        "--gradient_accumulation_steps",
        "2",
        *(["--max_train_steps", str(steps)] if steps is not None else []),
        "--n_frequency",
        "16",
        "--learning_rate",
        "1e-2",
        "--location_lr",
        "0.05",
        "--coefficient_steps",
        "1",
        "--location_steps",
        "2",
        "--location_training_steps",
        "4",
        "--seed",
        "0",
        "--validation_inference_steps",
        "2",
        "--num_validation_images",
        "1",
        "--checkpointing_steps",
        "2",
    ]


def run(args: list[str], processes: int = 1, env: dict | None = None, launcher: bool = True, timeout: int = 300):
    full_env = script_env(**(env or {}))
    if launcher and processes > 1:
        full_env["ACCELERATE_USE_CPU"] = "1"  # gloo DDP on CPU
    command = launch_command(SCRIPT, processes) if launcher else [sys.executable, str(SCRIPT)]
    return subprocess.run(command + args, capture_output=True, text=True, env=full_env, timeout=timeout)


def adapter(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(directory / "adapter_model.safetensors")


def test_train_resume_and_load(tiny_pix2pix_dir, pairs, tmp_path, torch_single_thread):
    # an uninterrupted 6-step run
    straight = tmp_path / "straight"
    ok(run(common_args(tiny_pix2pix_dir, pairs, straight, 6)))

    # 4 steps, then resume from the latest checkpoint up to 6
    out = tmp_path / "out"
    first = ok(
        run(
            common_args(tiny_pix2pix_dir, pairs, out, 4)
            + ["--validation_steps", "2", "--checkpoints_total_limit", "2"]
        )
    )
    assert "adapter replicas identical across 1 process" in first
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    second = ok(
        run(
            common_args(tiny_pix2pix_dir, pairs, out, 6)
            + ["--resume_from_checkpoint", "latest", "--checkpoints_total_limit", "2"]
        )
    )
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
    from PIL import Image

    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(tiny_pix2pix_dir, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    image = Image.open(next((pairs / "original").iterdir())).convert("RGB")

    def edit():
        return pipe(
            "make it a cartoon",
            image=image,
            num_inference_steps=2,
            output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images

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

    bad_targets = run(base + ["--target_modules", "no_such_layer"], launcher=False)
    text = bad_targets.stdout + bad_targets.stderr
    assert bad_targets.returncode == 2 and "no_such_layer" in text and "Traceback" not in text, text[-3000:]
    assert not (tmp_path / "e").exists()  # a failed run leaves no empty output folder

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


# ----------------------------------------------------------------------------------------------------
# issue 6: mixed precision, secrets, steps, checkpoints, validation size, input checks, cards, help


@pytest.fixture(scope="module")
def script():
    """The training script as a module (its parser and helpers), without running it."""
    spec = importlib.util.spec_from_file_location("instruct_pix2pix_loca", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_flag_has_help_and_shows_its_default(script):
    parser = script.build_parser()
    assert parser.formatter_class is __import__("argparse").ArgumentDefaultsHelpFormatter
    flags = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(flags) > 60
    missing = [a.option_strings[0] for a in flags if not (a.help or "").strip()]
    assert not missing, f"flags without help: {missing}"
    text = parser.format_help()
    assert "(default: 256)" in text and "(default: None)" in text


def test_default_dataset_id_is_one_constant(script):
    from loca_diffusion.data import DEFAULT_DATASET_NAME

    assert DEFAULT_DATASET_NAME == "instruction-tuning-sd/cartoonization"
    assert script.build_parser().get_default("dataset_name") == DEFAULT_DATASET_NAME
    readme = (ROOT / "README.md").read_text()
    # the README's commands of this script (other scripts' commands name their own data sets)
    commands = re.findall(r"instruct_pix2pix_loca\.py((?:[^\n]*\\\n)*[^\n]*)", readme)
    named = [n for command in commands for n in re.findall(r"--dataset_name\s+(\S+)", command)]
    assert named and set(named) == {DEFAULT_DATASET_NAME}
    # no other spelling of the set anywhere in the package, the script or the README
    sources = [ROOT / "README.md", SCRIPT, *sorted((ROOT / "loca_diffusion").rglob("*.py"))]
    for path in sources:
        ids = set(re.findall(r"instruction-tuning-[\w-]+/[\w-]+", path.read_text()))
        assert ids <= {DEFAULT_DATASET_NAME}, (path, ids)


def test_steps_default_to_none_and_flag_values_are_checked(script, capsys):
    base = ["--train_data_dir", "pairs"]
    args = script.parse_args(base)
    assert args.max_train_steps is None and args.num_train_epochs == 100  # diffusers: epochs decide
    assert args.dataset_name is None  # the local folder is what is used
    for bad, named in (
        (["--lora_rank", "0"], "--lora_rank"),
        (["--resolution", "60"], "multiple of 8"),
        (["--resolution", "0"], "multiple of 8"),
        (["--max_train_steps", "0"], "--max_train_steps"),
        (["--gradient_accumulation_steps", "0"], "--gradient_accumulation_steps"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            script.parse_args(base + bad)
        assert exit_info.value.code == 2 and named in capsys.readouterr().err, bad


def files_containing(folder: Path, needle: str) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


def image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


@pytest.mark.parametrize("adapter", ["loca", "lora"])
def test_bf16_mixed_precision_validates_and_writes_the_card(tiny_pix2pix_dir, pairs, tmp_path, adapter):
    from PIL import Image

    # a validation image larger than --resolution and not square: validation runs at the training size
    big = tmp_path / "big.png"
    Image.open(next((pairs / "original").iterdir())).resize((72, 48)).save(big)
    out = tmp_path / adapter
    args = common_args(tiny_pix2pix_dir, pairs, out, 2) + [
        "--validation_steps",
        "2",
        "--adapter",
        adapter,
        "--validation_image",
        str(big),
    ]
    command = launch_command(SCRIPT, mixed_precision="bf16")
    result = subprocess.run(command + args, capture_output=True, text=True, env=script_env(), timeout=300)
    output = ok(result)
    assert "Running validation at step 2" in output
    assert image_size(out / "validation" / "step-000002.png") == (2 * 32, 32)  # input + 1 edit, at 32 px
    assert image_size(out / "samples.png") == (2 * 32, 32)
    for line in (
        "Num examples = 6",
        "Num Epochs = 1",
        "Instantaneous batch size per device = 1",
        "Total train batch size (w. parallel, distributed & accumulation) = 2",
        "Gradient Accumulation steps = 2",
        "Total optimization steps = 2",
    ):
        assert line in output, line

    card = (out / "README.md").read_text()
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(tiny_pix2pix_dir)
    hyperparameters = json.loads(card.split("```json")[1].split("```")[0])
    assert hyperparameters["mixed_precision"] == "bf16"
    assert hyperparameters["train_data_dir"] == str(pairs) and "dataset_name" not in hyperparameters
    assert "datasets:" not in card.split("---")[1]  # local data: no Hub dataset in the card metadata
    if adapter == "lora":
        assert "# LoRA adapter for InstructPix2Pix" in card and "tags: [lora," in card
        assert "pipe.load_lora_weights(" in card
        assert "load_loca" not in card and "LoCA" not in card and "location_lr" not in hyperparameters
    else:
        assert "# LoCA adapter for InstructPix2Pix" in card and "tags: [loca," in card
        assert "pipe.load_loca(" in card and "lora_rank" not in hyperparameters


def test_hub_token_is_never_written_and_a_failed_push_exits_nonzero(tiny_pix2pix_dir, pairs, tmp_path):
    token = "hf_doNotWriteMe0123456789abcdef"
    out = tmp_path / "push"
    args = common_args(tiny_pix2pix_dir, pairs, out, 2) + [
        "--validation_steps",
        "2",
        "--push_to_hub",
        "--hub_token",
        token,
    ]
    result = run(args, env={"HF_HUB_OFFLINE": "1"}, launcher=False)  # the launcher echoes a failed command line
    text = result.stdout + result.stderr
    for saved in ("adapter_model.safetensors", "adapter_config.json", "README.md", "samples.png", "checkpoint-2"):
        assert (out / saved).exists(), saved  # saved before the upload was tried
    assert next((out / "logs").rglob("hparams.yml")).is_file()
    assert files_containing(out, token) == []
    assert token not in text
    assert result.returncode != 0, text[-3000:]  # the upload failed: the run did not succeed
    assert "error: --push_to_hub failed" in text and "hf upload" in text


def test_epochs_set_the_steps_and_latest_skips_incomplete_checkpoints(tiny_pix2pix_dir, pairs, tmp_path):
    out = tmp_path / "epochs"
    # 6 pairs, batch 1, accumulation 2: 3 optimizer steps per epoch
    first = ok(run(common_args(tiny_pix2pix_dir, pairs, out, None) + ["--num_train_epochs", "1"], timeout=150))
    assert "Total optimization steps = 3" in first and "Num Epochs = 1" in first
    assert "--location_training_steps 4 >= the run's 3 steps" in first  # T_s 4 of 3 steps: warned
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"]

    # a save interrupted at step 8 (a checkpoint folder without its completion record)
    broken = out / "checkpoint-8" / "adapter"
    broken.mkdir(parents=True)
    (broken / "adapter_model.safetensors").write_bytes(b"half written")
    second = ok(
        run(
            common_args(tiny_pix2pix_dir, pairs, out, None)
            + ["--num_train_epochs", "2", "--resume_from_checkpoint", "latest"],
            timeout=150,
        )
    )
    assert "skipping incomplete checkpoint" in second and "checkpoint-8" in second
    assert re.search(r"Resuming from \S*checkpoint-2\b", second)
    assert "Total optimization steps = 6" in second
    assert "never freeze" not in second  # T_s 4 of 6 steps
    assert json.loads((out / "checkpoint-6" / "checkpoint_info.json").read_text()) == {
        "global_step": 6,
        "adapter": "loca",
    }
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left


def test_input_errors_are_reported_before_the_model_loads(pairs, pairs_with_bad_prompts, tmp_path):
    # the model is an unreachable Hub id: an input error reported instead proves inputs come first
    def start(*extra: str, output: Path | None = None, data: Path = pairs):
        output = output or tmp_path / "never-created"
        base = common_args(Path("someone/not-a-real-model"), data, output, 2)
        result = run(base + list(extra), launcher=False, env={"HF_HUB_OFFLINE": "1"})
        text = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in text and "not-a-real-model" not in text, text[-3000:]
        return text

    bad_rows, rows = pairs_with_bad_prompts(pairs, missing=2, empty=4)
    text = start(data=bad_rows)
    assert "2 row(s)" in text and "row 2" in text and "row 4" in text and rows[2]["original_image_file_name"] in text

    text = start("--validation_image", str(tmp_path / "no-such-image.png"))
    assert "--validation_image" in text and "no-such-image.png" in text

    text = start("--resume_from_checkpoint", str(tmp_path / "checkpoint-typo"))
    assert "checkpoint-typo" in text and "--resume_from_checkpoint" in text
    assert not (tmp_path / "never-created").exists()  # failed runs leave no empty output folder

    # checkpoints of a LoCA run; training LoRA into that folder would mix the two
    mixed = tmp_path / "mixed"
    (mixed / "checkpoint-2").mkdir(parents=True)
    (mixed / "checkpoint-2" / "checkpoint_info.json").write_text(json.dumps({"global_step": 2, "adapter": "loca"}))
    text = start("--adapter", "lora", "--resume_from_checkpoint", "latest", output=mixed)
    assert "another adapter type" in text and "loca" in text and "checkpoint-2" in text


def test_gradient_checkpointing_trains_the_same_adapter(tiny_pix2pix_dir, pairs, tmp_path):
    # issue 20: `--gradient_checkpointing` crashed the first LoCA step (CheckpointError: a different number of
    # tensors saved in the recomputation). Steps 1-3 cover location and coefficient phases; the adapter (hence
    # every step's gradients) must match the run without checkpointing.
    plain, checkpointed = tmp_path / "plain", tmp_path / "checkpointed"
    ok(run(common_args(tiny_pix2pix_dir, pairs, plain, 3)))
    ok(run(common_args(tiny_pix2pix_dir, pairs, checkpointed, 3) + ["--gradient_checkpointing"]))
    reference, result = adapter(plain), adapter(checkpointed)
    assert result.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(result[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    moved = [k for k in reference if k.endswith("loca_continuous_locations")]
    assert moved  # the locations were trained in this run


# ----------------------------------------------------------------------------------------------------
# issue 17 item 8: one final validation, no deprecation warning, ordinary file modes, one-line flag errors


def test_a_run_validates_once_per_step_without_warnings_and_writes_ordinary_files(tiny_pix2pix_dir, pairs, tmp_path):
    out = tmp_path / "once"
    # --validation_steps 2 divides the run's 2 steps: the step-2 validation is also the final one
    args = common_args(tiny_pix2pix_dir, pairs, out, 2) + ["--validation_steps", "2", "--adapter", "lora"]
    previous = os.umask(0o022)  # the child inherits it: files must get 0666 & ~umask, as any other program's
    try:
        output = ok(run(args))
    finally:
        os.umask(previous)
    assert output.count("Running validation at step 2") == 1, output[-4000:]
    assert (out / "samples.png").is_file() and (out / "validation" / "step-000002.png").is_file()
    # transformers' / diffusers' torch_dtype deprecation: the validation pipeline passes dtype; diffusers' advice
    # to "set `torch_dtype` in `from_pretrained()`" after a .to(dtype) cast: the components load in their dtype
    assert "FutureWarning" not in output and "torch_dtype" not in output, output[-4000:]
    modes = {str(p.relative_to(out)): oct(p.stat().st_mode & 0o777) for p in out.rglob("*") if p.is_file()}
    for name in ("adapter_model.safetensors", "pytorch_lora_weights.safetensors", "adapter_config.json"):
        assert name in modes, sorted(modes)
    assert set(modes.values()) == {"0o644"}, modes


@pytest.mark.parametrize("launcher", [False, True])
def test_a_bad_flag_value_is_one_error_line_without_the_usage_text(tmp_path, launcher):
    out = tmp_path / "never-created"
    args = ["--train_data_dir", str(tmp_path), "--output_dir", str(out), "--resolution", "60"]
    result = run(args, launcher=launcher, timeout=120)
    assert result.returncode != 0
    assert "usage:" not in result.stdout + result.stderr, result.stderr[:3000]
    errors = [line for line in result.stderr.splitlines() if "--resolution must be a positive multiple of 8" in line]
    if not launcher:  # accelerate launch repeats a failed child's stderr in its own CalledProcessError
        assert result.returncode == 2 and result.stderr.strip().splitlines() == errors and len(errors) == 1
    assert errors, result.stderr[-3000:]
    assert not out.exists()
