"""Issue 20, point 5: gradient checkpointing gives the same loss and gradients as a plain step, from the first step,
for every DCT strategy, with sibling layers sharing the input DCT: a diffusers UNet, a transformers model and the
InstructPix2Pix training script."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import get_peft_model

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCASchedule
from loca_diffusion.tuners.loca import ops

from _models import SPECS, run

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def shared_dct_hits(monkeypatch):
    """Counts the calls of ``shared_input_dct`` answered from an earlier sibling's DCT."""
    hits = {"hits": 0, "calls": 0}
    original = ops.shared_input_dct

    def spy(x, method):
        before = {id(entry[3]) for entry in ops._shared["entries"]}
        value = original(x, method)
        hits["calls"] += 1
        hits["hits"] += id(value) in before
        return value

    monkeypatch.setattr(ops, "shared_input_dct", spy)
    return hits


def _step(model, spec, schedule, optimizer):
    """One training step; returns the loss and every LoCA gradient (and the input-side gradients' effect through
    the coefficients of upstream layers), before the optimizer moves anything."""
    ops.clear_shared_input_dct()
    loss = run(model, spec).float().pow(2).mean()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    schedule.mask_gradients()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    schedule.step()
    return loss.detach(), grads


def _compare_runs(plain, checkpointed, spec, steps=4):
    """Train both with the alternating schedule (location and coefficient phases, moving locations) and compare
    every step's loss and gradients."""
    runs = []
    for model in (plain, checkpointed):
        model.train()
        schedule = LoCASchedule(model, coefficient_steps=1, location_steps=1, location_training_steps=3)
        optimizer = torch.optim.SGD(schedule.parameter_groups(lr=1e-2, location_lr=0.3))
        runs.append([_step(model, spec, schedule, optimizer) for _ in range(steps)])
    for step, ((loss, grads), (ckpt_loss, ckpt_grads)) in enumerate(zip(*runs)):
        torch.testing.assert_close(ckpt_loss, loss, rtol=1e-5, atol=1e-7, msg=f"loss at step {step}")
        assert set(ckpt_grads) == set(grads) and any("loca_locations" in n for n in grads)
        for name in grads:
            torch.testing.assert_close(ckpt_grads[name], grads[name], rtol=1e-4, atol=1e-6, msg=f"{name} step {step}")


@pytest.mark.parametrize("strategy", ["weight", "hybrid", "activation", "auto"])
def test_diffusers_unet_enable_gradient_checkpointing(strategy, shared_dct_hits):
    spec = SPECS["unet"]
    torch.manual_seed(0)
    plain = get_peft_model(spec.base(), spec.config(init_weights=False, strategy=strategy))
    checkpointed = copy.deepcopy(plain)
    checkpointed.base_model.model.enable_gradient_checkpointing()
    assert checkpointed.base_model.model.is_gradient_checkpointing
    _compare_runs(plain, checkpointed, spec)
    if strategy in ("hybrid", "activation"):  # to_q / to_k / to_v shared the DCT of their input
        assert shared_dct_hits["hits"] > 0


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("strategy", ["weight", "hybrid", "activation"])
def test_transformers_gradient_checkpointing_enable(strategy, use_reentrant, shared_dct_hits):
    spec = SPECS["llama"]
    torch.manual_seed(0)
    config = spec.config(init_weights=False, strategy=strategy, target_modules=["q_proj", "k_proj", "v_proj"])
    plain = get_peft_model(spec.base(), config)
    checkpointed = copy.deepcopy(plain)
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    if use_reentrant:  # reentrant checkpointing needs an input that requires grad (what peft's prepare does)
        checkpointed.enable_input_require_grads()
    assert checkpointed.base_model.model.is_gradient_checkpointing
    _compare_runs(plain, checkpointed, spec)
    if strategy != "weight":
        assert shared_dct_hits["hits"] > 0
