"""Issue 20, points 1 and 2: a saved adapter restores exactly the trained state (continuous locations, frozen
flag), files of the earlier layout still load, and locations stay on the grid under any optimizer."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model, get_peft_model_state_dict
from safetensors.torch import load_file, save_file

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCASchedule

from _models import SPECS, peft, run, run_eval
from _reference import PEFT_PREFIX, loca_layers

pytestmark = pytest.mark.usefixtures("torch_single_thread")

SPEC = SPECS["mlp"]


def _plain_steps(model, steps, optimizer):
    """Plain training: no schedule, both coefficients and locations in the optimizer."""
    model.train()
    for _ in range(steps):
        run(model, SPEC).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return model


def _trained(mode: str):
    """A model whose continuous locations are off the integer grid points (what rounding alone cannot restore)."""
    torch.manual_seed(0)
    model = peft(SPEC, init_weights=False)
    _plain_steps(model, 5, torch.optim.AdamW(model.parameters(), lr=3e-2))
    if mode == "frozen":
        for layer in loca_layers(model).values():
            layer.freeze_locations("default")
    for layer in loca_layers(model).values():
        points = layer.loca_locations["default"].detach()
        sizes = torch.tensor([[layer.out_features - 1], [layer.in_features - 1]])
        # the test is only meaningful if some locations sit between grid points
        assert not torch.equal(points * sizes, (points * sizes).round())
    return model


def _assert_same_state(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("safe", [True, False])
@pytest.mark.parametrize("mode", ["trainable", "frozen", "inference"])
def test_state_dict_is_equal_after_save_and_reload(mode, safe, tmp_path):
    model = _trained("frozen" if mode == "frozen" else "trainable")
    if mode == "inference":  # an adapter loaded for inference, saved again
        model.save_pretrained(tmp_path / "first", safe_serialization=safe)
        model = PeftModel.from_pretrained(SPEC.base(), tmp_path / "first")
    expected_out = run_eval(model, SPEC)
    before_full = {k: v.clone() for k, v in model.state_dict().items()}
    before_adapter = {k: v.clone() for k, v in get_peft_model_state_dict(model).items()}
    model.save_pretrained(tmp_path / "saved", safe_serialization=safe)

    reloaded = PeftModel.from_pretrained(SPEC.base(), tmp_path / "saved", is_trainable=mode != "inference")
    _assert_same_state(before_full, reloaded.state_dict())
    _assert_same_state(before_adapter, get_peft_model_state_dict(reloaded))
    assert torch.equal(run_eval(reloaded, SPEC), expected_out)
    for name, layer in loca_layers(reloaded).items():
        assert layer.locations_frozen("default") == (mode != "trainable")
        assert torch.equal(layer.get_locations("default"), loca_layers(model)[name].get_locations("default"))


def test_resuming_from_an_adapter_folder_continues_the_same_run(tmp_path):
    # Stateless SGD: 3 steps, save, reload trainable, 3 more steps must end where 6 uninterrupted steps end.
    model = _trained("trainable")
    uninterrupted = copy.deepcopy(model)
    _plain_steps(uninterrupted, 6, torch.optim.SGD(uninterrupted.parameters(), lr=0.5))

    _plain_steps(model, 3, torch.optim.SGD(model.parameters(), lr=0.5))
    model.save_pretrained(tmp_path)
    resumed = PeftModel.from_pretrained(SPEC.base(), tmp_path, is_trainable=True)
    _plain_steps(resumed, 3, torch.optim.SGD([p for p in resumed.parameters() if p.requires_grad], lr=0.5))
    _assert_same_state(uninterrupted.state_dict(), resumed.state_dict())


def test_files_of_the_earlier_layout_still_load(tmp_path):
    # earlier versions wrote coefficients, integer locations and the shape only
    model = _trained("trainable")
    expected = run_eval(model, SPEC)
    model.save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    assert any(k.endswith(".loca_continuous_locations") for k in tensors)
    old = {k: v for k, v in tensors.items() if not k.endswith((".loca_continuous_locations", ".loca_frozen"))}
    save_file(old, str(file))
    for trainable in (False, True):
        loaded = PeftModel.from_pretrained(SPEC.base(), tmp_path, is_trainable=trainable)
        assert torch.equal(run_eval(loaded, SPEC), expected)
        for name, layer in loca_layers(loaded).items():
            ints = old[f"{PEFT_PREFIX}{name}.loca_locations"]
            assert torch.equal(layer.get_locations("default"), ints)
            assert layer.locations_frozen("default") == (not trainable)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd, k: sd.__setitem__(k, sd[k] + 2.0), "inside \\[0, 1\\]"),
        (lambda sd, k: sd.__setitem__(k, 1.0 - sd[k]), "do not round to the saved integer"),
        (lambda sd, k: sd.__setitem__(k, sd[k][:, :3]), "continuous locations have shape"),
    ],
)
def test_inconsistent_continuous_locations_are_refused(edit, message, tmp_path):
    _trained("trainable").save_pretrained(tmp_path)
    file = tmp_path / "adapter_model.safetensors"
    tensors = load_file(file)
    key = f"{PEFT_PREFIX}lin0.loca_continuous_locations"
    edit(tensors, key)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(file))
    with pytest.raises(ValueError, match=f"layer 'lin0'.*{message}"):
        PeftModel.from_pretrained(SPEC.base(), tmp_path, is_trainable=True)


# ----------------------------------------------------------------------------------------------------
# point 2: locations stay on the grid under any optimizer


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_plain_optimizers_keep_locations_on_the_grid(optimizer):
    # The case: AdamW at lr 1e-2 with weight decay, 300 steps, no LoCASchedule, the locations in the same
    # group as everything else. The reference is projected gradient descent written out: clamp after every step.
    torch.manual_seed(0)
    model = get_peft_model(SPEC.base(), SPEC.config(init_weights=False, n_frequency=20))
    reference = copy.deepcopy(model)

    def make(m):
        params = [p for p in m.parameters() if p.requires_grad]
        if optimizer == "adamw":
            return torch.optim.AdamW(params, lr=1e-2, weight_decay=1e-2)
        locations = [p for n, p in m.named_parameters() if "loca_locations" in n]
        others = [p for n, p in m.named_parameters() if p.requires_grad and "loca_locations" not in n]
        return torch.optim.SGD([{"params": others, "lr": 0.05}, {"params": locations, "lr": 1.0}], momentum=0.5)

    opt, ref_opt = make(model), make(reference)
    target = torch.randn(4, 2, generator=torch.Generator().manual_seed(3))
    model.train()
    reference.train()
    ranges = []
    for _ in range(300):
        (run(model, SPEC) - target).pow(2).mean().backward()
        # every value the forward and its gradients used lies on the grid
        points = torch.cat([layer.loca_locations["default"].detach().flatten() for layer in
                            loca_layers(model).values()])
        ranges.append((float(points.min()), float(points.max())))
        opt.step()
        opt.zero_grad(set_to_none=True)

        (run(reference, SPEC) - target).pow(2).mean().backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for layer in loca_layers(reference).values():
                layer.loca_locations["default"].clamp_(0.0, 1.0)
    assert min(r[0] for r in ranges) >= 0.0 and max(r[1] for r in ranges) <= 1.0
    model.eval()
    run_eval(model, SPEC)  # a forward projects what the last step moved
    for name, layer in loca_layers(model).items():
        torch.testing.assert_close(
            layer.loca_locations["default"].detach(),
            loca_layers(reference)[name].loca_locations["default"].detach(),
            rtol=0,
            atol=1e-6,
        )
    # the run did push locations off the grid (the projection was exercised), and some sit on its border
    on_border = sum(
        int(((layer.loca_locations["default"] == 0) | (layer.loca_locations["default"] == 1)).sum())
        for layer in loca_layers(model).values()
    )
    assert on_border > 0


def test_saving_right_after_an_optimizer_step_saves_projected_locations(tmp_path):
    model = get_peft_model(SPEC.base(), SPEC.config(init_weights=False))
    layer = loca_layers(model)["lin0"]
    with torch.no_grad():  # what an optimizer step with a huge learning rate does
        layer.loca_locations["default"].add_(5.0)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    assert torch.equal(tensors[f"{PEFT_PREFIX}lin0.loca_continuous_locations"], torch.ones(2, 8))
    assert torch.equal(tensors[f"{PEFT_PREFIX}lin0.loca_locations"][0], torch.full((8,), 19))


def test_schedule_free_training_is_joint_updates():
    # Without LoCASchedule every step updates coefficients and locations together (the paper's V3, joint updates)
    # and the locations never freeze: the same trajectory as LoCASchedule(variant="joint") with no T_s reached.
    torch.manual_seed(0)
    plain = get_peft_model(SPEC.base(), SPEC.config(init_weights=False))
    joint = copy.deepcopy(plain)
    schedule = LoCASchedule(joint, variant="joint", location_training_steps=1000)
    opt_plain = torch.optim.SGD([p for p in plain.parameters() if p.requires_grad], lr=0.3)
    opt_joint = torch.optim.SGD(schedule.parameter_groups(lr=0.3, location_lr=0.3))
    for _ in range(10):
        _plain_steps(plain, 1, opt_plain)
        joint.train()
        run(joint, SPEC).pow(2).mean().backward()
        schedule.mask_gradients()
        opt_joint.step()
        opt_joint.zero_grad(set_to_none=True)
        schedule.step()
    run_eval(plain, SPEC)
    _assert_same_state(joint.state_dict(), plain.state_dict())
