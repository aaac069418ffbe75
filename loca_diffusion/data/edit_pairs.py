"""Edit-pair data for InstructPix2Pix training: loading, validation, paired augmentation, batching.

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
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
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
    "EditPairTransform",
    "ParaphraseSampler",
    "collate_fn",
    "load_edit_dataset",
    "make_train_dataset",
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


class _SeededPerWorker:
    """A seeded RNG, re-derived inside each DataLoader worker from ``seed`` and the worker's own seed
    (which DataLoader draws anew each epoch from the main process' torch RNG), so workers do not
    repeat each other's draws nor the previous epoch's. With ``seed=None`` it uses torch's / Python's
    global RNGs (which DataLoader also seeds per worker)."""

    def __init__(self, seed: int | None):
        self.seed = seed
        self._key: tuple[int, int] | None = None
        self._generator: torch.Generator | None = None
        self._random: random.Random | None = None

    def _reseed(self):
        info = torch.utils.data.get_worker_info()
        key = (-1, 0) if info is None else (info.id, info.seed)
        if self._generator is None or key != self._key:
            self._key = key
            seed = self.seed if info is None else (self.seed * 1_000_003 + info.seed) % (2**63)
            self._generator = torch.Generator().manual_seed(seed)
            self._random = random.Random(seed)

    @property
    def generator(self) -> torch.Generator | None:
        if self.seed is None:
            return None
        self._reseed()
        return self._generator

    @property
    def random(self) -> Any:
        if self.seed is None:
            return random  # the module-level functions use Python's global RNG
        self._reseed()
        return self._random

    def __getstate__(self):  # picklable for spawned DataLoader workers; the RNG restarts from the seed
        state = self.__dict__.copy()
        state.update(_key=None, _generator=None, _random=None)
        return state


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


class EditPairTransform:
    """Paired preprocessing: both images get the same resize, the same crop and the same flip.

    1. The edited image is resized to the original's size when they differ (so they stay aligned).
    2. ``resize_mode="square"`` (default, as diffusers' ``convert_to_np``): both are resized to
       ``resolution x resolution`` (the crop is then the whole image). ``"shorter_side"``: the
       shorter side is resized to ``resolution`` (aspect kept), then a ``resolution`` square is cut,
       centred (``center_crop=True``) or at a random offset.
    3. With ``random_flip``, both are flipped left-right together with probability 1/2.

    Returns ``(original, edited)`` float tensors of shape ``(3, resolution, resolution)`` in
    ``[-1, 1]``. ``seed`` makes the draws reproducible (and distinct per DataLoader worker).
    """

    def __init__(
        self,
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = False,
        seed: int | None = None,
        resize_mode: str = "square",
        interpolation: Image.Resampling = Image.Resampling.BICUBIC,
    ):
        if resolution < 1:
            raise ValueError(f"resolution must be >= 1, got {resolution}")
        if resize_mode not in ("square", "shorter_side"):
            raise ValueError(f"resize_mode must be 'square' or 'shorter_side', got {resize_mode!r}")
        self.resolution = int(resolution)
        self.center_crop = bool(center_crop)
        self.random_flip = bool(random_flip)
        self.resize_mode = resize_mode
        self.interpolation = interpolation
        self._rng = _SeededPerWorker(seed)

    def draw(self, height: int, width: int) -> tuple[int, int, bool]:
        """Crop offset (top, left) in a ``height x width`` image and whether to flip."""
        r, g = self.resolution, self._rng.generator
        if self.center_crop:
            top, left = (height - r) // 2, (width - r) // 2
        else:
            top = int(torch.randint(0, height - r + 1, (1,), generator=g))
            left = int(torch.randint(0, width - r + 1, (1,), generator=g))
        flip = self.random_flip and bool(torch.rand((), generator=g) < 0.5)
        return top, left, flip

    def _resize(self, image: Image.Image) -> Image.Image:
        r = self.resolution
        if self.resize_mode == "square":
            size = (r, r)
        else:
            w, h = image.size
            scale = r / min(w, h)
            size = (max(r, round(w * scale)), max(r, round(h * scale)))
        return image if image.size == size else image.resize(size, self.interpolation)

    def validation_view(self, image: Image.Image) -> Image.Image:
        """``image`` as training sees it, without the random parts: the same resize to ``resolution``, a
        centred crop and no flip (RGB PIL image of ``resolution x resolution``)."""
        image = self._resize(image if image.mode == "RGB" else load_rgb(image))
        w, h = image.size
        r = self.resolution
        left, top = (w - r) // 2, (h - r) // 2
        return image.crop((left, top, left + r, top + r))

    def __call__(self, original: Image.Image, edited: Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        original = original if original.mode == "RGB" else load_rgb(original)
        edited = edited if edited.mode == "RGB" else load_rgb(edited)
        if edited.size != original.size:
            edited = edited.resize(original.size, self.interpolation)
        original, edited = self._resize(original), self._resize(edited)
        a, b = _to_tensor(original), _to_tensor(edited)
        top, left, flip = self.draw(a.shape[1], a.shape[2])
        r = self.resolution
        a, b = a[:, top : top + r, left : left + r], b[:, top : top + r, left : left + r]
        if flip:
            a, b = a.flip(-1), b.flip(-1)
        return a.contiguous(), b.contiguous()


class ParaphraseSampler:
    """Draws a random instruction from ``paraphrases`` (default: the 50 cartoonization paraphrases)
    for each example; seeded (and distinct per DataLoader worker)."""

    def __init__(self, paraphrases: Sequence[str] | None = None, seed: int | None = None):
        self.paraphrases = list(CARTOONIZATION_PARAPHRASES if paraphrases is None else paraphrases)
        if not self.paraphrases or not all(isinstance(p, str) and p.strip() for p in self.paraphrases):
            raise ValueError("paraphrases must be a non-empty list of non-empty strings")
        self._rng = _SeededPerWorker(seed)

    def __call__(self, prompt: str | None = None) -> str:
        return self._rng.random.choice(self.paraphrases)


# ----------------------------------------------------------------------------------------------
# Training dataset and batches
# ----------------------------------------------------------------------------------------------


def tokenize_prompts(tokenizer, prompts: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """``input_ids`` as in diffusers' ``tokenize_captions``: padded to ``max_length`` (default
    ``tokenizer.model_max_length``) and truncated."""
    inputs = tokenizer(
        list(prompts),
        max_length=max_length or tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    )
    return inputs.input_ids


def make_train_dataset(
    dataset,
    tokenizer,
    resolution: int,
    *,
    center_crop: bool = False,
    random_flip: bool = False,
    original_image_column: str = DEFAULT_ORIGINAL_IMAGE_COLUMN,
    edit_prompt_column: str = DEFAULT_EDIT_PROMPT_COLUMN,
    edited_image_column: str = DEFAULT_EDITED_IMAGE_COLUMN,
    random_paraphrase: bool = False,
    paraphrases: Sequence[str] | None = None,
    seed: int | None = None,
    resize_mode: str = "square",
    max_length: int | None = None,
):
    """The training view of ``dataset`` (``with_transform``): each example becomes
    ``{"original_pixel_values": (3, R, R), "edited_pixel_values": (3, R, R), "input_ids": (L,),
    "edit_prompt": str}``, decoded and augmented on access (:class:`EditPairTransform`, same crop and
    flip for both images). With ``random_paraphrase``, each access replaces the prompt by a random
    entry of ``paraphrases`` (default: the 50 cartoonization paraphrases). Batch it with
    :func:`collate_fn`. A file that cannot be decoded raises :class:`CorruptImageError` naming it."""
    datasets = _datasets()
    for option, column in (
        ("original_image_column", original_image_column),
        ("edit_prompt_column", edit_prompt_column),
        ("edited_image_column", edited_image_column),
    ):
        if column not in dataset.column_names:
            raise ValueError(
                f"column {column!r} is not in the dataset; available columns: {dataset.column_names}. "
                f"Pass the right name with {option}=."
            )
    transform = EditPairTransform(resolution, center_crop, random_flip, seed=seed, resize_mode=resize_mode)
    sampler = ParaphraseSampler(paraphrases, seed=None if seed is None else seed + 1) if random_paraphrase else None
    if max_length is None:
        max_length = tokenizer.model_max_length

    # Decode ourselves, so a bad file is reported by name rather than deep inside `datasets`.
    raw = dataset.select_columns([original_image_column, edit_prompt_column, edited_image_column])
    for column in (original_image_column, edited_image_column):
        if isinstance(raw.features[column], datasets.Image):
            raw = raw.cast_column(column, datasets.Image(decode=False))

    def preprocess(batch: dict[str, list]) -> dict[str, list]:
        originals, editeds = [], []
        for o, e in zip(batch[original_image_column], batch[edited_image_column], strict=True):
            a, b = transform(_open_image(o, original_image_column), _open_image(e, edited_image_column))
            originals.append(a)
            editeds.append(b)
        prompts = list(batch[edit_prompt_column])
        if sampler is not None:
            prompts = [sampler(p) for p in prompts]
        input_ids = tokenize_prompts(tokenizer, prompts, max_length)
        return {
            "original_pixel_values": originals,
            "edited_pixel_values": editeds,
            "input_ids": list(input_ids),
            "edit_prompt": prompts,
        }

    return raw.with_transform(preprocess)


def collate_fn(examples: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    """Stack examples of :func:`make_train_dataset` into ``original_pixel_values`` /
    ``edited_pixel_values`` (float, contiguous, (B, 3, R, R)) and ``input_ids`` ((B, L)), as
    diffusers' ``collate_fn``."""
    original = torch.stack([e["original_pixel_values"] for e in examples])
    edited = torch.stack([e["edited_pixel_values"] for e in examples])
    return {
        "original_pixel_values": original.to(memory_format=torch.contiguous_format).float(),
        "edited_pixel_values": edited.to(memory_format=torch.contiguous_format).float(),
        "input_ids": torch.stack([torch.as_tensor(e["input_ids"]) for e in examples]),
    }
