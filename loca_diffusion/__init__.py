"""loca-diffusion: LoCA (Location-aware Cosine Adaptation, ICLR 2025) as a PEFT method.

Importing the package registers the method with peft, so ``get_peft_model(model, LoCAConfig(...))``,
``PeftModel.from_pretrained`` and diffusers' ``add_adapter`` work with LoCA.
"""

from .tuners.loca import Linear as LoCALinear
from .tuners.loca import LoCAConfig, LoCALayer, LoCAModel, iter_loca_layers
from .tuners.loca.ops import delta_weight, dense_delta_weight
from .tuners.loca.schedule import LoCASchedule

__version__ = "0.1.0"

# The diffusers integration is imported on first use (importing diffusers' pipelines is slow).
_LAZY = {
    "LoCALoaderMixin": ".loaders",
    "StableDiffusionInstructPix2PixLoCAPipeline": ".pipelines",
    "StableDiffusionLoCAPipeline": ".pipelines",
    "StableDiffusionImg2ImgLoCAPipeline": ".pipelines",
    "StableDiffusionInpaintLoCAPipeline": ".pipelines",
    "loca_pipeline_class": ".pipelines",
    "HubUnavailableError": ".hub",
    "LoCATrainerCallback": ".trainer_callback",
    "resolve_local_or_hub": ".hub",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LoCAConfig",
    "LoCAModel",
    "LoCALayer",
    "LoCALinear",
    "LoCASchedule",
    "delta_weight",
    "dense_delta_weight",
    "iter_loca_layers",
    *_LAZY,
]
