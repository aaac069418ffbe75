"""The LoCA tuner: injects LoCA layers into a model and defines how adapters are saved and loaded."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.other import get_pattern_key
from transformers.pytorch_utils import Conv1D

from .config import LoCAConfig
from .layer import NOT_FROZEN, Linear, LoCALayer
from .ops import indices_to_locations, locations_to_indices
from .peft_type import PREFIX
from .utils import iter_loca_layers

_PEFT_PREFIX = "base_model.model."


class LoCAModel(BaseTuner):
    """Creates a LoCA model from a pretrained model (use through ``peft.get_peft_model`` and friends).

    Args:
        model: The model whose linear layers (``target_modules`` of the config) get LoCA adapters.
        peft_config: A :class:`LoCAConfig` (or a dict of them by adapter name, as peft passes it).
        adapter_name: Name of the adapter to create (``"default"``).
        low_cpu_mem_usage: Create the adapter weights on the meta device (peft's option), to be loaded afterwards.

    Saved adapters hold, per adapted layer, ``<module>.loca_coefficients`` (float32 ``[B]``),
    ``<module>.loca_locations`` (int64 ``[2, B]``: the learned integer ``(row, col)`` locations the forward
    uses, never regenerated from a seed), ``<module>.loca_shape`` (int64 ``[2]``: ``(d_out, d_in)``, checked on
    load), ``<module>.loca_continuous_locations`` (float32 ``[2, B]``: the exact ``[0, 1]``-scaled location
    parameter, so that training resumes where it stopped) and ``<module>.loca_frozen`` (int64 ``[1]``: 1 once
    the locations are frozen). The last three are optional in files: files written before them load with the
    continuous locations rebuilt from the integers and the mode the adapter is created in.
    """

    prefix: str = PREFIX
    tuner_layer_cls = LoCALayer
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(
        self, loca_config: LoCAConfig, adapter_name, target, target_name, parent, current_key, **optional_kwargs
    ):
        if current_key is None:
            raise ValueError("Current Key shouldn't be `None`")
        pattern = get_pattern_key((loca_config.n_frequency_pattern or {}).keys(), current_key)
        n_frequency = (loca_config.n_frequency_pattern or {}).get(pattern, loca_config.n_frequency)
        kwargs = {
            "n_frequency": n_frequency,
            "scaling": loca_config.scaling,
            "location_grad": loca_config.location_grad,
            "random_loc_seed": loca_config.random_loc_seed,
            "init_weights": loca_config.init_weights,
            "fan_in_fan_out": loca_config.fan_in_fan_out,
            "strategy": loca_config.strategy,
            "inference_mode": loca_config.inference_mode,
            "layer_name": current_key,
        }
        if isinstance(target, LoCALayer):
            target.update_layer(adapter_name, **kwargs)
            return
        new_module = self._create_new_module(loca_config, adapter_name, target, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)
        self._replace_module(parent, target_name, new_module, target)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # BaseTuner's version copies `.weight` onto every unloaded module, which breaks unloading a
        # modules_to_save wrapper around a module without one (e.g. RoBERTa's classification head);
        # LoCA layers are created on their base layer's device, so placement is all that is left.
        setattr(parent, child_name, new_module)
        if isinstance(new_module, LoCALayer):
            for name in new_module.loca_coefficients:
                new_module._move_adapter_to_device_of_base_layer(name)

    def _cast_adapter_dtype(self, adapter_name: str, autocast_adapter_dtype: bool = True) -> None:
        """PEFT's dtype rule, for the coefficients: float32 by default, the base layer's float dtype with
        ``autocast_adapter_dtype=False``. The ``[0, 1]``-scaled locations always stay float32 (half
        precision cannot represent ``i / (d - 1)`` for real layer sizes)."""
        if autocast_adapter_dtype:
            super()._cast_adapter_dtype(adapter_name, autocast_adapter_dtype)
            return
        for _, module in iter_loca_layers(self.model):
            coefficients = module.loca_coefficients.get(adapter_name)
            dtype = module.get_base_layer().weight.dtype
            if coefficients is None or not dtype.is_floating_point or coefficients.dtype == dtype:
                continue
            module.loca_coefficients[adapter_name] = nn.Parameter(
                coefficients.detach().to(dtype), requires_grad=coefficients.requires_grad
            )
            module._weight_cache = None

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        # PeftModel.forward drops `adapter_names` before calling the model: without this check a
        # mixed-adapter batch would silently run every sample through the active adapter(s).
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                "LoCA does not support mixed adapter batches (`adapter_names`); use `set_adapter` instead"
            )
        yield

    @staticmethod
    def _create_new_module(loca_config: LoCAConfig, adapter_name, target, **kwargs):
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Linear):
            if kwargs["fan_in_fan_out"]:
                warnings.warn("fan_in_fan_out=True but the target is an nn.Linear; setting it to False.")
                kwargs["fan_in_fan_out"] = loca_config.fan_in_fan_out = False
        elif isinstance(base, Conv1D):
            if not kwargs["fan_in_fan_out"]:
                warnings.warn(
                    "The target is a transformers Conv1D (weights stored (in, out)); setting fan_in_fan_out=True."
                )
                kwargs["fan_in_fan_out"] = loca_config.fan_in_fan_out = True
        else:
            raise ValueError(
                f"LoCA cannot adapt layer '{kwargs.get('layer_name', '?')}' of type {type(base).__name__}: "
                "only torch.nn.Linear and transformers Conv1D are supported"
            )
        return Linear(target, adapter_name, **kwargs)

    # ------------------------------------------------------------------ saving and loading

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """Save the integer locations under ``loca_locations`` (what other readers and older versions expect)
        next to the exact continuous parameter and the frozen flag (what resuming training needs)."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        for module_name, module in iter_loca_layers(model):
            if adapter_name not in module.loca_coefficients:
                continue
            shape = torch.tensor([module.out_features, module.in_features], dtype=torch.int64)
            module.project_locations(adapter_name)  # an optimizer step since the last forward may have left [0, 1]
            continuous = module.loca_locations[adapter_name].detach().float().clone()
            # frozen by training (T_s passed, freeze_locations), not merely loaded for inference
            inference_only = module.loca_inference_frozen.get(adapter_name, False)
            trained_frozen = module.locations_frozen(adapter_name) and not inference_only
            frozen = torch.tensor([int(trained_frozen)], dtype=torch.int64)
            for stem in _key_stems(module_name, selected):
                selected.pop(f"{stem}loca_fixed_locations.{adapter_name}", None)
                selected[f"{stem}loca_locations.{adapter_name}"] = module.get_locations(adapter_name).detach().clone()
                selected[f"{stem}loca_continuous_locations.{adapter_name}"] = continuous.clone()
                selected[f"{stem}loca_frozen.{adapter_name}"] = frozen.clone()
                # the layer size: coefficients and locations alone fit any layer at least as large
                selected[f"{stem}loca_shape.{adapter_name}"] = shape.clone()
        return selected

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        """Check the file against the model, then route the integer locations to the live form."""
        state_dict = dict(state_dict)
        layers = {name: module for name, module in iter_loca_layers(model) if adapter_name in module.loca_coefficients}
        expected = set()
        for module_name, module in layers.items():
            key = _checkpoint_key(state_dict, module_name, "loca_coefficients")
            loc_key = _checkpoint_key(state_dict, module_name, "loca_locations")
            if key is None or loc_key is None:
                missing = "loca_coefficients" if key is None else "loca_locations"
                raise ValueError(
                    f"The LoCA adapter weights have no '{missing}' for layer '{_strip(module_name)}': they were "
                    "made for a different model or target_modules"
                )
            expected.update({key, loc_key})
            n, d_out, d_in = module.loca_n_frequency[adapter_name], module.out_features, module.in_features
            shape_key = _checkpoint_key(state_dict, module_name, "loca_shape")
            if shape_key is not None:  # absent from files written before it was saved
                shape = tuple(int(v) for v in state_dict.pop(shape_key).flatten().tolist())
                if shape != (d_out, d_in):
                    raise ValueError(
                        f"LoCA adapter weights for layer '{_strip(module_name)}' were made for a "
                        f"{'x'.join(map(str, shape))} weight but this model's layer is {d_out}x{d_in}; "
                        "the file was made for another model"
                    )
            coefficients = state_dict[key]
            if tuple(coefficients.shape) != (n,) or not coefficients.is_floating_point():
                raise ValueError(
                    f"LoCA adapter weights for layer '{_strip(module_name)}': coefficients have shape "
                    f"{tuple(coefficients.shape)} ({coefficients.dtype}) but this model expects ({n},) floats "
                    f"(n_frequency={n}); the file was made for another model or config"
                )
            locations = state_dict.pop(loc_key)
            _check_locations(locations, n, d_out, d_in, _strip(module_name))
            locations = locations.long()
            # frozen when the file says so (training had passed T_s) or when the adapter was created for inference;
            # files written before the flag keep the mode the adapter was created in
            frozen_key = _checkpoint_key(state_dict, module_name, "loca_frozen")
            saved_frozen = frozen_key is not None and bool(
                _check_flag(state_dict.pop(frozen_key), _strip(module_name))
            )
            frozen = saved_frozen or module.locations_frozen(adapter_name)
            module.loca_inference_frozen[adapter_name] = frozen and not saved_frozen
            continuous_key = _checkpoint_key(state_dict, module_name, "loca_continuous_locations")
            if continuous_key is not None:
                continuous = state_dict.pop(continuous_key)
                _check_continuous(continuous, locations, n, d_out, d_in, saved_frozen, _strip(module_name))
                continuous = continuous.float()
            else:  # files written before the continuous locations were saved
                continuous = indices_to_locations(locations, d_out, d_in)
            model_stem = f"{module_name}."
            fixed = locations if frozen else torch.full_like(locations, NOT_FROZEN)
            state_dict[f"{model_stem}loca_fixed_locations.{adapter_name}"] = fixed
            state_dict[f"{model_stem}loca_locations.{adapter_name}"] = continuous
        unknown = [k for k in state_dict if ".loca_" in k and k not in expected and not k.endswith(f".{adapter_name}")]
        if unknown:
            raise ValueError(
                f"The LoCA adapter weights hold {len(unknown)} entries for layers this model does not adapt, "
                f"e.g. '{unknown[0]}': they were made for a different model or target_modules"
            )
        return super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)


def _strip(module_name: str) -> str:
    return module_name.removeprefix(_PEFT_PREFIX)


def _key_stems(module_name: str, state_dict) -> list[str]:
    """Key prefixes under which ``module_name``'s entries may appear (with or without the PEFT prefix)."""
    stems = []
    for stem in (f"{module_name}.", f"{_PEFT_PREFIX}{_strip(module_name)}.", f"{_strip(module_name)}."):
        if stem not in stems and any(k.startswith(stem + "loca_") for k in state_dict):
            stems.append(stem)
    return stems or [f"{module_name}."]


def _checkpoint_key(state_dict, module_name: str, attribute: str):
    for stem in (f"{_PEFT_PREFIX}{_strip(module_name)}.", f"{_strip(module_name)}.", f"{module_name}."):
        if f"{stem}{attribute}" in state_dict:
            return f"{stem}{attribute}"
    return None


def _check_locations(locations: torch.Tensor, n: int, d_out: int, d_in: int, layer: str) -> None:
    if tuple(locations.shape) != (2, n):
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': locations have shape {tuple(locations.shape)}, "
            f"expected (2, {n})"
        )
    if locations.is_floating_point():
        if not torch.isfinite(locations).all() or not torch.equal(locations, locations.round()):
            raise ValueError(
                f"LoCA adapter weights for layer '{layer}': locations must be integers, got non-integer values"
            )
    elif locations.dtype in (torch.bool,) or locations.is_complex():
        raise ValueError(f"LoCA adapter weights for layer '{layer}': locations have dtype {locations.dtype}")
    rows, cols = locations[0].long(), locations[1].long()
    if n and (rows.min() < 0 or rows.max() >= d_out or cols.min() < 0 or cols.max() >= d_in):
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': locations out of range for a {d_out}x{d_in} weight "
            f"(rows {int(rows.min())}..{int(rows.max())}, cols {int(cols.min())}..{int(cols.max())})"
        )


def _check_flag(flag: torch.Tensor, layer: str) -> int:
    if flag.numel() != 1 or flag.is_floating_point() or flag.is_complex() or int(flag.flatten()[0]) not in (0, 1):
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': loca_frozen must be a single integer 0 or 1, got "
            f"{flag.flatten()[:4].tolist()} ({flag.dtype})"
        )
    return int(flag.flatten()[0])


def _check_continuous(
    continuous: torch.Tensor, locations: torch.Tensor, n: int, d_out: int, d_in: int, frozen: bool, layer: str
) -> None:
    """The continuous locations must be finite ``[0, 1]`` floats of shape ``(2, n)`` and, while they are learned,
    round to the integer locations saved next to them (a file edited on one side only is refused)."""
    if tuple(continuous.shape) != (2, n) or not continuous.is_floating_point():
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': continuous locations have shape {tuple(continuous.shape)} "
            f"({continuous.dtype}), expected (2, {n}) floats"
        )
    if not torch.isfinite(continuous).all() or continuous.min() < 0 or continuous.max() > 1:
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': continuous locations must be finite and inside [0, 1]"
        )
    if not frozen and not torch.equal(locations_to_indices(continuous.float(), d_out, d_in), locations):
        raise ValueError(
            f"LoCA adapter weights for layer '{layer}': the continuous locations do not round to the saved integer "
            "locations (was one of them edited?)"
        )
