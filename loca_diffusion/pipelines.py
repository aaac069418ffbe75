"""Diffusers pipelines with ``load_loca`` (and the rest of :class:`~loca_diffusion.loaders.LoCALoaderMixin`).

Each class is the diffusers pipeline plus the mixin, so everything diffusers offers works unchanged::

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained("timbrooks/instruct-pix2pix")
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pipe(existing_diffusers_pipe)  # shares the components
    pipe.load_loca("path/to/adapter")

Other pipeline classes: ``loca_pipeline_class(StableDiffusionControlNetPipeline)`` returns the
LoCA-enabled subclass of any diffusers pipeline with a ``unet`` (or ``transformer``).

Saved pipelines record the *diffusers* class name in ``model_index.json`` (the LoCA classes add no
component), so ``DiffusionPipeline.from_pretrained`` and diffusers' own classes load them as well.

Two differences from plain diffusers when loading (both only where the caller says nothing):

- ``from_pretrained`` without ``dtype`` / ``torch_dtype`` loads every component in float32. diffusers loads its
  own models in float32 by default, but transformers 5 loads a text encoder in its checkpoint's dtype, so a
  folder saved in fp16 (like the embedded model in ``assets/``) would otherwise mix fp16 and fp32 components
  and fail at the first call.
- A model folder may carry ``call_defaults.json`` (:data:`CALL_DEFAULTS_NAME`): the settings its model is
  meant to be called with, e.g. ``{"resolution": 64, "num_inference_steps": 20, "guidance_scale": 2.0,
  "image_guidance_scale": 1.5}``. ``from_pretrained`` reads it into ``pipe.call_defaults``; the
  InstructPix2Pix LoCA pipeline uses those values for the arguments a call leaves out, and fits PIL inputs to
  ``resolution`` (long side, aspect kept, multiples of 8). Arguments given in the call always win.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)

from .images import fit_size
from .loaders import LoCALoaderMixin

__all__ = [
    "StableDiffusionInstructPix2PixLoCAPipeline",
    "StableDiffusionLoCAPipeline",
    "StableDiffusionImg2ImgLoCAPipeline",
    "StableDiffusionInpaintLoCAPipeline",
    # the SDXL classes come from the module's __getattr__ (built on first use)
    "StableDiffusionXLLoCAPipeline",  # noqa: F822
    "StableDiffusionXLInstructPix2PixLoCAPipeline",  # noqa: F822
    "loca_pipeline_class",
    "read_call_defaults",
    "CALL_DEFAULTS_NAME",
]

CALL_DEFAULTS_NAME = "call_defaults.json"
# the keys call_defaults.json may hold: the pipeline-call arguments it fills in, and the input resolution
CALL_DEFAULT_KEYS = ("resolution", "num_inference_steps", "guidance_scale", "image_guidance_scale")


def read_call_defaults(folder: str | os.PathLike) -> dict[str, Any]:
    """The recommended call settings in ``folder/call_defaults.json`` (empty when there is none). Unknown keys
    raise ``ValueError``, so a typo does not silently fall back to diffusers' defaults."""
    path = Path(folder) / CALL_DEFAULTS_NAME
    if not path.is_file():
        return {}
    values = json.loads(path.read_text(encoding="utf-8"))
    unknown = sorted(set(values) - set(CALL_DEFAULT_KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown} (known: {list(CALL_DEFAULT_KEYS)})")
    return values


class _SavesAsDiffusersClass:
    """Write the diffusers base class name as ``_class_name`` in ``model_index.json``; load in float32 unless
    told otherwise; read and write the folder's ``call_defaults.json``."""

    _loca_base_pipeline: type = DiffusionPipeline
    call_defaults: dict[str, Any] = {}

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        data["_class_name"] = self._loca_base_pipeline.__name__
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """diffusers' ``from_pretrained``; float32 for every component when neither ``dtype`` nor
        ``torch_dtype`` is given, and ``call_defaults`` read from a local folder's ``call_defaults.json``."""
        if kwargs.get("dtype") is None and kwargs.get("torch_dtype") is None:
            kwargs.pop("torch_dtype", None)
            kwargs["dtype"] = torch.float32
        pipe = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        folder = Path(pretrained_model_name_or_path)
        pipe.call_defaults = read_call_defaults(folder) if folder.is_dir() else {}
        return pipe

    def save_pretrained(self, save_directory, *args, **kwargs):
        """diffusers' ``save_pretrained``, plus ``call_defaults.json`` when the pipeline has call defaults."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.call_defaults:
            path = Path(save_directory) / CALL_DEFAULTS_NAME
            path.write_text(json.dumps(self.call_defaults, indent=2, sort_keys=True) + "\n", encoding="utf-8")


class StableDiffusionInstructPix2PixLoCAPipeline(
    LoCALoaderMixin, _SavesAsDiffusersClass, StableDiffusionInstructPix2PixPipeline
):
    """diffusers' ``StableDiffusionInstructPix2PixPipeline`` with ``load_loca`` / ``fuse_loca`` / ``save_loca`` ...

    Calls use the model folder's ``call_defaults.json`` (see the module docstring) for the arguments they leave
    out: ``pipe("make it black and white", image=photo)`` on the embedded model runs at its 64 px, 20 steps and
    guidance 2.0 / 1.5, not at diffusers' 100 steps and 7.5 on the photo's full size."""

    _loca_base_pipeline = StableDiffusionInstructPix2PixPipeline

    def __call__(
        self,
        prompt=None,
        image=None,
        num_inference_steps: Optional[int] = None,
        guidance_scale: Optional[float] = None,
        image_guidance_scale: Optional[float] = None,
        *,
        resolution: Optional[int] = None,
        **kwargs,
    ):
        """diffusers' InstructPix2Pix call. Left-out ``num_inference_steps``, ``guidance_scale`` and
        ``image_guidance_scale`` come from :attr:`call_defaults`, else diffusers' defaults (100, 7.5, 1.5).
        ``resolution`` (default: ``call_defaults["resolution"]``, else none) fits PIL input images to that long
        side, aspect kept, both sides multiples of 8; tensors and arrays are passed on as they are."""
        defaults = self.call_defaults
        settings = {
            "num_inference_steps": num_inference_steps,
            "guidance_scale": guidance_scale,
            "image_guidance_scale": image_guidance_scale,
        }
        for name, value in settings.items():
            if value is None and name in defaults:
                value = defaults[name]
            if value is not None:
                kwargs[name] = value
        resolution = resolution if resolution is not None else defaults.get("resolution")
        if resolution is not None:
            image = _fit_images(image, int(resolution))
        return super().__call__(prompt, image, **kwargs)


def _fit_images(image, resolution: int):
    """PIL images (alone or in a list) resized to ``resolution`` on the long side (aspect kept, multiples of 8)."""
    from PIL import Image

    if isinstance(image, list):
        return [_fit_images(one, resolution) for one in image]
    if isinstance(image, Image.Image):
        size = fit_size(*image.size, resolution)
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)
    return image


class StableDiffusionLoCAPipeline(LoCALoaderMixin, _SavesAsDiffusersClass, StableDiffusionPipeline):
    """diffusers' ``StableDiffusionPipeline`` (text to image) with the LoCA loader methods."""

    _loca_base_pipeline = StableDiffusionPipeline


class StableDiffusionImg2ImgLoCAPipeline(LoCALoaderMixin, _SavesAsDiffusersClass, StableDiffusionImg2ImgPipeline):
    """diffusers' ``StableDiffusionImg2ImgPipeline`` with the LoCA loader methods."""

    _loca_base_pipeline = StableDiffusionImg2ImgPipeline


class StableDiffusionInpaintLoCAPipeline(LoCALoaderMixin, _SavesAsDiffusersClass, StableDiffusionInpaintPipeline):
    """diffusers' ``StableDiffusionInpaintPipeline`` with the LoCA loader methods."""

    _loca_base_pipeline = StableDiffusionInpaintPipeline


@lru_cache(maxsize=None)
def loca_pipeline_class(pipeline_class: type) -> type:
    """The subclass of a diffusers pipeline class with the LoCA loader methods (cached: one class per base)."""
    if not (isinstance(pipeline_class, type) and issubclass(pipeline_class, DiffusionPipeline)):
        raise TypeError(f"Expected a diffusers pipeline class, got {pipeline_class!r}")
    if issubclass(pipeline_class, LoCALoaderMixin):
        return pipeline_class
    for known in (
        StableDiffusionInstructPix2PixLoCAPipeline,
        StableDiffusionLoCAPipeline,
        StableDiffusionImg2ImgLoCAPipeline,
        StableDiffusionInpaintLoCAPipeline,
    ):
        if known._loca_base_pipeline is pipeline_class:
            return known
    name = pipeline_class.__name__.removesuffix("Pipeline") + "LoCAPipeline"
    return type(
        name,
        (LoCALoaderMixin, _SavesAsDiffusersClass, pipeline_class),
        {"_loca_base_pipeline": pipeline_class, "__module__": __name__, "__qualname__": name},
    )


def __getattr__(name: str):
    # SDXL classes are built on first use (importing them loads the SDXL modules)
    if name == "StableDiffusionXLLoCAPipeline":
        from diffusers import StableDiffusionXLPipeline

        return loca_pipeline_class(StableDiffusionXLPipeline)
    if name == "StableDiffusionXLInstructPix2PixLoCAPipeline":
        from diffusers import StableDiffusionXLInstructPix2PixPipeline

        return loca_pipeline_class(StableDiffusionXLInstructPix2PixPipeline)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
