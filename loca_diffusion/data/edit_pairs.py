"""Edit-pair data for InstructPix2Pix training: loading and validation (augmentation, batching: :mod:`.transforms`).

Loading (:func:`load_edit_dataset`) takes either a Hub dataset name (default columns are those of
:data:`DEFAULT_DATASET_NAME`, ``instruction-tuning-sd/cartoonization``) or a local folder in ``imagefolder`` layout::

    DIR/metadata.jsonl          one JSON object per pair, e.g.
        {"original_image_file_name": "original/00000.png",
         "edit_prompt": "Cartoonify the natural image.",
         "cartoonized_image_file_name": "cartoonized/00000.png"}
    DIR/original/00000.png ...  (any sub-folders; paths are relative to DIR)
    DIR/cartoonized/00000.png ...

A key ``<column>_file_name`` becomes an image column ``<column>`` (``datasets`` >= 3.4 does this
natively); a plain ``file_name`` key becomes the column ``image``. This is what
``python -m loca_diffusion.data.cartoonize`` writes. The diffusers examples' style, where extra image
columns hold file names as strings (``{"file_name": "a.png", "edited_image": "b.png", ...}``), is
accepted too: a requested image column holding strings is read as paths relative to ``DIR``. A folder is
one dataset: file and folder names never split it (``datasets`` alone would set aside files named like
``*test*`` or ``*valid*`` as other splits).

Columns are checked up front (a missing one lists the available columns and names the option to
change; a row with a missing or empty edit prompt is named); images of a local folder are decoded up
front by default (``verify_images``), and the error names every file that cannot be decoded. A Hub
name fails fast when the Hub cannot be reached (:class:`HubUnavailableError`, one short probe through
:mod:`loca_diffusion.hub` instead of ``datasets``' ~25 s of retries), with a message that says how to
pass a local folder (``--train_data_dir``) instead.

Training preprocessing mirrors diffusers' ``examples/instruct_pix2pix/train_instruct_pix2pix.py``:
:class:`EditPairTransform` resizes both images of a pair to the same square size and applies the
*same* crop and the *same* horizontal flip to both, giving ``[-1, 1]`` CHW float tensors;
:func:`make_train_dataset` tokenizes the prompts (``padding="max_length"``, ``truncation=True``,
``max_length=tokenizer.model_max_length``) and can replace each prompt by a random paraphrase
(seeded); :func:`collate_fn` stacks ``original_pixel_values``, ``edited_pixel_values`` and
``input_ids``. No torchvision: PIL, numpy and torch only.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from ..hub import (
    HUB_TIMEOUT,
    HubUnavailableError,
    classify_hub_error,
    hub_offline,
    looks_like_repo_id,
    probe_repo,
    unavailable_error,
)
from ..images import load_rgb
from .prompts import CARTOONIZATION_PARAPHRASES

__all__ = [
    "DEFAULT_DATASET_NAME",
    "DEFAULT_ORIGINAL_IMAGE_COLUMN",
    "DEFAULT_EDIT_PROMPT_COLUMN",
    "DEFAULT_EDITED_IMAGE_COLUMN",
    "CARTOONIZATION_PARAPHRASES",
    "CorruptImageError",
    "HubUnavailableError",
    "load_edit_dataset",
    "verify_images",
]

#: The one default training set (README, training script, docs): InstructPix2Pix cartoonization pairs.
DEFAULT_DATASET_NAME = "instruction-tuning-sd/cartoonization"
DEFAULT_ORIGINAL_IMAGE_COLUMN = "original_image"
DEFAULT_EDIT_PROMPT_COLUMN = "edit_prompt"
DEFAULT_EDITED_IMAGE_COLUMN = "cartoonized_image"
METADATA_FILENAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")

_LOCAL_HINT = (
    "To train without the Hub, build a local pair dataset from a folder of photos with "
    "`python -m loca_diffusion.data.cartoonize --input_dir PHOTOS --output_dir DIR` (or `--from_package_photos`) "
    "and pass `--train_data_dir DIR` (train_data_dir=DIR) instead of --dataset_name."
)


class CorruptImageError(ValueError):
    """One or more images of the dataset cannot be read; the message names each file."""


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _datasets():
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("loading edit datasets needs the `datasets` package: pip install 'datasets>=3.4'") from err
    return datasets


@contextlib.contextmanager
def _offline_mode(datasets):
    """Make ``datasets`` and ``huggingface_hub`` honour offline mode even when HF_HUB_OFFLINE was set
    after they were imported (they read it once, at import), so nothing retries the network."""
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def _load_hub(name: str, config_name, split, cache_dir, token, timeout):
    datasets = _datasets()
    if not looks_like_repo_id(name):
        raise FileNotFoundError(
            f"dataset {name!r} is neither an existing local folder nor a valid Hugging Face Hub dataset id "
            f"('name' or 'namespace/name'). {_LOCAL_HINT}"
        )
    offline = hub_offline() or bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))
    if not offline:
        error = probe_repo(name, repo_type="dataset", token=token, timeout=timeout)
        remedy = (
            f"If the dataset is already in the local datasets cache, set HF_HUB_OFFLINE=1 to use it. {_LOCAL_HINT}"
        )
        raised = None if error is None else classify_hub_error(error, name, remedy, kind="dataset")
        if raised is not None:
            raise raised from None
    try:
        if offline:
            with _offline_mode(datasets):
                loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir, token=token)
        else:
            loaded = datasets.load_dataset(name, config_name, cache_dir=cache_dir, token=token)
    except (ConnectionError, FileNotFoundError) as err:
        if not offline:
            raise
        cache = f" {cache_dir!r}" if cache_dir else ""
        raise unavailable_error(
            f"cannot load dataset '{name}'",
            f"offline mode (HF_HUB_OFFLINE=1) is on and it is not in the local datasets cache{cache}: "
            f"{type(err).__name__}",
            _LOCAL_HINT,
        ) from None
    return _pick_split(loaded, split, f"dataset '{name}'")


def _pick_split(loaded, split: str, what: str):
    datasets = _datasets()
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise ValueError(f"{what} has no split {split!r}; available splits: {sorted(loaded)}")
        return loaded[split]
    return loaded


def _load_local(folder: str | os.PathLike, split: str, cache_dir):
    datasets = _datasets()
    root = Path(folder).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"train_data_dir {str(root)!r} does not exist. Build a pair dataset there with "
            f"`python -m loca_diffusion.data.cartoonize --input_dir PHOTOS --output_dir {root}`."
        )
    if not root.is_dir():
        raise NotADirectoryError(f"train_data_dir {str(root)!r} is not a folder")
    if not any(next(root.rglob(m), None) is not None for m in METADATA_FILENAMES):
        raise FileNotFoundError(
            f"no metadata file ({', '.join(METADATA_FILENAMES)}) in {str(root)!r}: an edit-pair folder needs "
            f'metadata.jsonl rows like {{"original_image_file_name": "original/0.png", "edit_prompt": "...", '
            f'"cartoonized_image_file_name": "cartoonized/0.png"}} (see loca_diffusion.data).'
        )
    try:
        # Every file belongs to the one requested split: left to itself, `datasets` infers splits from
        # names and would move a pair whose file name holds "test" or "valid" out of the training set.
        loaded = datasets.load_dataset(
            "imagefolder", data_dir=str(root), data_files={split: "**"}, cache_dir=cache_dir
        )
    except Exception as err:  # noqa: BLE001 - re-raised with the folder named
        raise ValueError(f"cannot read the imagefolder dataset in {str(root)!r}: {type(err).__name__}: {err}") from err
    return _pick_split(loaded, split, f"folder {str(root)!r}"), root


def _resolve_path_column(ds, column: str, root: Path):
    """A string column of file names relative to ``root`` -> an Image column."""
    datasets = _datasets()

    def absolute(batch):
        return {column: [None if p is None else str(root / p) for p in batch[column]]}

    ds = ds.map(absolute, batched=True, desc=f"resolving {column} paths")
    return ds.cast_column(column, datasets.Image())


def _names_files(ds, column: str, root: Path) -> bool:
    """Whether a string column holds file names under ``root`` (some of its first values exist)."""
    sample = [v for v in ds[:64][column] if isinstance(v, str) and v]
    return any((root / v).is_file() for v in sample)


_OPTION_FOR = {
    "original": "--original_image_column (original_image_column=)",
    "prompt": "--edit_prompt_column (edit_prompt_column=)",
    "edited": "--edited_image_column (edited_image_column=)",
}


def _validate_columns(ds, columns: dict[str, str], what: str, root: Path | None):
    datasets = _datasets()
    for role, column in columns.items():
        if column in ds.column_names:
            continue
        raise ValueError(
            f"column {column!r} is not in {what}; available columns: {ds.column_names}. "
            f"Pass the right name with {_OPTION_FOR[role]}."
        )
    for role, column in columns.items():
        feature = ds.features[column]
        is_string = isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")
        if role == "prompt":
            if not is_string:
                raise ValueError(
                    f"column {column!r} of {what} should hold edit prompts (strings) but is {feature}; "
                    f"pass the right name with {_OPTION_FOR[role]}."
                )
        elif not isinstance(feature, datasets.Image):
            if is_string and root is not None and _names_files(ds, column, root):
                ds = _resolve_path_column(ds, column, root)  # diffusers-style: file names relative to the folder
            else:
                raise ValueError(
                    f"column {column!r} of {what} should hold images but is {feature}; available columns: "
                    f"{ds.column_names}. Pass the right name with {_OPTION_FOR[role]}."
                )
    return ds


def _validate_prompts(ds, column: str, image_column: str, what: str, max_reported: int = 10) -> None:
    """Every row needs a non-empty prompt; the error names the rows (and their original image file)."""
    bad = [row for row, prompt in enumerate(ds[column]) if not isinstance(prompt, str) or not prompt.strip()]
    if not bad:
        return
    datasets = _datasets()
    images = ds.select(bad[:max_reported]).cast_column(image_column, datasets.Image(decode=False))[image_column]
    named = [f"row {row} ({_describe(image)})" for row, image in zip(bad, images)]
    more = f" and {len(bad) - len(named)} more" if len(bad) > len(named) else ""
    raise ValueError(
        f"{len(bad)} row(s) of {what} have a missing or empty {column!r} (the edit prompt, "
        f"{_OPTION_FOR['prompt']}): {', '.join(named)}{more}"
    )


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return value.get("path") or "<embedded image bytes>"
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    return f"<{type(value).__name__}>"


def _open_image(value: Any, column: str) -> Image.Image:
    """Decode one stored image value (PIL image, ``{"bytes", "path"}`` dict or path) to RGB, or raise
    :class:`CorruptImageError` naming the file."""
    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else load_rgb(value)
    try:
        if isinstance(value, dict):
            if value.get("bytes") is not None:
                image = Image.open(io.BytesIO(value["bytes"]))
            elif value.get("path"):
                image = Image.open(value["path"])
            else:
                raise ValueError("empty image entry (no bytes, no path)")
        elif isinstance(value, (str, os.PathLike)):
            image = Image.open(value)
        elif value is None:
            raise ValueError("missing image (None)")
        else:
            raise TypeError(f"unsupported image value of type {type(value).__name__}")
        image.load()
        return load_rgb(image)
    except CorruptImageError:
        raise
    except Exception as err:  # noqa: BLE001 - any decoder failure
        raise CorruptImageError(
            f"cannot decode image {_describe(value)} (column {column!r}): {type(err).__name__}: {err}"
        ) from err


def verify_images(ds, image_columns: Sequence[str], max_reported: int = 20) -> None:
    """Decode every image of ``image_columns``; raise :class:`CorruptImageError` naming each file
    (and its column and row) that cannot be decoded."""
    datasets = _datasets()
    raw = ds
    for column in image_columns:
        raw = raw.cast_column(column, datasets.Image(decode=False))
    raw = raw.select_columns(list(image_columns))
    failures: list[str] = []
    count = 0
    for row, example in enumerate(raw):
        for column in image_columns:
            try:
                with _open_raw(example[column]) as im:
                    im.load()
            except Exception as err:  # noqa: BLE001
                count += 1
                if len(failures) < max_reported:
                    failures.append(
                        f"{_describe(example[column])} (column {column!r}, row {row}): {type(err).__name__}: {err}"
                    )
    if failures:
        more = f" (and {count - len(failures)} more)" if count > len(failures) else ""
        raise CorruptImageError(f"{count} image(s) cannot be decoded{more}:\n  " + "\n  ".join(failures))


def _open_raw(value: Any) -> Image.Image:
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return Image.open(io.BytesIO(value["bytes"]))
        if value.get("path"):
            return Image.open(value["path"])
        raise ValueError("empty image entry (no bytes, no path)")
    if value is None:
        raise ValueError("missing image (None)")
    return Image.open(value)


def load_edit_dataset(
    dataset_name: str | None = None,
    train_data_dir: str | os.PathLike | None = None,
    original_image_column: str = DEFAULT_ORIGINAL_IMAGE_COLUMN,
    edit_prompt_column: str = DEFAULT_EDIT_PROMPT_COLUMN,
    edited_image_column: str = DEFAULT_EDITED_IMAGE_COLUMN,
    max_train_samples: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    dataset_config_name: str | None = None,
    split: str = "train",
    seed: int | None = None,
    verify: bool | None = None,
    token: str | bool | None = None,
    hub_timeout: float = HUB_TIMEOUT,
):
    """Load an edit-pair dataset and check it; returns a ``datasets.Dataset`` (the ``split``) whose
    three columns are images, strings and images (decoded to PIL on access).

    Give exactly one of ``dataset_name`` (a Hub dataset, or an existing local folder) and
    ``train_data_dir`` (a local imagefolder with ``metadata.jsonl``, see the module docstring).
    ``max_train_samples`` keeps that many rows after ``shuffle(seed=seed)``, as diffusers does.
    ``verify`` decodes every image up front (default: on for local folders, off for the Hub); all
    failures are reported at once, naming each file.

    Raises:
        ValueError: both or neither source given; a column missing (lists the available ones and
            the option to change) or of the wrong type; a missing split.
        FileNotFoundError: ``train_data_dir`` missing or without a metadata file; a Hub name that
            does not exist.
        HubUnavailableError: the Hub cannot be reached (or offline mode is on and the dataset is not
            cached); the message names the dataset and how to pass ``--train_data_dir`` instead.
        CorruptImageError: with ``verify``, an image that cannot be decoded (names the file).
    """
    if dataset_name is not None and train_data_dir is not None:
        raise ValueError(
            f"give either dataset_name ({dataset_name!r}, --dataset_name) or train_data_dir "
            f"({os.fspath(train_data_dir)!r}, --train_data_dir), not both"
        )
    if dataset_name is None and train_data_dir is None:
        raise ValueError(
            f"give dataset_name (--dataset_name, e.g. {DEFAULT_DATASET_NAME!r}) or train_data_dir "
            f"(--train_data_dir, a local folder with metadata.jsonl)"
        )
    if max_train_samples is not None and max_train_samples < 1:
        raise ValueError(f"max_train_samples must be >= 1, got {max_train_samples}")
    cache_dir = os.fspath(cache_dir) if cache_dir is not None else None

    root: Path | None = None
    if train_data_dir is None and os.path.isdir(os.path.expanduser(dataset_name)):
        train_data_dir = dataset_name  # an existing local folder given as the "name"
    if train_data_dir is not None:
        ds, root = _load_local(train_data_dir, split, cache_dir)
        what = f"folder {str(root)!r}"
    else:
        ds = _load_hub(dataset_name, dataset_config_name, split, cache_dir, token, hub_timeout)
        what = f"dataset '{dataset_name}'"

    columns = {"original": original_image_column, "prompt": edit_prompt_column, "edited": edited_image_column}
    ds = _validate_columns(ds, columns, what, root)
    if len(ds) == 0:
        raise ValueError(f"{what} has no rows in split {split!r}")
    if max_train_samples is not None:
        ds = ds.shuffle(seed=seed).select(range(min(max_train_samples, len(ds))))
    _validate_prompts(ds, edit_prompt_column, original_image_column, what)
    if verify if verify is not None else root is not None:
        verify_images(ds, [original_image_column, edited_image_column])
    return ds


# ----------------------------------------------------------------------------------------------
# Augmentation and prompts
# ----------------------------------------------------------------------------------------------



# ----------------------------------------------------------------------------------------------
# Training dataset and batches
# ----------------------------------------------------------------------------------------------



