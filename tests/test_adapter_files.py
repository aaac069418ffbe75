"""The one adapter writer: every adapter the project writes loads by every route (issue 6 item 3, issue 7 item 2).

A UNet with random non-zero adapter weights (LoCA, LoRA, FourierFT, added in place as the training
script adds them) is written once, then loaded by ``PeftModel.from_pretrained``, ``pipe.load_loca``
(LoCA) and ``pipe.load_lora_weights`` (LoRA). The reference is the written model itself: the loaded
UNet must give its outputs and hold its tensors, with no missing or unexpected keys. What the writer
writes is also held against what ``PeftModel.save_pretrained`` writes for the same adapter.
"""

from __future__ import annotations

import copy
import json
import logging
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from test_train_script import common_args, run

from loca_diffusion.loaders import write_loca_adapter
from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix
from loca_diffusion.training import UNET_ATTENTION_TARGETS, build_adapter_config, save_adapter

from _scripts import ok

ADAPTERS = ["loca", "lora", "fourierft"]
#: the adapter tensors (LoCA's locations are left where the layer put them: they must stay in range)
TRAINED = ("loca_coefficients", "lora_A", "lora_B", "fourierft_spectrum")
BASE_NAME = "tiny/instruct-pix2pix"

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def pipe(tmp_path_factory, torch_single_thread):
    pipe = build_tiny_instruct_pix2pix(tmp_path_factory.mktemp("tiny") / "work")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, 8, 8, 8, generator=generator), torch.randn(1, 77, 32, generator=generator)


def unet_output(unet: nn.Module, inputs) -> torch.Tensor:
    sample, hidden = inputs
    with torch.no_grad():
        return unet(sample, 10, encoder_hidden_states=hidden).sample


def adapted_unet(base: nn.Module, adapter: str, seed: int = 0) -> nn.Module:
    """``base`` with ``adapter`` added in place (``add_adapter``, as the training script does) and random
    non-zero adapter weights; LoRA with ``alpha != r`` so that a lost config changes the output."""
    unet = copy.deepcopy(base)
    config = build_adapter_config(
        adapter, unet, UNET_ATTENTION_TARGETS, n_frequency=16, scaling=2.0, lora_rank=2, lora_alpha=6.0
    )
    unet.add_adapter(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in unet.named_parameters():
            if any(tag in name for tag in TRAINED):
                parameter.copy_(0.05 * torch.randn(parameter.shape, generator=generator))
    return unet.eval()


def adapter_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors by layer and kind, whatever the wrapper and adapter name."""
    found = {}
    for name, value in model.state_dict().items():
        for tag in TRAINED:
            if f".{tag}." in name:
                layer = name.removeprefix("base_model.model.").split(f".{tag}.")[0]
                found[f"{layer}.{tag}"] = value
    return found


def load_with_peft(base: nn.Module, directory: Path) -> nn.Module:
    """``PeftModel.from_pretrained``, failing on any warning about missing or unexpected keys."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(copy.deepcopy(base), str(directory)).eval()
    key_warnings = [str(w.message) for w in caught if "key" in str(w.message).lower()]
    assert not key_warnings, key_warnings
    return model


class DiffusersWarnings(logging.Handler):
    """diffusers reports unexpected / missing LoRA keys through its (non-propagating) logger."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_written_adapter_loads_by_every_route(pipe, inputs, tmp_path, adapter):
    base = copy.deepcopy(pipe.unet)
    trained = adapted_unet(base, adapter)
    expected = unet_output(trained, inputs)
    assert (expected - unet_output(base, inputs)).abs().max() > 1e-3  # the adapter does something
    out = save_adapter(trained, tmp_path / adapter, base_model_name_or_path=BASE_NAME)

    # peft: no missing keys, the same tensors (non-zero coefficients restored exactly), the same outputs
    loaded = load_with_peft(base, out)
    original, restored = adapter_tensors(trained), adapter_tensors(loaded)
    assert original and restored.keys() == original.keys()
    for key, value in original.items():
        assert value.abs().sum() > 0 and torch.equal(restored[key], value), key
    torch.testing.assert_close(unet_output(loaded, inputs), expected, atol=1e-6, rtol=0)

    # the pipeline routes
    if adapter == "fourierft":
        assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
        return
    before = unet_output(pipe.unet, inputs)
    if adapter == "loca":
        pipe.load_loca(out, adapter_name="route")
    else:
        from diffusers.utils import logging as diffusers_logging

        handler = DiffusersWarnings()
        diffusers_logger = diffusers_logging.get_logger("diffusers")
        diffusers_logger.addHandler(handler)
        try:
            pipe.load_lora_weights(out, adapter_name="route")
        finally:
            diffusers_logger.removeHandler(handler)
        # (its notice that the file has no text-encoder LoRA is expected: the adapter is the UNet's)
        problems = [m for m in handler.messages if not m.startswith("No LoRA keys associated to CLIPTextModel")]
        assert not problems, problems
    try:
        restored = adapter_tensors(pipe.unet)
        assert restored.keys() == original.keys()
        assert all(torch.equal(restored[key], value) for key, value in original.items())
        torch.testing.assert_close(unet_output(pipe.unet, inputs), expected, atol=1e-6, rtol=0)
    finally:
        pipe.unload_loca() if adapter == "loca" else pipe.unload_lora_weights()
    assert torch.equal(unet_output(pipe.unet, inputs), before)


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_writer_writes_what_peft_save_pretrained_writes(pipe, tmp_path, adapter):
    base = copy.deepcopy(pipe.unet)
    trained = adapted_unet(base, adapter, seed=3)
    ours = write_loca_adapter(trained, tmp_path / "ours", base_model_name_or_path=BASE_NAME)
    peft_model = load_with_peft(base, ours)  # wrapped: what users of peft save from
    peft_model.save_pretrained(tmp_path / "peft", save_embedding_layers=False)  # no Hub lookup of BASE_NAME

    def config(directory: Path) -> dict:
        data = json.loads((directory / "adapter_config.json").read_text())
        return {k: sorted(v) if isinstance(v, list) and k == "target_modules" else v for k, v in data.items()}

    assert config(ours) == config(tmp_path / "peft")
    assert config(ours)["inference_mode"] is True and config(ours)["base_model_name_or_path"] == BASE_NAME
    mine = load_file(ours / "adapter_model.safetensors")
    theirs = load_file(tmp_path / "peft" / "adapter_model.safetensors")
    assert mine.keys() == theirs.keys() and all(k.startswith("base_model.model.") for k in mine)
    assert all(torch.equal(mine[k], theirs[k]) and mine[k].dtype == theirs[k].dtype for k in mine)
    # the writer also on a PeftModel: the same files
    again = write_loca_adapter(peft_model, tmp_path / "again")
    assert (again / "adapter_config.json").read_bytes() == (ours / "adapter_config.json").read_bytes()
    assert load_file(again / "adapter_model.safetensors").keys() == mine.keys()


def test_lora_file_is_what_diffusers_save_lora_weights_writes(pipe, tmp_path):
    """The LoRA file next to the PEFT layout: diffusers' keys (``unet.<module>...``) and config header."""
    from peft import get_peft_model_state_dict

    trained = adapted_unet(pipe.unet, "lora", seed=4)
    ours = write_loca_adapter(trained, tmp_path / "ours")
    layers = get_peft_model_state_dict(trained)
    metadata = trained.peft_config["default"].to_dict()
    type(pipe).save_lora_weights(tmp_path / "diffusers", unet_lora_layers=layers, unet_lora_adapter_metadata=metadata)
    name = "pytorch_lora_weights.safetensors"
    mine, theirs = load_file(ours / name), load_file(tmp_path / "diffusers" / name)
    assert mine.keys() == theirs.keys() and all(k.startswith("unet.") for k in mine)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)

    def header(path: Path) -> dict:
        with safe_open(str(path), "pt") as handle:
            data = json.loads(handle.metadata()["lora_adapter_metadata"])
        data.pop("unet.inference_mode")  # the writer records inference mode, as the PEFT config does
        return {k: sorted(v) if isinstance(v, list) else v for k, v in data.items()}

    assert header(ours / name) == header(tmp_path / "diffusers" / name)


def test_save_loca_and_save_adapter_write_the_same_files(pipe, tmp_path):
    """``pipe.save_loca`` and the training helper (the script and its checkpoint hooks) go through one writer."""
    trained = adapted_unet(pipe.unet, "loca", seed=5)
    from_training = save_adapter(trained, tmp_path / "training", base_model_name_or_path=BASE_NAME)
    pipe.load_loca(from_training, adapter_name="trained")
    try:
        from_pipe = Path(pipe.save_loca(tmp_path / "pipe"))
    finally:
        pipe.unload_loca()
    config_bytes = (from_training / "adapter_config.json").read_bytes()
    assert (from_pipe / "adapter_config.json").read_bytes() == config_bytes
    assert json.loads(config_bytes)["auto_mapping"]["base_model_class"] == "UNet2DConditionModel"
    written = load_file(from_training / "adapter_model.safetensors")
    saved = load_file(from_pipe / "adapter_model.safetensors")
    assert written.keys() == saved.keys()
    assert all(torch.equal(written[k], saved[k]) for k in written)


# ----------------------------------------------------------------------------------------------------
# what the training script writes


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_training_script_outputs_load_by_every_route(tiny_pix2pix_dir, tmp_path, inputs, adapter, pairs):
    from diffusers import UNet2DConditionModel

    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    out = tmp_path / adapter
    args = common_args(tiny_pix2pix_dir, pairs, out, 2) + ["--adapter", adapter, "--checkpointing_steps", "1"]
    ok(run(args, launcher=False))
    base = UNet2DConditionModel.from_pretrained(tiny_pix2pix_dir, subfolder="unet").eval()
    base_output = unet_output(base, inputs)
    loaded = load_with_peft(base, out)
    via_peft = unet_output(loaded, inputs)
    assert (via_peft - base_output).abs().max() > 1e-4  # trained: the adapter changes the output
    written = adapter_tensors_in_file(out)
    restored = adapter_tensors(loaded)
    assert written and restored.keys() == written.keys()
    assert all(torch.equal(restored[key], value) for key, value in written.items())
    assert any(value.abs().sum() > 0 for value in written.values())
    if adapter == "fourierft":
        return

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(tiny_pix2pix_dir, safety_checker=None)
    pipe.load_loca(out) if adapter == "loca" else pipe.load_lora_weights(out)
    torch.testing.assert_close(unet_output(pipe.unet, inputs), via_peft, atol=1e-6, rtol=0)

    if adapter == "lora":
        # a LoRA checkpoint (no LoCA live state) restores its adapter: resuming from step 1 ends where the
        # uninterrupted run ended
        resumed = tmp_path / "resumed"
        ok(
            run(
                common_args(tiny_pix2pix_dir, pairs, resumed, 2)
                + ["--adapter", adapter, "--resume_from_checkpoint", str(out / "checkpoint-1")],
                launcher=False,
            )
        )
        again = adapter_tensors_in_file(resumed)
        assert again.keys() == written.keys()
        for key, value in written.items():
            torch.testing.assert_close(again[key], value, rtol=1e-5, atol=1e-6)


def adapter_tensors_in_file(directory: Path) -> dict[str, torch.Tensor]:
    found = {}
    for name, value in load_file(directory / "adapter_model.safetensors").items():
        for tag in TRAINED:
            if f".{tag}" in name:
                found[f"{name.removeprefix('base_model.model.').split(f'.{tag}')[0]}.{tag}"] = value
    return found
