"""Issue 20, point 3: LoCATrainerCallback in the real ``transformers.Trainer`` follows the same phases and ends at the
same parameters as the hand-written LoCASchedule loop with the same seed; its state survives Trainer checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn
from peft import get_peft_model
from transformers import Trainer, TrainerCallback, TrainingArguments

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig, LoCASchedule, LoCATrainerCallback

from _models import MLP

pytestmark = pytest.mark.usefixtures("torch_single_thread")

STEPS, T_S, B_A, B_L = 12, 8, 2, 3
# B_a = 2 coefficient steps, B_l = 3 location steps, coefficients only from T_s = 8
EXPECTED_PHASES = (
    ["coefficients"] * 2 + ["locations"] * 3 + ["coefficients"] * 2 + ["locations"] + ["coefficients"] * 4
)
X = torch.randn(8, 12, generator=torch.Generator().manual_seed(1))
Y = torch.randn(8, 6, generator=torch.Generator().manual_seed(2))


class Regressor(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = MLP(d_in=12, hidden=16, d_out=6, activation=nn.Tanh())

    def forward(self, x, labels=None):
        out = self.net(x)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def build():
    torch.manual_seed(0)
    model = get_peft_model(
        Regressor(), LoCAConfig(target_modules=["lin0", "lin1"], n_frequency=10, init_weights=False)
    )
    groups = LoCASchedule(model, location_training_steps=T_S).parameter_groups(
        lr=1e-2, weight_decay=1e-2, location_lr=0.1
    )
    return model, torch.optim.AdamW(groups)


def hand_written_loop(steps=STEPS):
    model, optimizer = build()
    schedule = LoCASchedule(model, coefficient_steps=B_A, location_steps=B_L, location_training_steps=T_S)
    model.train()
    phases = []
    for _ in range(steps):
        model(x=X, labels=Y)["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # Trainer clips before on_pre_optimizer_step
        phases.append(schedule.phase())
        schedule.mask_gradients()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
    return model, phases


class Dataset(torch.utils.data.Dataset):
    def __len__(self):
        return len(X)

    def __getitem__(self, i):
        return {"x": X[i], "labels": Y[i]}


class PhaseRecorder(TrainerCallback):
    def __init__(self, loca):
        self.loca, self.phases = loca, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.phases.append(self.loca.schedule.phase())


def trainer_run(output_dir, max_steps=STEPS, resume=None, save_steps=None):
    model, optimizer = build()
    loca = LoCATrainerCallback(coefficient_steps=B_A, location_steps=B_L, location_training_steps=T_S)
    recorder = PhaseRecorder(loca)
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=max_steps,
        per_device_train_batch_size=len(X),  # one batch per step: the sample order cannot matter
        max_grad_norm=1.0,
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset(),
        optimizers=(optimizer, scheduler),
        callbacks=[loca, recorder],
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, recorder.phases, trainer


def _loca_parameters(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "loca_" in n}


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def test_trainer_follows_the_hand_written_schedule(tmp_path):
    reference, reference_phases = hand_written_loop()
    model, phases, trainer = trainer_run(tmp_path)
    expected = EXPECTED_PHASES
    assert reference_phases == expected
    assert phases == expected
    _assert_same(_loca_parameters(model), _loca_parameters(reference))
    # frozen at T_s like the hand-written loop, and the logs carry the phase and the location movement
    for layer in (model.base_model.model.net.lin0, model.base_model.model.net.lin1):
        assert layer.locations_frozen("default")
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == STEPS
    assert [entry["loca_location_phase"] for entry in logs] == [float(p == "locations") for p in expected[1:]] + [0.0]
    moved = [entry["loca_locations_moved"] for entry in logs]
    assert sum(moved[i] for i in range(STEPS) if expected[i] == "coefficients") == 0  # coefficient steps: no moves
    assert sum(moved) > 0


def test_resuming_from_a_trainer_checkpoint_continues_the_schedule(tmp_path):
    reference, _ = hand_written_loop()
    trainer_run(tmp_path, max_steps=STEPS, save_steps=5)  # checkpoints at 5 and 10
    checkpoint = tmp_path / "checkpoint-5"
    assert checkpoint.is_dir()

    stored = json.loads((checkpoint / "trainer_state.json").read_text())["stateful_callbacks"]
    assert stored["LoCATrainerCallback"]["attributes"]["step_count"] == 5
    model, phases, _ = trainer_run(tmp_path, max_steps=STEPS, resume=str(checkpoint), save_steps=5)
    assert phases == EXPECTED_PHASES[5:]
    _assert_same(_loca_parameters(model), _loca_parameters(reference))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="location_steps"):
        LoCATrainerCallback(location_steps=-1)
