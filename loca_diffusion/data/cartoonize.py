"""A classical (non-learned) cartoonizer and a builder for cartoonization pair datasets.

``cartoonize(image)`` turns a photo into a flat-coloured, ink-outlined picture with OpenCV:
edge-preserving bilateral smoothing, k-means colour quantization and adaptive-threshold edges. It
runs in a few tens of milliseconds on a 256 px image.

``python -m loca_diffusion.data.cartoonize`` builds, from any folder of photos (and/or the photos that
ship inside installed packages, ``--from_package_photos``), a dataset with the same columns as the
``instruction-tuning-sd/cartoonization`` Hub set, so training works without the Hub::

    python -m loca_diffusion.data.cartoonize --input_dir PHOTOS --output_dir OUT [--resolution 256] \
        [--seed 0] [--limit N] [--from_package_photos] [--prompts_file FILE] [--overwrite]

It writes an ``imagefolder`` dataset (see ``loca_diffusion.data`` for the format)::

    OUT/original/00000_<name>.png       the photo, centre-cropped to a square, resized to --resolution
    OUT/cartoonized/00000_<name>.png    cartoonize() of it, same size
    OUT/metadata.jsonl                  one row per pair:
        {"original_image_file_name": "original/00000_<name>.png",
         "edit_prompt": "<one paraphrase, fixed per row>",
         "cartoonized_image_file_name": "cartoonized/00000_<name>.png"}

which ``load_edit_dataset(train_data_dir=OUT)`` reads back as the columns ``original_image``,
``edit_prompt`` and ``cartoonized_image``. Files in the input folder that are not images (by
extension) are ignored silently; image files that cannot be decoded are skipped with a warning naming
the file; a folder with no usable photo is an error.

Needs ``opencv-python-headless`` (and ``numpy``); ``--from_package_photos`` reads image files that
scikit-image and scikit-learn ship, when those packages are installed (neither is imported).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import re
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..images import load_rgb
from .prompts import CARTOONIZATION_PARAPHRASES, load_prompts

__all__ = [
    "IMAGE_EXTENSIONS",
    "PACKAGE_PHOTOS",
    "build_cartoon_dataset",
    "cartoon_layers",
    "cartoonize",
    "find_photos",
    "package_photos",
    "prepare_photo",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"})

# Colour photographs (natural scenes, people, objects) that ship as files inside packages, so a small
# real-photo set can be built offline: (package, path inside the package, name). Only the files that
# exist in the installed packages are used (checked with scikit-image 0.26 and scikit-learn 1.9). The
# other images of skimage.data are grey-level, synthetic or scientific, or are downloaded on first use.
PACKAGE_PHOTOS: tuple[tuple[str, str, str], ...] = (
    ("skimage", "data/astronaut.png", "astronaut"),
    ("skimage", "data/chelsea.png", "chelsea"),
    ("skimage", "data/coffee.png", "coffee"),
    ("skimage", "data/rocket.jpg", "rocket"),
    ("skimage", "data/motorcycle_left.png", "motorcycle_left"),
    ("skimage", "data/motorcycle_right.png", "motorcycle_right"),
    ("skimage", "data/hubble_deep_field.jpg", "hubble_deep_field"),
    ("sklearn", "datasets/images/china.jpg", "china"),
    ("sklearn", "datasets/images/flower.jpg", "flower"),
)


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "loca_diffusion.data.cartoonize needs OpenCV: pip install opencv-python-headless"
        ) from err
    return cv2


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # |p - c|^2 = |p|^2 - 2 p.c + |c|^2, and |p|^2 does not change the argmin.
    return (centres**2).sum(1)[None] - 2.0 * points @ centres.T


def _kmeans_quantize(rgb: np.ndarray, num_colors: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """Replace each pixel by the nearest of ``num_colors`` k-means centres (fit on a pixel sample)."""
    pixels = rgb.reshape(-1, 3).astype(np.float32)
    sample = pixels[rng.choice(len(pixels), size=min(len(pixels), 2048), replace=False)]
    sq = (sample**2).sum(1)
    # k-means++ seeding on the sample, then Lloyd iterations.
    c = np.empty((num_colors, 3), dtype=np.float32)
    c[0] = sample[rng.integers(len(sample))]
    d2 = np.maximum(sq + _nearest(sample, c[:1])[:, 0], 0)
    for k in range(1, num_colors):
        total = float(d2.sum())
        c[k] = sample[rng.choice(len(sample), p=d2 / total) if total > 0 else rng.integers(len(sample))]
        d2 = np.minimum(d2, np.maximum(sq + _nearest(sample, c[k : k + 1])[:, 0], 0))
    for _ in range(iters):
        labels = _nearest(sample, c).argmin(1)
        counts = np.bincount(labels, minlength=num_colors)
        sums = np.stack([np.bincount(labels, weights=sample[:, j], minlength=num_colors) for j in range(3)], 1)
        keep = counts > 0
        c[keep] = (sums[keep] / counts[keep, None]).astype(np.float32)
    labels = _nearest(pixels, c).argmin(1)
    return np.clip(np.rint(c[labels]), 0, 255).astype(np.uint8).reshape(rgb.shape)


def cartoon_layers(
    image: Image.Image,
    *,
    num_colors: int = 8,
    bilateral_passes: int = 2,
    edge_block_size: int = 9,
    edge_c: int = 4,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three layers :func:`cartoonize` composes, as uint8 arrays ``(H, W, 3)``, ``(H, W, 3)``, ``(H, W)``:
    the edge-preserving smoothing of the photo, its flat colours (k-means quantization of the smoothing)
    and the ink mask (True on the black ink lines). The embedded model learns each as a base edit of its
    own; the cartoon (flat colours with ink) is left for the adapter."""
    cv2 = _cv2()
    if num_colors < 2:
        raise ValueError(f"num_colors must be >= 2, got {num_colors}")
    if edge_block_size < 3 or edge_block_size % 2 == 0:
        raise ValueError(f"edge_block_size must be an odd number >= 3, got {edge_block_size}")
    rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    # Filter sizes scale with the image so the look is similar at 256 px and at 1024 px.
    scale = max(1.0, min(h, w) / 256.0)
    d = max(5, int(round(7 * scale)))
    smooth = np.ascontiguousarray(rgb)
    for _ in range(bilateral_passes):
        smooth = cv2.bilateralFilter(smooth, d, 50, 50)
    flat = _kmeans_quantize(smooth, num_colors, np.random.default_rng(seed))
    # Ink lines from the smoothed image, so fur and texture do not turn into speckle.
    gray = cv2.medianBlur(cv2.cvtColor(smooth, cv2.COLOR_RGB2GRAY), 5 if scale < 2 else 7)
    block = edge_block_size if scale < 2 else (int(edge_block_size * scale) | 1)
    edges = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, block, edge_c)
    return smooth, flat, edges == 0


def cartoonize(
    image: Image.Image,
    *,
    num_colors: int = 8,
    bilateral_passes: int = 2,
    edge_block_size: int = 9,
    edge_c: int = 4,
    seed: int = 0,
    ink: bool = True,
) -> Image.Image:
    """Classical cartoon filter: bilateral smoothing, k-means colour quantization, adaptive-threshold
    ink edges. Returns an RGB image of the same size as ``image``; deterministic for a given ``seed``.
    ``ink=False`` returns the flat colours alone (the same image without its black ink lines)."""
    _, flat, ink_lines = cartoon_layers(
        image,
        num_colors=num_colors,
        bilateral_passes=bilateral_passes,
        edge_block_size=edge_block_size,
        edge_c=edge_c,
        seed=seed,
    )
    out = flat.copy()
    if ink:
        out[ink_lines] = 0
    return Image.fromarray(out, mode="RGB")


def prepare_photo(image: Image.Image, resolution: int | None) -> Image.Image:
    """EXIF-rotate, convert to 8-bit RGB (:func:`~loca_diffusion.images.load_rgb`: 16-bit scaled, alpha on
    white), centre-crop to a square and resize to ``resolution`` (None: keep)."""
    image = load_rgb(image)
    if resolution is None:
        return image
    w, h = image.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    image = image.crop((left, top, left + s, top + s))
    if s != resolution:
        image = image.resize((resolution, resolution), Image.Resampling.LANCZOS)
    return image


def _package_dir(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # locates a top-level package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def package_photos() -> list[tuple[str, Path]]:
    """(name, path) of the photos of ``PACKAGE_PHOTOS`` present in the installed packages (offline;
    scikit-image gives up to 7, scikit-learn 2). Empty when neither package is installed."""
    found = []
    for package, rel, name in PACKAGE_PHOTOS:
        root = _package_dir(package)
        if root is not None and (root / rel).is_file():
            found.append((name, root / rel))
    return found


def find_photos(input_dir: str | Path) -> list[tuple[str, Path]]:
    """(name, path) of the files with an image extension under ``input_dir`` (recursive, sorted)."""
    root = Path(input_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"input folder {str(root)!r} does not exist or is not a folder")
    return [
        (p.stem, p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
    ]


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:80] or "image"


def build_cartoon_dataset(
    output_dir: str | Path,
    photos: Iterable[tuple[str, str | Path]] | None = None,
    *,
    input_dir: str | Path | None = None,
    from_package_photos: bool = False,
    resolution: int | None = 256,
    seed: int = 0,
    limit: int | None = None,
    prompts: Sequence[str] | None = None,
    overwrite: bool = False,
    num_colors: int = 8,
    bilateral_passes: int = 2,
    edge_block_size: int = 9,
    edge_c: int = 4,
) -> Path:
    """Write a cartoonization pair dataset (imagefolder layout, see the module docstring) to
    ``output_dir`` from ``photos`` ((name, path) pairs), the image files under ``input_dir`` and/or
    the package photos, in that order, keeping the first ``limit``. ``num_colors``, ``bilateral_passes``,
    ``edge_block_size`` and ``edge_c`` go to :func:`cartoonize` (a larger ``edge_c`` draws fewer ink
    lines: small images want fewer). Each row gets one paraphrase from
    ``prompts`` (default: the 50 cartoonization paraphrases), drawn with ``seed``. Undecodable image
    files are skipped with a warning naming them. Returns the path of ``metadata.jsonl``."""
    sources: list[tuple[str, Path]] = [(n, Path(p)) for n, p in (photos or [])]
    if input_dir is not None:
        sources += find_photos(input_dir)
    if from_package_photos:
        found = package_photos()
        if not found:
            warnings.warn(
                "--from_package_photos: no package photo found; install scikit-image and/or scikit-learn",
                stacklevel=2,
            )
        sources += found
    if not sources:
        where = f" in {str(input_dir)!r}" if input_dir is not None else ""
        raise ValueError(f"no photos to cartoonize{where} (image extensions: {sorted(IMAGE_EXTENSIONS)})")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if resolution is not None and resolution < 8:
        raise ValueError(f"resolution must be >= 8, got {resolution}")
    prompts = list(CARTOONIZATION_PARAPHRASES if prompts is None else prompts)
    if not prompts:
        raise ValueError("the prompt list is empty")

    out = Path(output_dir)
    inside = out.resolve()
    sources = [(n, p) for n, p in sources if inside not in p.resolve().parents]  # not our own outputs
    metadata_path = out / "metadata.jsonl"
    if metadata_path.exists() and not overwrite:
        raise FileExistsError(f"{metadata_path} already exists; pass overwrite=True (--overwrite) to replace it")
    (out / "original").mkdir(parents=True, exist_ok=True)
    (out / "cartoonized").mkdir(parents=True, exist_ok=True)
    if overwrite:
        for sub in ("original", "cartoonized"):
            for old in (out / sub).glob("*.png"):
                old.unlink()

    rng = random.Random(seed)
    rows = []
    for name, path in sources:
        if limit is not None and len(rows) >= limit:
            break
        try:
            with Image.open(path) as im:
                im.load()
                photo = prepare_photo(im, resolution)
        except Exception as err:  # noqa: BLE001 - any decoder failure means "not a usable image"
            warnings.warn(f"skipping {path}: not a readable image ({type(err).__name__}: {err})", stacklevel=2)
            continue
        stem = f"{len(rows):05d}_{_safe_name(name)}.png"
        photo.save(out / "original" / stem)
        cartoonize(
            photo, num_colors=num_colors, bilateral_passes=bilateral_passes, edge_block_size=edge_block_size,
            edge_c=edge_c, seed=seed + len(rows),
        ).save(out / "cartoonized" / stem)
        rows.append(
            {
                "original_image_file_name": f"original/{stem}",
                "edit_prompt": rng.choice(prompts),
                "cartoonized_image_file_name": f"cartoonized/{stem}",
            }
        )
    if not rows:
        raise ValueError("none of the photos could be read; nothing was written")
    with open(metadata_path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return metadata_path


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m loca_diffusion.data.cartoonize",
        description="Build an InstructPix2Pix cartoonization pair dataset (original_image, edit_prompt, "
        "cartoonized_image) from photos with a classical OpenCV cartoonizer.",
    )
    p.add_argument("--input_dir", type=str, default=None, help="folder of photos (searched recursively)")
    p.add_argument("--from_package_photos", action="store_true",
                   help="also use the photos shipped inside scikit-image / scikit-learn (offline)")
    p.add_argument("--output_dir", type=str, required=True, help="where to write the imagefolder dataset")
    p.add_argument("--resolution", type=int, default=256,
                   help="centre-crop to a square and resize to this size (0: keep the original size)")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-row paraphrase choice")
    p.add_argument("--limit", type=int, default=None, help="use at most this many photos")
    p.add_argument("--num_colors", type=int, default=8, help="palette size of the cartoonizer")
    p.add_argument("--bilateral_passes", type=int, default=2, help="edge-preserving smoothing passes")
    p.add_argument("--edge_block_size", type=int, default=9, help="ink-line threshold window (odd, >= 3)")
    p.add_argument("--edge_c", type=int, default=4, help="ink-line threshold offset (larger: fewer lines)")
    p.add_argument("--prompts_file", type=str, default=None,
                   help="one instruction per line (default: the 50 cartoonization paraphrases)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset in --output_dir")
    args = p.parse_args(argv)
    if args.input_dir is None and not args.from_package_photos:
        p.error("give --input_dir and/or --from_package_photos")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """The CLI; a user error (existing output, missing folder or prompts file, no usable photo) prints one
    ``error: ...`` line to stderr and exits with status 2, like argparse and the training script."""
    args = _parse_args(argv)
    try:
        prompts = load_prompts(args.prompts_file) if args.prompts_file else None
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
            metadata = build_cartoon_dataset(
                args.output_dir,
                input_dir=args.input_dir,
                from_package_photos=args.from_package_photos,
                resolution=args.resolution or None,
                seed=args.seed,
                limit=args.limit,
                prompts=prompts,
                overwrite=args.overwrite,
                num_colors=args.num_colors,
                bilateral_passes=args.bilateral_passes,
                edge_block_size=args.edge_block_size,
                edge_c=args.edge_c,
            )
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    with open(metadata, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    print(f"wrote {n} pairs to {metadata.parent} (load with --train_data_dir {metadata.parent})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
