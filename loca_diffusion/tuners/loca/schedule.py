"""The alternating optimisation of LoCA (paper Sec. 4.4, Algorithm 1) for any training loop.

Usage::

    schedule = LoCASchedule(model, total_steps=10_000)
    optimizer = torch.optim.AdamW(schedule.parameter_groups(lr=1e-4, weight_decay=1e-2))
    for batch in loader:
        model(**batch).loss.backward()          # (accumulate as many micro-batches as you like)
        schedule.mask_gradients()               # drop the gradients of the group not trained now
        clip_grad_norm_(...)                    # optional, after masking
        optimizer.step(); optimizer.zero_grad(set_to_none=True)
        schedule.step()                         # next phase; locations freeze at T_s

Phases are decided from the optimizer-step counter alone, so every DDP rank is in the same phase
without communication. No ``requires_grad`` flag is ever toggled (DDP fixes its gradient buckets at
wrap time): a parameter outside its phase still receives a gradient (zeros for locations, whose
computation is skipped) and :meth:`mask_gradients` sets it to ``None`` so that the optimizer leaves it
alone (no step, no weight decay, no moment update).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

import torch
import torch.nn as nn

from .config import SCHEDULE_VARIANTS, LoCAConfig
from .layer import LoCALayer
from .utils import iter_loca_layers, unwrap_parallel

COEFFICIENTS, LOCATIONS, JOINT = "coefficients", "locations", "joint"


class LoCASchedule:
    """Alternates ``coefficient_steps`` (B_a) coefficient steps and ``location_steps`` (B_l) location
    steps until step ``location_training_steps`` (T_s), then freezes the locations.

    ``variant``: ``alternating`` (the paper's method), ``fixed`` (V1: random locations, never learned),
    ``alternate_throughout`` (V2: no T_s), ``joint`` (V3: both every step until T_s).
    Unset arguments come from the adapter's :class:`LoCAConfig`; ``location_training_steps=None``
    means 10% of ``total_steps``.

    Args:
        model: The model with LoCA layers (bare, a ``PeftModel``, or wrapped by DDP / FSDP / ``torch.compile``).
        coefficient_steps: ``B_a``, coefficient steps per cycle (default: the config's).
        location_steps: ``B_l``, location steps per cycle (default: the config's).
        location_training_steps: ``T_s``, the step after which locations freeze (default: the config's;
            ``None`` there: 10% of ``total_steps``).
        variant: ``alternating``, ``fixed``, ``alternate_throughout`` or ``joint`` (default: the config's).
        total_steps: The run's optimizer steps, for the default ``T_s``.
        adapter_name: The adapter whose config gives the defaults (default: the first LoCA adapter found).
    """

    def __init__(
        self,
        model: nn.Module,
        coefficient_steps: Optional[int] = None,
        location_steps: Optional[int] = None,
        location_training_steps: Optional[int] = None,
        variant: Optional[str] = None,
        total_steps: Optional[int] = None,
        adapter_name: Optional[str] = None,
    ) -> None:
        self.model = model
        config = _find_config(model, adapter_name)
        defaults = config if config is not None else LoCAConfig()

        def pick(value, field):
            return value if value is not None else getattr(defaults, field)

        self.coefficient_steps = int(pick(coefficient_steps, "coefficient_steps"))
        self.location_steps = int(pick(location_steps, "location_steps"))
        self.variant = pick(variant, "schedule_variant")
        if self.variant not in SCHEDULE_VARIANTS:
            raise ValueError(f"variant must be one of {SCHEDULE_VARIANTS}, got {self.variant!r}")
        if self.coefficient_steps < 1 or self.location_steps < 1:
            raise ValueError("coefficient_steps and location_steps must be >= 1")
        t_s = pick(location_training_steps, "location_training_steps")
        if t_s is None:
            if self.variant in ("alternating", "joint"):
                if total_steps is None:
                    raise ValueError("Pass location_training_steps (T_s) or total_steps (T_s = 10% of it)")
                t_s = max(1, round(0.1 * total_steps))
        self.location_training_steps = (
            None if self.variant == "alternate_throughout" else (0 if self.variant == "fixed" else int(t_s))
        )
        self.location_lr = float(defaults.location_lr)
        self.step_count = 0
        self._apply()

    # ------------------------------------------------------------------ phases

    def phase(self, step: Optional[int] = None) -> str:
        """``coefficients``, ``locations`` or ``joint`` at ``step`` (default: the current step)."""
        step = self.step_count if step is None else step
        if self.locations_frozen_at(step):
            return COEFFICIENTS
        if self.variant == "joint":
            return JOINT
        cycle = self.coefficient_steps + self.location_steps
        return COEFFICIENTS if step % cycle < self.coefficient_steps else LOCATIONS

    def locations_frozen_at(self, step: int) -> bool:
        return self.location_training_steps is not None and step >= self.location_training_steps

    @property
    def locations_frozen(self) -> bool:
        return self.locations_frozen_at(self.step_count)

    def _layers(self) -> Iterable[LoCALayer]:
        return (layer for _, layer in iter_loca_layers(self.model))

    def _apply(self) -> None:
        learn = self.phase() in (LOCATIONS, JOINT)
        for layer in self._layers():
            for name in layer.loca_coefficients:
                if self.locations_frozen:
                    layer.freeze_locations(name)
                layer.loca_learn_locations[name] = learn

    # ------------------------------------------------------------------ training-loop hooks

    def coefficient_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._layers() for p in layer.loca_coefficients.values()]

    def location_parameters(self) -> list[nn.Parameter]:
        return [p for layer in self._layers() for p in layer.loca_locations.values()]

    def parameter_groups(
        self,
        lr: float,
        weight_decay: float = 0.0,
        location_lr: Optional[float] = None,
        other_parameters: Iterable[nn.Parameter] = (),
    ) -> list[dict[str, Any]]:
        """Optimizer groups: coefficients with ``lr`` and ``weight_decay``; locations with their own learning
        rate and no weight decay. ``other_parameters`` (e.g. ``model.parameters()`` for modules_to_save) join
        the first group; LoCA tensors and frozen parameters among them are skipped."""
        coefficients = [p for p in self.coefficient_parameters() if p.requires_grad]
        locations = [p for p in self.location_parameters() if p.requires_grad]
        taken = {id(p) for p in coefficients + locations}
        others = [p for p in other_parameters if p.requires_grad and id(p) not in taken]
        groups = [
            {"params": coefficients + others, "lr": lr, "weight_decay": weight_decay, "name": "loca_coefficients"}
        ]
        if locations:
            groups.append(
                {
                    "params": locations,
                    "lr": self.location_lr if location_lr is None else location_lr,
                    "weight_decay": 0.0,
                    "name": "loca_locations",
                }
            )
        return groups

    def mask_gradients(self) -> None:
        """Set to ``None`` the gradients of the parameters that this step must not update."""
        phase = self.phase()
        if phase == COEFFICIENTS:
            for p in self.location_parameters():
                p.grad = None
        elif phase == LOCATIONS:
            for p in self.coefficient_parameters():
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """Advance one optimizer step: keep locations inside ``[0, 1]`` and enter the next phase.

        Only a step that trained the locations can have moved them; coefficient steps leave them (and their
        version counters, which the layers' cached location plans key on) untouched.
        """
        if self.phase() in (LOCATIONS, JOINT):
            for p in self.location_parameters():
                p.clamp_(0.0, 1.0)
        self.step_count += 1
        self._apply()

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        return {
            "step_count": self.step_count,
            "coefficient_steps": self.coefficient_steps,
            "location_steps": self.location_steps,
            "location_training_steps": self.location_training_steps,
            "variant": self.variant,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.coefficient_steps = int(state["coefficient_steps"])
        self.location_steps = int(state["location_steps"])
        self.location_training_steps = state["location_training_steps"]
        self.variant = state["variant"]
        self.step_count = int(state["step_count"])
        self._apply()


def _find_config(model: nn.Module, adapter_name: Optional[str]):
    configs = getattr(unwrap_parallel(model), "peft_config", None)
    if not configs:
        return None
    if adapter_name is not None:
        return configs[adapter_name]
    return next(iter(configs.values()))
