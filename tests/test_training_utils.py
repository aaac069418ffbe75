"""Training helpers: conditioning dropout statistics, budget matching, location pictures, saving."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model
from PIL import Image

from loca_diffusion import LoCAConfig
from loca_diffusion.images import image_grid
from loca_diffusion.training import (
    CHECKPOINT_INFO_FILE,
    build_adapter_config,
    checkpoint_dirs,
    conditioning_dropout,
    count_moved_locations,
    latest_checkpoint,
    location_snapshot,
    save_adapter,
    save_checkpoint,
    trainable_parameter_count,
    write_model_card,
)
from loca_diffusion.training.pix2pix import location_heatmap


class Attn(nn.Module):
    def __init__(self):
        super().__init__()
        self.to_q = nn.Linear(32, 32)
        self.to_k = nn.Linear(24, 32)
        self.to_v = nn.Linear(24, 32)
        self.to_out = nn.ModuleList([nn.Linear(32, 32), nn.Dropout(0.0)])

    def forward(self, x):
        return self.to_out[0](self.to_q(x))


TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def test_conditioning_dropout_frequencies():
    n, p = 20000, 0.05
    text = torch.ones(n, 3, 4)
    image = torch.ones(n, 2, 2, 2)
    null = torch.zeros(1, 3, 4)
    text_out, image_out = conditioning_dropout(text, image, null, p, torch.Generator().manual_seed(0))
    dropped_text = (text_out.flatten(1) == 0).all(1)
    dropped_image = (image_out.flatten(1) == 0).all(1)
    both = dropped_text & dropped_image
    assert abs(dropped_text.float().mean() - 2 * p) < 0.01  # text only + both
    assert abs(dropped_image.float().mean() - 2 * p) < 0.01  # image only + both
    assert abs(both.float().mean() - p) < 0.007
    assert abs((dropped_text & ~dropped_image).float().mean() - p) < 0.007
    assert abs((dropped_image & ~dropped_text).float().mean() - p) < 0.007
    same_text, same_image = conditioning_dropout(text, image, null, 0.0)
    assert same_text is text and same_image is image


def test_budget_matching():
    model = Attn()
    # LoCA: 100 per layer x 4 layers = 400; LoRA rank r costs r * (64 + 56 + 56 + 64) = 240 r
    lora = build_adapter_config("lora", model, TARGETS, n_frequency=100, match_budget=True)
    assert lora.r == 2  # 400 / 240 = 1.67 -> 2
    assert build_adapter_config("lora", model, TARGETS, lora_rank=16).r == 16
    fourier = build_adapter_config("fourierft", model, TARGETS, n_frequency=100, match_budget=True)
    assert fourier.n_frequency == 100
    loca = build_adapter_config("loca", model, TARGETS, n_frequency=100, location_training_steps=5)
    assert isinstance(loca, LoCAConfig) and loca.location_training_steps == 5
    with pytest.raises(ValueError, match="adapter"):
        build_adapter_config("dora", model, TARGETS)
    peft_model = get_peft_model(Attn(), LoCAConfig(target_modules=TARGETS, n_frequency=100))
    assert trainable_parameter_count(peft_model) == 400
    assert trainable_parameter_count(peft_model, count_loca_locations=True) == 1200


def test_location_snapshot_heatmap_and_saving(tmp_path):
    model = get_peft_model(Attn(), LoCAConfig(target_modules=TARGETS, n_frequency=20, init_weights=False))
    before = location_snapshot(model)
    assert len(before) == 4 and all(v.shape == (2, 20) for v in before.values())
    layer = model.base_model.model.to_q
    with torch.no_grad():
        layer.loca_locations["default"][:, :3] = 1.0  # move three coefficients to the corner
    moved = count_moved_locations(before, location_snapshot(model))
    expected = int((before["base_model.model.to_q"][:, :3] != 31).any(0).sum())
    assert moved == expected
    picture = location_heatmap(model, tile=40, columns=2)
    assert picture.size == (2 * 44 + 4, 2 * 44 + 4)
    out = save_adapter(model, tmp_path / "adapter", live_state=True)
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LOCA"
    reloaded = PeftModel.from_pretrained(Attn(), str(out))
    torch.testing.assert_close(reloaded.base_model.model.to_q.get_locations("default"), layer.get_locations("default"))
    card = write_model_card(
        tmp_path, "tiny", "loca", {"lr": 1e-4}, 400, train_data_dir="pairs", sample_grid="s.png", heatmap="l.png"
    )
    text = card.read_text()
    assert "400" in text and "s.png" in text and "l.png" in text and "load_loca" in text
    # the snippet ends with the edit itself, using the run's instruction (issue 17)
    assert "edited = pipe('Change the natural image to a cartoon-style image.', image=" in text
    lora = write_model_card(tmp_path, "tiny", "lora", {}, 4, instruction="make it red").read_text()
    assert 'from_pretrained("tiny", dtype=torch.float32)' in lora and "edited = pipe('make it red', image=" in lora


def test_image_grid():
    images = [Image.new("RGB", (8, 6), (i * 40, 0, 0)) for i in range(5)]
    grid = image_grid(images, columns=2)
    assert grid.size == (16, 18)
    assert grid.getpixel((2, 14)) == (160, 0, 0)  # image 4: row 2, column 0
    assert grid.getpixel((10, 14)) == (255, 255, 255)  # the empty sixth cell
    with pytest.raises(ValueError):
        image_grid([], 2)


def test_push_to_hub_fails_fast_offline(tmp_path, monkeypatch):
    import time

    from loca_diffusion.hub import HubUnavailableError, push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="me/adapter") as info:
        push_to_hub(tmp_path, "me/adapter")
    assert "hf upload" in str(info.value) and time.monotonic() - start < 5


def front_matter(card: str) -> str:
    return card.split("---")[1]


@pytest.mark.parametrize(
    "adapter, title, usage, foreign",
    [
        ("loca", "# LoCA adapter for InstructPix2Pix", "pipe.load_loca(", ["load_lora_weights", "PeftModel"]),
        (
            "lora",
            "# LoRA adapter for InstructPix2Pix",
            "pipe.load_lora_weights(",
            ["LoCA", "load_loca", "loca_diffusion", "tags: [loca"],
        ),
        (
            "fourierft",
            "# FourierFT adapter for InstructPix2Pix",
            "PeftModel.from_pretrained(pipe.unet,",
            ["LoCA", "load_loca", "loca_diffusion", "tags: [loca"],
        ),
    ],
)
def test_model_card_per_adapter_type(tmp_path, adapter, title, usage, foreign):
    hub = write_model_card(
        tmp_path, "timbrooks/instruct-pix2pix", adapter, {"seed": 0}, 1234, dataset_name="me/pairs"
    ).read_text()
    assert title in hub and usage in hub and f"tags: [{adapter}," in hub
    assert 'from_pretrained("timbrooks/instruct-pix2pix"' in hub
    assert "datasets: [me/pairs]" in front_matter(hub) and "me/pairs" in hub
    for word in foreign:
        assert word not in hub, word
    local = write_model_card(
        tmp_path, "timbrooks/instruct-pix2pix", adapter, {"seed": 0}, 1234, train_data_dir="/data/pairs"
    ).read_text()
    assert "datasets:" not in front_matter(local) and "/data/pairs" in local and "me/pairs" not in local
    with pytest.raises(ValueError, match="adapter"):
        write_model_card(tmp_path, "base", "LOCA", {}, 1)


@pytest.mark.parametrize("contents, saved", [("adapter", "adapter/loca_training_state.safetensors"),
                                              ("trainable", "trainable_state.safetensors")])  # fmt: skip
def test_checkpoint_hooks_save_and_restore_only_their_contents(tmp_path, contents, saved):
    from accelerate import Accelerator

    from loca_diffusion.training import register_checkpoint_hooks

    accelerator = Accelerator(cpu=True)
    model = get_peft_model(Attn(), LoCAConfig(target_modules=TARGETS, n_frequency=8, init_weights=False))
    model = accelerator.prepare(model)
    register_checkpoint_hooks(accelerator, model, contents=contents)
    layer = model.base_model.model.to_q
    expected = layer.loca_coefficients["default"].detach().clone()
    accelerator.save_state(str(tmp_path / "checkpoint"))
    assert (tmp_path / "checkpoint" / saved).is_file()
    assert not list((tmp_path / "checkpoint").glob("model*.safetensors"))  # not the full model
    with torch.no_grad():
        layer.loca_coefficients["default"].zero_()
    accelerator.load_state(str(tmp_path / "checkpoint"))
    torch.testing.assert_close(layer.loca_coefficients["default"], expected)
    with pytest.raises(ValueError, match="contents"):
        register_checkpoint_hooks(accelerator, model, contents="everything")


def test_lora_rank_zero_is_an_error():
    model = nn.Sequential(Attn())
    assert build_adapter_config("lora", model, TARGETS, lora_rank=None).r == 4
    with pytest.raises(ValueError, match="lora_rank"):
        build_adapter_config("lora", model, TARGETS, lora_rank=0)


class FakeAccelerator:
    """accelerate's save_state writes several files per checkpoint; ``fail_after`` interrupts it."""

    is_main_process = True

    def __init__(self, fail_after: int | None = None):
        self.fail_after = fail_after

    def wait_for_everyone(self):
        pass

    def save_state(self, output_dir):
        folder = Path(output_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(["adapter_model.safetensors", "optimizer.bin", "random_states_0.pkl"]):
            if self.fail_after is not None and i == self.fail_after:
                raise KeyboardInterrupt
            (folder / name).write_text(name)


def test_checkpoint_save_is_atomic_and_latest_skips_incomplete(tmp_path, caplog):
    save_checkpoint(FakeAccelerator(), tmp_path, 2, "loca")
    assert json.loads((tmp_path / "checkpoint-2" / CHECKPOINT_INFO_FILE).read_text()) == {
        "global_step": 2,
        "adapter": "loca",
    }
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in the middle of the step-4 save
        save_checkpoint(FakeAccelerator(fail_after=2), tmp_path, 4, "loca")
    assert not (tmp_path / "checkpoint-4").exists()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"
    save_checkpoint(FakeAccelerator(), tmp_path, 4, "loca")  # the next save replaces the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "random_states_0.pkl").is_file()

    # a checkpoint folder from a save that did not finish (older script, copied by hand, ...)
    (tmp_path / "checkpoint-6" / "adapter").mkdir(parents=True)
    with caplog.at_level("WARNING"):
        assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-4"
    assert "skipping incomplete checkpoint" in caplog.text and "checkpoint-6" in caplog.text
    assert [p.name for p in checkpoint_dirs(tmp_path)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]

    # the total limit keeps the newest complete ones
    save_checkpoint(FakeAccelerator(), tmp_path, 8, "loca", total_limit=2)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*") if (p / CHECKPOINT_INFO_FILE).exists()) == [
        "checkpoint-4",
        "checkpoint-8",
    ]
