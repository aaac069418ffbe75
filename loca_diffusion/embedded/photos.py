"""The photo set of the embedded model: colour photos that ship as files inside packages.

Every photo is listed with its source and license (``PHOTOS``); the split into training and held-out
photos is fixed by name, so the held-out numbers never see a crop of a training photo. Photos whose
package is not installed are left out (``available_photos``); ``require_photos`` says which are
missing and how to install them.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

OPENCV_DOC_DATA = Path("/usr/share/doc/opencv-doc/examples/data")
_INSTALL = {
    "skimage": "pip install scikit-image",
    "sklearn": "pip install scikit-learn",
    "matplotlib": "pip install matplotlib",
    "opencv-doc": "apt-get install opencv-doc (Debian / Ubuntu)",
}


@dataclass(frozen=True)
class Photo:
    name: str
    source: str  # a Python package name, or "opencv-doc" (the Debian package)
    path: str  # inside the package (or under OPENCV_DOC_DATA)
    license: str
    held_out: bool = False

    def file(self) -> Path | None:
        """Where the photo is on this machine (None when its package is not installed)."""
        if self.source == "opencv-doc":
            root = OPENCV_DOC_DATA
        else:
            spec = importlib.util.find_spec(self.source)  # finds the package without importing it
            if spec is None or not spec.submodule_search_locations:
                return None
            root = Path(next(iter(spec.submodule_search_locations)))
        path = root / self.path
        return path if path.is_file() else None


_SK = "scikit-image sample data (BSD-3-Clause package)"
_CV = "OpenCV sample data (Debian opencv-doc; OpenCV is Apache-2.0, see /usr/share/doc/opencv-doc/copyright)"

PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut", "skimage", "data/astronaut.png", f"public domain (NASA); {_SK}"),
    Photo("chelsea", "skimage", "data/chelsea.png", f"CC0 (Stefan van der Walt); {_SK}", held_out=True),
    Photo("coffee", "skimage", "data/coffee.png", f"CC0 (Rachel Michetti); {_SK}", held_out=True),
    Photo("rocket", "skimage", "data/rocket.jpg", f"public domain (SpaceX, via Flickr); {_SK}"),
    Photo("motorcycle_left", "skimage", "data/motorcycle_left.png", f"Middlebury stereo data set; {_SK}"),
    Photo("motorcycle_right", "skimage", "data/motorcycle_right.png", f"Middlebury stereo data set; {_SK}"),
    Photo("hubble_deep_field", "skimage", "data/hubble_deep_field.jpg", f"public domain (NASA); {_SK}"),
    Photo(
        "china", "sklearn", "datasets/images/china.jpg", "CC BY 2.0 (Flickr, see sklearn/datasets/images/README.txt)"
    ),
    Photo(
        "flower", "sklearn", "datasets/images/flower.jpg", "CC BY 2.0 (Flickr, see sklearn/datasets/images/README.txt)"
    ),
    Photo(
        "grace_hopper",
        "matplotlib",
        "mpl-data/sample_data/grace_hopper.jpg",
        "public domain (U.S. Navy); matplotlib sample data",
        held_out=True,
    ),
    *(
        # names must not contain "test" / "train": the datasets library splits imagefolders by file name
        Photo(
            stem.replace("_test", "_sample"),
            "opencv-doc",
            f"{stem}.{ext}",
            _CV,
            held_out=stem in ("fruits", "squirrel_cls", "building"),
        )
        for stem, ext in (
            ("HappyFish", "jpg"),
            ("aero1", "jpg"),
            ("aero3", "jpg"),
            ("aloeL", "jpg"),
            ("apple", "jpg"),
            ("baboon", "jpg"),
            ("board", "jpg"),
            ("building", "jpg"),
            ("butterfly", "jpg"),
            ("ela_original", "jpg"),
            ("fruits", "jpg"),
            ("graf1", "png"),
            ("home", "jpg"),
            ("leuvenA", "jpg"),
            ("messi5", "jpg"),
            ("orange", "jpg"),
            ("pca_test1", "jpg"),
            ("rubberwhale1", "png"),
            ("smarties", "png"),
            ("squirrel_cls", "jpg"),
            ("stuff", "jpg"),
            ("Blender_Suzanne1", "jpg"),
            ("licenseplate_motion", "jpg"),
            ("left", "jpg"),
        )
    ),
)


def available_photos(held_out: bool | None = None) -> list[Photo]:
    """The photos present on this machine (``held_out``: only held-out / only training; None: all)."""
    return [p for p in PHOTOS if p.file() is not None and (held_out is None or p.held_out == held_out)]


def require_photos(held_out: bool | None = None) -> list[Photo]:
    """Like :func:`available_photos`, but an error naming the missing sources and their install command."""
    missing = sorted({p.source for p in PHOTOS if p.file() is None and (held_out is None or p.held_out == held_out)})
    if missing:
        raise FileNotFoundError(
            "photos of the embedded set are missing from: " + ", ".join(f"{s} ({_INSTALL[s]})" for s in missing)
        )
    return available_photos(held_out)


def load_photo(photo: Photo, short_side: int | None = None) -> Image.Image:
    """The photo in RGB, its short side resized to ``short_side`` (None: original size)."""
    path = photo.file()
    if path is None:
        raise FileNotFoundError(f"photo {photo.name!r} ({photo.source}: {photo.path}) is not installed")
    image = Image.open(path).convert("RGB")
    if short_side is not None:
        w, h = image.size
        s = short_side / min(w, h)
        image = image.resize((max(short_side, round(w * s)), max(short_side, round(h * s))), Image.Resampling.LANCZOS)
    return image


def centre_square(image: Image.Image, size: int) -> Image.Image:
    """Centre crop to a square, resized to ``size`` (the held-out evaluation view of a photo)."""
    w, h = image.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return image.crop(box).resize((size, size), Image.Resampling.LANCZOS)


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float in [0, 1]."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def to_image(x: torch.Tensor) -> Image.Image:
    """(3, H, W) float in [0, 1] -> PIL."""
    return Image.fromarray((x.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8))


class RandomCrops:
    """Random square crops (a random fraction ``scale`` of the short side), resized to ``size`` with
    antialiasing, flipped left-right half the time: the augmentation of every training stage."""

    def __init__(self, photos: list[Photo], size: int, short_side: int = 192, scale: tuple[float, float] = (0.3, 1.0)):
        if not photos:
            raise ValueError("no photos to crop from")
        self.images = [to_tensor(load_photo(p, short_side)) for p in photos]
        self.size, self.scale = size, scale

    def sample(self, batch_size: int, generator: torch.Generator) -> torch.Tensor:
        """(B, 3, size, size) in [0, 1]."""
        out = []
        for _ in range(batch_size):
            img = self.images[int(torch.randint(len(self.images), (1,), generator=generator))]
            _, h, w = img.shape
            lo, hi = self.scale
            frac = lo + (hi - lo) * float(torch.rand(1, generator=generator))
            s = max(self.size // 2, int(min(h, w) * frac))
            top = int(torch.randint(h - s + 1, (1,), generator=generator))
            left = int(torch.randint(w - s + 1, (1,), generator=generator))
            crop = img[None, :, top : top + s, left : left + s]
            crop = F.interpolate(
                crop, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
            )
            if float(torch.rand(1, generator=generator)) < 0.5:
                crop = crop.flip(-1)
            out.append(crop[0])
        return torch.stack(out).clamp(0, 1)


def held_out_views(size: int) -> list[tuple[str, torch.Tensor]]:
    """(name, (3, size, size)) centre crops of the held-out photos: the fixed evaluation set."""
    return [(p.name, to_tensor(centre_square(load_photo(p), size))) for p in require_photos(held_out=True)]


def held_out_batch(size: int) -> torch.Tensor:
    """The held-out views of :func:`held_out_views` as one (N, 3, size, size) batch."""
    return torch.stack([x for _, x in held_out_views(size)])


def selection_views(size: int, count: int = 6) -> list[tuple[str, torch.Tensor]]:
    """Centre crops of ``count`` training photos (evenly spread over the list): where sampling settings are
    chosen, so that the held-out photos only ever measure."""
    photos = require_photos(held_out=False)
    chosen = [photos[round(i * (len(photos) - 1) / max(1, count - 1))] for i in range(min(count, len(photos)))]
    return [(p.name, to_tensor(centre_square(load_photo(p), size))) for p in chosen]


def write_training_crops(out_dir: str | Path, per_photo: int, size: int, seed: int = 0) -> int:
    """Save ``per_photo`` random crops (mostly whole-photo views) of every training photo as PNGs: the
    photo folder the cartoon pair set is built from. Returns the number written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    n = 0
    for photo in require_photos(held_out=False):
        for i, crop in enumerate(RandomCrops([photo], size, scale=(0.5, 1.0)).sample(per_photo, gen)):
            to_image(crop).save(out / f"{photo.name}_{i:02d}.png")
            n += 1
    return n


def write_examples(out_dir: str | Path, size: int) -> list[str]:
    """Save the held-out photos' centre views (the app's and ``make edit``'s examples) as PNGs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = []
    for name, view in held_out_views(size):
        to_image(view).save(out / f"{name}.png")
        names.append(f"{name}.png")
    return names


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m loca_diffusion.embedded.photos",
        description="Write random training crops of the embedded photo set.",
    )
    parser.add_argument("--crops_dir", required=True)
    parser.add_argument("--per_photo", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    a = parser.parse_args()
    print(f"wrote {write_training_crops(a.crops_dir, a.per_photo, a.size, a.seed)} crops to {a.crops_dir}")
