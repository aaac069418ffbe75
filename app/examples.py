"""The examples table: photos with instructions (and the adapter each is meant for)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .engine import ASSETS

logger = logging.getLogger("loca_app")

DEFAULT_EXAMPLES = ASSETS / "examples" / "examples.jsonl"
# photos that ship inside scikit-image, used while assets/examples is not built
FALLBACK_PHOTOS = (
    ("astronaut", "turn it into a watercolor painting"),
    ("chelsea", "make it look like a pencil sketch"),
    ("coffee", "make it a cartoon"),
)


@dataclass(frozen=True)
class Example:
    """One row of the examples table: a photo, an instruction, and the adapter to use (None: base)."""

    image: str
    instruction: str
    adapter: Optional[str] = None


def load_examples(path: Optional[str | os.PathLike] = None) -> list[Example]:
    """Examples from a JSON-lines file (``{"image": file next to it, "instruction": ..., "adapter": null|name}``
    per line); without one, a few photos from scikit-image with generic instructions. Bad lines are
    logged and skipped."""
    path = Path(path) if path is not None else DEFAULT_EXAMPLES
    if path.is_file():
        examples = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                image = path.parent / row["image"]
                if not image.is_file():
                    raise FileNotFoundError(f"no image file {image}")
                examples.append(Example(str(image), str(row["instruction"]), row.get("adapter") or None))
            except (ValueError, KeyError, TypeError, FileNotFoundError) as error:
                logger.warning("%s line %d skipped: %s", path, number, error)
        return examples
    return _fallback_examples()


def _fallback_examples() -> list[Example]:
    try:
        from PIL import Image
        from skimage import data
    except ImportError:
        logger.info("no examples: %s is missing and scikit-image is not installed", DEFAULT_EXAMPLES)
        return []
    folder = Path(tempfile.mkdtemp(prefix="loca-app-examples-"))
    examples = []
    for name, instruction in FALLBACK_PHOTOS:
        image = Image.fromarray(getattr(data, name)())
        image.thumbnail((512, 512))
        image.save(folder / f"{name}.png")
        examples.append(Example(str(folder / f"{name}.png"), instruction))
    return examples
