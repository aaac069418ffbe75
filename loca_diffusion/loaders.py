"""``pipe.load_loca(...)``: LoCA adapters on diffusers pipelines, the way diffusers loads LoRAs.

:class:`LoCALoaderMixin` adds to any pipeline with a ``unet`` (or a ``transformer``) built from
diffusers' ``PeftAdapterMixin`` models:

* :meth:`~LoCALoaderMixin.load_loca` (local directory or Hub repo id), :meth:`~LoCALoaderMixin.save_loca`;
* :meth:`~LoCALoaderMixin.set_loca_adapters` (several adapters with weights: diffusers' ``set_adapters``);
* :meth:`~LoCALoaderMixin.fuse_loca` / :meth:`~LoCALoaderMixin.unfuse_loca` (exact: the weights are
  restored bit for bit), :meth:`~LoCALoaderMixin.unload_loca` (the base model back, bit-identical outputs);
* :meth:`~LoCALoaderMixin.disable_loca` / :meth:`~LoCALoaderMixin.enable_loca`,
  :meth:`~LoCALoaderMixin.delete_loca_adapters`, :meth:`~LoCALoaderMixin.get_loca_adapters`.

An adapter on disk is the PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors``, the
directory ``PeftModel.from_pretrained(unet, dir)`` reads and ``PeftModel.save_pretrained`` writes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn as nn

from .hub import (
    DEFAULT_TIMEOUT,
    HubFileNotFoundError,
    HubUnavailableError,
    hub_file_exists,
    looks_like_repo_id,
    resolve_local_or_hub,
)
from .tuners.loca import LoCAConfig, LoCALayer

__all__ = [
    "LoCALoaderMixin",
    "ADAPTER_CONFIG_NAME",
    "LOCA_WEIGHTS_NAME",
    "LOCA_SUBFOLDER",
    "load_loca_state_dict",
]

ADAPTER_CONFIG_NAME = "adapter_config.json"
LOCA_WEIGHTS_NAME = "adapter_model.safetensors"
LOCA_PICKLE_WEIGHTS_NAME = "adapter_model.bin"
#: searched when the directory given to ``load_loca`` holds no ``adapter_config.json`` itself
LOCA_SUBFOLDER = "unet_loca"
DIFFUSERS_LORA_FILES = ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin")
_PEFT_PREFIX = "base_model.model."
_LORA_KEY_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_linear_layer", "lora_te", "lora_unet", ".lora.")
_LORA_HINT = "load LoRAs with `pipe.load_lora_weights(...)` instead (load_loca reads LoCA adapters)"
_FUSE_STATE = "_loca_fuse_state"
_GRAD_STATE = "_loca_requires_grad_before"


# ----------------------------------------------------------------------------------------------------
# reading adapters


def _is_lora_state_dict(keys) -> bool:
    return any(marker in key for key in keys for marker in _LORA_KEY_MARKERS)


def _read_config(config_path: str, source: str) -> LoCAConfig:
    try:
        with open(config_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{config_path}' is not valid JSON ({error}): the adapter config file is corrupt") from None
    if not isinstance(data, dict):
        raise ValueError(f"'{config_path}' is not an adapter config (a JSON object was expected)")
    peft_type = str(data.get("peft_type") or "").upper()
    if not peft_type:
        raise ValueError(f"'{config_path}' has no 'peft_type': it is not a PEFT adapter config ({source})")
    if peft_type == "LORA":
        raise ValueError(f"'{config_path}' describes a LoRA adapter (peft_type LORA), not a LoCA one: {_LORA_HINT}")
    if peft_type != "LOCA":
        raise ValueError(
            f"'{config_path}' describes a {peft_type} adapter, not LoCA; load it with peft "
            f"(`PeftModel.from_pretrained`) or the loader for that method"
        )
    try:
        config = LoCAConfig.from_pretrained(os.path.dirname(config_path) or ".")
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid LoCA adapter config '{config_path}': {error}") from None
    if not isinstance(config, LoCAConfig):  # pragma: no cover - peft resolved another class
        raise ValueError(f"'{config_path}' did not give a LoCAConfig but {type(config).__name__}")
    return config


def load_loca_state_dict(weights_path: Union[str, os.PathLike]) -> dict[str, torch.Tensor]:
    """The tensors of a LoCA weights file (safetensors, or a PEFT ``adapter_model.bin``) on CPU.

    Raises ``ValueError`` naming the file when it cannot be read (corrupt or truncated), holds LoRA
    weights, or holds no LoCA weights.
    """
    path = os.fspath(weights_path)
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state_dict = load_file(path, device="cpu")
        else:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors' SafetensorError, pickle/zip errors, OSError, ...
        detail = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"Cannot read the LoCA adapter weights file '{path}' ({type(error).__name__}: {detail}): the file is "
            "corrupt or truncated (an interrupted download or save?); download or save it again"
        ) from None
    if not isinstance(state_dict, dict) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"'{path}' does not hold a tensor state dict")
    if not state_dict:
        raise ValueError(f"The LoCA adapter weights file '{path}' is empty")
    if _is_lora_state_dict(state_dict):
        example = next(iter(state_dict))
        raise ValueError(
            f"The weights file '{path}' holds LoRA weights (e.g. '{example}'), not LoCA ones: {_LORA_HINT}"
        )
    if not any(key.endswith(".loca_coefficients") for key in state_dict):
        raise ValueError(
            f"The weights file '{path}' holds no LoCA weights (no '<module>.loca_coefficients' entries; first key: "
            f"'{next(iter(state_dict))}')"
        )
    return state_dict


def _local_adapter_files(path: Path, subfolder: Optional[str], weight_name: Optional[str]) -> tuple[str, str]:
    """(config, weights) in a local directory, or next to a local weights file."""
    if path.is_file():
        directory, weights = path.parent, path
        config = directory / ADAPTER_CONFIG_NAME
        if not config.is_file():
            load_loca_state_dict(weights)  # raises the LoRA / not-LoCA / corrupt errors first
            raise FileNotFoundError(f"No {ADAPTER_CONFIG_NAME} next to '{weights}': pass the adapter directory")
        return str(config), str(weights)

    directory = path / subfolder if subfolder else path
    if not directory.is_dir():
        raise FileNotFoundError(f"No directory '{directory}'")
    if not (directory / ADAPTER_CONFIG_NAME).is_file() and (directory / LOCA_SUBFOLDER / ADAPTER_CONFIG_NAME).is_file():
        directory = directory / LOCA_SUBFOLDER
    config = directory / ADAPTER_CONFIG_NAME
    if not config.is_file():
        lora = [name for name in DIFFUSERS_LORA_FILES if (directory / name).is_file()]
        if lora:
            raise ValueError(f"'{directory}' holds a diffusers LoRA ({lora[0]}), not a LoCA adapter: {_LORA_HINT}")
        present = sorted(p.name for p in directory.iterdir())[:8]
        raise FileNotFoundError(
            f"No LoCA adapter in '{directory}': {ADAPTER_CONFIG_NAME} is missing (found: {present or 'nothing'}). "
            f"Expected the PEFT layout ({ADAPTER_CONFIG_NAME} + {LOCA_WEIGHTS_NAME}), as written by "
            f"`pipe.save_loca(dir)` or `PeftModel.save_pretrained(dir)`"
        )
    names = [weight_name] if weight_name else [LOCA_WEIGHTS_NAME, LOCA_PICKLE_WEIGHTS_NAME]
    for name in names:
        if (directory / name).is_file():
            return str(config), str(directory / name)
    raise FileNotFoundError(f"'{directory}' has {ADAPTER_CONFIG_NAME} but no weights file ({' or '.join(names)})")


def _hub_adapter_files(repo_id: str, subfolder, weight_name, hub_kwargs) -> tuple[str, str]:
    """(config, weights) from a Hub repo: ``subfolder`` or ``subfolder/unet_loca``, the local cache first."""
    candidates = [subfolder or None, "/".join(p for p in (subfolder, LOCA_SUBFOLDER) if p)]
    chosen = None
    cache_only = {**hub_kwargs, "local_files_only": True}
    for candidate in candidates:  # the cache alone: no network, works offline
        try:
            resolve_local_or_hub(repo_id, ADAPTER_CONFIG_NAME, subfolder=candidate, **cache_only)
        except (HubUnavailableError, HubFileNotFoundError):
            continue
        chosen = candidate
        break
    if chosen is None:
        for candidate in candidates:
            try:
                resolve_local_or_hub(repo_id, ADAPTER_CONFIG_NAME, subfolder=candidate, **hub_kwargs)
            except HubFileNotFoundError:
                continue
            chosen = candidate
            break
    if chosen is None:
        hub_keys = {k: hub_kwargs.get(k) for k in ("revision", "token", "timeout") if hub_kwargs.get(k) is not None}
        for name in DIFFUSERS_LORA_FILES:
            if hub_file_exists(repo_id, name, subfolder=subfolder, **hub_keys):
                raise ValueError(
                    f"The Hub repo '{repo_id}' holds a diffusers LoRA ({name}), not a LoCA adapter: {_LORA_HINT}"
                )
        where = f"'{repo_id}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
        raise FileNotFoundError(f"No LoCA adapter in the Hub repo {where}: {ADAPTER_CONFIG_NAME} is missing")
    config = resolve_local_or_hub(repo_id, ADAPTER_CONFIG_NAME, subfolder=chosen, **hub_kwargs)
    names = [weight_name] if weight_name else [LOCA_WEIGHTS_NAME, LOCA_PICKLE_WEIGHTS_NAME]
    for name in names:
        try:
            return config, resolve_local_or_hub(repo_id, name, subfolder=chosen, **hub_kwargs)
        except HubFileNotFoundError:
            continue
    raise FileNotFoundError(f"The Hub repo '{repo_id}' has {ADAPTER_CONFIG_NAME} but no weights ({' or '.join(names)})")


# ----------------------------------------------------------------------------------------------------
# model helpers


def _loca_layers(model: nn.Module) -> list[tuple[str, LoCALayer]]:
    return [(name, module) for name, module in model.named_modules() if isinstance(module, LoCALayer)]


def _loca_names(model: nn.Module) -> list[str]:
    configs = getattr(model, "peft_config", None) or {}
    return [name for name, config in configs.items() if isinstance(config, LoCAConfig)]


def _active_adapters(model: nn.Module) -> Optional[list[str]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            return list(module.active_adapters)
    return None


def _fingerprint(weight: torch.Tensor) -> torch.Tensor:
    """Cheap on-device checksum: did anything write the weight since it was fused?"""
    flat = weight.detach().reshape(-1).double()
    ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
    return torch.stack([flat.sum(), (flat * ramp).sum(), (flat * flat).sum()]).cpu()


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def _refreeze(model: nn.Module) -> None:
    """Adapters loaded for inference stay frozen (diffusers' ``set_adapters`` turns requires_grad on)."""
    configs = getattr(model, "peft_config", None) or {}
    frozen = {name for name, config in configs.items() if isinstance(config, LoCAConfig) and config.inference_mode}
    for _, module in _loca_layers(model):
        for container in (module.loca_coefficients, module.loca_locations):
            for name, parameter in container.items():
                if name in frozen:
                    parameter.requires_grad_(False)


class _Offloading:
    """Remove accelerate's CPU-offload hooks while layers are swapped, put them back afterwards (as diffusers'
    LoRA loader does)."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.state = (False, False, False)

    def __enter__(self):
        try:
            from diffusers.loaders.lora_base import _func_optionally_disable_offloading
        except ImportError:  # pragma: no cover - diffusers internals moved
            return self
        if hasattr(self.pipeline, "components"):
            self.state = _func_optionally_disable_offloading(self.pipeline)
        return self

    def __exit__(self, *exc):
        model_offload, sequential_offload, group_offload = self.state
        if model_offload:
            self.pipeline.enable_model_cpu_offload()
        elif sequential_offload:
            self.pipeline.enable_sequential_cpu_offload()
        elif group_offload:
            try:
                from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading
            except ImportError:  # pragma: no cover
                return False
            for component in self.pipeline.components.values():
                if isinstance(component, nn.Module):
                    _maybe_remove_and_reapply_group_offloading(component)
        return False


# ----------------------------------------------------------------------------------------------------
# the mixin


class LoCALoaderMixin:
    """LoCA adapters for diffusers pipelines: ``load_loca``, ``set_loca_adapters``, ``fuse_loca``,
    ``unfuse_loca``, ``unload_loca``, ``save_loca`` and friends.

    Mix it in before the diffusers pipeline class, e.g.
    ``class MyPipeline(LoCALoaderMixin, StableDiffusionInstructPix2PixPipeline): pass`` (ready-made classes
    are in :mod:`loca_diffusion.pipelines`). The adapters go into the first of ``loca_loadable_modules``
    the pipeline has (``unet``, else ``transformer``); adapter names live in that model's ``peft_config``,
    next to any LoRA ones, so diffusers' own ``set_adapters`` / ``delete_adapters`` see them too.
    """

    loca_loadable_modules = ("unet", "transformer")

    # ------------------------------------------------------------------ helpers

    def _loca_model(self) -> nn.Module:
        for name in self.loca_loadable_modules:
            model = getattr(self, name, None)
            if isinstance(model, nn.Module):
                if not hasattr(model, "add_adapter"):
                    raise TypeError(
                        f"The pipeline's {name} ({type(model).__name__}) does not support adapters "
                        "(diffusers' PeftAdapterMixin)"
                    )
                return model
        raise ValueError(f"{type(self).__name__} has none of {self.loca_loadable_modules}: nothing to put LoCA into")

    def _check_loaded(self, model: nn.Module, names: list[str]) -> None:
        configs = getattr(model, "peft_config", None) or {}
        unknown = [name for name in names if name not in configs]
        if unknown:
            raise ValueError(
                f"No adapter named {unknown} is loaded; loaded LoCA adapters: {_loca_names(model)}"
                + (f", other adapters: {[n for n in configs if n not in _loca_names(model)]}" if configs else "")
            )

    def get_loca_adapters(self) -> list[str]:
        """Names of the loaded LoCA adapters, in load order."""
        return _loca_names(self._loca_model())

    def get_active_loca_adapters(self) -> list[str]:
        """Names of the LoCA adapters the model currently applies."""
        model = self._loca_model()
        names = set(_loca_names(model))
        active = _active_adapters(model) or []
        return [name for name in active if name in names]

    # ------------------------------------------------------------------ loading

    def load_loca(
        self,
        pretrained_model_name_or_path: Union[str, os.PathLike],
        adapter_name: Optional[str] = None,
        *,
        subfolder: Optional[str] = None,
        weight_name: Optional[str] = None,
        revision: Optional[str] = None,
        cache_dir: Optional[Union[str, os.PathLike]] = None,
        local_files_only: bool = False,
        token: Optional[Union[str, bool]] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> str:
        """Load a LoCA adapter into the pipeline's UNet and make it the active adapter.

        Args:
            pretrained_model_name_or_path: a local directory in the PEFT layout (``adapter_config.json`` +
                ``adapter_model.safetensors``, as written by :meth:`save_loca` or ``PeftModel.save_pretrained``),
                a directory holding it in ``unet_loca/``, the weights file itself, or a Hub repo id.
            adapter_name: name of the adapter; default ``default_0``, ``default_1``, ... (the first free one).
            subfolder, revision, cache_dir, local_files_only, token: where to find it on the Hub (or the
                subfolder of a local directory). ``weight_name`` overrides ``adapter_model.safetensors``.
            timeout: seconds to wait for the Hub before giving up (no retries; see :mod:`loca_diffusion.hub`).

        Returns:
            the adapter name.

        Raises:
            ValueError: a LoRA (PEFT or diffusers layout), another PEFT method, an adapter made for another
                model (the message names the layer), a corrupt file (the message names it), a taken name.
            HubUnavailableError: a Hub id that is not cached while the Hub cannot be reached.
            FileNotFoundError: no adapter there.
        """
        model = self._loca_model()
        name_or_path = os.fspath(pretrained_model_name_or_path)
        local = Path(name_or_path).expanduser()
        if local.exists():
            config_path, weights_path = _local_adapter_files(local, subfolder, weight_name)
        elif looks_like_repo_id(name_or_path):
            hub_kwargs = dict(
                revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, token=token, timeout=timeout
            )
            config_path, weights_path = _hub_adapter_files(name_or_path, subfolder, weight_name, hub_kwargs)
        else:
            raise FileNotFoundError(f"'{name_or_path}' is neither an existing path nor a Hugging Face Hub repo id")
        source = f"'{os.path.dirname(weights_path)}'"

        config = _read_config(config_path, source)
        state_dict = load_loca_state_dict(weights_path)

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
        if self._loca_fused(model):
            raise ValueError("LoCA adapters are fused; call `pipe.unfuse_loca()` before loading another one")

        previous_active = _active_adapters(model)
        if not _loca_layers(model) and _GRAD_STATE not in model.__dict__:
            model.__dict__[_GRAD_STATE] = {n: p.requires_grad for n, p in model.named_parameters()}
        config.inference_mode = True
        with _Offloading(self):
            try:
                with warnings.catch_warnings():
                    # several adapters in one model is what this API is for
                    warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
                    model.add_adapter(config, adapter_name=adapter_name)
                from peft import set_peft_model_state_dict

                # files hold PeftModel's keys (`base_model.model.<module>...`); the model is not wrapped, and
                # peft maps modules_to_save entries of a bare model without that prefix only
                state_dict = {key.removeprefix(_PEFT_PREFIX): value for key, value in state_dict.items()}
                result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
                unexpected = [k for k in getattr(result, "unexpected_keys", []) if k]
                if unexpected:
                    raise ValueError(
                        f"{len(unexpected)} entries of the file match nothing in this {type(model).__name__}, "
                        f"e.g. '{unexpected[0]}': it was made for another model"
                    )
            except Exception as error:
                self._discard_adapter(model, adapter_name, previous_active)
                message = str(error).strip() or type(error).__name__
                wrapped = ValueError(
                    f"Cannot load the LoCA adapter from '{weights_path}' into the {type(model).__name__}: {message}"
                )
                if isinstance(error, (ValueError, KeyError, RuntimeError)):
                    raise wrapped from None
                raise wrapped from error
        _refreeze(model)
        return adapter_name

    def _discard_adapter(self, model: nn.Module, adapter_name: str, previous_active: Optional[list[str]]) -> None:
        """Undo a half-done load: remove the adapter's layers and config, restore the active adapters."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=f"Adapter {re.escape(adapter_name)} was active")
            for _, module in list(model.named_modules()):
                if isinstance(module, BaseTunerLayer) and adapter_name in module._all_available_adapter_names():
                    module.delete_adapter(adapter_name)
        self._unwrap_modules_to_save(model, [adapter_name])
        configs = getattr(model, "peft_config", None)
        if configs is not None:
            configs.pop(adapter_name, None)
        self._remove_empty_loca_layers(model)
        self._forget_configs_if_empty(model)
        if previous_active and getattr(model, "peft_config", None):
            for module in model.modules():
                if isinstance(module, BaseTunerLayer):
                    module.set_adapter(previous_active)
            _refreeze(model)

    @staticmethod
    def _remove_empty_loca_layers(model: nn.Module) -> None:
        for name, module in reversed(_loca_layers(model)):
            if not module.loca_coefficients:
                _set_submodule(model, name, module.base_layer)

    @staticmethod
    def _forget_configs_if_empty(model: nn.Module) -> None:
        """Once no LoCA adapter is left: drop the bookkeeping; once no adapter at all is left: the model's
        own attributes and requires_grad flags as they were before the first ``load_loca``."""
        if hasattr(model, "peft_config") and not model.peft_config:
            del model.peft_config
        if _loca_names(model):
            return
        grads = model.__dict__.pop(_GRAD_STATE, None)
        model.__dict__.pop(_FUSE_STATE, None)
        if not getattr(model, "peft_config", None):
            model.__dict__.pop("_hf_peft_config_loaded", None)  # back to the class default (False)
            if grads is not None:
                for name, parameter in model.named_parameters():
                    if name in grads:
                        parameter.requires_grad_(grads[name])

    # ------------------------------------------------------------------ several adapters

    def set_loca_adapters(
        self,
        adapter_names: Union[str, list[str]],
        adapter_weights: Optional[Union[float, dict, list[Optional[Union[float, dict]]]]] = None,
    ) -> None:
        """Activate these adapters (and only these) with these weights: diffusers' ``set_adapters``.

        Each adapter's update is multiplied by its weight (``dW = weight * scaling * C_out^T S C_in``);
        a weight may be a per-block dict as in diffusers. Names of LoRA adapters in the same UNet may be
        listed too. Weights are not saved by :meth:`save_loca` (as with LoRA).
        """
        model = self._loca_model()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._check_loaded(model, names)
        if self._loca_fused(model):
            raise ValueError("LoCA adapters are fused; call `pipe.unfuse_loca()` before `set_loca_adapters`")
        weights = adapter_weights
        if isinstance(weights, list) and len(weights) != len(names):
            raise ValueError(f"{len(names)} adapter names but {len(weights)} weights")
        model.set_adapters(names, weights)
        _refreeze(model)

    def disable_loca(self) -> None:
        """Run the base model (LoCA adapters stay loaded; fused ones are unfused first)."""
        model = self._loca_model()
        if self._loca_fused(model):
            self.unfuse_loca()
        for _, module in _loca_layers(model):
            module.enable_adapters(False)

    def enable_loca(self) -> None:
        """Apply the active LoCA adapters again after :meth:`disable_loca`."""
        for _, module in _loca_layers(self._loca_model()):
            module.enable_adapters(True)
        _refreeze(self._loca_model())

    def delete_loca_adapters(self, adapter_names: Union[str, list[str]]) -> None:
        """Remove these LoCA adapters (fused adapters are unfused first)."""
        model = self._loca_model()
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        self._check_loaded(model, names)
        not_loca = [name for name in names if name not in _loca_names(model)]
        if not_loca:
            raise ValueError(f"{not_loca} are not LoCA adapters; use `pipe.delete_adapters` for those")
        if self._loca_fused(model):
            self.unfuse_loca()
        with _Offloading(self):
            for name in names:
                for _, module in _loca_layers(model):
                    if name in module.loca_coefficients:
                        module.delete_adapter(name)
                self._unwrap_modules_to_save(model, [name])
                model.peft_config.pop(name, None)
            self._remove_empty_loca_layers(model)
            self._forget_configs_if_empty(model)

    # ------------------------------------------------------------------ fusing

    @staticmethod
    def _loca_fused(model: nn.Module) -> bool:
        return any(module.merged for _, module in _loca_layers(model))

    def fuse_loca(
        self,
        scale: float = 1.0,
        adapter_names: Optional[Union[str, list[str]]] = None,
        safe_fusing: bool = True,
        keep_base_weights: bool = True,
    ) -> None:
        """Merge ``scale * dW`` of the active (or the named) LoCA adapters into the UNet's weights.

        Inference then costs nothing extra. With ``keep_base_weights`` (default) a CPU copy of each
        fused layer's weight is kept so that :meth:`unfuse_loca` / :meth:`unload_loca` restore it bit for
        bit; without it, unfusing subtracts ``dW`` again (equal up to float rounding). ``safe_fusing``
        checks the merged weights for NaN/Inf before writing them.
        """
        model = self._loca_model()
        loaded = _loca_names(model)
        if not loaded:
            raise ValueError("No LoCA adapter is loaded")
        if adapter_names is None:
            names = self.get_active_loca_adapters()
        else:
            names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
            self._check_loaded(model, names)
            not_loca = [name for name in names if name not in loaded]
            if not_loca:
                raise ValueError(f"{not_loca} are not LoCA adapters; use `pipe.fuse_lora` for those")
        if not names:
            raise ValueError("No LoCA adapter is active; pass `adapter_names` or call `set_loca_adapters` first")
        states = model.__dict__.setdefault(_FUSE_STATE, {})
        try:
            for layer_name, module in _loca_layers(model):
                targets = [n for n in names if n in module.loca_coefficients and n not in module.merged_adapters]
                if not targets:
                    continue
                weight = module.get_base_layer().weight
                state = states.setdefault(layer_name, {"weight": None, "fingerprint": None, "multipliers": {}})
                if keep_base_weights and not module.merged and state["weight"] is None:
                    state["weight"] = weight.detach().to("cpu", copy=True)
                for name in targets:
                    state["multipliers"].setdefault(name, module.loca_multiplier[name])
                    module.set_scale(name, module.loca_multiplier[name] * float(scale))
                module.merge(safe_merge=safe_fusing, adapter_names=targets)
                state["fingerprint"] = _fingerprint(module.get_base_layer().weight)
        except Exception:
            self.unfuse_loca()
            raise

    def unfuse_loca(self) -> None:
        """Undo :meth:`fuse_loca`: the weights from before fusing (bit for bit when they were kept), and
        the adapter weights from before fusing."""
        model = self._loca_model()
        states = model.__dict__.get(_FUSE_STATE, {})
        for layer_name, module in _loca_layers(model):
            state = states.pop(layer_name, None)
            if state is not None:
                for name, multiplier in state["multipliers"].items():
                    module.set_scale(name, multiplier)
            if not module.merged:
                continue
            weight = module.get_base_layer().weight
            if state is not None and state["weight"] is not None:
                if torch.equal(_fingerprint(weight), state["fingerprint"]):
                    with torch.no_grad():
                        weight.data.copy_(state["weight"].to(weight.device))
                    del module.merged_adapters[:]
                    module._weight_cache = None
                    continue
                warnings.warn(
                    f"The weight of '{layer_name}' changed after fuse_loca (another adapter fused into it?); "
                    "unfusing LoCA by subtracting its update (exact up to float rounding)"
                )
            # adapters merged outside fuse_loca (e.g. diffusers' fuse_lora): the layer's own unmerge
            module.unmerge()
        model.__dict__.pop(_FUSE_STATE, None)

    # ------------------------------------------------------------------ unloading

    @staticmethod
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
                _set_submodule(model, module_name, module.original_module)
            else:
                for name in names:
                    if name in held:
                        remaining = [a for a in module.active_adapters if a != name] or sorted(held - {name})[:1]
                        module.delete_adapter(name, remaining)

    def unload_loca(self, keep_fused: bool = False) -> None:
        """Remove every LoCA adapter: the UNet's modules, weights and outputs are the base model's again
        (bit for bit; fused adapters are unfused first). LoRA adapters in the same UNet stay.

        ``keep_fused=True`` instead keeps what :meth:`fuse_loca` merged in the weights and only drops the
        LoCA layers (diffusers' ``fuse_lora()`` + ``unload_lora_weights()`` idiom).
        """
        model = self._loca_model()
        names = _loca_names(model)
        if keep_fused:
            model.__dict__.pop(_FUSE_STATE, None)
        elif self._loca_fused(model) or model.__dict__.get(_FUSE_STATE):
            self.unfuse_loca()
        with _Offloading(self):
            self._unwrap_modules_to_save(model, names)
            for layer_name, module in reversed(_loca_layers(model)):
                _set_submodule(model, layer_name, module.base_layer)
            configs = getattr(model, "peft_config", None)
            if configs is not None:
                for name in names:
                    configs.pop(name, None)
            self._forget_configs_if_empty(model)
            try:
                from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading

                _maybe_remove_and_reapply_group_offloading(model)
            except ImportError:  # pragma: no cover
                pass

    # ------------------------------------------------------------------ saving

    def save_loca(
        self,
        save_directory: Union[str, os.PathLike],
        adapter_name: Optional[str] = None,
        safe_serialization: bool = True,
        is_main_process: bool = True,
    ) -> str:
        """Write one LoCA adapter in the PEFT layout (``adapter_config.json`` + ``adapter_model.safetensors``,
        keys ``base_model.model.<module>.loca_coefficients`` / ``loca_locations`` / ``loca_shape``), exactly
        what ``PeftModel.save_pretrained`` writes: ``PeftModel.from_pretrained(unet, dir)`` and
        :meth:`load_loca` read it. Without ``adapter_name``: the only (or the only active) LoCA adapter.
        Returns the directory.
        """
        from peft import get_peft_model_state_dict

        model = self._loca_model()
        loaded = _loca_names(model)
        if not loaded:
            raise ValueError("No LoCA adapter is loaded: nothing to save")
        if adapter_name is None:
            active = self.get_active_loca_adapters()
            if len(loaded) == 1:
                adapter_name = loaded[0]
            elif len(active) == 1:
                adapter_name = active[0]
            else:
                raise ValueError(f"Several LoCA adapters are loaded ({loaded}); pass `adapter_name`")
        elif adapter_name not in loaded:
            raise ValueError(f"No LoCA adapter named '{adapter_name}'; loaded: {loaded}")

        state_dict = get_peft_model_state_dict(model, adapter_name=adapter_name)
        state_dict = {
            (key if key.startswith(_PEFT_PREFIX) else _PEFT_PREFIX + key): value.detach().contiguous()
            for key, value in state_dict.items()
        }
        config = copy.deepcopy(model.peft_config[adapter_name])
        config.inference_mode = True
        if config.base_model_name_or_path is None:
            config.base_model_name_or_path = getattr(getattr(self, "config", None), "_name_or_path", None) or None
        directory = os.fspath(save_directory)
        if is_main_process:
            os.makedirs(directory, exist_ok=True)
            if safe_serialization:
                from safetensors.torch import save_file

                save_file(state_dict, os.path.join(directory, LOCA_WEIGHTS_NAME), metadata={"format": "pt"})
            else:
                torch.save(state_dict, os.path.join(directory, LOCA_PICKLE_WEIGHTS_NAME))
            config.save_pretrained(
                directory,
                auto_mapping_dict={"base_model_class": type(model).__name__, "parent_library": type(model).__module__},
            )
        return directory
