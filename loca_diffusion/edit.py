"""Edit a photo with an instruction, offline, with the embedded tiny InstructPix2Pix (and a LoCA adapter).

    python -m loca_diffusion.edit --image IMG --instruction "make it black and white" [--output OUT]
    python -m loca_diffusion.edit --image IMG --instruction "Make it look like a cartoon." \
        --adapter assets/adapters/cartoonizer
    python -m loca_diffusion.edit --grid edit-grid.png      # before/after grid of assets/examples

The embedded model works at 64 px: the photo is resized to 64 px on its long side, aspect ratio kept and both
sides multiples of 8, as the app does (``--resolution``); the output is that size, saved to ``--output``
(default: ``<image>-edited.png``). ``--grid`` tiles stay square centre crops.
``--model`` picks another InstructPix2Pix pipeline folder (any diffusers one; larger ones are slow on CPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from .embedded import ADAPTERS_DIR, BASE_DIR, EXAMPLES_DIR, RESOLUTION
from .embedded.evaluate import DEFAULT_GUIDANCE, DEFAULT_IMAGE_GUIDANCE, DEFAULT_STEPS, run_edit
from .embedded.photos import centre_square, to_image, to_tensor
from .embedded.pipeline import load_pipeline
from .images import fit_size, load_rgb

__all__ = ["load_pipeline", "edit_image", "edit_grid", "main"]


def edit_image(
    pipe,
    image: Image.Image,
    instruction: str,
    *,
    resolution: int = RESOLUTION,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    image_guidance_scale: float = DEFAULT_IMAGE_GUIDANCE,
) -> Image.Image:
    """Resize ``image`` to ``resolution`` on its long side (aspect kept, multiples of 8; no crop, as the app)
    and apply ``instruction``."""
    photo = load_rgb(image)
    photo = photo.resize(fit_size(*photo.size, resolution), Image.Resampling.LANCZOS)
    x = to_tensor(photo)[None]
    out = run_edit(
        pipe,
        x,
        [instruction],
        steps=steps,
        guidance_scale=guidance_scale,
        image_guidance_scale=image_guidance_scale,
        seed=seed,
    )
    return to_image(out[0])


def read_examples(examples_dir: str | Path = EXAMPLES_DIR) -> list[dict]:
    """The rows of ``examples.jsonl``: {"image", "instruction", "adapter"} (image relative to the folder)."""
    path = Path(examples_dir) / "examples.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (rebuild the assets with `make assets`)")
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            row = json.loads(line)
            missing = {"image", "instruction", "adapter"} - row.keys()
            if missing:
                raise ValueError(f"{path}:{i}: missing {sorted(missing)}")
            rows.append(row)
    return rows


def edit_grid(
    output: str | Path,
    examples_dir: str | Path = EXAMPLES_DIR,
    model: str | Path = BASE_DIR,
    adapters_dir: str | Path = ADAPTERS_DIR,
    scale: int = 3,
) -> Path:
    """One row per example: the photo, then its edit, labelled with the instruction (and adapter)."""
    rows = read_examples(examples_dir)
    base = load_pipeline(model)
    tiles = []
    for row in rows:
        photo = load_rgb(Path(examples_dir) / row["image"])
        if row["adapter"]:
            base.load_loca(Path(adapters_dir) / row["adapter"], adapter_name="grid")
        edited = edit_image(base, photo, row["instruction"])
        if row["adapter"]:
            base.unload_loca()
        label = row["instruction"] + (f"  [LoCA: {row['adapter']}]" if row["adapter"] else "")
        tiles.append((centre_square(photo.convert("RGB"), RESOLUTION), edited, label))
    s = RESOLUTION * scale
    grid = Image.new("RGB", (2 * s + 8 + 330, len(tiles) * (s + 4)), "white")
    draw = ImageDraw.Draw(grid)
    for i, (before, after, label) in enumerate(tiles):
        y = i * (s + 4)
        grid.paste(before.resize((s, s), Image.Resampling.NEAREST), (0, y))
        grid.paste(after.resize((s, s), Image.Resampling.NEAREST), (s + 4, y))
        draw.text((2 * s + 12, y + s // 2 - 6), label, fill="black")
    out = Path(output)
    grid.save(out)
    return out


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loca_diffusion.edit", description=__doc__.split("\n\n")[0])
    p.add_argument("--image", help="the photo to edit")
    p.add_argument("--instruction", help='what to do, e.g. "make it black and white"')
    p.add_argument("--adapter", default=None, help="a LoCA adapter folder, e.g. assets/adapters/cartoonizer")
    p.add_argument("--output", default=None, help="where to save the edit (default: <image>-edited.png)")
    p.add_argument(
        "--model", default=str(BASE_DIR), help="InstructPix2Pix pipeline folder (default: the embedded one)"
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=RESOLUTION,
        help="long side the photo is resized to, aspect kept (default: %(default)s, the embedded model's size)",
    )
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="denoising steps (default: %(default)s)")
    p.add_argument(
        "--guidance_scale",
        type=float,
        default=DEFAULT_GUIDANCE,
        help="text guidance: higher follows the instruction more (default: %(default)s)",
    )
    p.add_argument(
        "--image_guidance_scale",
        type=float,
        default=DEFAULT_IMAGE_GUIDANCE,
        help="image guidance: higher stays closer to the photo (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", default=None, help="write a before/after grid of assets/examples to this PNG instead")
    args = p.parse_args(argv)
    if args.grid is None and (args.image is None or args.instruction is None):
        p.error("give --image and --instruction (or --grid OUT.png)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.set_num_threads(1)  # small convolutions: one thread is fastest on shared cores
    if args.grid is not None:
        try:
            print(f"wrote {edit_grid(args.grid, model=args.model)}")
        except FileNotFoundError as error:
            raise SystemExit(f"error: {error}") from None
        return 0
    image_path = Path(args.image)
    if not image_path.is_file():
        raise SystemExit(f"--image {image_path}: no such file")
    try:
        pipe = load_pipeline(args.model, args.adapter)
    except FileNotFoundError as error:  # no model (an installed package without the assets): one line, no traceback
        raise SystemExit(f"error: {error}") from None
    edited = edit_image(
        pipe,
        load_rgb(image_path),
        args.instruction,
        resolution=args.resolution,
        seed=args.seed,
        steps=args.steps,
        guidance_scale=args.guidance_scale,
        image_guidance_scale=args.image_guidance_scale,
    )
    output = Path(args.output) if args.output else image_path.with_name(image_path.stem + "-edited.png")
    edited.save(output)
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
