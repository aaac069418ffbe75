"""Training helpers: conditioning dropout statistics, budget matching, location pictures, saving."""

import json

import pytest
import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model
from PIL import Image

from loca_diffusion import LoCAConfig
from loca_diffusion.training import (
    build_adapter_config,
    conditioning_dropout,
    count_moved_locations,
    image_grid,
    location_heatmap,
    location_snapshot,
    save_adapter,
    trainable_parameter_count,
    write_model_card,
)


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
    torch.testing.assert_close(
        reloaded.base_model.model.to_q.get_locations("default"), layer.get_locations("default")
    )
    card = write_model_card(tmp_path, "tiny", "pairs", "loca", {"lr": 1e-4}, 400, sample_grid="s.png", heatmap="l.png")
    text = card.read_text()
    assert "400" in text and "s.png" in text and "l.png" in text and "load_loca" in text


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

    from loca_diffusion.hub import HubUnavailableError
    from loca_diffusion.training import push_to_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="me/adapter") as info:
        push_to_hub(tmp_path, "me/adapter")
    assert "hf upload" in str(info.value) and time.monotonic() - start < 5
