"""Training data: InstructPix2Pix edit pairs (:mod:`.edit_pairs` loads and checks them, :mod:`.transforms`
makes batches of them), the task scripts' datasets
(:mod:`.tasks`), the code-made cartoon pairs (:mod:`.cartoonize`) and instruction paraphrases
(:mod:`.prompts`).

The edit-pair API is re-exported here because ``from loca_diffusion.data import load_edit_dataset, ...``
is how the training script and users imported it before the data modules became a package.
"""

from .edit_pairs import (
    DEFAULT_DATASET_NAME,
    DEFAULT_EDIT_PROMPT_COLUMN,
    DEFAULT_EDITED_IMAGE_COLUMN,
    DEFAULT_ORIGINAL_IMAGE_COLUMN,
    CorruptImageError,
    HubUnavailableError,
    load_edit_dataset,
    verify_images,
)
from .prompts import CARTOONIZATION_PARAPHRASES
from .transforms import EditPairTransform, ParaphraseSampler, collate_fn, make_train_dataset

__all__ = [
    "DEFAULT_DATASET_NAME",
    "DEFAULT_ORIGINAL_IMAGE_COLUMN",
    "DEFAULT_EDIT_PROMPT_COLUMN",
    "DEFAULT_EDITED_IMAGE_COLUMN",
    "CARTOONIZATION_PARAPHRASES",
    "CorruptImageError",
    "HubUnavailableError",
    "EditPairTransform",
    "ParaphraseSampler",
    "collate_fn",
    "load_edit_dataset",
    "make_train_dataset",
    "verify_images",
]
