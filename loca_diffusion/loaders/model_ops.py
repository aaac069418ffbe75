"""LoCA adapters on a model: load, set, enable, delete, fuse, unfuse, unload.

These work on the model itself (a diffusers UNet or transformer, or any ``nn.Module``); the pipeline
API of :class:`~loca_diffusion.loaders.LoCALoaderMixin` picks the model and delegates here. Adapter
names live in the model's ``peft_config`` next to any LoRA ones, as with diffusers' ``add_adapter``.
What the loader must remember about a model (its ``requires_grad`` flags before the first adapter,
the fused layers) is one :class:`LoCALoaderState` in the model's ``_loca_loader_state``.
"""

from __future__ import annotations

import copy
import functools
import re
import warnings
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn as nn

from ..tuners.loca import LoCAConfig
from ..tuners.loca.utils import iter_loca_layers, set_wrapped_submodule
from .adapter_files import LoCAAdapter, to_model_keys

__all__ = [
    "LoCALoaderState",
    "FusedLayer",
    "loca_adapter_names",
    "active_loca_adapters",
    "load_loca_adapter",
    "set_loca_adapters",
    "enable_loca",
    "delete_loca_adapters",
    "is_loca_fused",
    "fuse_loca",
    "unfuse_loca",
    "unload_loca",
]

AdapterWeights = Optional[Union[float, dict, list[Optional[Union[float, dict]]]]]


@dataclass
class FusedLayer:
    """One layer fused by :func:`fuse_loca`."""

    #: CPU copy of the weight from before the first fuse (``None`` with ``keep_base_weights=False``)
    weight: Optional[torch.Tensor] = None
    #: checksum of the weight right after fusing: unfusing restores the copy only if nothing wrote it since
    fingerprint: Optional[torch.Tensor] = None
    #: the adapters' multipliers before the fuse scale was applied
    multipliers: dict[str, float] = field(default_factory=dict)


@dataclass
class LoCALoaderState:
    """What the loader remembers about one model, kept as its ``_loca_loader_state`` attribute."""

    #: ``requires_grad`` of the model's own parameters before the first LoCA adapter (restored by unload)
    requires_grad_before: Optional[dict[str, bool]] = None
    #: fused layers by module name
    fused: dict[str, FusedLayer] = field(default_factory=dict)


_STATE_ATTRIBUTE = "_loca_loader_state"


def _state(model: nn.Module) -> LoCALoaderState:
    state = getattr(model, _STATE_ATTRIBUTE, None)
    if state is None:
        state = LoCALoaderState()
        setattr(model, _STATE_ATTRIBUTE, state)
    return state


def _forget_state(model: nn.Module) -> Optional[LoCALoaderState]:
    return model.__dict__.pop(_STATE_ATTRIBUTE, None)


# ----------------------------------------------------------------------------------------------------
# queries


def _tuner_layers(model: nn.Module):
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


def loca_adapter_names(model: nn.Module) -> list[str]:
    """Names of the LoCA adapters in ``model``, in load order."""
    configs = getattr(model, "peft_config", None) or {}
    return [name for name, config in configs.items() if isinstance(config, LoCAConfig)]


def _active_adapters(model: nn.Module) -> Optional[list[str]]:
    for _, module in _tuner_layers(model):
        return list(module.active_adapters)
    return None


def active_loca_adapters(model: nn.Module) -> list[str]:
    """Names of the LoCA adapters ``model`` currently applies."""
    names = set(loca_adapter_names(model))
    return [name for name in _active_adapters(model) or [] if name in names]


def is_loca_fused(model: nn.Module) -> bool:
    return any(module.merged for _, module in iter_loca_layers(model))


def _as_list(names: Union[str, list[str]]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def _check_loaded(model: nn.Module, names: list[str], loca_only: Optional[str] = None) -> None:
    """Raise unless every name is a loaded adapter (a LoCA one, with ``loca_only`` naming the LoRA method)."""
    configs = getattr(model, "peft_config", None) or {}
    loca = loca_adapter_names(model)
    unknown = [name for name in names if name not in configs]
    if unknown:
        raise ValueError(
            f"No adapter named {unknown} is loaded; loaded LoCA adapters: {loca}"
            + (f", other adapters: {[n for n in configs if n not in loca]}" if configs else "")
        )
    not_loca = [name for name in names if name not in loca]
    if loca_only and not_loca:
        raise ValueError(f"{not_loca} are not LoCA adapters; use `pipe.{loca_only}` for those")


# ----------------------------------------------------------------------------------------------------
# helpers


@functools.lru_cache(maxsize=16)
def _ramp(numel: int, device: torch.device) -> torch.Tensor:
    return torch.linspace(1.0, 2.0, numel, dtype=torch.float64, device=device)


def _fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """Cheap on-device checksum: did anything write the weight since it was fused? (PEFT merges write
    through ``.data``, which the version counter does not see.)"""
    flat = weight.detach().reshape(-1).double()
    return torch.stack([flat.sum(), (flat * _ramp(flat.numel(), flat.device)).sum(), (flat * flat).sum()]).cpu()


def _refreeze(model: nn.Module) -> None:
    """Adapters loaded for inference stay frozen (diffusers' ``set_adapters`` turns requires_grad on)."""
    configs = getattr(model, "peft_config", None) or {}
    frozen = {name for name, config in configs.items() if isinstance(config, LoCAConfig) and config.inference_mode}
    for _, module in iter_loca_layers(model):
        for container in (module.loca_coefficients, module.loca_locations):
            for name, parameter in container.items():
                if name in frozen:
                    parameter.requires_grad_(False)


def _activate(model: nn.Module, names: list[str]) -> None:
    for _, module in _tuner_layers(model):
        module.set_adapter(names)


def _add_adapter(model: nn.Module, config: LoCAConfig, adapter_name: str) -> None:
    """diffusers' / transformers' ``add_adapter`` where the model has one; else peft's injection with the same
    bookkeeping (``peft_config`` on the model, the new adapter active)."""
    if hasattr(model, "add_adapter"):
        with warnings.catch_warnings():
            # several adapters in one model is what this API is for
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            model.add_adapter(config, adapter_name=adapter_name)
        return
    from peft import inject_adapter_in_model

    configs = dict(getattr(model, "peft_config", None) or {})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
        inject_adapter_in_model(config, model, adapter_name)
    model.peft_config = {**configs, adapter_name: config}
    _activate(model, [adapter_name])


def _unwrap_modules_to_save(model: nn.Module, names: list[str]) -> None:
    try:
        from peft.utils.other import AuxiliaryTrainingWrapper
    except ImportError:  # pragma: no cover
        return
    for module_name, module in list(model.named_modules()):
        if not isinstance(module, AuxiliaryTrainingWrapper):
            continue
        if hasattr(module, "_all_available_adapter_names"):
            held = set(module._all_available_adapter_names())
        else:  # pragma: no cover - older peft
            held = set(getattr(module, "modules_to_save", {}).keys())
        if held and held <= set(names):
            set_wrapped_submodule(model, module_name, module.original_module)
        else:
            for name in names:
                if name in held:
                    remaining = [a for a in module.active_adapters if a != name] or sorted(held - {name})[:1]
                    module.delete_adapter(name, remaining)


def _remove_empty_loca_layers(model: nn.Module) -> None:
    for name, module in reversed(list(iter_loca_layers(model))):
        if not module.loca_coefficients:
            set_wrapped_submodule(model, name, module.base_layer)


def _forget_configs_if_empty(model: nn.Module) -> None:
    """Once no LoCA adapter is left: drop the loader state; once no adapter at all is left: the model's own
    attributes and requires_grad flags as they were before the first ``load_loca``."""
    if hasattr(model, "peft_config") and not model.peft_config:
        del model.peft_config
    if loca_adapter_names(model):
        return
    state = _forget_state(model)
    if getattr(model, "peft_config", None):
        return
    model.__dict__.pop("_hf_peft_config_loaded", None)  # back to the class default (False)
    if state is not None and state.requires_grad_before is not None:
        for name, parameter in model.named_parameters():
            if name in state.requires_grad_before:
                parameter.requires_grad_(state.requires_grad_before[name])


def _discard_adapter(model: nn.Module, adapter_name: str, previous_active: Optional[list[str]]) -> None:
    """Undo a half-done load: remove the adapter's layers and config, restore the active adapters."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f"Adapter {re.escape(adapter_name)} was active")
        for _, module in _tuner_layers(model):
            if adapter_name in module._all_available_adapter_names():
                module.delete_adapter(adapter_name)
    _unwrap_modules_to_save(model, [adapter_name])
    configs = getattr(model, "peft_config", None)
    if configs is not None:
        configs.pop(adapter_name, None)
    _remove_empty_loca_layers(model)
    _forget_configs_if_empty(model)
    if previous_active and getattr(model, "peft_config", None):
        _activate(model, previous_active)
        _refreeze(model)


# ----------------------------------------------------------------------------------------------------
# operations


def load_loca_adapter(model: nn.Module, adapter: LoCAAdapter, adapter_name: Optional[str] = None) -> str:
    """Add ``adapter`` (from :func:`~loca_diffusion.loaders.read_loca_adapter`) to ``model`` for inference, make it
    the active adapter and return its name (default ``default_0``, ``default_1``, ...: the first free one).

    A failed load (an adapter made for another model: the message names the layer) leaves ``model`` as it was.
    """
    configs = getattr(model, "peft_config", None) or {}
    if adapter_name is None:
        index = 0
        while f"default_{index}" in configs:
            index += 1
        adapter_name = f"default_{index}"
    elif adapter_name in configs:
        raise ValueError(
            f"An adapter named '{adapter_name}' is already loaded; pick another name or remove it first "
            "(`pipe.delete_loca_adapters(name)` / `pipe.unload_loca()`)"
        )
    if is_loca_fused(model):
        raise ValueError("LoCA adapters are fused; call `pipe.unfuse_loca()` before loading another one")

    previous_active = _active_adapters(model)
    if next(iter_loca_layers(model), None) is None:
        state = _state(model)
        if state.requires_grad_before is None:
            state.requires_grad_before = {n: p.requires_grad for n, p in model.named_parameters()}
    config = copy.deepcopy(adapter.config)  # the adapter may be loaded into several models
    config.inference_mode = True
    base_model_name_or_path = config.base_model_name_or_path
    try:
        _add_adapter(model, config, adapter_name)
        # diffusers' add_adapter clears it; keep it, so that save_loca writes the config it read
        config.base_model_name_or_path = base_model_name_or_path
        from peft import set_peft_model_state_dict

        # files hold PeftModel's keys (`base_model.model.<module>...`); the model is not wrapped, and peft maps
        # modules_to_save entries of a bare model without that prefix only
        result = set_peft_model_state_dict(model, to_model_keys(adapter.state_dict), adapter_name=adapter_name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if k]
        if unexpected:
            raise ValueError(
                f"{len(unexpected)} entries of the file match nothing in this {type(model).__name__}, "
                f"e.g. '{unexpected[0]}': it was made for another model"
            )
    except Exception as error:
        _discard_adapter(model, adapter_name, previous_active)
        message = str(error).strip() or type(error).__name__
        wrapped = ValueError(
            f"Cannot load the LoCA adapter from {adapter.source} into the {type(model).__name__}: {message}"
        )
        if isinstance(error, (ValueError, KeyError, RuntimeError)):
            raise wrapped from None
        raise wrapped from error
    _refreeze(model)
    return adapter_name


def set_loca_adapters(
    model: nn.Module, adapter_names: Union[str, list[str]], adapter_weights: AdapterWeights = None
) -> None:
    """Activate these adapters (and only these) with these weights: diffusers' ``set_adapters``.

    A weight may be a per-block dict where the model has diffusers' ``set_adapters`` (UNets, transformers);
    other models take numbers only.
    """
    names = _as_list(adapter_names)
    _check_loaded(model, names)
    if is_loca_fused(model):
        raise ValueError("LoCA adapters are fused; call `pipe.unfuse_loca()` before `set_loca_adapters`")
    weights = adapter_weights if isinstance(adapter_weights, list) else [adapter_weights] * len(names)
    if len(weights) != len(names):
        raise ValueError(f"{len(names)} adapter names but {len(weights)} weights")
    if hasattr(model, "set_adapters"):
        model.set_adapters(names, weights)
    else:
        if any(isinstance(weight, dict) for weight in weights):
            raise ValueError(
                f"Per-block adapter weights need a diffusers model; the {type(model).__name__} takes numbers"
            )
        _activate(model, names)
        for _, module in _tuner_layers(model):
            for name, weight in zip(names, weights):
                module.set_scale(name, 1.0 if weight is None else float(weight))
    _refreeze(model)


def enable_loca(model: nn.Module, enabled: bool = True) -> None:
    """Apply the active LoCA adapters (``enabled``), or run the base model with them loaded (fused ones are
    unfused first)."""
    if not enabled and is_loca_fused(model):
        unfuse_loca(model)
    for _, module in iter_loca_layers(model):
        module.enable_adapters(enabled)
    if enabled:
        _refreeze(model)


def delete_loca_adapters(model: nn.Module, adapter_names: Union[str, list[str]]) -> None:
    """Remove these LoCA adapters (fused adapters are unfused first)."""
    names = _as_list(adapter_names)
    _check_loaded(model, names, loca_only="delete_adapters")
    if is_loca_fused(model):
        unfuse_loca(model)
    for name in names:
        for _, module in iter_loca_layers(model):
            if name in module.loca_coefficients:
                module.delete_adapter(name)
        _unwrap_modules_to_save(model, [name])
        model.peft_config.pop(name, None)
    _remove_empty_loca_layers(model)
    _forget_configs_if_empty(model)


def fuse_loca(
    model: nn.Module,
    scale: float = 1.0,
    adapter_names: Optional[Union[str, list[str]]] = None,
    safe_fusing: bool = True,
    keep_base_weights: bool = True,
    cache_deltas: bool = False,
) -> None:
    """Merge ``scale * dW`` of the active (or the named) LoCA adapters into the model's weights.

    With ``keep_base_weights`` a CPU copy of each fused layer's weight is kept so that :func:`unfuse_loca`
    restores it bit for bit; without it, unfusing subtracts ``dW`` again (equal up to float rounding).
    ``safe_fusing`` checks the merged weights for NaN/Inf before writing them. ``cache_deltas`` keeps each
    fused (frozen) adapter's ``dW`` on its layer, so that fusing it again is an addition: for apps that switch
    between adapters, at the memory of one dense ``dW`` per adapter and layer (freed when the adapter is
    deleted or unloaded).
    """
    if not loca_adapter_names(model):
        raise ValueError("No LoCA adapter is loaded")
    if adapter_names is None:
        names = active_loca_adapters(model)
    else:
        names = _as_list(adapter_names)
        _check_loaded(model, names, loca_only="fuse_lora")
    if not names:
        raise ValueError("No LoCA adapter is active; pass `adapter_names` or call `set_loca_adapters` first")
    fused = _state(model).fused
    try:
        for layer_name, module in iter_loca_layers(model):
            targets = [n for n in names if n in module.loca_coefficients and n not in module.merged_adapters]
            if not targets:
                continue
            layer = fused.setdefault(layer_name, FusedLayer())
            if keep_base_weights and not module.merged and layer.weight is None:
                layer.weight = module.get_base_layer().weight.detach().to("cpu", copy=True)
            if cache_deltas and module.loca_delta_cache is None:
                module.loca_delta_cache = {}
            for name in targets:
                layer.multipliers.setdefault(name, module.loca_multiplier[name])
                module.set_scale(name, module.loca_multiplier[name] * float(scale))
            module.merge(safe_merge=safe_fusing, adapter_names=targets)
            layer.fingerprint = _fingerprint(module.get_base_layer().weight)
    except Exception:
        unfuse_loca(model)
        raise


def unfuse_loca(model: nn.Module) -> None:
    """Undo :func:`fuse_loca`: the weights from before fusing (bit for bit when they were kept), and the adapter
    weights from before fusing."""
    state = getattr(model, _STATE_ATTRIBUTE, None)
    fused = state.fused if state is not None else {}
    for layer_name, module in iter_loca_layers(model):
        layer = fused.pop(layer_name, None)
        if layer is not None:
            for name, multiplier in layer.multipliers.items():
                module.set_scale(name, multiplier)
        if not module.merged:
            continue
        weight = module.get_base_layer().weight
        if layer is not None and layer.weight is not None:
            if torch.equal(_fingerprint(weight), layer.fingerprint):
                with torch.no_grad():
                    weight.data.copy_(layer.weight.to(weight.device))
                del module.merged_adapters[:]
                module._weight_cache = None
                continue
            warnings.warn(
                f"The weight of '{layer_name}' changed after fuse_loca (another adapter fused into it?); "
                "unfusing LoCA by subtracting its update (exact up to float rounding)"
            )
        # adapters merged outside fuse_loca (e.g. diffusers' fuse_lora): the layer's own unmerge
        module.unmerge()
    fused.clear()


def unload_loca(model: nn.Module, keep_fused: bool = False) -> None:
    """Remove every LoCA adapter: the model's modules, weights and outputs are the base model's again (bit for
    bit; fused adapters are unfused first). Other adapters (LoRA) stay.

    ``keep_fused=True`` instead keeps what :func:`fuse_loca` merged in the weights and only drops the LoCA
    layers (diffusers' ``fuse_lora()`` + ``unload_lora_weights()`` idiom).
    """
    names = loca_adapter_names(model)
    state = getattr(model, _STATE_ATTRIBUTE, None)
    if keep_fused:
        if state is not None:
            state.fused.clear()
    elif is_loca_fused(model) or (state is not None and state.fused):
        unfuse_loca(model)
    _unwrap_modules_to_save(model, names)
    for layer_name, module in reversed(list(iter_loca_layers(model))):
        set_wrapped_submodule(model, layer_name, module.base_layer)
    configs = getattr(model, "peft_config", None)
    if configs is not None:
        for name in names:
            configs.pop(name, None)
    _forget_configs_if_empty(model)
