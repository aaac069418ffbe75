"""LoCA layers: the per-adapter state and forward of an adapted linear layer.

The location bookkeeping lives in :mod:`.locations` (``LocationsMixin``), delta weights and merging in
:mod:`.merging` (``MergeMixin``), the module-tree helpers (``iter_loca_layers``, wrapped submodules) in
:mod:`.utils`.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers.pytorch_utils import Conv1D

from .locations import (
    NOT_FROZEN,
    LocationsMixin,
    NonFiniteLocationsError,
    _sync_frozen_flags_after_load,
    initial_location_indices,
)
from .merging import MergeMixin
from .ops import (
    AdapterCall,
    LayerPlan,
    build_plan,
    choose_strategy,
    effective_weight,
    indices_to_locations,
    loca_linear,
)

__all__ = ["NOT_FROZEN", "LoCALayer", "Linear", "NonFiniteLocationsError"]


class LoCALayer(LocationsMixin, BaseTunerLayer):
    """State of the LoCA adapters of one layer, by adapter name.

    * ``loca_coefficients[name]``: float32 ``nn.Parameter`` of shape ``[B]``;
    * ``loca_locations[name]``: float32 ``nn.Parameter`` of shape ``[2, B]`` holding the continuous
      ``(row, col)`` locations scaled to ``[0, 1]``;
    * ``loca_fixed_locations[name]``: int64 buffer ``[2, B]``: the frozen integer locations (after
      :meth:`freeze_locations`, or for adapters loaded for inference), or all ``NOT_FROZEN`` (-1) while
      the locations are learned. Once frozen it wins over the continuous parameter, which stays registered so that
      DDP keeps receiving (zero) gradients and whatever an optimizer does to it has no effect.

    All three exist in every mode, so the state-dict keys are the same for a model in training, a
    frozen one and one loaded for inference (PEFT's contract: one loads strictly into the other). Reading,
    projecting and freezing the locations comes from :class:`~.locations.LocationsMixin`.
    """

    adapter_layer_names = ("loca_coefficients", "loca_locations")
    other_param_names = (
        "loca_fixed_locations",
        "loca_n_frequency",
        "loca_scaling",
        "loca_location_grad",
        "loca_multiplier",
        "loca_learn_locations",
        "loca_frozen",
        "loca_inference_frozen",
        "loca_finite_stamp",
    )

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.loca_coefficients = nn.ParameterDict({})
        self.loca_locations = nn.ParameterDict({})
        self.loca_fixed_locations = BufferDict({}, persistent=True)
        self.loca_n_frequency: dict[str, int] = {}
        self.loca_scaling: dict[str, float] = {}
        self.loca_location_grad: dict[str, str] = {}
        self.loca_multiplier: dict[str, float] = {}
        # whether the current step wants location gradients (the schedule turns it off in coefficient
        # phases, which skips their computation)
        self.loca_learn_locations: dict[str, bool] = {}
        # mirror of "loca_fixed_locations[name] holds locations", so that no forward reads the buffer
        # (a device sync); kept in step by freeze_locations and state-dict loading
        self.loca_frozen: dict[str, bool] = {}
        # frozen only because the adapter was created for inference (not by training passing T_s): saved files
        # then keep the flag they were read with, so resuming training from them learns locations again
        self.loca_inference_frozen: dict[str, bool] = {}
        # (data_ptr, version) of each location parameter last found finite: checking reads the values
        # (a device sync), so it runs only when they changed
        self.loca_finite_stamp: dict[str, tuple[int, int]] = {}
        # the integer locations rounded from each location parameter, for the stamp they were rounded at
        self._indices_cache: dict[str, tuple[tuple[int, int], torch.Tensor]] = {}
        # the last LayerPlans built (everything that depends only on the locations), newest first
        self._plans: list[tuple[tuple, tuple[torch.Tensor, ...], LayerPlan]] = []
        self.last_strategy: Optional[str] = None  # the strategy of the last adapted forward (benchmarks read it)
        self.loca_layer_name = ""
        self.loca_strategy = "auto"
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self._weight_cache: Optional[tuple[tuple, torch.Tensor]] = None
        # opt-in (``fuse_loca(cache_deltas=True)``): adapter -> (key, dW) of frozen adapters, so that
        # switching between fused adapters adds a stored dW instead of recomputing its inverse DCT
        self.loca_delta_cache: Optional[dict[str, tuple[tuple, torch.Tensor]]] = None
        self.kwargs = kwargs

        base = self.get_base_layer()
        if isinstance(base, nn.Linear):
            in_features, out_features = base.in_features, base.out_features
        elif isinstance(base, Conv1D):
            in_features, out_features = base.weight.shape
        else:
            raise TypeError(f"LoCA supports nn.Linear and transformers Conv1D layers, got {type(base).__name__}")
        self.in_features, self.out_features = in_features, out_features

    # ------------------------------------------------------------------ adapter state

    def update_layer(
        self,
        adapter_name: str,
        n_frequency: int,
        scaling: float,
        location_grad: str,
        random_loc_seed: int,
        init_weights: bool,
        inference_mode: bool = False,
        layer_name: str = "",
        **kwargs,
    ) -> None:
        d_out, d_in = self.out_features, self.in_features
        self.loca_layer_name = layer_name or self.loca_layer_name
        where = f"layer '{layer_name}' ({d_out}x{d_in})" if layer_name else f"a {d_out}x{d_in} layer"
        if isinstance(n_frequency, bool) or not isinstance(n_frequency, int) or n_frequency < 1:
            raise ValueError(f"n_frequency must be an integer >= 1 for {where}, got {n_frequency!r}")
        if n_frequency > d_out * d_in:
            raise ValueError(
                f"n_frequency={n_frequency} exceeds the {d_out * d_in} entries of {where}; "
                "lower it or override it for this layer with n_frequency_pattern"
            )
        indices = initial_location_indices(random_loc_seed, layer_name, d_out, d_in, n_frequency)
        if init_weights:
            coefficients = torch.zeros(n_frequency)
        else:  # torch's RNG, as in other PEFT methods: reproducible with torch.manual_seed
            coefficients = torch.randn(n_frequency) * 0.1
        device = self.get_base_layer().weight.device
        self.loca_coefficients[adapter_name] = nn.Parameter(coefficients.to(device))
        self.loca_locations[adapter_name] = nn.Parameter(indices_to_locations(indices, d_out, d_in).to(device))
        # adapters created for inference (e.g. by PeftModel.from_pretrained) start frozen
        self.loca_fixed_locations[adapter_name] = (
            indices if inference_mode else torch.full_like(indices, NOT_FROZEN)
        ).to(device)
        self.loca_frozen[adapter_name] = bool(inference_mode)
        self.loca_inference_frozen[adapter_name] = bool(inference_mode)
        self.loca_n_frequency[adapter_name] = n_frequency
        self.loca_scaling[adapter_name] = float(scaling)
        self.loca_location_grad[adapter_name] = location_grad
        self.loca_multiplier[adapter_name] = 1.0
        self.loca_learn_locations[adapter_name] = True
        self._weight_cache = None
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def _move_adapter_to_device_of_base_layer(self, adapter_name: str, device: Optional[torch.device] = None) -> None:
        # Device only: coefficients and locations stay float32 (locations in [0, 1] need the precision)
        # and the location buffers stay integer, whatever the base layer's dtype.
        target = device if device is not None else self.get_base_layer().weight.device
        for container in (self.loca_coefficients, self.loca_locations, self.loca_fixed_locations):
            if adapter_name in container and container[adapter_name].device != target:
                if container[adapter_name].device.type == "meta":
                    continue
                container[adapter_name] = container[adapter_name].to(target)

    def _plan(self, indices: list[torch.Tensor], modes: list[Optional[str]]) -> LayerPlan:
        """The :class:`LayerPlan` of these locations and stencil modes, rebuilt only when they change.

        Locations are identified by their tensor (the frozen buffer, or the rounding cached per location value)
        and its version counter; the last two plans are kept, for the alternating coefficient and location steps.
        """
        key = (tuple(modes), tuple(index._version for index in indices))
        for entry_key, entry_indices, plan in self._plans:
            if entry_key == key and all(a is b for a, b in zip(entry_indices, indices)):
                return plan
        plan = build_plan(indices, modes, self.out_features, self.in_features)
        self._plans.insert(0, (key, tuple(indices), plan))
        del self._plans[2:]
        return plan

    @property
    def r(self) -> dict[str, int]:
        """Coefficients per adapter; diffusers reads ``len(module.r)`` to count adapters (LoRA's name)."""
        return self.loca_n_frequency

    def _scale(self, adapter_name: str) -> float:
        return self.loca_scaling[adapter_name] * self.loca_multiplier[adapter_name]

    # ------------------------------------------------------------------ scales (diffusers' set_adapters / lora scale)

    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.loca_multiplier:
            self.loca_multiplier[adapter] = float(scale)
            self._weight_cache = None

    def scale_layer(self, scale: float) -> None:
        if scale == 1:
            return
        for adapter in self.active_adapters:
            if adapter in self.loca_multiplier:
                self.loca_multiplier[adapter] *= scale
        self._weight_cache = None

    def unscale_layer(self, scale: Optional[float] = None) -> None:
        for adapter in self.active_adapters:
            if adapter not in self.loca_multiplier:
                continue
            if scale is None or scale == 0:  # 0 cannot be undone by division: reset, as diffusers does
                self.loca_multiplier[adapter] = 1.0
            else:
                self.loca_multiplier[adapter] /= scale
        self._weight_cache = None


class Linear(nn.Module, MergeMixin, LoCALayer):
    """LoCA adapter around an ``nn.Linear`` (or a transformers ``Conv1D`` with ``fan_in_fan_out=True``)."""

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        n_frequency: int = 1000,
        scaling: float = 1.0,
        location_grad: str = "central",
        random_loc_seed: int = 777,
        init_weights: bool = True,
        fan_in_fan_out: bool = False,
        strategy: str = "auto",
        layer_name: str = "",
        **kwargs,
    ) -> None:
        super().__init__()
        LoCALayer.__init__(self, base_layer, **kwargs)
        # the buffers are loaded by the child BufferDict, after this module's own _load_from_state_dict
        self.register_load_state_dict_post_hook(_sync_frozen_flags_after_load)
        self.fan_in_fan_out = fan_in_fan_out
        self.loca_strategy = strategy
        self._active_adapter = adapter_name
        self.update_layer(
            adapter_name,
            n_frequency,
            scaling,
            location_grad,
            random_loc_seed,
            init_weights,
            inference_mode=kwargs.get("inference_mode", False),
            layer_name=layer_name,
        )

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # defined here, not on the mixin: nn.Module precedes LoCALayer in this class's MRO
        self._prepare_state_dict_for_load(state_dict, prefix)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def train(self, mode: bool = True):
        # The inference cache tracks tensor version counters, which writes through `.data` (e.g. an EMA
        # `copy_to`) bypass; switching modes always starts from a fresh cache (and fresh finiteness checks).
        self._weight_cache = None
        if self.loca_delta_cache is not None:
            self.loca_delta_cache.clear()
        self._forget_locations()
        return super().train(mode)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` / `.half()` after injection would cast the [0, 1]-scaled locations
        # too, and half precision cannot represent i / (d - 1) for real layer sizes: the rounded
        # locations would silently move. Keep them float32; device moves still apply.
        if not recurse:
            return super()._apply(fn, recurse=False)

        def keep_dtype(t):
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(device=moved.device)

        for child in self.children():
            child._apply(keep_dtype if child is self.loca_locations else fn)
        self._weight_cache = None
        if self.loca_delta_cache is not None:
            self.loca_delta_cache.clear()
        self._forget_locations()
        return super()._apply(fn, recurse=False)

    # ------------------------------------------------------------------ forward

    def _active(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.loca_coefficients]

    def _frozen_weight(self, active: list[str]) -> torch.Tensor:
        """``W + sum dW`` for inference, cached until an adapter tensor, a scale or the weight changes.

        Changes are detected through version counters; after editing tensors through ``.data`` call
        ``model.eval()`` (or ``train()``) again, which clears the cache.
        """
        weight = self.get_base_layer().weight
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        for name in active:
            coef = self.loca_coefficients[name]
            loc = self.loca_fixed_locations[name] if self.loca_frozen[name] else self.loca_locations[name]
            key += (name, coef.data_ptr(), coef._version, loc.data_ptr(), loc._version, self._scale(name))
        if self._weight_cache is None or self._weight_cache[0] != key:
            with torch.no_grad():
                w_eff = effective_weight(
                    weight,
                    self.fan_in_fan_out,
                    [self.loca_coefficients[n] for n in active],
                    [self.get_locations(n) for n in active],
                    [AdapterCall(self._scale(n), None) for n in active],
                    self.out_features,
                    self.in_features,
                )
            self._weight_cache = (key, w_eff)
        return self._weight_cache[1]

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = self._active()
        if not active:
            return self.base_layer(x, *args, **kwargs)
        if self.training:
            self._weight_cache = None  # training changes the adapter every step; free the copy

        base = self.get_base_layer()
        coefficients = [self.loca_coefficients[n] for n in active]
        # a registered location parameter stays in the graph even when frozen: it then receives zero
        # gradients, which keeps DistributedDataParallel's bookkeeping intact
        locations = [self.loca_locations[n] if self.loca_locations[n].requires_grad else None for n in active]
        grad_wanted = torch.is_grad_enabled() and (
            x.requires_grad
            or base.weight.requires_grad
            or any(c.requires_grad for c in coefficients)
            or any(loc is not None for loc in locations)
        )
        if not grad_wanted and not self.training:
            weight = self._frozen_weight(active)
            bias = None if base.bias is None else base.bias.to(x.dtype)
            return F.linear(x, weight.to(x.dtype), bias)

        calls, n_points = [], 0
        for name, loc in zip(active, locations):
            learn = loc is not None and not self.loca_frozen[name] and self.loca_learn_locations[name]
            calls.append(AdapterCall(self._scale(name), self.loca_location_grad[name] if learn else None))
            n_points += self.loca_n_frequency[name] * (5 if learn else 1)
        strategy = self.loca_strategy
        if strategy == "auto":
            tokens = x.numel() // max(x.shape[-1], 1)
            strategy = choose_strategy(
                x.device.type,
                self.out_features,
                self.in_features,
                tokens,
                sum(self.loca_n_frequency[n] for n in active),
                n_points,
                grad_wanted,
                input_grad=grad_wanted and x.requires_grad,
            )
        self.last_strategy = strategy
        indices = [self.get_locations(n) for n in active]
        return loca_linear(
            x,
            base.weight,
            base.bias,
            self.fan_in_fan_out,
            strategy,
            calls,
            coefficients,
            locations,
            indices,
            plan=self._plan(indices, [call.location_grad for call in calls]),
        )

    def __repr__(self) -> str:
        return "loca." + super().__repr__()
