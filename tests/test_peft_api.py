"""LoCA through the PEFT API (after peft's tests/test_custom_models.py): save / load, injection, several
adapters, merging, disabling, deleting, the diffusers integration, checked against tests/_reference.py.
"""

from __future__ import annotations

import copy
import json
import re

import pytest
import torch
from peft import (
    PeftModel,
    get_peft_model,
    get_peft_model_state_dict,
    inject_adapter_in_model,
    set_peft_model_state_dict,
)
from peft.utils import get_base_model_state_dict
from safetensors.torch import load_file, save_file

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig, LoCALayer, LoCASchedule

from _models import (
    SPECS,
    base_output,
    peft,
    run,
    run_eval,
)
from _reference import (
    PEFT_PREFIX,
    adapter_state,
    assert_close,
    assert_matches_in_eval_and_train,
    dense_dw,
    integer_locations,
    loca_layers,
    reference_output,
    state_from_file,
)

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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
    attrs = ("loca_coefficients", "loca_locations", "loca_shape", "loca_continuous_locations", "loca_frozen")
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
        # the exact continuous parameter, for resuming training (tests/test_resume_state.py)
        assert torch.equal(sd[f"{PEFT_PREFIX}{n}.loca_continuous_locations"], layer.loca_locations["default"])
        assert sd[f"{PEFT_PREFIX}{n}.loca_frozen"].tolist() == [0]

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
        # resuming training keeps the trained state: locations frozen at T_s stay frozen (tests/test_resume_state.py)
        assert layer.locations_frozen("default") == (method == "loca_frozen")
        assert layer.loca_locations["default"].requires_grad


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
    suffixes = (".loca_coefficients", ".loca_locations", ".loca_shape", ".loca_continuous_locations", ".loca_frozen")
    assert sd and all(k.endswith(suffixes) for k in sd)
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
    assert_matches_in_eval_and_train(model, spec, ref)


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
