"""PEFT's behaviour list for a new method (after peft's tests/test_custom_models.py), for LoCA.

Every model is built from a tiny config in code (no Hub access). Outputs are checked against
independent references: the base model's own output, a dense recomputation of ``W + dW`` with an
explicitly built DCT-II matrix plugged into a fresh base model through ``torch.func.functional_call``,
and the tensors in the saved files. Nothing here compares the implementation with itself.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn as nn
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.utils import get_base_model_state_dict
from safetensors.torch import load_file, save_file
from torch.func import functional_call

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig, LoCALayer, LoCASchedule

PEFT_PREFIX = "base_model.model."


# ----------------------------------------------------------------------------------------------------
# tiny models


class MLP(nn.Module):
    def __init__(self, hidden: int = 20):
        super().__init__()
        self.lin0 = nn.Linear(10, hidden)
        self.relu = nn.ReLU()
        self.lin1 = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.lin1(self.relu(self.lin0(x)))


def _mlp(hidden=20):
    return MLP(hidden)


def _bert(hidden=32):
    from transformers import BertConfig, BertModel

    return BertModel(
        BertConfig(
            vocab_size=64,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _roberta(hidden=32):
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(
        RobertaConfig(
            vocab_size=64,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            pad_token_id=1,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _gpt2(hidden=32):
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(
        GPT2Config(
            vocab_size=64,
            n_positions=32,
            n_embd=hidden,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def _llama(hidden=32):
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(
        LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )


def _vit(hidden=32):
    from transformers import ViTConfig, ViTModel

    return ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _unet(hidden=32):
    from loca_diffusion.tiny_pix2pix import build_tiny_unet

    return build_tiny_unet(hidden)


def _features():
    return {"x": torch.randn(4, 10, generator=torch.Generator().manual_seed(1))}


def _ids(batch=2, length=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 64, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _pixels():
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def _unet_inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(2, 8, 8, 8, generator=g),
        "timestep": torch.tensor([3, 500]),
        "encoder_hidden_states": torch.randn(2, 5, 32, generator=g),
    }


_BASE_CACHE: dict = {}


@dataclass
class Spec:
    name: str
    build: Callable[..., nn.Module]
    targets: list
    inputs: Callable[[], dict]
    n_frequency: int
    fan_in_fan_out: bool = False
    float_inputs: tuple = ()  # input names to cast with the model's dtype

    def base(self, seed: int = 0, **kwargs) -> nn.Module:
        """A fresh base model; the same seed gives the same weights (built once, then copied)."""
        key = (self.name, seed, tuple(sorted(kwargs.items())))
        if key not in _BASE_CACHE:
            torch.manual_seed(seed)
            _BASE_CACHE[key] = self.build(**kwargs).eval()
        return copy.deepcopy(_BASE_CACHE[key])

    def config(self, **kwargs) -> LoCAConfig:
        options = dict(n_frequency=self.n_frequency, target_modules=list(self.targets))
        if self.fan_in_fan_out:
            options["fan_in_fan_out"] = True
        options.update(kwargs)
        return LoCAConfig(**options)


SPECS = {
    "mlp": Spec("mlp", _mlp, ["lin0", "lin1"], _features, 8, float_inputs=("x",)),
    "bert": Spec("bert", _bert, ["query", "value"], _ids, 16),
    "roberta": Spec("roberta", _roberta, ["query", "value"], _ids, 16),
    "gpt2": Spec("gpt2", _gpt2, ["c_attn"], _ids, 16, fan_in_fan_out=True),
    "llama": Spec("llama", _llama, ["q_proj", "v_proj"], _ids, 16),
    "vit": Spec("vit", _vit, ["q_proj", "v_proj"], _pixels, 16, float_inputs=("pixel_values",)),
    "unet": Spec(
        "unet",
        _unet,
        ["to_q", "to_k", "to_v", "to_out.0"],
        _unet_inputs,
        16,
        float_inputs=("sample", "encoder_hidden_states"),
    ),
}
ALL = list(SPECS)


def run(model: nn.Module, spec: Spec, dtype: torch.dtype | None = None, **extra) -> torch.Tensor:
    inputs = spec.inputs()
    if dtype is not None:
        inputs = {k: (v.to(dtype) if k in spec.float_inputs else v) for k, v in inputs.items()}
    out = model(**inputs, **extra)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    return out.last_hidden_state


@torch.no_grad()
def run_eval(model, spec, **extra):
    model.eval()
    return run(model, spec, **extra)


# ----------------------------------------------------------------------------------------------------
# independent reference: dense DCT-II and W + dW plugged into a fresh base model


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix, float64, from its definition."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


def dense_dw(coefficients, rows, cols, d_out, d_in, scale=1.0):
    """scale * C_out^T S C_in in float64 (differentiable in ``coefficients``)."""
    s = torch.zeros(d_out, d_in, dtype=torch.float64)
    s = s.index_put((rows.long(), cols.long()), coefficients.to(torch.float64), accumulate=True)
    return scale * dct_matrix(d_out).T @ s @ dct_matrix(d_in)


def loca_layers(model: nn.Module) -> dict[str, LoCALayer]:
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, LoCALayer):
            out[name.removeprefix(PEFT_PREFIX)] = module
    return out


def integer_locations(layer: LoCALayer, adapter: str) -> torch.Tensor:
    """The (row, col) integers the layer should use, derived from its raw state (not get_locations)."""
    fixed = layer.loca_fixed_locations[adapter]
    if (fixed >= 0).all():  # frozen (all -1 while the locations are learned)
        return fixed.clone()
    points = layer.loca_locations[adapter].detach().double()
    sizes = torch.tensor([[layer.out_features - 1], [layer.in_features - 1]], dtype=torch.float64)
    return torch.round(points * sizes).long()


def adapter_state(model: nn.Module, adapter: str = "default") -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module name in the base model: (coefficients, integer locations, scaling)} of one adapter."""
    return {
        name: (
            layer.loca_coefficients[adapter].detach().clone(),
            integer_locations(layer, adapter),
            layer.loca_scaling[adapter],
        )
        for name, layer in loca_layers(model).items()
        if adapter in layer.loca_coefficients
    }


def state_from_file(path: str, config: LoCAConfig) -> dict:
    """The same mapping, read from a saved adapter file."""
    sd = load_file(path) if path.endswith(".safetensors") else torch.load(path, weights_only=True)
    out = {}
    for key, coefficients in sd.items():
        if key.endswith(".loca_coefficients"):
            module = key.removeprefix(PEFT_PREFIX).removesuffix(".loca_coefficients")
            out[module] = (coefficients, sd[key.replace("loca_coefficients", "loca_locations")], config.scaling)
    return out


def dense_weights(
    base: nn.Module, adapters: list[tuple[dict, float]], differentiable=False
) -> dict[str, torch.Tensor]:
    """Parameter overrides ``{"<module>.weight": W + sum_i w_i dW_i}`` for ``functional_call`` on ``base``."""
    modules = dict(base.named_modules())
    overrides = {}
    for state, weight in adapters:
        for name, (coefficients, locations, scaling) in state.items():
            module = modules[name]
            fan_in_fan_out = not isinstance(module, nn.Linear)  # transformers Conv1D stores (in, out)
            w = module.weight
            d_out, d_in = (w.shape[1], w.shape[0]) if fan_in_fan_out else tuple(w.shape)
            dw = dense_dw(coefficients, locations[0], locations[1], d_out, d_in, scaling * weight)
            if fan_in_fan_out:
                dw = dw.T
            key = f"{name}.weight"
            current = overrides.get(key, w.detach().double())
            overrides[key] = current + dw
    return {k: (v.float() if differentiable else v.float().detach()) for k, v in overrides.items()}


@torch.no_grad()
def reference_output(spec: Spec, adapters: list[tuple[dict, float]], seed: int = 0) -> torch.Tensor:
    base = spec.base(seed)
    return _ref_call(base, spec, dense_weights(base, adapters))


def _ref_call(base, spec, overrides):
    out = functional_call(base, overrides, args=(), kwargs=spec.inputs(), strict=False)
    if isinstance(out, torch.Tensor):
        return out
    return out.sample if hasattr(out, "sample") else out.last_hidden_state


def assert_close(a, b, atol=1e-5, rtol=1e-5, msg=""):
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a.float() - b.float()).abs().max().item()
    assert torch.allclose(a.float(), b.float(), atol=atol, rtol=rtol), f"{msg} max abs err {err}"


def base_output(spec, seed=0):
    return run_eval(spec.base(seed), spec)


def peft(spec: Spec, seed=0, **config_kwargs) -> PeftModel:
    return get_peft_model(spec.base(seed), spec.config(**config_kwargs))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # The models are tiny: a second intra-op thread only adds synchronisation, and on a busy 2-core
    # machine it makes every op wait for a descheduled worker (forward passes 50x slower).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ALL)
def spec(request) -> Spec:
    return SPECS[request.param]


def test_dct_reference_is_orthonormal_dct2():
    # the reference basis itself, against scipy
    from scipy.fft import dct

    for n in (2, 5, 16):
        assert torch.allclose(
            dct_matrix(n), torch.from_numpy(dct(torch.eye(n).double().numpy(), norm="ortho", axis=0))
        )


# ----------------------------------------------------------------------------------------------------
# 1. attributes


def test_attributes(spec):
    model = peft(spec, init_weights=False)
    layers = loca_layers(model)
    assert layers, "no LoCA layer injected"
    base_modules = dict(spec.base().named_modules())
    targeted = {n for n in base_modules if any(n == t or n.endswith("." + t) for t in spec.targets)}
    assert set(layers) == targeted
    for name, layer in layers.items():
        base = base_modules[name]
        assert type(layer.get_base_layer()) is type(base)
        c = layer.loca_coefficients["default"]
        assert isinstance(c, nn.Parameter) and c.dtype == torch.float32 and c.shape == (spec.n_frequency,)
        assert c.requires_grad
        p = layer.loca_locations["default"]
        assert p.dtype == torch.float32 and p.shape == (2, spec.n_frequency) and p.requires_grad
        assert 0.0 <= p.min().item() and p.max().item() <= 1.0
        loc = layer.get_locations("default")
        assert loc.dtype == torch.int64 and loc.shape == (2, spec.n_frequency)
        w = base.weight
        d_out, d_in = (w.shape[1], w.shape[0]) if spec.fan_in_fan_out else tuple(w.shape)
        assert (layer.out_features, layer.in_features) == (d_out, d_in)
        assert 0 <= loc[0].min() and loc[0].max() < d_out and 0 <= loc[1].min() and loc[1].max() < d_in
        assert torch.equal(loc, integer_locations(layer, "default"))
        # initial locations are distinct entries
        assert len({(int(r), int(c)) for r, c in loc.T}) == spec.n_frequency
        # the layer's delta weight matches the dense definition (storage layout of the base weight)
        ref = dense_dw(c.detach(), loc[0], loc[1], d_out, d_in)
        if spec.fan_in_fan_out:
            ref = ref.T
        assert_close(layer.get_delta_weight("default"), ref, atol=1e-6)
    # only adapter parameters are trainable
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".loca_coefficients." in n or ".loca_locations." in n for n in trainable)


def test_forward_uses_the_nearest_grid_point_of_each_location():
    # continuous locations between grid points: the output is that of the nearest integer locations
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False)
    layer = loca_layers(model)["lin0"]  # 20 x 10
    rows = torch.tensor([0.6, 3.4, 7.6, 12.4, 18.6, 5.6, 9.4, 15.6], dtype=torch.float64)
    cols = torch.tensor([8.6, 0.4, 2.6, 5.4, 1.6, 6.6, 3.4, 7.4], dtype=torch.float64)
    with torch.no_grad():
        layer.loca_locations["default"].copy_(torch.stack([rows / 19, cols / 9]))
    nearest = torch.stack([(rows + 0.5).floor(), (cols + 0.5).floor()]).long()
    state = adapter_state(model)
    state["lin0"] = (state["lin0"][0], nearest, state["lin0"][2])
    ref = reference_output(spec, [(state, 1.0)])
    assert_close(run_eval(model, spec), ref)
    model.train()
    assert_close(run(model, spec).detach(), ref)


def test_forward_matches_dense_reference(spec):
    model = peft(spec, init_weights=False)
    ref = reference_output(spec, [(adapter_state(model), 1.0)])
    base = base_output(spec)
    assert not torch.allclose(ref, base, atol=1e-4), "the adapter does not change the output; test is vacuous"
    assert_close(run_eval(model, spec), ref, msg="eval")
    # training-mode forward (autograd function path)
    model.train()
    assert_close(run(model, spec).detach(), ref, msg="train")


@pytest.mark.parametrize("strategy", ["weight", "hybrid", "activation"])
@pytest.mark.parametrize("name", ["mlp", "gpt2"])
def test_coefficient_and_input_gradients_match_dense_reference(name, strategy):
    spec = SPECS[name]
    model = peft(spec, init_weights=False, strategy=strategy)
    model.train()
    out = run(model, spec)
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    ((out - target) ** 2).mean().backward()

    base = spec.base()
    state = adapter_state(model)
    leaves = {n: c.clone().requires_grad_(True) for n, (c, _, _) in state.items()}
    diff_state = {n: (leaves[n], loc, s) for n, (_, loc, s) in state.items()}
    ref = _ref_call(base, spec, dense_weights(base, [(diff_state, 1.0)], differentiable=True))
    ((ref - target) ** 2).mean().backward()
    assert_close(out.detach(), ref.detach())
    for n, layer in loca_layers(model).items():
        assert_close(layer.loca_coefficients["default"].grad, leaves[n].grad, atol=1e-6, rtol=1e-4, msg=n)


# ----------------------------------------------------------------------------------------------------
# 2. identity at initialisation


def test_init_weights_true_is_identity(spec):
    base = base_output(spec)
    model = peft(spec)
    for layer in loca_layers(model).values():
        assert torch.count_nonzero(layer.loca_coefficients["default"]) == 0
    assert torch.equal(run_eval(model, spec), base)
    model.train()
    assert_close(run(model, spec).detach(), base, atol=1e-6)


def test_random_coefficients_follow_torch_rng_and_locations_the_seed():
    # like other PEFT methods, init_weights=False draws from torch's RNG (two adapters differ,
    # torch.manual_seed reproduces them); the locations come from random_loc_seed and the layer name
    spec = SPECS["mlp"]
    bases = [spec.base() for _ in range(3)]
    config = spec.config(init_weights=False)
    torch.manual_seed(1)
    first = get_peft_model(bases[0], copy.deepcopy(config))
    second = get_peft_model(bases[1], copy.deepcopy(config))
    first.add_adapter("twin", copy.deepcopy(config))
    torch.manual_seed(1)
    again = get_peft_model(bases[2], copy.deepcopy(config))
    for name, layer in loca_layers(first).items():
        coefficients = layer.loca_coefficients["default"]
        assert coefficients.std() > 0.03  # random, not zeros
        others = [loca_layers(second)[name], loca_layers(again)[name]]
        assert not torch.equal(coefficients, others[0].loca_coefficients["default"])
        assert not torch.equal(coefficients, layer.loca_coefficients["twin"])
        assert torch.equal(coefficients, others[1].loca_coefficients["default"])
        for other in others:
            assert torch.equal(integer_locations(other, "default"), integer_locations(layer, "default"))
        assert torch.equal(integer_locations(layer, "twin"), integer_locations(layer, "default"))


# ----------------------------------------------------------------------------------------------------
# 3. save / load


@pytest.mark.parametrize("safe", [True, False])
def test_save_load_round_trip(spec, safe, tmp_path):
    config = spec.config(init_weights=False)
    model = get_peft_model(spec.base(), config)
    expected = run_eval(model, spec)
    saved_state = adapter_state(model)
    model.save_pretrained(tmp_path, safe_serialization=safe)

    file = tmp_path / ("adapter_model.safetensors" if safe else "adapter_model.bin")
    assert file.exists()
    with open(tmp_path / "adapter_config.json") as f:
        assert json.load(f)["peft_type"] == "LOCA"
    sd = load_file(file) if safe else torch.load(file, weights_only=True)
    layers = loca_layers(model)
    attrs = ("loca_coefficients", "loca_locations", "loca_shape")
    assert set(sd) == {f"{PEFT_PREFIX}{n}.{a}" for n in layers for a in attrs}
    base_modules = dict(spec.base().named_modules())
    for n, layer in layers.items():
        w = base_modules[n].weight
        shape = (w.shape[1], w.shape[0]) if spec.fan_in_fan_out else tuple(w.shape)
        assert sd[f"{PEFT_PREFIX}{n}.loca_shape"].tolist() == list(shape)
        loc = sd[f"{PEFT_PREFIX}{n}.loca_locations"]
        assert loc.dtype == torch.int64
        assert torch.equal(loc, layer.get_locations("default"))
        assert torch.equal(loc, saved_state[n][1])
        assert torch.equal(sd[f"{PEFT_PREFIX}{n}.loca_coefficients"], saved_state[n][0])

    # an independent reference from the file alone
    assert_close(expected, reference_output(spec, [(state_from_file(str(file), config), 1.0)]))

    loaded = PeftModel.from_pretrained(spec.base(), tmp_path)
    assert isinstance(loaded.peft_config["default"], LoCAConfig)
    assert torch.equal(run_eval(loaded, spec), expected)
    assert not any(p.requires_grad for p in loaded.parameters())
    for n, layer in loca_layers(loaded).items():
        assert torch.equal(layer.get_locations("default"), saved_state[n][1])

    trainable = PeftModel.from_pretrained(spec.base(), tmp_path, is_trainable=True)
    assert torch.equal(run_eval(trainable, spec), expected)
    for n, layer in loca_layers(trainable).items():
        assert layer.loca_coefficients["default"].requires_grad
        assert "default" in layer.loca_locations and layer.loca_locations["default"].requires_grad
        assert torch.equal(integer_locations(layer, "default"), saved_state[n][1])
    # and it trains: gradients reach both coefficients and locations
    trainable.train()
    run(trainable, spec).float().pow(2).mean().backward()
    for layer in loca_layers(trainable).values():
        assert layer.loca_coefficients["default"].grad is not None
        assert layer.loca_locations["default"].grad is not None


def test_save_load_after_freezing_locations(tmp_path):
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False)
    for layer in loca_layers(model).values():
        layer.freeze_locations("default")
    expected = run_eval(model, spec)
    model.save_pretrained(tmp_path)
    sd = load_file(tmp_path / "adapter_model.safetensors")
    assert not any("fixed" in k for k in sd)
    loaded = PeftModel.from_pretrained(spec.base(), tmp_path)
    assert torch.equal(run_eval(loaded, spec), expected)


def _train_briefly(model, spec, steps, location_training_steps):
    """A few AdamW steps of the alternating schedule (locations freeze at ``location_training_steps``)."""
    model.train()
    schedule = LoCASchedule(
        model, coefficient_steps=1, location_steps=1, location_training_steps=location_training_steps
    )
    optimizer = torch.optim.AdamW(schedule.parameter_groups(lr=1e-2, location_lr=0.2))
    for _ in range(steps):
        run(model, spec).pow(2).mean().backward()
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model.eval()


@pytest.mark.parametrize("method", ["fourierft", "loca", "loca_frozen"])
def test_reloaded_adapter_keeps_the_state_dict_keys(method, tmp_path):
    # PEFT's contract (FourierFT, LoRA, ...): one key set whatever the mode, so a reloaded adapter
    # (inference_mode=True) takes the trained model's state dict strictly, and the other way round
    from peft import FourierFTConfig

    spec = SPECS["mlp"]
    torch.manual_seed(0)
    if method == "fourierft":
        trained = get_peft_model(
            spec.base(), FourierFTConfig(n_frequency=8, target_modules=["lin0", "lin1"], init_weights=False)
        ).eval()
    else:
        # "loca" stops before T_s (locations still learned), "loca_frozen" crosses it
        trained = _train_briefly(peft(spec), spec, steps=3, location_training_steps=10 if method == "loca" else 2)
        frozen = method == "loca_frozen"
        assert all(layer.locations_frozen("default") == frozen for layer in loca_layers(trained).values())
    expected = run_eval(trained, spec)
    trained.save_pretrained(tmp_path)

    loaded = PeftModel.from_pretrained(spec.base(), tmp_path)
    trainable = PeftModel.from_pretrained(spec.base(), tmp_path, is_trainable=True)
    assert loaded.peft_config["default"].inference_mode
    keys = set(trained.state_dict())
    assert set(loaded.state_dict()) == keys
    assert set(trainable.state_dict()) == keys
    assert torch.equal(run_eval(loaded, spec), expected)

    # the trained state loads strictly into the reloaded model and gives the trained output
    fresh = PeftModel.from_pretrained(spec.base(), tmp_path)
    fresh.load_state_dict(trained.state_dict())
    assert torch.equal(run_eval(fresh, spec), expected)
    # and back: the reloaded state loads strictly into a freshly built trainable model
    rebuilt = get_peft_model(spec.base(), copy.deepcopy(trained.peft_config["default"]))
    rebuilt.load_state_dict(loaded.state_dict())
    assert torch.equal(run_eval(rebuilt, spec), expected)
    if method == "fourierft":
        return
    for layer in loca_layers(loaded).values():
        # reloaded for inference: frozen locations, nothing trainable
        assert layer.locations_frozen("default")
        assert not layer.loca_locations["default"].requires_grad
        assert not layer.loca_coefficients["default"].requires_grad
    for layer in loca_layers(trainable).values():
        assert not layer.locations_frozen("default") and layer.loca_locations["default"].requires_grad


def test_state_dicts_of_the_earlier_layout_still_load_strictly():
    # Before one key set, a learning model had no `loca_fixed_locations` and one loaded for inference
    # no `loca_locations`: checkpoints of that layout must still load (strictly) with their meaning.
    spec = SPECS["mlp"]
    trained = _train_briefly(peft(spec), spec, steps=3, location_training_steps=10)
    expected = run_eval(trained, spec)
    state = trained.state_dict()
    learning = {k: v for k, v in state.items() if "loca_fixed_locations" not in k}
    model = get_peft_model(spec.base(), copy.deepcopy(trained.peft_config["default"]))
    model.load_state_dict(learning)
    assert not any(layer.locations_frozen("default") for layer in loca_layers(model).values())
    assert torch.equal(run_eval(model, spec), expected)

    inference = {k: v for k, v in state.items() if "loca_locations" not in k}
    for name, layer in loca_layers(trained).items():
        inference[f"{PEFT_PREFIX}{name}.loca_fixed_locations.default"] = integer_locations(layer, "default")
    model = get_peft_model(spec.base(), copy.deepcopy(trained.peft_config["default"]))
    model.load_state_dict(inference)
    for name, layer in loca_layers(model).items():
        assert layer.locations_frozen("default")
        assert torch.equal(layer.get_locations("default"), integer_locations(loca_layers(trained)[name], "default"))
    assert torch.equal(run_eval(model, spec), expected)


def test_frozen_locations_ignore_optimizer_moves():
    # After the freeze the location parameter stays registered (DDP); whatever an optimizer then does
    # to it (AdamW's momentum keeps moving it after its gradient is masked) must not move the locations.
    spec = SPECS["mlp"]
    model = _train_briefly(peft(spec), spec, steps=4, location_training_steps=2)
    layers = loca_layers(model)
    frozen = {n: integer_locations(layer, "default") for n, layer in layers.items()}
    out = run_eval(model, spec)
    with torch.no_grad():
        for layer in layers.values():
            layer.loca_locations["default"].copy_(1.0 - layer.loca_locations["default"])
    for n, layer in layers.items():
        assert layer.locations_frozen("default")
        assert torch.equal(layer.get_locations("default"), frozen[n])
    model.eval()
    assert torch.equal(run_eval(model, spec), out)


# ----------------------------------------------------------------------------------------------------
# 4. direct injection


def test_inject_adapter_state_dict_round_trip(spec):
    model = inject_adapter_in_model(spec.config(init_weights=False), spec.base())
    expected = run_eval(model, spec)
    state = adapter_state(model)
    assert_close(expected, reference_output(spec, [(state, 1.0)]))
    sd = get_peft_model_state_dict(model)
    assert sd and all(k.endswith((".loca_coefficients", ".loca_locations", ".loca_shape")) for k in sd)
    for k, v in sd.items():
        if k.endswith("loca_locations"):
            assert v.dtype == torch.int64

    # a fresh model with different locations and coefficients takes the saved state exactly
    other = inject_adapter_in_model(spec.config(init_weights=False, random_loc_seed=5), spec.base())
    assert not torch.allclose(run_eval(other, spec), expected, atol=1e-5)
    result = set_peft_model_state_dict(other, sd)
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "loca_" in k]
    assert torch.equal(run_eval(other, spec), expected)
    new_state = adapter_state(other)
    for n, (c, loc, _) in state.items():
        assert torch.equal(new_state[n][0], c) and torch.equal(new_state[n][1], loc)


# ----------------------------------------------------------------------------------------------------
# 5. multiple adapters


def test_multiple_adapters(spec, tmp_path):
    model = peft(spec, init_weights=False)
    out_default = run_eval(model, spec)
    model.add_adapter("other", spec.config(init_weights=False, random_loc_seed=11, scaling=0.7))
    # adding does not activate it; only the active adapter is trainable
    assert model.active_adapter == "default"
    assert torch.equal(run_eval(model, spec), out_default)
    for layer in loca_layers(model).values():
        assert layer.loca_coefficients["default"].requires_grad
        assert not layer.loca_coefficients["other"].requires_grad
        assert not layer.loca_locations["other"].requires_grad

    model.set_adapter("other")
    out_other = run_eval(model, spec)
    assert not torch.allclose(out_other, out_default, atol=1e-5)
    assert_close(out_other, reference_output(spec, [(adapter_state(model, "other"), 1.0)]))
    for layer in loca_layers(model).values():
        assert layer.loca_coefficients["other"].requires_grad and layer.loca_locations["other"].requires_grad
        assert not layer.loca_coefficients["default"].requires_grad

    # save only "other"; load it under a new name
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    model.set_adapter("default")
    assert torch.equal(run_eval(model, spec), out_default)
    model.load_adapter(tmp_path / "other", adapter_name="loaded")
    assert isinstance(model.peft_config["loaded"], LoCAConfig)
    model.set_adapter("loaded")
    assert torch.equal(run_eval(model, spec), out_other)

    # a fresh model: load two saved adapters, switch
    fresh = PeftModel.from_pretrained(spec.base(), tmp_path / "other", adapter_name="x")
    assert torch.equal(run_eval(fresh, spec), out_other)


def test_two_active_adapters_add_up():
    spec = SPECS["llama"]
    model = peft(spec, init_weights=False)
    model.add_adapter("other", spec.config(init_weights=False, random_loc_seed=11))
    model.base_model.set_adapter(["default", "other"])
    ref = reference_output(spec, [(adapter_state(model, "default"), 1.0), (adapter_state(model, "other"), 1.0)])
    assert_close(run_eval(model, spec), ref)
    model.train()
    assert_close(run(model, spec).detach(), ref)


# ----------------------------------------------------------------------------------------------------
# 6. merging


def test_merge_and_unload(spec):
    model = peft(spec, init_weights=False)
    ref = reference_output(spec, [(adapter_state(model), 1.0)])
    unmerged = run_eval(model, spec)
    merged_model = model.merge_and_unload()
    assert not loca_layers(merged_model)
    assert_close(run_eval(merged_model, spec), unmerged, atol=1e-5)
    assert_close(run_eval(merged_model, spec), ref, atol=1e-5)


def test_merge_unmerge_restores_base_weights(spec):
    base_sd = {k: v.clone() for k, v in spec.base().state_dict().items()}
    model = peft(spec, init_weights=False)
    state = adapter_state(model)
    unmerged = run_eval(model, spec)
    model.merge_adapter()
    layers = loca_layers(model)
    assert all(layer.merged for layer in layers.values())
    for n, layer in layers.items():
        c, loc, s = state[n]
        w = layer.get_base_layer().weight
        d_out, d_in = layer.out_features, layer.in_features
        dw = dense_dw(c, loc[0], loc[1], d_out, d_in, s)
        dw = dw.T if spec.fan_in_fan_out else dw
        assert_close(w, base_sd[f"{n}.weight"].double() + dw, atol=1e-6)
    merged_out = run_eval(model, spec)
    assert_close(merged_out, unmerged, atol=1e-5)

    # merging twice is a no-op (with a warning)
    weights_once = {n: layer.get_base_layer().weight.clone() for n, layer in layers.items()}
    with pytest.warns(UserWarning, match="[Aa]lready"):
        model.merge_adapter()
    for n, layer in layers.items():
        assert torch.equal(layer.get_base_layer().weight, weights_once[n])
        assert layer.merged_adapters == ["default"]

    model.unmerge_adapter()
    assert not any(layer.merged for layer in layers.values())
    for n, layer in layers.items():
        assert_close(layer.get_base_layer().weight, base_sd[f"{n}.weight"], atol=1e-6)
    assert_close(run_eval(model, spec), unmerged, atol=1e-5)


def test_safe_merge(spec):
    model = peft(spec, init_weights=False)
    unmerged = run_eval(model, spec)
    merged = model.merge_and_unload(safe_merge=True)
    assert_close(run_eval(merged, spec), unmerged, atol=1e-5)


# PEFT's promise for a safe merge of a broken adapter (the same text in lora, vblora, ...)
BROKEN_ADAPTER = re.escape("NaNs detected in the merged weights. The adapter default seems to be broken")


def test_safe_merge_nan_raises(spec):
    model = peft(spec, init_weights=False)
    name, layer = next(iter(loca_layers(model).items()))
    w0 = layer.get_base_layer().weight.clone()
    with torch.no_grad():
        layer.loca_coefficients["default"][0] = float("nan")
    with pytest.raises(ValueError, match=BROKEN_ADAPTER):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(layer.get_base_layer().weight, w0)
    assert not layer.merged


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_locations_raise_a_clear_error(value):
    # e.g. after an optimizer step on NaN gradients: a ValueError naming the layer and the adapter,
    # not an IndexError (NaN) or a silent move to the border (Inf)
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False)
    layer = loca_layers(model)["lin1"]
    run_eval(model, spec)  # a forward before the corruption must not hide it (cached checks)
    with torch.no_grad():
        layer.loca_locations["default"][1, 2] = value
    clear = r"lin1.*'default'.*(NaN|Inf)|'default'.*lin1.*(NaN|Inf)"
    with pytest.raises(ValueError, match=clear):
        run_eval(model, spec)
    model.train()
    with pytest.raises(ValueError, match=clear):
        run(model, spec)
    with pytest.raises(ValueError, match=clear):
        layer.get_delta_weight("default")

    w0 = layer.get_base_layer().weight.clone()
    with pytest.raises(ValueError, match=BROKEN_ADAPTER):
        model.merge_adapter(safe_merge=True)
    with pytest.raises(ValueError, match=clear):
        model.merge_adapter()
    assert not layer.merged and torch.equal(layer.get_base_layer().weight, w0)


def test_merge_with_scale_and_two_adapters():
    spec = SPECS["bert"]
    model = peft(spec, init_weights=False)
    model.add_adapter("other", spec.config(init_weights=False, random_loc_seed=3))
    for layer in loca_layers(model).values():
        layer.set_scale("other", 0.5)
    ref = reference_output(spec, [(adapter_state(model, "default"), 1.0), (adapter_state(model, "other"), 0.5)])
    model.base_model.set_adapter(["default", "other"])
    assert_close(run_eval(model, spec), ref)
    model.merge_adapter(["default", "other"])
    assert_close(run_eval(model, spec), ref)
    model.unmerge_adapter()
    assert_close(run_eval(model, spec), ref)


# ----------------------------------------------------------------------------------------------------
# 7. training only touches adapter parameters


def test_training_changes_only_adapter_params(spec):
    model = peft(spec)  # zero coefficients: the realistic start
    model.train()
    base_before = {k: v.clone() for k, v in get_base_model_state_dict(model).items()}
    schedule = LoCASchedule(model, coefficient_steps=1, location_steps=1, location_training_steps=4)
    optimizer = torch.optim.AdamW(schedule.parameter_groups(lr=1e-2, weight_decay=1e-2, location_lr=0.2))
    layers = loca_layers(model)

    def snapshot():
        return (
            {n: layer.loca_coefficients["default"].detach().clone() for n, layer in layers.items()},
            {n: layer.loca_locations["default"].detach().clone() for n, layer in layers.items()},
        )

    target = None
    phases = []
    for step in range(4):
        phases.append(schedule.phase())
        coef0, loc0 = snapshot()
        out = run(model, spec)
        if target is None:
            target = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
        ((out - target) ** 2).mean().backward()
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        coef1, loc1 = snapshot()
        coef_changed = all(not torch.equal(coef0[n], coef1[n]) for n in layers)
        loc_changed = all(not torch.equal(loc0[n], loc1[n]) for n in layers)
        coef_same = all(torch.equal(coef0[n], coef1[n]) for n in layers)
        loc_same = all(torch.equal(loc0[n], loc1[n]) for n in layers)
        if phases[-1] == "coefficients":
            assert coef_changed and loc_same, step
        else:
            assert phases[-1] == "locations"
            assert loc_changed and coef_same, step
            for layer in layers.values():
                p = layer.loca_locations["default"]
                assert 0.0 <= p.min().item() and p.max().item() <= 1.0
    assert phases == ["coefficients", "locations", "coefficients", "locations"]
    # T_s reached: locations frozen
    assert all(layer.locations_frozen("default") for layer in layers.values())
    # location steps moved integer locations somewhere (lr 0.2 on [0, 1]-scaled points)
    init = [layer.get_locations("default") for layer in loca_layers(peft(spec)).values()]
    assert any(not torch.equal(a, layer.get_locations("default")) for a, layer in zip(init, layers.values()))
    # the forward uses the trained state
    assert_close(run_eval(model, spec), reference_output(spec, [(adapter_state(model), 1.0)]))

    base_after = get_base_model_state_dict(model)
    assert base_before.keys() == base_after.keys()
    for k in base_before:
        assert torch.equal(base_before[k], base_after[k]), k
    for n, p in model.named_parameters():
        if "loca_" not in n:
            assert not p.requires_grad and p.grad is None, n


# ----------------------------------------------------------------------------------------------------
# 8. half precision


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_base(spec, dtype):
    base = spec.base().to(dtype)
    with torch.no_grad():
        base_out = run(base, spec, dtype=dtype)
    model = get_peft_model(base, spec.config(init_weights=False))
    for layer in loca_layers(model).values():
        assert layer.loca_coefficients["default"].dtype == torch.float32
        assert layer.loca_locations["default"].dtype == torch.float32
        assert layer.get_base_layer().weight.dtype == dtype
    out = run_eval(model, spec, dtype=dtype)
    assert out.dtype == base_out.dtype == dtype
    assert torch.isfinite(out).all()
    ref = reference_output(spec, [(adapter_state(model), 1.0)])
    assert_close(out, ref, atol=0.1, rtol=0.1)
    # backward in half precision: float32 gradients on the adapter
    model.train()
    run(model, spec, dtype=dtype).float().pow(2).mean().backward()
    for layer in loca_layers(model).values():
        g = layer.loca_coefficients["default"].grad
        assert g is not None and g.dtype == torch.float32 and torch.isfinite(g).all()
        assert layer.loca_locations["default"].grad.dtype == torch.float32
    # merging keeps the base dtype
    merged = model.merge_and_unload()
    assert all(p.dtype == dtype for p in merged.parameters())


@pytest.mark.parametrize("autocast", [True, False])
def test_autocast_adapter_dtype(autocast, tmp_path):
    # PEFT's rule (the same for LoRA, checked here): adapter weights in float32 by default, in the
    # base layer's dtype with autocast_adapter_dtype=False. LoCA applies it to the coefficients; the
    # [0, 1]-scaled locations stay float32 (bfloat16 cannot represent i / (d - 1)).
    from peft import LoraConfig

    dtype = torch.bfloat16
    expected_dtype = torch.float32 if autocast else dtype
    spec = SPECS["mlp"]
    lora = get_peft_model(
        spec.base().to(dtype), LoraConfig(target_modules=["lin0", "lin1"]), autocast_adapter_dtype=autocast
    )
    assert lora.base_model.model.lin0.lora_A["default"].weight.dtype == expected_dtype

    model = get_peft_model(spec.base().to(dtype), spec.config(init_weights=False), autocast_adapter_dtype=autocast)
    model.add_adapter("other", spec.config(init_weights=False), autocast_adapter_dtype=autocast)
    layers = loca_layers(model)
    for layer in layers.values():
        for name in ("default", "other"):
            assert layer.loca_coefficients[name].dtype == expected_dtype
            assert layer.loca_coefficients[name].requires_grad == (name == "default")
            assert layer.loca_locations[name].dtype == torch.float32
    out = run_eval(model, spec, dtype=dtype)
    assert out.dtype == dtype
    assert_close(out, reference_output(spec, [(adapter_state(model), 1.0)]), atol=0.05, rtol=0.05)

    # a training step in that dtype
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run(model, spec, dtype=dtype).float().pow(2).mean().backward()
    for layer in layers.values():
        grad = layer.loca_coefficients["default"].grad
        assert grad.dtype == expected_dtype and torch.isfinite(grad).all() and grad.abs().max() > 0
    before = {n: layer.loca_coefficients["default"].detach().clone() for n, layer in layers.items()}
    optimizer.step()
    assert all(not torch.equal(before[n], layer.loca_coefficients["default"]) for n, layer in layers.items())

    # reloading follows the same rule, and the locations come back exactly
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(spec.base().to(dtype), tmp_path, autocast_adapter_dtype=autocast)
    for name, layer in loca_layers(loaded).items():
        assert layer.loca_coefficients["default"].dtype == expected_dtype
        assert torch.equal(layer.get_locations("default"), integer_locations(layers[name], "default"))


@pytest.mark.parametrize("cast", ["to", "half"])
def test_casting_after_injection_keeps_locations(cast):
    # `model.to(torch.bfloat16)` after adding the adapter (as diffusers training scripts may do)
    # must not move the locations: i / (d - 1) is not representable in half precision for real sizes
    class Wide(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(640, 1280)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    model = get_peft_model(Wide(), LoCAConfig(n_frequency=64, target_modules=["proj"], init_weights=False))
    layer = model.base_model.model.proj
    before = integer_locations(layer, "default")
    model = model.to(torch.bfloat16) if cast == "to" else model.half()
    dtype = torch.bfloat16 if cast == "to" else torch.float16
    assert layer.get_base_layer().weight.dtype == dtype
    assert layer.loca_locations["default"].dtype == torch.float32
    assert torch.equal(integer_locations(layer, "default"), before)
    assert torch.equal(layer.get_locations("default"), before)
    x = torch.randn(3, 640, dtype=dtype)
    with torch.no_grad():
        assert model(x).dtype == dtype


# ----------------------------------------------------------------------------------------------------
# 9. disabling and deleting


def test_disable_adapter(spec):
    base = base_output(spec)
    model = peft(spec, init_weights=False)
    adapted = run_eval(model, spec)
    with model.disable_adapter():
        assert torch.equal(run_eval(model, spec), base)
    assert torch.equal(run_eval(model, spec), adapted)
    # disabled while merged: unmerges and gives the base output
    model.merge_adapter()
    with model.disable_adapter():
        assert_close(run_eval(model, spec), base, atol=1e-5)


def test_delete_adapter(spec):
    model = peft(spec, init_weights=False)
    base = base_output(spec)
    model.add_adapter("other", spec.config(init_weights=False, random_loc_seed=3))
    for layer in loca_layers(model).values():
        layer.freeze_locations("other")  # also populate the frozen-location buffer
    model.delete_adapter("other")
    assert "other" not in model.peft_config
    for layer in loca_layers(model).values():
        for attr in LoCALayer.adapter_layer_names + LoCALayer.other_param_names:
            assert "other" not in getattr(layer, attr), attr
        assert "default" in layer.loca_coefficients
    assert not any(".other" in k for k in model.state_dict())

    model.delete_adapter("default")
    for layer in loca_layers(model).values():
        for attr in LoCALayer.adapter_layer_names + LoCALayer.other_param_names:
            assert len(getattr(layer, attr)) == 0, attr
    # (PeftModel.forward itself needs an adapter config; the wrapped model runs on the base layers)
    assert torch.equal(run_eval(model.base_model.model, spec), base)


# ----------------------------------------------------------------------------------------------------
# 10. base model state dict


def test_base_model_state_dict(spec):
    original = spec.base().state_dict()
    model = peft(spec, init_weights=False)
    sd = get_base_model_state_dict(model)
    assert sd.keys() == original.keys()
    for k in original:
        assert torch.equal(sd[k], original[k]), k
    unloaded = model.merge_and_unload()
    assert unloaded.state_dict().keys() == original.keys()
    unloaded2 = peft(spec, init_weights=False).unload()
    assert unloaded2.state_dict().keys() == original.keys()
    for k, v in unloaded2.state_dict().items():
        assert torch.equal(v, original[k]), k


# ----------------------------------------------------------------------------------------------------
# 11. diffusers integration


def test_diffusers_add_adapter_set_adapters_and_scale():
    spec = SPECS["unet"]
    base = base_output(spec)
    unet = spec.base()
    unet.add_adapter(spec.config(init_weights=False), adapter_name="a")
    unet.add_adapter(spec.config(init_weights=False, random_loc_seed=99, scaling=2.0), adapter_name="b")
    assert loca_layers(unet)
    state_a, state_b = adapter_state(unet, "a"), adapter_state(unet, "b")

    unet.set_adapters(["a", "b"], [1.0, 0.5])
    ref_ab = reference_output(spec, [(state_a, 1.0), (state_b, 0.5)])
    assert_close(run_eval(unet, spec), ref_ab, atol=2e-5)

    # the scale is linear in each adapter's contribution
    unet.set_adapters(["a", "b"], [1.0, 0.0])
    out_a = run_eval(unet, spec)
    unet.set_adapters(["a", "b"], [0.0, 0.5])
    out_b = run_eval(unet, spec)
    assert_close(out_a, reference_output(spec, [(state_a, 1.0)]), atol=2e-5)
    assert_close(out_b, reference_output(spec, [(state_b, 0.5)]), atol=2e-5)

    # cross_attention_kwargs={"scale": s} equals set_adapters weight s for a single adapter
    unet.set_adapters("a", 1.0)
    via_kwargs = run_eval(unet, spec, cross_attention_kwargs={"scale": 0.5})
    after = run_eval(unet, spec)  # the scale is undone after the call
    assert_close(after, reference_output(spec, [(state_a, 1.0)]), atol=2e-5)
    unet.set_adapters("a", 0.5)
    assert_close(via_kwargs, run_eval(unet, spec), atol=1e-6)
    assert_close(via_kwargs, reference_output(spec, [(state_a, 0.5)]), atol=2e-5)

    unet.disable_adapters()
    assert torch.equal(run_eval(unet, spec), base)
    unet.enable_adapters()
    assert_close(run_eval(unet, spec), reference_output(spec, [(state_a, 0.5)]), atol=2e-5)

    # training mode uses the same scales
    unet.train()
    assert_close(run(unet, spec).detach(), reference_output(spec, [(state_a, 0.5)]), atol=2e-5)

    # scale 0 gives the base output; diffusers then resets each active adapter's scale with
    # set_scale(name, 1.0) (its documented behaviour for 0, the same for LoRA)
    unet.eval()
    assert_close(run_eval(unet, spec, cross_attention_kwargs={"scale": 0.0}), base, atol=1e-6)
    assert_close(run_eval(unet, spec), reference_output(spec, [(state_a, 1.0)]), atol=2e-5)


def test_diffusers_save_load_round_trip(tmp_path):
    spec = SPECS["unet"]
    unet = spec.base()
    unet.add_adapter(spec.config(init_weights=False), adapter_name="a")
    expected = run_eval(unet, spec)
    sd = get_peft_model_state_dict(unet, adapter_name="a")
    save_file(sd, tmp_path / "w.safetensors")

    fresh = spec.base()
    fresh.add_adapter(spec.config(init_weights=False, random_loc_seed=4), adapter_name="a")
    assert not torch.allclose(run_eval(fresh, spec), expected, atol=1e-5)
    set_peft_model_state_dict(fresh, load_file(tmp_path / "w.safetensors"), adapter_name="a")
    assert torch.equal(run_eval(fresh, spec), expected)


# ----------------------------------------------------------------------------------------------------
# 12. bad input


def test_n_frequency_zero_raises():
    with pytest.raises(ValueError, match="n_frequency"):
        LoCAConfig(n_frequency=0)
    with pytest.raises(ValueError, match="n_frequency"):
        LoCAConfig(n_frequency=-3)


def test_n_frequency_too_large_names_layer():
    spec = SPECS["mlp"]
    # lin0 is 20x10 (200 entries), lin1 is 2x20 (40 entries)
    with pytest.raises(ValueError, match="lin1") as info:
        get_peft_model(spec.base(), spec.config(n_frequency=100))
    assert "lin0" not in str(info.value)
    # a per-layer override makes it fit
    model = get_peft_model(spec.base(), spec.config(n_frequency=100, n_frequency_pattern={"lin1": 40}))
    assert loca_layers(model)["lin1"].loca_coefficients["default"].shape == (40,)
    assert loca_layers(model)["lin0"].loca_coefficients["default"].shape == (100,)


def test_target_modules_matching_nothing_raises():
    spec = SPECS["mlp"]
    with pytest.raises(ValueError, match="does_not_exist"):
        get_peft_model(spec.base(), spec.config(target_modules=["does_not_exist"]))


@pytest.mark.parametrize(
    "name,target,layer_name",
    [("unet", ["conv_in"], "conv_in"), ("bert", ["word_embeddings"], "embeddings.word_embeddings")],
)
def test_unsupported_layer_type_names_layer(name, target, layer_name):
    spec = SPECS[name]
    with pytest.raises(ValueError, match=layer_name.replace(".", r"\.")):
        get_peft_model(spec.base(), spec.config(target_modules=target))


@pytest.mark.parametrize("hidden_saved,hidden_loaded", [(20, 24), (24, 20)])
def test_loading_adapter_of_other_width_raises(tmp_path, hidden_saved, hidden_loaded):
    spec = SPECS["mlp"]
    model = get_peft_model(spec.base(hidden=hidden_saved), spec.config(init_weights=False))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="lin[01]"):
        PeftModel.from_pretrained(spec.base(hidden=hidden_loaded), tmp_path)


def test_file_without_shape_entries_still_loads(tmp_path):
    # files written before `loca_shape` was saved: coefficients and locations only
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False)
    expected = run_eval(model, spec)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    save_file({k: v for k, v in load_file(path).items() if not k.endswith("loca_shape")}, path)
    assert torch.equal(run_eval(PeftModel.from_pretrained(spec.base(), tmp_path), spec), expected)


def _edit_saved_locations(tmp_path, edit):
    """Save an adapter and apply ``edit`` to lin0's saved locations; returns (spec, dir, saved model)."""
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False)
    model.save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    sd = load_file(path)
    key = f"{PEFT_PREFIX}lin0.loca_locations"
    sd[key] = edit(sd[key])
    save_file(sd, path)
    return spec, tmp_path, model


def test_out_of_range_locations_raise(tmp_path):
    def edit(loc):
        loc = loc.clone()
        loc[0, 0] = 20  # lin0 is 20x10: rows 0..19
        return loc

    spec, path, _ = _edit_saved_locations(tmp_path, edit)
    with pytest.raises(ValueError, match="lin0.*out of range"):
        PeftModel.from_pretrained(spec.base(), path)


def test_negative_locations_raise(tmp_path):
    def edit(loc):
        loc = loc.clone()
        loc[1, 3] = -1
        return loc

    spec, path, _ = _edit_saved_locations(tmp_path, edit)
    with pytest.raises(ValueError, match="lin0"):
        PeftModel.from_pretrained(spec.base(), path)


def test_float_non_integer_locations_raise(tmp_path):
    spec, path, _ = _edit_saved_locations(tmp_path, lambda loc: loc.float() + 0.25)
    with pytest.raises(ValueError, match="lin0.*integer"):
        PeftModel.from_pretrained(spec.base(), path)


def test_float_integer_valued_locations_load(tmp_path):
    spec, path, saved = _edit_saved_locations(tmp_path, lambda loc: loc.float())
    loaded = PeftModel.from_pretrained(spec.base(), path)
    assert torch.equal(run_eval(loaded, spec), run_eval(saved, spec))


def test_wrong_location_shape_raises(tmp_path):
    spec, path, _ = _edit_saved_locations(tmp_path, lambda loc: loc[:, :-1].contiguous())
    with pytest.raises(ValueError, match="lin0"):
        PeftModel.from_pretrained(spec.base(), path)


def test_missing_layer_in_file_raises(tmp_path):
    spec = SPECS["mlp"]
    peft(spec, init_weights=False).save_pretrained(tmp_path)
    path = tmp_path / "adapter_model.safetensors"
    sd = {k: v for k, v in load_file(path).items() if ".lin1." not in k}
    save_file(sd, path)
    with pytest.raises(ValueError, match="lin1"):
        PeftModel.from_pretrained(spec.base(), tmp_path)


# ----------------------------------------------------------------------------------------------------
# extras from peft's list: GPT-2 fan_in_fan_out auto-fix, modules_to_save


def test_gpt2_conv1d_sets_fan_in_fan_out_with_warning():
    spec = SPECS["gpt2"]
    config = LoCAConfig(n_frequency=16, target_modules=["c_attn"], init_weights=False)
    with pytest.warns(UserWarning, match="fan_in_fan_out"):
        model = get_peft_model(spec.base(), config)
    assert model.peft_config["default"].fan_in_fan_out
    assert_close(run_eval(model, spec), reference_output(spec, [(adapter_state(model), 1.0)]))


def test_modules_to_save(tmp_path):
    spec = SPECS["mlp"]
    config = spec.config(target_modules=["lin0"], modules_to_save=["lin1"], init_weights=False)
    model = get_peft_model(spec.base(), config)
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    run(model, spec).pow(2).mean().backward()
    opt.step()
    expected = run_eval(model, spec)
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(spec.base(), tmp_path)
    assert torch.equal(run_eval(loaded, spec), expected)


def test_mixed_adapter_batch_raises():
    # PeftModel.forward strips `adapter_names`; LoCA must not silently ignore a per-sample request
    spec = SPECS["mlp"]
    model = peft(spec, init_weights=False).eval()
    with pytest.raises(ValueError, match="adapter_names"):
        model(**spec.inputs(), adapter_names=["default"] * 4)
    run_eval(model, spec)  # and without it the forward works
