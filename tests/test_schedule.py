"""The alternating schedule: which parameters change in which step, freezing at T_s, resume."""

import copy

import pytest
import torch
import torch.nn as nn
from peft import get_peft_model

from loca_diffusion import LoCAConfig, LoCALayer, LoCASchedule

from _models import MLP


def make(seed=0, **config):
    torch.manual_seed(seed)
    config.setdefault("n_frequency", 10)
    model = get_peft_model(
        MLP(d_in=12, hidden=16, d_out=6, activation=nn.Tanh()),
        LoCAConfig(target_modules=["lin0", "lin1"], init_weights=False, **config),
    )
    return model


def snapshot(model):
    coefs = {n: p.detach().clone() for n, p in model.named_parameters() if "loca_coefficients" in n}
    locs = {n: p.detach().clone() for n, p in model.named_parameters() if "loca_locations" in n}
    return coefs, locs


def changed(before, after):
    return any(not torch.equal(before[k], after[k]) for k in before)


def train_step(model, schedule, optimizer, x, y):
    loss = ((model(x) - y) ** 2).mean()
    loss.backward()
    schedule.mask_gradients()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()


DATA = (
    torch.randn(32, 12, generator=torch.Generator().manual_seed(1)),
    torch.randn(32, 6, generator=torch.Generator().manual_seed(2)),
)


def test_phases_follow_the_paper():
    model = make()
    s = LoCASchedule(model, coefficient_steps=2, location_steps=3, location_training_steps=12)
    phases = [s.phase(i) for i in range(14)]
    assert (
        phases
        == ["coefficients"] * 2 + ["locations"] * 3 + ["coefficients"] * 2 + ["locations"] * 3 + ["coefficients"] * 4
    )
    assert LoCASchedule(model, total_steps=1000).location_training_steps == 100  # 10% default
    assert LoCASchedule(model, variant="fixed").phase(0) == "coefficients"
    v2 = LoCASchedule(model, variant="alternate_throughout", coefficient_steps=1, location_steps=1)
    assert v2.phase(10**6) == "coefficients" and v2.phase(10**6 + 1) == "locations"
    assert LoCASchedule(model, variant="joint", location_training_steps=5).phase(4) == "joint"
    with pytest.raises(ValueError, match="total_steps"):
        LoCASchedule(model)
    with pytest.raises(ValueError, match="variant"):
        LoCASchedule(model, variant="sometimes", location_training_steps=3)


def test_parameter_groups():
    model = make()
    s = LoCASchedule(model, location_training_steps=5)
    groups = s.parameter_groups(lr=1e-3, weight_decay=0.01, location_lr=5e-4)
    assert [g["name"] for g in groups] == ["loca_coefficients", "loca_locations"]
    assert groups[1]["weight_decay"] == 0.0 and groups[1]["lr"] == 5e-4
    assert len(groups[0]["params"]) == 2 and len(groups[1]["params"]) == 2
    assert LoCASchedule(model, location_training_steps=5).parameter_groups(lr=1.0)[1]["lr"] == 1e-4  # config default


@pytest.mark.parametrize("optimizer_cls", [torch.optim.SGD, torch.optim.AdamW])
def test_which_parameters_change_in_which_step(optimizer_cls):
    model = make()
    s = LoCASchedule(model, coefficient_steps=2, location_steps=2, location_training_steps=6)
    opt = optimizer_cls(s.parameter_groups(lr=0.05, weight_decay=0.1, location_lr=0.2))
    x, y = DATA
    for step in range(9):
        phase = s.phase()
        before = snapshot(model)
        train_step(model, s, opt, x, y)
        after = snapshot(model)
        assert changed(before[0], after[0]) == (phase == "coefficients"), step
        assert changed(before[1], after[1]) == (phase == "locations"), step
    # frozen after T_s: integer buffers hold the locations, the parameter no longer moves
    for layer in (m for m in model.modules() if isinstance(m, LoCALayer)):
        assert layer.locations_frozen("default")
        assert layer.loca_fixed_locations["default"].dtype == torch.int64


def _loss(model, x, y) -> float:
    with torch.no_grad():
        return ((model(x) - y) ** 2).mean().item()


def brute_force_location_descent(model, x, y) -> dict:
    """-d loss / d location (``[0, 1]`` scale) per layer, by moving each coefficient one index each way."""
    out = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, LoCALayer):
            continue
        points = layer.loca_locations["default"]
        start = points.detach().clone()
        indices = layer.get_locations("default").clone()
        grad = torch.zeros(indices.shape, dtype=torch.float64)
        for axis, n in ((0, layer.out_features), (1, layer.in_features)):
            for b in range(indices.shape[1]):
                hi, lo = min(int(indices[axis, b]) + 1, n - 1), max(int(indices[axis, b]) - 1, 0)
                losses = []
                for moved_to in (hi, lo):
                    moved = indices.clone()
                    moved[axis, b] = moved_to
                    with torch.no_grad():
                        points.copy_(
                            moved.double() / torch.tensor([[layer.out_features - 1], [layer.in_features - 1]])
                        )
                    losses.append(_loss(model, x, y))
                grad[axis, b] = (losses[0] - losses[1]) / (hi - lo) * (n - 1)
        with torch.no_grad():
            points.copy_(start)
        out[name] = -grad
    return out


def test_location_steps_move_locations_in_the_descent_direction():
    torch.manual_seed(0)
    model = make(seed=3, n_frequency=4)
    s = LoCASchedule(model, coefficient_steps=1, location_steps=50, location_training_steps=51)
    opt = torch.optim.SGD(s.parameter_groups(lr=0.1, location_lr=0.05))
    x, y = DATA
    train_step(model, s, opt, x, y)  # one coefficient step: non-zero coefficients, so locations matter
    assert s.phase() == "locations"
    start_loss = _loss(model, x, y)
    start_indices = {
        n: m.get_locations("default").clone() for n, m in model.named_modules() if isinstance(m, LoCALayer)
    }
    start_points = snapshot(model)[1]
    descent = brute_force_location_descent(model, x, y)
    # one SGD location step moves the continuous locations along the brute-force descent direction
    train_step(model, s, opt, x, y)
    moves = snapshot(model)[1]
    for name, direction in descent.items():
        move = (moves[f"{name}.loca_locations.default"] - start_points[f"{name}.loca_locations.default"]).double()
        cosine = torch.nn.functional.cosine_similarity(move.flatten(), direction.flatten(), dim=0)
        assert cosine > 0.9, (name, cosine)
    # and the location phase lowers the loss by moving integer locations
    for _ in range(49):
        train_step(model, s, opt, x, y)
    assert _loss(model, x, y) < 0.99 * start_loss
    moved = [
        not torch.equal(m.get_locations("default"), start_indices[n])
        for n, m in model.named_modules()
        if isinstance(m, LoCALayer)
    ]
    assert any(moved)


def test_location_steps_keep_the_locations_in_the_unit_interval():
    # a large location step overshoots the grid; the parameter is put back on its border (0 or 1) so
    # that the next step in the other direction moves the location at once (a parameter left at
    # e.g. 7.0 would round to the border for many steps while it walks back)
    model = make(n_frequency=10)
    s = LoCASchedule(model, coefficient_steps=1, location_steps=1, location_training_steps=10)
    opt = torch.optim.SGD(s.parameter_groups(lr=0.1, location_lr=1e3))
    x, y = DATA
    train_step(model, s, opt, x, y)  # coefficients
    before = snapshot(model)[1]
    grads = {}
    ((model(x) - y) ** 2).mean().backward()
    for name, p in model.named_parameters():
        if "loca_locations" in name:
            grads[name] = p.grad.clone()
    s.mask_gradients()
    opt.step()
    opt.zero_grad(set_to_none=True)
    s.step()
    overshoots = 0
    for name, p in model.named_parameters():
        if "loca_locations" not in name:
            continue
        unclamped = before[name] - 1e3 * grads[name]
        outside = (unclamped < 0) | (unclamped > 1)
        overshoots += int(outside.sum())
        torch.testing.assert_close(p.detach(), unclamped.clamp(0, 1))
        assert p.min() >= 0 and p.max() <= 1
    assert overshoots > 0  # the step did leave the interval: the test exercises the clamp


def test_location_grads_are_skipped_in_coefficient_phase():
    model = make()
    s = LoCASchedule(model, coefficient_steps=1, location_steps=1, location_training_steps=10)
    x, y = DATA
    ((model(x) - y) ** 2).mean().backward()
    loc_grads = [p.grad for n, p in model.named_parameters() if "loca_locations" in n]
    assert all(g is not None and torch.count_nonzero(g) == 0 for g in loc_grads)  # zeros, not None (DDP)
    model.zero_grad(set_to_none=True)
    s.step()  # location phase
    ((model(x) - y) ** 2).mean().backward()
    assert all(torch.count_nonzero(p.grad) > 0 for n, p in model.named_parameters() if "loca_locations" in n)


def test_resume_mid_schedule_matches_uninterrupted_run(tmp_path):
    x, y = DATA

    def build():
        model = make()
        s = LoCASchedule(model, coefficient_steps=2, location_steps=3, location_training_steps=8)
        opt = torch.optim.AdamW(s.parameter_groups(lr=0.05, weight_decay=0.01, location_lr=0.1))
        return model, s, opt

    model, s, opt = build()
    for _ in range(12):
        train_step(model, s, opt, x, y)
    reference = snapshot(model)

    model, s, opt = build()
    for _ in range(4):  # stop inside a location phase
        train_step(model, s, opt, x, y)
    assert s.phase() == "locations"
    torch.save(
        {"model": model.state_dict(), "opt": opt.state_dict(), "schedule": s.state_dict()}, tmp_path / "ckpt.pt"
    )

    model, s, opt = build()
    state = torch.load(tmp_path / "ckpt.pt")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    s.load_state_dict(state["schedule"])
    assert s.step_count == 4 and s.phase() == "locations"
    for _ in range(8):
        train_step(model, s, opt, x, y)
    resumed = snapshot(model)
    for a, b in zip(reference, resumed):
        for k in a:
            torch.testing.assert_close(a[k], b[k])


def test_resume_after_freeze_restores_frozen_locations(tmp_path):
    x, y = DATA
    model = make()
    s = LoCASchedule(model, coefficient_steps=1, location_steps=1, location_training_steps=3)
    opt = torch.optim.SGD(s.parameter_groups(lr=0.05, location_lr=0.5))
    for _ in range(4):
        train_step(model, s, opt, x, y)
    frozen = {n: m.get_locations("default").clone() for n, m in model.named_modules() if isinstance(m, LoCALayer)}
    state = copy.deepcopy(model.state_dict())
    fresh = make()
    fresh.load_state_dict(state)
    for n, m in fresh.named_modules():
        if isinstance(m, LoCALayer):
            assert m.locations_frozen("default")
            torch.testing.assert_close(m.get_locations("default"), frozen[n])


def test_eval_cache_is_refreshed_by_mode_switch_after_data_edits():
    model = make()
    x = DATA[0]
    model.eval()
    with torch.no_grad():
        before = model(x)
        for name, p in model.named_parameters():
            if "loca_coefficients" in name:
                p.data.copy_(p.data * 3)  # like an EMA copy_to: bypasses version counters
        model.eval()
        after = model(x)
    model.train()
    with torch.no_grad():
        reference = model(x)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, reference)
