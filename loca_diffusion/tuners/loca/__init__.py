"""LoCA: Location-aware Cosine Adaptation, as a PEFT tuner (config, layer, model)."""

from .config import LoCAConfig
from .layer import Linear, LoCALayer
from .model import LoCAModel

__all__ = ["LoCAConfig", "LoCALayer", "LoCAModel", "Linear"]
