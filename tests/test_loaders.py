"""``pipe.load_loca(...)`` and friends on a tiny InstructPix2Pix pipeline (offline, CPU).

Adapters are real PEFT directories: LoCA layers with random coefficients (``init_weights=False``)
injected into a copy of the pipeline's UNet and saved with ``PeftModel.save_pretrained``. References
are independent of the loader: the base pipeline's own output, and a UNet whose weights are
``W + sum_i w_i * dW_i`` with ``dW_i`` rebuilt from the saved file through an explicit DCT-II matrix.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
import time

import pytest
import torch
import torch.nn as nn
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file

import loca_diffusion
from loca_diffusion import LoCAConfig, LoCALayer
from loca_diffusion.hub import HubUnavailableError, resolve_local_or_hub
from loca_diffusion.pipelines import (
    StableDiffusionInstructPix2PixLoCAPipeline,
    StableDiffusionLoCAPipeline,
    loca_pipeline_class,
)
from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix

from _reference import dense_dw

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
PREFIX = "base_model.model."

# diffusers' Euler scheduler builds numpy arrays from torch tensors (numpy 2 copy-keyword notice)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ----------------------------------------------------------------------------------------------------
# fixtures


def _make_adapter(unet: nn.Module, directory, seed: int, scaling: float = 1.0) -> str:
    config = LoCAConfig(
        init_weights=False, target_modules=TARGETS, n_frequency=16, random_loc_seed=seed, scaling=scaling
    )
    get_peft_model(copy.deepcopy(unet), config).save_pretrained(directory)
    return str(directory)


def _other_width_unet() -> nn.Module:
    from loca_diffusion.tiny_pix2pix import build_tiny_unet

    torch.manual_seed(1)
    return build_tiny_unet(48)


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory, torch_single_thread):
    root = tmp_path_factory.mktemp("loaders")
    e = Env()
    e.root = root
    e.pipe = build_tiny_instruct_pix2pix(root / "work")
    e.pipe.set_progress_bar_config(disable=True)
    e.pipe.unet.eval()  # as from_pretrained leaves it
    e.image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    e.base_unet = copy.deepcopy(e.pipe.unet)
    e.base_state = {k: v.clone() for k, v in e.pipe.unet.state_dict().items()}
    e.base_grads = {k: p.requires_grad for k, p in e.pipe.unet.named_parameters()}
    e.a = _make_adapter(e.pipe.unet, root / "adapter_a", seed=1, scaling=4.0)
    e.b = _make_adapter(e.pipe.unet, root / "adapter_b", seed=2, scaling=4.0)
    e.run = lambda pipe=None: _run(pipe or e.pipe, e.image)
    e.base = e.run()
    return e


def _run(pipe, image) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return pipe(
        "turn it red", image=image, num_inference_steps=2, height=32, width=32, output_type="pt", generator=generator
    ).images


@pytest.fixture
def pipe(env):
    """The module's pipeline, checked to be the exact base model again after each test."""
    yield env.pipe
    env.pipe.unload_loca()
    if getattr(env.pipe.unet, "peft_config", None):
        env.pipe.unload_lora_weights()
        for name, parameter in env.pipe.unet.named_parameters():  # diffusers leaves the base frozen
            parameter.requires_grad_(env.base_grads[name])
    state = env.pipe.unet.state_dict()
    assert state.keys() == env.base_state.keys()
    assert all(torch.equal(state[k], env.base_state[k]) for k in state)


def _assert_base_restored(env):
    unet = env.pipe.unet
    assert not any(isinstance(m, LoCALayer) for m in unet.modules())
    assert not hasattr(unet, "peft_config") and not unet._hf_peft_config_loaded
    assert {k: p.requires_grad for k, p in unet.named_parameters()} == env.base_grads
    assert torch.equal(env.run(), env.base)


# ----------------------------------------------------------------------------------------------------
# an independent reference: W + sum w_i dW_i with an explicit DCT-II matrix


def _reference_unet(env, adapters: list[tuple[str, float]]) -> nn.Module:
    unet = copy.deepcopy(env.base_unet)
    for directory, weight in adapters:
        config = json.loads(open(f"{directory}/adapter_config.json").read())
        tensors = load_file(f"{directory}/adapter_model.safetensors")
        layers = {k[len(PREFIX) : -len(".loca_coefficients")] for k in tensors if k.endswith(".loca_coefficients")}
        assert layers
        for layer in layers:
            coefficients = tensors[f"{PREFIX}{layer}.loca_coefficients"].double()
            rows, cols = tensors[f"{PREFIX}{layer}.loca_locations"].long()
            linear = unet.get_submodule(layer)
            delta = dense_dw(coefficients, rows, cols, *linear.weight.shape, config["scaling"] * weight)
            with torch.no_grad():
                linear.weight += delta.to(linear.weight.dtype)
    return unet


def _run_with_unet(env, unet) -> torch.Tensor:
    reference = StableDiffusionInstructPix2PixLoCAPipeline.from_pipe(env.pipe, unet=unet)
    reference.set_progress_bar_config(disable=True)
    return env.run(reference)


# ----------------------------------------------------------------------------------------------------
# loading, unloading, fusing, several adapters


def test_load_changes_output_and_unload_restores_base_exactly(env, pipe):
    name = pipe.load_loca(env.a)
    assert name == "default_0" and pipe.get_loca_adapters() == ["default_0"]
    assert pipe.get_active_loca_adapters() == ["default_0"]
    layers = [m for m in pipe.unet.modules() if isinstance(m, LoCALayer)]
    targets = [n for n, _ in env.base_unet.named_modules() if any(n.endswith("." + t) for t in TARGETS)]
    assert len(layers) == len(targets) == 4 * 2 * 4  # q/k/v/out x (attn1, attn2) x (down, mid, 2 x up) blocks
    assert all(not p.requires_grad for m in layers for p in m.loca_coefficients.values())
    adapted = env.run()
    assert (adapted - env.base).abs().max() > 1e-3
    torch.testing.assert_close(adapted, _run_with_unet(env, _reference_unet(env, [(env.a, 1.0)])), atol=1e-5, rtol=0)

    assert pipe.load_loca(env.b) == "default_1"  # diffusers' naming; the new adapter becomes the active one
    assert pipe.get_active_loca_adapters() == ["default_1"]
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_loca(env.a, adapter_name="default_0")

    pipe.unload_loca()
    _assert_base_restored(env)


def test_fuse_matches_unfused_and_unfuse_restores_exactly(env, pipe):
    pipe.load_loca(env.a, adapter_name="a")
    unfused = env.run()
    weights = {k: v.clone() for k, v in pipe.unet.state_dict().items()}

    pipe.fuse_loca()
    assert all(m.merged for m in pipe.unet.modules() if isinstance(m, LoCALayer))
    torch.testing.assert_close(env.run(), unfused, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="unfuse_loca"):
        pipe.set_loca_adapters("a", 0.5)
    pipe.unfuse_loca()
    assert all(torch.equal(v, weights[k]) for k, v in pipe.unet.state_dict().items())
    assert torch.equal(env.run(), unfused)

    # a fuse scale acts like an adapter weight, and does not outlive the fuse
    pipe.set_loca_adapters("a", 0.5)
    half = env.run()
    pipe.set_loca_adapters("a", 1.0)
    pipe.fuse_loca(scale=0.5)
    torch.testing.assert_close(env.run(), half, atol=1e-5, rtol=0)
    pipe.unfuse_loca()
    assert torch.equal(env.run(), unfused)

    pipe.fuse_loca()
    pipe.unload_loca()  # unfuses first: the base weights bit for bit
    _assert_base_restored(env)


def test_cached_deltas_fuse_bit_identically_and_never_go_stale(env, pipe):
    pipe.load_loca(env.a, adapter_name="a")
    pipe.load_loca(env.b, adapter_name="b")
    fresh = {}
    for name in ("a", "b"):  # each adapter fused without a cache: the reference weights
        pipe.set_loca_adapters(name)
        pipe.fuse_loca()
        fresh[name] = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
        pipe.unfuse_loca()
    for name in ("a", "b", "a", "b"):  # A -> B -> A -> B through the cache
        pipe.set_loca_adapters(name)
        pipe.fuse_loca(cache_deltas=True)
        assert all(torch.equal(v, fresh[name][k]) for k, v in pipe.unet.state_dict().items())
        pipe.unfuse_loca()
    layers = [m for m in pipe.unet.modules() if isinstance(m, LoCALayer)]
    assert all(set(m.loca_delta_cache) == {"a", "b"} for m in layers)

    # new coefficients (an optimizer step, a reload) must not reuse the cached dW
    layer = layers[0]
    with torch.no_grad():
        layer.loca_coefficients["a"].mul_(2.0)
    pipe.set_loca_adapters("a")
    pipe.fuse_loca(cache_deltas=True)
    reference = dense_dw(
        layer.loca_coefficients["a"].double(), *layer.get_locations("a"), layer.out_features, layer.in_features,
        layer._scale("a"),
    )  # fmt: skip
    base_weight = env.base_unet.get_submodule(layer.loca_layer_name).weight
    torch.testing.assert_close(layer.get_base_layer().weight, base_weight + reference.float(), atol=1e-6, rtol=0)
    pipe.unfuse_loca()
    pipe.delete_adapters("b")  # a deleted adapter's dW is freed
    assert all("b" not in m.loca_delta_cache for m in layers)


def test_unload_keep_fused_bakes_the_adapter_in(env, pipe):
    pipe.load_loca(env.a)
    adapted = env.run()
    pipe.fuse_loca()
    pipe.unload_loca(keep_fused=True)
    assert not any(isinstance(m, LoCALayer) for m in pipe.unet.modules())
    torch.testing.assert_close(env.run(), adapted, atol=1e-5, rtol=0)
    pipe.unet.load_state_dict(env.base_state)  # back to the base for the next tests
    _assert_base_restored(env)


def test_two_adapters_with_weights_match_manual_merge(env, pipe):
    pipe.load_loca(env.a, adapter_name="a")
    pipe.load_loca(env.b, adapter_name="b")
    pipe.set_loca_adapters(["a", "b"], [1.0, 0.5])
    assert pipe.get_active_loca_adapters() == ["a", "b"]
    combined = env.run()
    reference = _run_with_unet(env, _reference_unet(env, [(env.a, 1.0), (env.b, 0.5)]))
    torch.testing.assert_close(combined, reference, atol=1e-5, rtol=0)

    pipe.fuse_loca()  # both active adapters, at their weights
    torch.testing.assert_close(env.run(), reference, atol=1e-5, rtol=0)
    pipe.unfuse_loca()
    assert torch.equal(env.run(), combined)

    pipe.set_loca_adapters("b")  # only b, weight 1
    only_b = env.run()
    torch.testing.assert_close(only_b, _run_with_unet(env, _reference_unet(env, [(env.b, 1.0)])), atol=1e-5, rtol=0)
    pipe.disable_loca()
    assert torch.equal(env.run(), env.base)
    pipe.enable_loca()
    assert torch.equal(env.run(), only_b)
    with pytest.raises(ValueError, match="No adapter named"):
        pipe.set_loca_adapters(["a", "nope"])

    with pytest.warns(UserWarning, match="Adapter b was active"):  # peft's notice: another adapter takes over
        pipe.delete_loca_adapters("b")
    assert pipe.get_loca_adapters() == ["a"]
    pipe.set_loca_adapters("a")
    torch.testing.assert_close(env.run(), _run_with_unet(env, _reference_unet(env, [(env.a, 1.0)])), atol=1e-5, rtol=0)
    pipe.delete_loca_adapters("a")
    _assert_base_restored(env)


def test_save_loca_is_the_peft_layout(env, pipe, tmp_path):
    pipe.load_loca(env.a, adapter_name="mine")
    pipe.set_loca_adapters("mine", 0.3)  # a runtime weight is not part of the adapter
    out = pipe.save_loca(tmp_path / "saved")
    files = sorted(p.name for p in (tmp_path / "saved").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]

    original, saved = load_file(f"{env.a}/adapter_model.safetensors"), load_file(f"{out}/adapter_model.safetensors")
    assert saved.keys() == original.keys()
    assert all(torch.equal(saved[k], original[k]) and saved[k].dtype == original[k].dtype for k in saved)
    config = json.loads((tmp_path / "saved" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOCA" and config["inference_mode"] is True
    assert sorted(config["target_modules"]) == sorted(TARGETS)

    # peft itself reads it
    sample = torch.randn(1, 8, 8, 8, generator=torch.Generator().manual_seed(1))
    hidden = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(2))
    peft_unet = PeftModel.from_pretrained(copy.deepcopy(env.base_unet), str(out)).eval()
    pipe.set_loca_adapters("mine", 1.0)
    with torch.no_grad():
        expected = pipe.unet(sample, 10, encoder_hidden_states=hidden).sample
        got = peft_unet(sample, 10, encoder_hidden_states=hidden).sample
        base = env.base_unet(sample, 10, encoder_hidden_states=hidden).sample
    assert (expected - base).abs().max() > 1e-4
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)

    with pytest.raises(ValueError, match="No LoCA adapter named"):
        pipe.save_loca(tmp_path / "x", adapter_name="other")


def test_subfolder_file_path_and_modules_to_save(env, pipe, tmp_path):
    # an adapter trained with modules_to_save (a retrained conv_in), saved under <dir>/unet_loca
    config = LoCAConfig(
        init_weights=False, target_modules=["to_q", "to_v"], n_frequency=16, modules_to_save=["conv_in"]
    )
    model = get_peft_model(copy.deepcopy(env.base_unet), config)
    with torch.no_grad():
        model.base_model.model.conv_in.modules_to_save["default"].weight.mul_(1.5)
    model.save_pretrained(tmp_path / "run" / "unet_loca")
    original = load_file(tmp_path / "run" / "unet_loca" / "adapter_model.safetensors")
    assert f"{PREFIX}conv_in.weight" in original

    pipe.load_loca(tmp_path / "run")  # finds unet_loca/
    adapted = env.run()
    assert (adapted - env.base).abs().max() > 1e-3
    pipe.save_loca(tmp_path / "again")
    saved = load_file(tmp_path / "again" / "adapter_model.safetensors")
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in saved)
    pipe.unload_loca()
    assert type(pipe.unet.conv_in) is nn.Conv2d
    _assert_base_restored(env)

    pipe.load_loca(tmp_path / "again" / "adapter_model.safetensors")  # the weights file itself
    assert torch.equal(env.run(), adapted)
    pipe.unload_loca()
    pipe.load_loca(tmp_path / "run", subfolder="unet_loca", adapter_name="explicit")
    assert torch.equal(env.run(), adapted)


# ----------------------------------------------------------------------------------------------------
# errors


def test_adapter_for_another_unet_names_the_layer(env, pipe, tmp_path):
    directory = _make_adapter(_other_width_unet(), tmp_path / "wide", seed=1)
    layer = r"layer 'down_blocks\.0\.attentions\.0\..*'"
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*" + layer) as info:
        pipe.load_loca(directory)
    assert "96x96" in str(info.value) or "48x48" in str(info.value)
    _assert_base_restored(env)

    # a failed load leaves earlier adapters as they were, active ones included
    pipe.load_loca(env.a, adapter_name="a")
    before = env.run()
    with pytest.raises(ValueError, match="layer"):
        pipe.load_loca(directory, adapter_name="wide")
    assert pipe.get_loca_adapters() == ["a"] and pipe.get_active_loca_adapters() == ["a"]
    assert torch.equal(env.run(), before)


def test_adapter_for_other_modules_is_refused(env, pipe, tmp_path):
    config = LoCAConfig(target_modules=["query", "value"], n_frequency=4)
    model = nn.Module()
    model.query, model.value = nn.Linear(4, 4), nn.Linear(4, 4)
    get_peft_model(model, config).save_pretrained(tmp_path / "bert_like")
    with pytest.raises(ValueError, match="query|value|target"):
        pipe.load_loca(tmp_path / "bert_like")
    _assert_base_restored(env)


def test_lora_adapters_are_refused_with_a_pointer_to_load_lora_weights(env, pipe, tmp_path):
    lora_config = LoraConfig(r=4, target_modules=TARGETS, init_lora_weights=False)
    lora_unet = get_peft_model(copy.deepcopy(env.base_unet), lora_config)
    lora_unet.save_pretrained(tmp_path / "peft_lora")
    with pytest.raises(ValueError, match=r"LoRA.*load_lora_weights"):
        pipe.load_loca(tmp_path / "peft_lora")

    # the diffusers LoRA layout (pytorch_lora_weights.safetensors), as a directory and as the file itself
    layers = get_peft_model_state_dict(lora_unet)
    layers = {k.removeprefix(PREFIX): v for k, v in layers.items()}
    StableDiffusionInstructPix2PixLoCAPipeline.save_lora_weights(tmp_path / "diffusers_lora", unet_lora_layers=layers)
    with pytest.raises(ValueError, match=r"LoRA.*load_lora_weights"):
        pipe.load_loca(tmp_path / "diffusers_lora")
    with pytest.raises(ValueError, match=r"LoRA.*load_lora_weights"):
        pipe.load_loca(tmp_path / "diffusers_lora" / "pytorch_lora_weights.safetensors")
    _assert_base_restored(env)


def test_corrupt_files_name_the_file(env, pipe, tmp_path):
    import shutil

    directory = tmp_path / "truncated"
    shutil.copytree(env.a, directory)
    weights = directory / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"truncated.*adapter_model\.safetensors.*corrupt"):
        pipe.load_loca(directory)
    weights.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"adapter_model\.safetensors.*corrupt"):
        pipe.load_loca(directory)

    (directory / "adapter_model.safetensors").write_bytes(data)
    (directory / "adapter_config.json").write_text('{"peft_type": "LOCA", ')
    with pytest.raises(ValueError, match=r"adapter_config\.json.*not valid JSON"):
        pipe.load_loca(directory)

    with pytest.raises(FileNotFoundError, match="adapter_config.json is missing"):
        pipe.load_loca(tmp_path)
    _assert_base_restored(env)


# ----------------------------------------------------------------------------------------------------
# the Hub: fail fast and clearly


def test_hub_id_offline_fails_fast_with_a_clear_message(env, pipe, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info:
        pipe.load_loca("someone/loca-instruct-pix2pix", subfolder="unet_loca")
    assert time.monotonic() - start < 20
    message = str(info.value)
    assert "'someone/loca-instruct-pix2pix'" in message and "offline" in message
    assert "hf download someone/loca-instruct-pix2pix" in message and "--local-dir DIR" in message
    assert "local directory" in message
    assert info.value.__cause__ is None and (info.value.__context__ is None or info.value.__suppress_context__)
    _assert_base_restored(env)

    # a repo already in the Hub cache loads offline (here: a cache laid out by hand, adapter in unet_loca/)
    import shutil

    cache = tmp_path / "cache"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--someone--cached-loca"
    shutil.copytree(env.a, repo / "snapshots" / commit / "unet_loca")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    pipe.load_loca("someone/cached-loca", cache_dir=cache, adapter_name="cached")
    torch.testing.assert_close(env.run(), _run_with_unet(env, _reference_unet(env, [(env.a, 1.0)])), atol=1e-5, rtol=0)


def test_unreachable_hub_fails_fast_without_retries(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # refused connection
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    start = time.monotonic()
    with pytest.raises(
        HubUnavailableError, match=r"'someone/adapter'.*cannot be reached.*hf download someone/adapter"
    ):
        resolve_local_or_hub(
            "someone/adapter",
            "adapter_config.json",
            cache_dir=tmp_path,
            endpoint=f"http://127.0.0.1:{port}",
            timeout=2,
        )
    assert time.monotonic() - start < 10

    # a server that accepts and never answers: the timeout holds
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(HubUnavailableError, match="cannot be reached"):
            resolve_local_or_hub(
                "someone/adapter",
                "adapter_config.json",
                cache_dir=tmp_path,
                endpoint=f"http://127.0.0.1:{server.getsockname()[1]}",
                timeout=1,
            )
        assert time.monotonic() - start < 10
    finally:
        server.close()

    with pytest.raises(FileNotFoundError, match="not a valid Hugging Face Hub repo id"):
        resolve_local_or_hub("./no/such/dir")


# ----------------------------------------------------------------------------------------------------
# pipelines as users create them


def test_from_pipe_and_from_pretrained_expose_load_loca(env, tiny_pix2pix_dir):
    from diffusers import DiffusionPipeline, StableDiffusionInstructPix2PixPipeline

    plain = StableDiffusionInstructPix2PixPipeline(**env.pipe.components)
    assert not hasattr(plain, "load_loca")
    loca = StableDiffusionInstructPix2PixLoCAPipeline.from_pipe(plain)
    assert isinstance(loca, StableDiffusionInstructPix2PixPipeline) and loca.unet is plain.unet
    assert callable(loca.load_loca) and callable(loca.load_lora_weights)
    assert callable(StableDiffusionLoCAPipeline.from_pipe(plain).load_loca)
    assert loca_pipeline_class(StableDiffusionInstructPix2PixPipeline) is StableDiffusionInstructPix2PixLoCAPipeline
    assert loca_diffusion.StableDiffusionInstructPix2PixLoCAPipeline is StableDiffusionInstructPix2PixLoCAPipeline

    # saved pipelines name the diffusers class, so plain diffusers loads them too
    index = json.loads((tiny_pix2pix_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionInstructPix2PixPipeline"
    assert DiffusionPipeline.load_config(tiny_pix2pix_dir)["_class_name"] == "StableDiffusionInstructPix2PixPipeline"

    loaded = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(tiny_pix2pix_dir)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is StableDiffusionInstructPix2PixLoCAPipeline
    assert torch.equal(env.run(loaded), env.base)  # the same tiny model (seed 0)
    loaded.load_loca(env.a)
    torch.testing.assert_close(
        env.run(loaded), _run_with_unet(env, _reference_unet(env, [(env.a, 1.0)])), atol=1e-5, rtol=0
    )
    loaded.unload_loca()
    assert torch.equal(env.run(loaded), env.base)


def test_lora_and_loca_side_by_side(env, pipe, tmp_path):
    lora_config = LoraConfig(r=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    lora_unet = get_peft_model(copy.deepcopy(env.base_unet), lora_config)
    layers = {k.removeprefix(PREFIX): v for k, v in get_peft_model_state_dict(lora_unet).items()}
    StableDiffusionInstructPix2PixLoCAPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=layers)
    pipe.load_lora_weights(tmp_path / "lora", adapter_name="lora")
    lora_only = env.run()
    pipe.load_loca(env.a, adapter_name="loca")
    pipe.set_loca_adapters(["lora", "loca"], [1.0, 1.0])
    assert (env.run() - lora_only).abs().max() > 1e-4
    pipe.unload_loca()
    assert pipe.unet.peft_config.keys() == {"lora"}
    pipe.set_adapters("lora")
    assert torch.equal(env.run(), lora_only)


# ----------------------------------------------------------------------------------------------------
# in-memory state dicts, and the model-level layer on its own


def test_load_an_in_memory_state_dict_with_its_config(env, pipe):
    state_dict = load_file(f"{env.a}/adapter_model.safetensors")
    config = LoCAConfig.from_pretrained(env.a)
    config.inference_mode = False
    reference = _run_with_unet(env, _reference_unet(env, [(env.a, 1.0)]))

    pipe.load_loca(state_dict, loca_config=config, adapter_name="from_dict")
    torch.testing.assert_close(env.run(), reference, atol=1e-5, rtol=0)
    assert config.inference_mode is False  # the caller's config is not changed
    pipe.unload_loca()

    # keys as get_peft_model_state_dict(unet) gives them (no PeftModel prefix), the config as JSON contents
    bare = {key.removeprefix(PREFIX): value for key, value in state_dict.items()}
    as_json = json.loads(open(f"{env.a}/adapter_config.json").read())
    as_json.pop("peft_type")
    pipe.load_loca(bare, loca_config=as_json)
    torch.testing.assert_close(env.run(), reference, atol=1e-5, rtol=0)
    pipe.unload_loca()

    with pytest.raises(ValueError, match="loca_config"):
        pipe.load_loca(state_dict)
    with pytest.raises(ValueError, match="in-memory"):
        pipe.load_loca(env.a, loca_config=config)
    with pytest.raises(ValueError, match=r"LoRA.*load_lora_weights"):
        pipe.load_loca({"unet.x.lora_A.weight": torch.zeros(2, 2)}, loca_config=config)
    with pytest.raises(ValueError, match=r"LoRA.*load_lora_weights"):
        pipe.load_loca(state_dict, loca_config={**as_json, "peft_type": "LORA"})
    with pytest.raises(ValueError, match="n_frequency"):
        pipe.load_loca(state_dict, loca_config={**as_json, "n_frequency": 8}, adapter_name="wrong")
    _assert_base_restored(env)


def test_model_level_operations_on_a_plain_module(tmp_path, torch_single_thread):
    from loca_diffusion.loaders import LoCALoaderState, model_ops, read_loca_adapter

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8))
    model[0].weight.requires_grad_(False)  # a flag of the user's, restored by unload
    base = copy.deepcopy(model)
    config = LoCAConfig(init_weights=False, target_modules=["0", "2"], n_frequency=12, scaling=3.0)
    get_peft_model(copy.deepcopy(model), config).save_pretrained(tmp_path / "mlp")
    tensors = load_file(tmp_path / "mlp" / "adapter_model.safetensors")
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))

    def reference(weight: float) -> torch.Tensor:
        dense = copy.deepcopy(base)
        for index in ("0", "2"):
            linear = dense.get_submodule(index)
            rows, cols = tensors[f"{PREFIX}{index}.loca_locations"].long()
            coefficients = tensors[f"{PREFIX}{index}.loca_coefficients"]
            with torch.no_grad():
                linear.weight += dense_dw(coefficients, rows, cols, *linear.weight.shape, weight * 3.0).float()
        with torch.no_grad():
            return dense(x)

    name = model_ops.load_loca_adapter(model, read_loca_adapter(tmp_path / "mlp"))
    assert name == "default_0" and model_ops.active_loca_adapters(model) == ["default_0"]
    torch.testing.assert_close(model(x), reference(1.0), atol=1e-5, rtol=0)
    model_ops.set_loca_adapters(model, name, 0.5)
    adapted = model(x).detach()
    torch.testing.assert_close(adapted, reference(0.5), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="diffusers model"):
        model_ops.set_loca_adapters(model, name, {"down": 1.0})

    model_ops.fuse_loca(model)
    state = model._loca_loader_state
    assert isinstance(state, LoCALoaderState) and sorted(state.fused) == ["0", "2"]
    torch.testing.assert_close(model(x), adapted, atol=1e-5, rtol=0)
    model_ops.unfuse_loca(model)
    assert not state.fused and torch.equal(model(x), adapted)
    model_ops.enable_loca(model, False)
    assert torch.equal(model(x), base(x))
    model_ops.enable_loca(model, True)

    model_ops.fuse_loca(model)
    model_ops.unload_loca(model)  # unfuses first: the base bit for bit, no loader state left
    assert not hasattr(model, "peft_config") and not hasattr(model, "_loca_loader_state")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), base.state_dict().values()))
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in base.parameters()]
    assert torch.equal(model(x), base(x))
