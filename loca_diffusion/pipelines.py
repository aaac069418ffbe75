"""Diffusers pipelines with ``load_loca`` (and the rest of :class:`~loca_diffusion.loaders.LoCALoaderMixin`).

Each class is the diffusers pipeline plus the mixin, so everything diffusers offers works unchanged::

    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained("timbrooks/instruct-pix2pix")
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pipe(existing_diffusers_pipe)  # shares the components
    pipe.load_loca("path/to/adapter")

Other pipeline classes: ``loca_pipeline_class(StableDiffusionControlNetPipeline)`` returns the
LoCA-enabled subclass of any diffusers pipeline with a ``unet`` (or ``transformer``).

Saved pipelines record the *diffusers* class name in ``model_index.json`` (the LoCA classes add no
component), so ``DiffusionPipeline.from_pretrained`` and diffusers' own classes load them as well.
"""

from __future__ import annotations

import json
from functools import lru_cache

from diffusers import (
    DiffusionPipeline,
    StableDiffusionImg2ImgPipeline,
    StableDiffusionInpaintPipeline,
    StableDiffusionInstructPix2PixPipeline,
    StableDiffusionPipeline,
)

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
]


class _SavesAsDiffusersClass:
    """Write the diffusers base class name as ``_class_name`` in ``model_index.json``."""

    _loca_base_pipeline: type = DiffusionPipeline

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        data["_class_name"] = self._loca_base_pipeline.__name__
        return json.dumps(data, indent=2, sort_keys=True) + "\n"


class StableDiffusionInstructPix2PixLoCAPipeline(
    LoCALoaderMixin, _SavesAsDiffusersClass, StableDiffusionInstructPix2PixPipeline
):
    """diffusers' ``StableDiffusionInstructPix2PixPipeline`` with ``load_loca`` / ``fuse_loca`` / ``save_loca`` ..."""

    _loca_base_pipeline = StableDiffusionInstructPix2PixPipeline


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
