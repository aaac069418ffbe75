"""LoCA's alternating schedule inside ``transformers.Trainer`` (and trainers built on it, e.g. TRL's ``SFTTrainer``).

Usage::

    from loca_diffusion import LoCASchedule, LoCATrainerCallback

    groups = LoCASchedule(model, location_training_steps=1200).parameter_groups(lr=1e-4, weight_decay=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      optimizers=(torch.optim.AdamW(groups), None),       # locations: own lr, no weight decay
                      callbacks=[LoCATrainerCallback(location_training_steps=1200)])
    trainer.train()

The callback owns a :class:`~loca_diffusion.LoCASchedule` built on the model at ``on_train_begin``. Before each
optimizer step (``on_pre_optimizer_step``) it drops the gradients of the parameter group outside the current
phase; after it (``on_step_end``) it advances the schedule, which switches phases and freezes the locations at
``T_s``. The phase follows ``state.global_step`` alone, so resuming from a Trainer checkpoint continues the same
schedule; the callback is also an ``ExportableState`` (its step is in the checkpoint's ``trainer_state.json``).
Each log line gets the phase and how far the locations moved since the previous log.

Trainer clips gradients *before* ``on_pre_optimizer_step``: in a location phase the (later dropped) coefficient
gradients count in the clipping norm. A hand-written loop that clips before masking does exactly the same.
"""

from __future__ import annotations

import logging
from typing import Any, Optional

import torch
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .tuners.loca.schedule import JOINT, LOCATIONS, LoCASchedule

logger = logging.getLogger(__name__)


class LoCATrainerCallback(TrainerCallback, ExportableState):
    """Runs LoCA's alternating optimisation (paper Sec. 4.4) in ``transformers.Trainer``.

    Args:
        coefficient_steps: ``B_a``, coefficient steps per cycle (default: the adapter's config).
        location_steps: ``B_l``, location steps per cycle (default: the adapter's config).
        location_training_steps: ``T_s``, the step at which locations freeze (default: the config's, else 10% of
            the Trainer's ``max_steps``).
        variant: ``alternating`` (the paper), ``fixed`` (V1), ``alternate_throughout`` (V2) or ``joint`` (V3).
        adapter_name: the adapter whose config gives the defaults (default: the first one).
    """

    def __init__(
        self,
        coefficient_steps: Optional[int] = None,
        location_steps: Optional[int] = None,
        location_training_steps: Optional[int] = None,
        variant: Optional[str] = None,
        adapter_name: Optional[str] = None,
    ) -> None:
        for name, value in (
            ("coefficient_steps", coefficient_steps),
            ("location_steps", location_steps),
            ("location_training_steps", location_training_steps),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValueError(f"LoCATrainerCallback: {name} must be a non-negative integer or None, got {value!r}")
        self.coefficient_steps = coefficient_steps
        self.location_steps = location_steps
        self.location_training_steps = location_training_steps
        self.variant = variant
        self.adapter_name = adapter_name
        #: the schedule's step count, as saved in (and restored from) Trainer checkpoints
        self.step_count = 0
        self.schedule: Optional[LoCASchedule] = None
        self._logged_locations: Optional[list[torch.Tensor]] = None
        self._phase_at_last_log: Optional[str] = None

    # ------------------------------------------------------------------ checkpoints (ExportableState)

    def state(self) -> dict[str, Any]:
        return {
            "args": {
                "coefficient_steps": self.coefficient_steps,
                "location_steps": self.location_steps,
                "location_training_steps": self.location_training_steps,
                "variant": self.variant,
                "adapter_name": self.adapter_name,
            },
            "attributes": {"step_count": self.step_count},
        }

    # ------------------------------------------------------------------ events

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if model is None:
            raise ValueError("LoCATrainerCallback needs the model: use it through transformers.Trainer")
        self.schedule = LoCASchedule(
            model,
            coefficient_steps=self.coefficient_steps,
            location_steps=self.location_steps,
            location_training_steps=self.location_training_steps,
            variant=self.variant,
            total_steps=state.max_steps if state.max_steps and state.max_steps > 0 else None,
            adapter_name=self.adapter_name,
        )
        # The phase is a function of the optimizer-step count, so the Trainer's own counter (restored from a
        # checkpoint on resume, whether or not callback states are restored) puts the schedule where it was.
        if self.step_count not in (0, state.global_step):
            logger.warning(
                f"LoCATrainerCallback: the checkpoint's schedule step {self.step_count} differs from the Trainer's "
                f"step {state.global_step}; following the Trainer"
            )
        self.schedule.step_count = self.step_count = state.global_step
        self.schedule._apply()
        self._logged_locations = self._locations()
        self._phase_at_last_log = self.schedule.phase()
        logger.info(
            f"LoCA schedule: B_a={self.schedule.coefficient_steps}, B_l={self.schedule.location_steps}, "
            f"T_s={self.schedule.location_training_steps}, variant={self.schedule.variant}, "
            f"starting at step {self.step_count} in the {self.schedule.phase()} phase"
        )

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self._require_schedule().mask_gradients()

    def on_step_end(self, args, state, control, **kwargs):
        schedule = self._require_schedule()
        before = schedule.phase()
        schedule.step()
        self.step_count = schedule.step_count
        if schedule.phase() != before:
            logger.debug(f"LoCA: step {self.step_count} enters the {schedule.phase()} phase")

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.schedule is None or logs is None:
            return
        extra = self.log_entries()
        logs.update(extra)
        # Trainer stored a copy of `logs` in the history before calling the callbacks
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(extra)

    # ------------------------------------------------------------------ helpers

    def log_entries(self) -> dict[str, float]:
        """What each log gets: the phase of the next step (1 = locations are trained, ``loca_locations_frozen``),
        how many integer locations changed and their mean shift in grid cells since the previous log."""
        schedule = self._require_schedule()
        now = self._locations()
        moved, shift, total = 0, 0.0, 0
        for old, new in zip(self._logged_locations or [], now):
            if old.shape == new.shape:
                moved += int((old != new).any(dim=0).sum())
                shift += float((old - new).abs().float().sum())
                total += new.shape[1]
        self._logged_locations = now
        self._phase_at_last_log = schedule.phase()
        return {
            "loca_location_phase": float(schedule.phase() in (LOCATIONS, JOINT)),
            "loca_locations_frozen": float(schedule.locations_frozen),
            "loca_locations_moved": float(moved),
            "loca_location_shift": shift / max(total, 1),
        }

    def _locations(self) -> list[torch.Tensor]:
        schedule = self._require_schedule()
        return [
            layer.get_locations(name).detach().clone()
            for layer in schedule._layers()
            for name in sorted(layer.loca_coefficients)
        ]

    def _require_schedule(self) -> LoCASchedule:
        if self.schedule is None:
            raise RuntimeError("LoCATrainerCallback: training has not begun (on_train_begin was not called)")
        return self.schedule
