"""LoCA's layer numerics on tiny models (tests/_models.py): attributes, forward and gradients against the
dense reference (tests/_reference.py), identity at init, training, half precision.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
)
from peft.utils import get_base_model_state_dict

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig, LoCASchedule

from _models import (
    SPECS,
    base_output,
    peft,
    run,
    run_eval,
)
from _reference import (
    adapter_state,
    assert_close,
    assert_matches_in_eval_and_train,
    dense_dw,
    dense_weights,
    explicit_dct_matrix,
    integer_locations,
    loca_layers,
    reference_call,
    reference_output,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


def test_dct_reference_is_orthonormal_dct2():
    # the reference basis itself, against scipy
    from scipy.fft import dct

    for n in (2, 5, 16):
        assert torch.allclose(
            explicit_dct_matrix(n), torch.from_numpy(dct(torch.eye(n).double().numpy(), norm="ortho", axis=0))
        )


# ----------------------------------------------------------------------------------------------------
# 1. attributes


class _FSDPLike(nn.Module):
    """Stands in for FSDP / activation-checkpoint wrappers: the wrapped module under ``_fsdp_wrapped_module``."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._fsdp_wrapped_module = module

    def forward(self, *args, **kwargs):
        return self._fsdp_wrapped_module(*args, **kwargs)


def test_iter_loca_layers_sees_through_ddp_and_fsdp_wrappers():
    from loca_diffusion import iter_loca_layers
    from loca_diffusion.tuners.loca.utils import get_wrapped_submodule, set_wrapped_submodule

    model = peft(SPECS["mlp"], init_weights=False)
    plain = [(name, id(layer)) for name, layer in iter_loca_layers(model)]
    # the names are the ones the saved adapter file uses
    saved = {k.removesuffix(".loca_coefficients") for k in get_peft_model_state_dict(model) if "coefficients" in k}
    assert {name for name, _ in plain} == saved == {"base_model.model.lin0", "base_model.model.lin1"}

    inner = model.base_model.model
    inner.lin0 = _FSDPLike(inner.lin0)  # a nested wrapper, as FSDP's auto-wrap policy makes them
    wrapped = nn.DataParallel(_FSDPLike(model))  # CPU DataParallel just calls the module
    assert [(name, id(layer)) for name, layer in iter_loca_layers(wrapped)] == plain
    for name, layer in iter_loca_layers(wrapped):
        assert get_wrapped_submodule(wrapped, name) is layer
    # replacing a layer goes inside the wrapper around it
    replacement = nn.Linear(10, 20)
    set_wrapped_submodule(wrapped, "base_model.model.lin0", replacement)
    assert isinstance(inner.lin0, _FSDPLike) and inner.lin0._fsdp_wrapped_module is replacement

    # the schedule finds the same layers (and the config) through the wrappers
    schedule = LoCASchedule(nn.DataParallel(model), total_steps=10)
    assert [id(p) for p in schedule.coefficient_parameters()] == [
        id(layer.loca_coefficients["default"]) for _, layer in iter_loca_layers(model)
    ]
    assert schedule.coefficient_steps == model.peft_config["default"].coefficient_steps


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
    assert_matches_in_eval_and_train(model, spec, ref)


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
    ref = reference_call(base, spec, dense_weights(base, [(diff_state, 1.0)], differentiable=True))
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
