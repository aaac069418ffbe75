"""LoCA: Location-aware Cosine Adaptation, as a PEFT tuner (config, layer, model).

Importing this package registers the method with peft (idempotent), as peft's own
``tuners/<method>/__init__.py`` files do.
"""

from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import register_peft_method

from .config import SCHEDULE_VARIANTS, LoCAConfig
from .layer import Linear, LoCALayer
from .model import LoCAModel
from .ops import LOCATION_GRAD_MODES, STRATEGIES
from .peft_type import METHOD_NAME, PREFIX, ensure_peft_type
from .utils import iter_loca_layers

__all__ = [
    "LOCATION_GRAD_MODES",
    "SCHEDULE_VARIANTS",
    "STRATEGIES",
    "LoCAConfig", "LoCALayer", "LoCAModel", "Linear", "iter_loca_layers", "register"]


def register() -> None:
    """Register :class:`LoCAConfig` / :class:`LoCAModel` with peft's method mappings (idempotent)."""
    peft_type = ensure_peft_type()
    if PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is LoCAModel:
        return
    register_peft_method(name=METHOD_NAME, config_cls=LoCAConfig, model_cls=LoCAModel, prefix=PREFIX)


register()
