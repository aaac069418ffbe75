"""LoCA's bad-input behaviour: configs, layer types, adapter files that do not fit the model.

Each error must name the layer / file / value at fault.
"""

from __future__ import annotations

import pytest
import torch
from peft import (
    PeftModel,
    get_peft_model,
)
from safetensors.torch import load_file, save_file

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig

from _models import SPECS, peft, run_eval
from _reference import PEFT_PREFIX, loca_layers

pytestmark = pytest.mark.usefixtures("torch_single_thread")


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
