"""Adapter files: one reader (:func:`read_loca_adapter`) and one writer (:func:`write_loca_adapter`).

The layout on disk is PEFT's: ``adapter_config.json`` + ``adapter_model.safetensors`` with keys
``base_model.model.<module>.<tensor>``, the directory ``PeftModel.save_pretrained`` writes and
``PeftModel.from_pretrained(model, dir)`` reads. LoRA adapters also get diffusers' file
(``pytorch_lora_weights.safetensors``, keys ``unet.<module>.lora_A.weight``, the LoRA config in the
header), so ``pipe.load_lora_weights(dir)`` loads them too.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from ..hub import (
    HUB_TIMEOUT,
    HubFileNotFoundError,
    HubUnavailableError,
    hub_file_exists,
    looks_like_repo_id,
    resolve_local_or_hub,
)
from ..tuners.loca import LoCAConfig

ADAPTER_CONFIG_NAME = "adapter_config.json"
LOCA_WEIGHTS_NAME = "adapter_model.safetensors"
LOCA_PICKLE_WEIGHTS_NAME = "adapter_model.bin"
#: searched when the directory given to ``load_loca`` holds no ``adapter_config.json`` itself
LOCA_SUBFOLDER = "unet_loca"
#: diffusers' LoRA weights file (``diffusers.loaders.lora_base.LORA_WEIGHT_NAME_SAFE``)
DIFFUSERS_LORA_WEIGHTS_NAME = "pytorch_lora_weights.safetensors"
DIFFUSERS_LORA_FILES = (DIFFUSERS_LORA_WEIGHTS_NAME, "pytorch_lora_weights.bin")
#: where diffusers' ``load_lora_weights`` looks for the LoRA config in the safetensors header
_DIFFUSERS_LORA_METADATA_KEY = "lora_adapter_metadata"
#: the key prefix of ``PeftModel``'s state dicts (and of every adapter file)
PEFT_PREFIX = "base_model.model."
_LORA_KEY_MARKERS = ("lora_A", "lora_B", "lora_down", "lora_up", "lora_linear_layer", "lora_te", "lora_unet", ".lora.")
_LORA_HINT = "load LoRAs with `pipe.load_lora_weights(...)` instead (load_loca reads LoCA adapters)"


@dataclass(frozen=True)
class LoCAAdapter:
    """A LoCA adapter read and checked by :func:`read_loca_adapter`, not yet in any model."""

    config: LoCAConfig
    #: ``<module>.loca_coefficients`` / ``loca_locations`` (/ ``loca_shape``) tensors on CPU, keys with or
    #: without the ``base_model.model.`` prefix
    state_dict: dict[str, torch.Tensor]
    #: where it came from (the weights file, or "an in-memory state dict"), for error messages
    source: str


# ----------------------------------------------------------------------------------------------------
# validation


def _is_lora_state_dict(keys) -> bool:
    return any(marker in key for key in keys for marker in _LORA_KEY_MARKERS)


def _config_from_dict(data: Any, source: str) -> LoCAConfig:
    """A :class:`LoCAConfig` from the contents of an ``adapter_config.json`` (what ``PeftConfig.from_pretrained``
    does after reading the file), with errors naming ``source``."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{source} is not an adapter config (a JSON object was expected)")
    peft_type = str(data.get("peft_type") or "").upper()
    if not peft_type:
        raise ValueError(f"{source} has no 'peft_type': it is not a PEFT adapter config")
    if peft_type == "LORA":
        raise ValueError(f"{source} describes a LoRA adapter (peft_type LORA), not a LoCA one: {_LORA_HINT}")
    if peft_type != "LOCA":
        raise ValueError(
            f"{source} describes a {peft_type} adapter, not LoCA; load it with peft "
            f"(`PeftModel.from_pretrained`) or the loader for that method"
        )
    kwargs = {key: value for key, value in data.items() if key != "runtime_config"}  # runtime-only, as in peft
    try:
        config = LoCAConfig.from_peft_type(**LoCAConfig.check_kwargs(**kwargs))
    except (TypeError, ValueError) as error:
        raise ValueError(f"Invalid LoCA adapter config {source}: {error}") from None
    if not isinstance(config, LoCAConfig):  # pragma: no cover - peft resolved another class
        raise ValueError(f"{source} did not give a LoCAConfig but {type(config).__name__}")
    return config


def _read_config(config_path: str) -> LoCAConfig:
    try:
        with open(config_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"'{config_path}' is not valid JSON ({error}): the adapter config file is corrupt") from None
    return _config_from_dict(data, f"'{config_path}'")


def save_safetensors(
    tensors: dict[str, torch.Tensor], path: Union[str, os.PathLike], metadata: Optional[dict[str, str]] = None
) -> None:
    """``safetensors.torch.save_file``, with the mode every other written file gets (0666 less the umask).

    safetensors 0.8 writes through a private temporary file, so its files come out 0600 where the JSON and
    pictures next to them are 0644. This serialises in memory, writes a temporary file in the same folder
    with plain ``open`` (which honours the umask) and renames it over ``path``: as atomic as ``save_file``.
    """
    from safetensors.torch import save

    path = Path(path)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        with open(partial, "wb") as handle:
            handle.write(save(tensors, metadata=metadata))
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _check_state_dict(state_dict: Any, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state_dict, Mapping) or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise ValueError(f"{source} does not hold a tensor state dict")
    if not state_dict:
        raise ValueError(f"The LoCA adapter weights {source} are empty")
    if _is_lora_state_dict(state_dict):
        raise ValueError(
            f"The weights {source} are LoRA weights (e.g. '{next(iter(state_dict))}'), not LoCA ones: {_LORA_HINT}"
        )
    if not any(key.endswith(".loca_coefficients") for key in state_dict):
        raise ValueError(
            f"The weights {source} hold no LoCA weights (no '<module>.loca_coefficients' entries; first key: "
            f"'{next(iter(state_dict))}')"
        )
    return dict(state_dict)


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
    return _check_state_dict(state_dict, f"in the file '{path}'")


def to_model_keys(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Adapter-file keys (``base_model.model.<module>...``) as a model without the ``PeftModel`` wrapper names
    them (``<module>...``): what ``set_peft_model_state_dict`` on a diffusers/transformers model expects."""
    return {key.removeprefix(PEFT_PREFIX): value for key, value in state_dict.items()}


# ----------------------------------------------------------------------------------------------------
# finding the files


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
    nested = directory / LOCA_SUBFOLDER
    if not (directory / ADAPTER_CONFIG_NAME).is_file() and (nested / ADAPTER_CONFIG_NAME).is_file():
        directory = nested
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
    raise FileNotFoundError(
        f"The Hub repo '{repo_id}' has {ADAPTER_CONFIG_NAME} but no weights ({' or '.join(names)})"
    )


# ----------------------------------------------------------------------------------------------------
# the reader


def read_loca_adapter(
    pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
    *,
    loca_config: Optional[Union[LoCAConfig, Mapping[str, Any]]] = None,
    subfolder: Optional[str] = None,
    weight_name: Optional[str] = None,
    revision: Optional[str] = None,
    cache_dir: Optional[Union[str, os.PathLike]] = None,
    local_files_only: bool = False,
    token: Optional[Union[str, bool]] = None,
    timeout: float = HUB_TIMEOUT,
) -> LoCAAdapter:
    """Read and check a LoCA adapter: its config and tensors, in no model yet.

    Args:
        pretrained_model_name_or_path_or_dict: a local directory in the PEFT layout (``adapter_config.json`` +
            ``adapter_model.safetensors``), a directory holding it in ``unet_loca/``, the weights file itself, a
            Hub repo id, or an in-memory state dict (keys as in the file, ``base_model.model.<module>.loca_*``,
            or as ``peft.get_peft_model_state_dict(unet)`` returns them, ``<module>.loca_*``).
        loca_config: the config of an in-memory state dict (required then, refused otherwise): a
            :class:`LoCAConfig` or the contents of an ``adapter_config.json`` (``peft_type`` may be left out).
        subfolder, revision, cache_dir, local_files_only, token: where to find it on the Hub (or the subfolder of
            a local directory). ``weight_name`` overrides ``adapter_model.safetensors``.
        timeout: seconds to wait for the Hub before giving up (no retries; see :mod:`loca_diffusion.hub`).

    Raises:
        ValueError: a LoRA (PEFT or diffusers layout), another PEFT method, a corrupt or invalid file (the
            message names it), an in-memory state dict without ``loca_config``.
        HubUnavailableError: a Hub id that is not cached while the Hub cannot be reached.
        FileNotFoundError: no adapter there.
    """
    if isinstance(pretrained_model_name_or_path_or_dict, Mapping):
        if loca_config is None:
            raise ValueError(
                "An in-memory state dict needs its config: pass `loca_config=` (a LoCAConfig, or the contents of "
                "the adapter's adapter_config.json)"
            )
        source = "an in-memory state dict"
        if isinstance(loca_config, LoCAConfig):
            config = copy.deepcopy(loca_config)  # the adapter owns its config, as one read from a file
        else:
            config = _config_from_dict({"peft_type": "LOCA", **loca_config}, "the `loca_config` passed")
        state_dict = _check_state_dict(pretrained_model_name_or_path_or_dict, f"of {source}")
        state_dict = {key: value.detach().to("cpu") for key, value in state_dict.items()}
        return LoCAAdapter(config, state_dict, source)
    if loca_config is not None:
        raise ValueError("`loca_config` is for in-memory state dicts; an adapter directory has its own config")

    name_or_path = os.fspath(pretrained_model_name_or_path_or_dict)
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
    config = _read_config(config_path)
    return LoCAAdapter(config, load_loca_state_dict(weights_path), f"'{weights_path}'")


# ----------------------------------------------------------------------------------------------------
# the writer


def _peft_state_dict(model: nn.Module, adapter_name: str) -> dict[str, torch.Tensor]:
    """The adapter's tensors under the keys ``PeftModel.save_pretrained`` writes, whether or not ``model`` is
    wrapped in a ``PeftModel`` (diffusers' ``add_adapter`` leaves it bare)."""
    from peft.utils import get_peft_model_state_dict

    state_dict = get_peft_model_state_dict(model, adapter_name=adapter_name, save_embedding_layers=False)
    return {
        (key if key.startswith(PEFT_PREFIX) else PEFT_PREFIX + key): value.detach().to("cpu").contiguous()
        for key, value in state_dict.items()
    }


def write_loca_adapter(
    model: nn.Module,
    save_directory: Union[str, os.PathLike],
    adapter_name: str = "default",
    *,
    safe_serialization: bool = True,
    base_model_name_or_path: Optional[str] = None,
    diffusers_lora_prefix: Optional[str] = "unet",
) -> Path:
    """Write ``model``'s adapter ``adapter_name`` (LoCA, or a peft baseline: LoRA, FourierFT, ...) in the PEFT layout.

    ``adapter_config.json`` + ``adapter_model.safetensors`` (``adapter_model.bin`` without
    ``safe_serialization``) with keys ``base_model.model.<module>.<tensor>``: exactly what
    ``PeftModel.save_pretrained`` writes for the same adapter (``inference_mode`` true, the ``auto_mapping`` of
    the model class), so ``PeftModel.from_pretrained(model, dir)`` and ``pipe.load_loca(dir)`` (LoCA) read it.
    ``model`` may be a ``PeftModel`` or a model with the adapter added in place (diffusers' ``add_adapter``).

    A LoRA adapter also gets diffusers' ``pytorch_lora_weights.safetensors`` (keys
    ``<diffusers_lora_prefix>.<module>.lora_A.weight``, the LoRA config in the header, as diffusers' own
    ``save_lora_weights`` writes it), so ``pipe.load_lora_weights(dir)`` loads it into the pipeline's
    ``diffusers_lora_prefix`` component (``None``: no such file).

    ``base_model_name_or_path`` is recorded when the adapter's config has none. Returns the directory.
    """
    from peft import LoraConfig, PeftModel

    configs = getattr(model, "peft_config", None) or {}
    if adapter_name not in configs:
        raise ValueError(
            f"The {type(model).__name__} has no adapter named '{adapter_name}' (adapters: {list(configs)})"
        )
    state_dict = _peft_state_dict(model, adapter_name)
    if not state_dict:
        raise ValueError(f"Adapter '{adapter_name}' of the {type(model).__name__} has no tensors to save")
    config = copy.deepcopy(configs[adapter_name])
    config.inference_mode = True
    if config.base_model_name_or_path is None:
        config.base_model_name_or_path = base_model_name_or_path
    for field_name, value in vars(config).items():
        if isinstance(value, set):  # peft writes sets in hash order, which changes between processes
            setattr(config, field_name, sorted(value))
    base_class = type(model.get_base_model() if isinstance(model, PeftModel) else model)
    auto_mapping = None
    if config.task_type is None:  # as PeftModel.save_pretrained: the class to rebuild the base model with
        auto_mapping = {"base_model_class": base_class.__name__, "parent_library": base_class.__module__}

    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    if safe_serialization:
        save_safetensors(state_dict, directory / LOCA_WEIGHTS_NAME, metadata={"format": "pt"})
    else:
        torch.save(state_dict, directory / LOCA_PICKLE_WEIGHTS_NAME)
    config.save_pretrained(str(directory), auto_mapping_dict=auto_mapping)
    if isinstance(config, LoraConfig) and diffusers_lora_prefix:
        _write_diffusers_lora(state_dict, config, directory, diffusers_lora_prefix)
    return directory


def _write_diffusers_lora(state_dict: dict, config, directory: Path, prefix: str) -> None:
    """diffusers' LoRA file: ``<prefix>.<module>...`` keys and the LoRA config under ``<prefix>.<field>`` in the
    header (what ``load_lora_weights`` rebuilds the ``LoraConfig`` from: rank, alpha, targets)."""
    tensors = {f"{prefix}.{key.removeprefix(PEFT_PREFIX)}": value for key, value in state_dict.items()}
    fields = {key: sorted(value) if isinstance(value, set) else value for key, value in config.to_dict().items()}
    metadata = {f"{prefix}.{key}": value for key, value in fields.items()}
    save_safetensors(
        tensors,
        directory / DIFFUSERS_LORA_WEIGHTS_NAME,
        metadata={"format": "pt", _DIFFUSERS_LORA_METADATA_KEY: json.dumps(metadata, indent=2, sort_keys=True)},
    )
