"""Configuration of a LoCA adapter."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Union

from peft.config import PeftConfig

from .ops import LOCATION_GRAD_MODES, STRATEGIES
from .peft_type import ensure_peft_type

SCHEDULE_VARIANTS = ("alternating", "fixed", "alternate_throughout", "joint")


@dataclass
class LoCAConfig(PeftConfig):
    """Configuration of :class:`~loca_diffusion.LoCAModel` (Location-aware Cosine Adaptation).

    Each targeted linear layer ``W`` (``d_out x d_in``) learns ``dW = scaling * C_out^T S C_in``: ``n_frequency``
    DCT coefficients (initialised to zero) at learnable locations (uniform random from ``random_loc_seed``).

    The schedule fields are the defaults that :class:`~loca_diffusion.LoCASchedule` reads from this
    config: ``coefficient_steps`` (the paper's ``B_a``), ``location_steps`` (``B_l``),
    ``location_training_steps`` (``T_s``; ``None`` = 10% of the run's total steps), ``location_lr``
    and ``schedule_variant``.

    Args:
        n_frequency: Learnable DCT coefficients ``B`` per adapted layer.
        n_frequency_pattern: Per-layer overrides of ``n_frequency`` (module-name pattern -> count).
        scaling: ``alpha`` in ``dW = alpha * C_out^T S C_in``.
        target_modules: Names or a regex of the linear layers to adapt.
        exclude_modules: Names or a regex of modules to skip.
        location_grad: Finite difference of the location gradients: ``central`` (paper), ``forward``, ``backward``.
        random_loc_seed: Seed of the initial locations (combined with each layer's name).
        fan_in_fan_out: True when the weight is stored ``(in, out)``, as in GPT-2's ``Conv1D``.
        init_weights: Zero coefficients (``dW = 0`` at the start); False draws them at random (tests).
        strategy: How the layer computes: ``auto`` (by cost), ``weight``, ``hybrid`` or ``activation``.
        modules_to_save: Extra modules trained in full and saved with the adapter (e.g. a task head).
        layers_to_transform: Layer indices to adapt (with ``layers_pattern``), as in peft.
        layers_pattern: The name of the layer list that ``layers_to_transform`` indexes.
        coefficient_steps: ``B_a``, coefficient steps per alternating cycle.
        location_steps: ``B_l``, location steps per alternating cycle.
        location_training_steps: ``T_s``, steps with location learning (``None``: 10% of the run).
        location_lr: Learning rate of the ``[0, 1]``-scaled locations.
        schedule_variant: ``alternating`` (paper), ``fixed`` (V1), ``alternate_throughout`` (V2), ``joint`` (V3).
    """

    n_frequency: int = field(default=1000, metadata={"help": "Learnable DCT coefficients per adapted layer."})
    n_frequency_pattern: Optional[dict] = field(
        default_factory=dict,
        metadata={
            "help": "Per-layer overrides: {regex or module-name suffix: n_frequency}, like LoRA's rank_pattern."
        },
    )
    scaling: float = field(default=1.0, metadata={"help": "alpha in dW = alpha * C_out^T S C_in."})
    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "Module names or a regex of the linear layers to adapt."}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(default=None, metadata={"help": "Modules to skip."})
    location_grad: Literal["central", "forward", "backward"] = field(
        default="central", metadata={"help": "Finite difference for location gradients (forward/backward: ablations)."}
    )
    random_loc_seed: int = field(
        default=777, metadata={"help": "Seed of the initial locations (combined with each layer's name)."}
    )
    fan_in_fan_out: bool = field(
        default=False, metadata={"help": "True when the weight is stored (in, out), as in GPT-2's Conv1D."}
    )
    init_weights: bool = field(
        default=True,
        metadata={
            "help": "Zero coefficients (the adapter starts as the identity); False: random N(0, 0.1^2) from torch's "
            "RNG (torch.manual_seed reproduces them), for tests."
        },
    )
    strategy: str = field(
        default="auto", metadata={"help": "Computation: auto (by cost), weight, hybrid or activation."}
    )
    modules_to_save: Optional[list[str]] = field(default=None, metadata={"help": "Extra modules trained and saved."})
    layers_to_transform: Optional[Union[list[int], int]] = field(default=None)
    layers_pattern: Optional[Union[list[str], str]] = field(default=None)
    coefficient_steps: int = field(default=10, metadata={"help": "B_a: coefficient steps per alternating cycle."})
    location_steps: int = field(default=20, metadata={"help": "B_l: location steps per alternating cycle."})
    location_training_steps: Optional[int] = field(
        default=None, metadata={"help": "T_s: steps with location learning; None = 10% of total steps."}
    )
    location_lr: float = field(default=1e-4, metadata={"help": "Learning rate of the [0, 1]-scaled locations."})
    schedule_variant: str = field(
        default="alternating",
        metadata={"help": "alternating (paper), fixed (V1), alternate_throughout (V2), joint (V3)."},
    )

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = ensure_peft_type()
        self.target_modules = (
            set(self.target_modules) if isinstance(self.target_modules, list) else self.target_modules
        )
        self.exclude_modules = (
            set(self.exclude_modules) if isinstance(self.exclude_modules, list) else self.exclude_modules
        )
        if isinstance(self.target_modules, str) and self.layers_to_transform is not None:
            raise ValueError("`layers_to_transform` cannot be used when `target_modules` is a str.")
        if isinstance(self.target_modules, str) and self.layers_pattern is not None:
            raise ValueError("`layers_pattern` cannot be used when `target_modules` is a str.")
        if self.layers_pattern and not self.layers_to_transform:
            raise ValueError("When `layers_pattern` is specified, `layers_to_transform` must also be specified.")
        _check_int("n_frequency", self.n_frequency)
        for pattern, value in (self.n_frequency_pattern or {}).items():
            _check_int(f"n_frequency_pattern[{pattern!r}]", value)
        if self.location_grad not in LOCATION_GRAD_MODES:
            raise ValueError(f"location_grad must be one of {LOCATION_GRAD_MODES}, got {self.location_grad!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.schedule_variant not in SCHEDULE_VARIANTS:
            raise ValueError(f"schedule_variant must be one of {SCHEDULE_VARIANTS}, got {self.schedule_variant!r}")
        for name in ("coefficient_steps", "location_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.location_training_steps is not None and (
            not isinstance(self.location_training_steps, int) or self.location_training_steps < 0
        ):
            raise ValueError(f"location_training_steps must be None or >= 0, got {self.location_training_steps!r}")


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
