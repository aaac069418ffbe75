"""``pipe.load_loca(...)``: the pipeline-facing API. It picks the model (``unet``, else ``transformer``),
takes accelerate's offloading hooks off while layers are swapped, and delegates to
:mod:`~loca_diffusion.loaders.model_ops` and :mod:`~loca_diffusion.loaders.adapter_files`."""

from __future__ import annotations

import os
from typing import Any, Mapping, Optional, Union

import torch
import torch.nn as nn

from . import model_ops
from .adapter_files import read_loca_adapter, write_loca_adapter

__all__ = ["LoCALoaderMixin"]


class _Offloading:
    """Remove accelerate's CPU-offload hooks while layers are swapped, put them back afterwards (as diffusers'
    LoRA loader does)."""

    def __init__(self, pipeline, model: Optional[nn.Module] = None):
        self.pipeline = pipeline
        self.model = model  # group offloading of this model is re-applied to its new modules
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
        elif group_offload or self.model is not None:
            try:
                from diffusers.hooks.group_offloading import _maybe_remove_and_reapply_group_offloading
            except ImportError:  # pragma: no cover
                return False
            components = self.pipeline.components.values() if group_offload else [self.model]
            for component in components:
                if isinstance(component, nn.Module):
                    _maybe_remove_and_reapply_group_offloading(component)
        return False


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

    def _loca_model_name(self) -> str:
        for name in self.loca_loadable_modules:
            if isinstance(getattr(self, name, None), nn.Module):
                return name
        raise ValueError(f"{type(self).__name__} has none of {self.loca_loadable_modules}: nothing to put LoCA into")

    def _loca_model(self) -> nn.Module:
        return getattr(self, self._loca_model_name())

    # ------------------------------------------------------------------ queries

    def get_loca_adapters(self) -> list[str]:
        """Names of the loaded LoCA adapters, in load order."""
        return model_ops.loca_adapter_names(self._loca_model())

    def get_active_loca_adapters(self) -> list[str]:
        """Names of the LoCA adapters the model currently applies."""
        return model_ops.active_loca_adapters(self._loca_model())

    # ------------------------------------------------------------------ loading

    def load_loca(
        self,
        pretrained_model_name_or_path_or_dict: Union[str, os.PathLike, Mapping[str, torch.Tensor]],
        adapter_name: Optional[str] = None,
        **kwargs: Any,
    ) -> str:
        """Load a LoCA adapter into the pipeline's UNet and make it the active adapter.

        Args:
            pretrained_model_name_or_path_or_dict: a local directory in the PEFT layout (``adapter_config.json`` +
                ``adapter_model.safetensors``, as written by :meth:`save_loca` or ``PeftModel.save_pretrained``),
                a directory holding it in ``unet_loca/``, the weights file itself, a Hub repo id, or an in-memory
                state dict with its ``loca_config`` (as diffusers' ``load_lora_weights`` takes a dict)::

                    state_dict = safetensors.torch.load_file("adapter/adapter_model.safetensors")
                    pipe.load_loca(state_dict, loca_config=LoCAConfig.from_pretrained("adapter"))

            adapter_name: name of the adapter; default ``default_0``, ``default_1``, ... (the first free one).
            kwargs: passed to :func:`~loca_diffusion.loaders.read_loca_adapter`: ``loca_config`` (the config of an
                in-memory state dict: a :class:`LoCAConfig` or the contents of ``adapter_config.json``),
                ``subfolder``, ``weight_name``, ``revision``, ``cache_dir``, ``local_files_only``, ``token``,
                ``timeout`` (seconds to wait for the Hub before giving up; no retries).

        Returns:
            the adapter name.

        Raises:
            ValueError: a LoRA (PEFT or diffusers layout), another PEFT method, an adapter made for another
                model (the message names the layer), a corrupt file (the message names it), a taken name.
            HubUnavailableError: a Hub id that is not cached while the Hub cannot be reached.
            FileNotFoundError: no adapter there.
        """
        model = self._loca_model()
        adapter = read_loca_adapter(pretrained_model_name_or_path_or_dict, **kwargs)
        with _Offloading(self):
            return model_ops.load_loca_adapter(model, adapter, adapter_name)

    # ------------------------------------------------------------------ several adapters

    def set_loca_adapters(
        self,
        adapter_names: Union[str, list[str]],
        adapter_weights: model_ops.AdapterWeights = None,
    ) -> None:
        """Activate these adapters (and only these) with these weights: diffusers' ``set_adapters``.

        Each adapter's update is multiplied by its weight (``dW = weight * scaling * C_out^T S C_in``);
        a weight may be a per-block dict as in diffusers. Names of LoRA adapters in the same UNet may be
        listed too. Weights are not saved by :meth:`save_loca` (as with LoRA).
        """
        model_ops.set_loca_adapters(self._loca_model(), adapter_names, adapter_weights)

    def disable_loca(self) -> None:
        """Run the base model (LoCA adapters stay loaded; fused ones are unfused first)."""
        model_ops.enable_loca(self._loca_model(), False)

    def enable_loca(self) -> None:
        """Apply the active LoCA adapters again after :meth:`disable_loca`."""
        model_ops.enable_loca(self._loca_model(), True)

    def delete_loca_adapters(self, adapter_names: Union[str, list[str]]) -> None:
        """Remove these LoCA adapters (fused adapters are unfused first)."""
        model = self._loca_model()
        with _Offloading(self):
            model_ops.delete_loca_adapters(model, adapter_names)

    # ------------------------------------------------------------------ fusing

    def fuse_loca(
        self,
        scale: float = 1.0,
        adapter_names: Optional[Union[str, list[str]]] = None,
        safe_fusing: bool = True,
        keep_base_weights: bool = True,
        cache_deltas: bool = False,
    ) -> None:
        """Merge ``scale * dW`` of the active (or the named) LoCA adapters into the UNet's weights.

        Args:
            scale: Factor of each adapter's ``dW``.
            adapter_names: The adapters to fuse (default: the active ones).
            safe_fusing: Check the merged weights for NaN / Inf before writing them.
            keep_base_weights: Keep a CPU copy of each fused weight, for a bit-exact unfuse.
            cache_deltas: Keep each fused ``dW`` (see below).

        Inference then costs nothing extra. With ``keep_base_weights`` (default) a CPU copy of each
        fused layer's weight is kept so that :meth:`unfuse_loca` / :meth:`unload_loca` restore it bit for
        bit; without it, unfusing subtracts ``dW`` again (equal up to float rounding). ``safe_fusing``
        checks the merged weights for NaN/Inf before writing them. ``cache_deltas`` keeps each fused
        adapter's dense ``dW`` so that fusing it again skips the inverse DCT (apps switching adapters; one
        ``dW`` per adapter and layer in memory, freed by ``delete_adapters`` / :meth:`unload_loca`).
        """
        model_ops.fuse_loca(
            self._loca_model(), scale, adapter_names, safe_fusing, keep_base_weights, cache_deltas=cache_deltas
        )

    def unfuse_loca(self) -> None:
        """Undo :meth:`fuse_loca`: the weights from before fusing (bit for bit when they were kept), and
        the adapter weights from before fusing."""
        model_ops.unfuse_loca(self._loca_model())

    # ------------------------------------------------------------------ unloading

    def unload_loca(self, keep_fused: bool = False) -> None:
        """Remove every LoCA adapter: the UNet's modules, weights and outputs are the base model's again
        (bit for bit; fused adapters are unfused first). LoRA adapters in the same UNet stay.

        Args:
            keep_fused: Keep fused adapters' effect in the weights (remove only the LoCA modules).

        ``keep_fused=True`` instead keeps what :meth:`fuse_loca` merged in the weights and only drops the
        LoCA layers (diffusers' ``fuse_lora()`` + ``unload_lora_weights()`` idiom).
        """
        model = self._loca_model()
        with _Offloading(self, model):
            model_ops.unload_loca(model, keep_fused)

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
        model = self._loca_model()
        loaded = model_ops.loca_adapter_names(model)
        if not loaded:
            raise ValueError("No LoCA adapter is loaded: nothing to save")
        if adapter_name is None:
            active = model_ops.active_loca_adapters(model)
            if len(loaded) == 1:
                adapter_name = loaded[0]
            elif len(active) == 1:
                adapter_name = active[0]
            else:
                raise ValueError(f"Several LoCA adapters are loaded ({loaded}); pass `adapter_name`")
        elif adapter_name not in loaded:
            raise ValueError(f"No LoCA adapter named '{adapter_name}'; loaded: {loaded}")
        directory = os.fspath(save_directory)
        if is_main_process:
            base = getattr(getattr(self, "config", None), "_name_or_path", None) or None
            write_loca_adapter(
                model,
                directory,
                adapter_name,
                safe_serialization=safe_serialization,
                base_model_name_or_path=base,
                diffusers_lora_prefix=self._loca_model_name(),
            )
        return directory
