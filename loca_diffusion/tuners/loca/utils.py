"""Module-tree helpers: the LoCA layers of a model, and getting / setting a submodule by the name adapter files
use, through DDP / DataParallel, FSDP, activation-checkpointing and ``torch.compile`` wrappers."""

from __future__ import annotations

from typing import Iterator, Optional

import torch.nn as nn

from .layer import LoCALayer

# Name segments that wrappers insert between a model and its layers: FSDP, activation checkpointing,
# torch.compile. Adapter files and PEFT state dicts never contain them.
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod")


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (as accelerate's
    ``prepare`` returns it), else ``model`` itself."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _innermost(module: nn.Module) -> nn.Module:
    while (attribute := _wrapper_attribute(module)) is not None:
        module = getattr(module, attribute)
    return module


def _wrapper_attribute(module: nn.Module) -> Optional[str]:
    return next((w for w in _WRAPPER_SEGMENTS if isinstance(getattr(module, w, None), nn.Module)), None)


def clean_module_name(name: str) -> str:
    """``name`` without wrapper segments (FSDP, activation checkpointing, ``torch.compile``)."""
    return ".".join(part for part in name.split(".") if part not in _WRAPPER_SEGMENTS)


def iter_loca_layers(model: nn.Module) -> Iterator[tuple[str, LoCALayer]]:
    """Every LoCA layer of ``model`` with its name as adapter files and PEFT state dicts spell it: a DDP /
    DataParallel wrapper is looked through and FSDP, activation-checkpointing and ``torch.compile``
    wrapper segments are left out of the names."""
    for name, module in unwrap_parallel(model).named_modules():
        if isinstance(module, LoCALayer):
            yield clean_module_name(name), module


def get_wrapped_submodule(model: nn.Module, name: str) -> nn.Module:
    """``model.get_submodule(name)`` for a ``name`` from :func:`iter_loca_layers`: wrappers are looked through."""
    module = _innermost(unwrap_parallel(model))
    for part in filter(None, clean_module_name(name).split(".")):
        module = _innermost(getattr(module, part))
    return module


def set_wrapped_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` where :func:`get_wrapped_submodule` finds ``name``, inside any wrapper around the old one."""
    parent_name, _, child = clean_module_name(name).rpartition(".")
    parent = get_wrapped_submodule(model, parent_name)
    while (attribute := _wrapper_attribute(getattr(parent, child))) is not None:
        parent, child = getattr(parent, child), attribute
    setattr(parent, child, module)
