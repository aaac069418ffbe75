"""From edit-pair rows to training batches: the same crop and flip for both images of a pair
(:class:`EditPairTransform`), paraphrased instructions (:class:`ParaphraseSampler`), tokenised prompts
(:func:`make_train_dataset`) and :func:`collate_fn`. No torchvision: PIL, numpy and torch only."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..images import load_rgb
from .edit_pairs import (
    DEFAULT_EDIT_PROMPT_COLUMN,
    DEFAULT_EDITED_IMAGE_COLUMN,
    DEFAULT_ORIGINAL_IMAGE_COLUMN,
    _datasets,
    _open_image,
)
from .prompts import CARTOONIZATION_PARAPHRASES


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
