#!/usr/bin/env python
"""Serve instruction-based image edits from LoCA adapters in a browser.

    python -m app                                       # the embedded tiny model, on this machine only
    python -m app --base timbrooks/instruct-pix2pix --adapters_dir my_adapters --device cuda

Without ``--base`` the app runs the embedded tiny InstructPix2Pix in ``assets/`` (or, before it is
built, a tiny pipeline with random weights built in code) on whatever adapters ``assets/adapters``
holds. It listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

if __package__ in (None, ""):  # run as a file, this folder would shadow the `app` package it imports
    sys.exit("run the app as `python -m app` from the repository root (`make demo` does)")

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry calls from an offline server

logger = logging.getLogger("loca_app")

LOOPBACK_HOSTS = ("localhost",)
# "Randomize guidance" on the embedded model: the corners of this box were all measured to edit well on
# training photos (bench/results/embedded_guidance.md: 1/1, 2/1.5, 3/1, 3/1.5); the original demo's text 6-9
# turns its output magenta
EMBEDDED_RANDOM_GUIDANCE = (1.0, 3.0)
EMBEDDED_RANDOM_IMAGE_GUIDANCE = (1.0, 1.5)


def embedded_call_defaults() -> dict:
    """The embedded model's recommended call settings (its call_defaults.json, read as plain JSON: no model is
    loaded for ``--help``), or {} before it is built."""
    from loca_diffusion.embedded import BASE_DIR

    path = BASE_DIR / "call_defaults.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
# small inputs and results (the embedded model works at 64 px) are shown scaled up to fit the panel; the
# before/after sliders get the whole picture instead of a full-width crop
CSS = """
#input_image img, #result img { width: 100%; height: 100%; object-fit: contain; }
.fit img[data-testid=imageslider-image] { height: 100%; max-height: 100% !important; object-fit: contain; }
"""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--base",
        default=None,
        help="the InstructPix2Pix pipeline: a Hub id (e.g. timbrooks/instruct-pix2pix) or a local folder "
        "(default: the embedded tiny model in assets/tiny-instruct-pix2pix)",
    )
    parser.add_argument(
        "--adapters_dir",
        default=None,
        help="a folder whose subfolders are LoCA adapters in the PEFT layout (default: assets/adapters)",
    )
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        metavar="DIR_OR_HUB_ID",
        help="one more adapter (a folder or a Hub id); repeatable",
    )
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="auto: CUDA in fp16 if available, else CPU fp32",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: the first free one from 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    parser.add_argument(
        "--max_side",
        type=int,
        default=None,
        help="long side the input is fitted to, a multiple of 8 (default: the model's native resolution)",
    )
    parser.add_argument("--max_upload_mb", type=float, default=20.0, help="largest upload accepted, in MB")
    parser.add_argument("--max_megapixels", type=float, default=50.0, help="largest upload accepted, in megapixels")
    parser.add_argument("--queue_size", type=int, default=16, help="requests waiting beyond this are turned away")
    embedded = embedded_call_defaults()
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help=f"denoising steps the controls start at (default: {embedded.get('num_inference_steps', 20)} for the "
        "embedded model, else the base folder's call_defaults.json, else 20)",
    )
    parser.add_argument(
        "--guidance_scale",
        type=float,
        default=None,
        help=f"text guidance the controls start at (default: {embedded.get('guidance_scale', 7.5):.1f} for the "
        "embedded model, chosen on training photos; else the base folder's call_defaults.json, else the original "
        "demo's 7.5)",
    )
    parser.add_argument(
        "--image_guidance_scale",
        type=float,
        default=None,
        help=f"image guidance the controls start at (default: {embedded.get('image_guidance_scale', 1.5):.1f} for "
        "the embedded model; else the base folder's call_defaults.json, else 1.5)",
    )
    parser.add_argument(
        "--examples", default=None, help="a JSON-lines file of examples (default: assets/examples/examples.jsonl)"
    )
    args = parser.parse_args(argv)
    if args.max_side is not None and (args.max_side < 8 or args.max_side % 8):
        parser.error(f"--max_side must be a positive multiple of 8, got {args.max_side}")
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0 or args.queue_size < 1:
        parser.error("--max_upload_mb, --max_megapixels and --queue_size must be positive")
    return args


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def build_engine(args: argparse.Namespace):
    """The :class:`~app.engine.EditEngine` the command line asks for."""
    from app.engine import DEFAULT_ADAPTERS_DIR, EditEngine, Limits

    adapters_dir = args.adapters_dir
    if adapters_dir is None and DEFAULT_ADAPTERS_DIR.is_dir():
        adapters_dir = DEFAULT_ADAPTERS_DIR
    elif adapters_dir is None:
        logger.info(
            "no adapters folder at %s: serving the base model and --adapter entries only", DEFAULT_ADAPTERS_DIR
        )
    limits = Limits(
        max_side=args.max_side,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=int(args.max_megapixels * 1e6),
    )
    return EditEngine.load(
        args.base,
        adapters_dir=adapters_dir,
        adapters=args.adapter,
        device=args.device,
        limits=limits,
    )


def start_settings(args: argparse.Namespace, adapters: Sequence[str] = ()):
    """What the controls start at: the command line's settings, else the base model's recommended ones (its
    folder's call_defaults.json; else the original demo's). For the embedded model also the guidance ranges
    of "Randomize guidance" and the instructions it was trained on (plus the cartoonizer's, when that adapter
    is among ``adapters``)."""
    from app.ui import ORIGINAL_DEMO_SETTINGS, Settings
    from loca_diffusion.pipelines import read_call_defaults

    recommended = ORIGINAL_DEMO_SETTINGS
    from loca_diffusion.embedded import BASE_DIR

    embedded = args.base is None and BASE_DIR.is_dir()
    folder = BASE_DIR if embedded else Path(args.base) if args.base else None
    defaults = read_call_defaults(folder) if folder is not None and folder.is_dir() else {}
    extra = {}
    if embedded:
        from loca_diffusion.embedded.edits import CARTOON_INSTRUCTION, WORKING_EDITS

        instructions = tuple(e.instructions[0] for e in WORKING_EDITS)
        if "cartoonizer" in adapters:
            instructions += (f"{CARTOON_INSTRUCTION} (with the cartoonizer adapter)",)
        extra = dict(
            random_guidance_scale=EMBEDDED_RANDOM_GUIDANCE,
            random_image_guidance_scale=EMBEDDED_RANDOM_IMAGE_GUIDANCE,
            instructions=instructions,
        )

    def pick(given, key, fallback):
        return given if given is not None else defaults.get(key, fallback)

    return Settings(
        steps=int(pick(args.steps, "num_inference_steps", recommended.steps)),
        guidance_scale=float(pick(args.guidance_scale, "guidance_scale", recommended.guidance_scale)),
        image_guidance_scale=float(
            pick(args.image_guidance_scale, "image_guidance_scale", recommended.image_guidance_scale)
        ),
        **extra,
    )


def launch_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``Blocks.launch``: the host, port and caps from the command line; no share link,
    no server-side rendering process, errors shown only as the messages the app raises."""
    import gradio as gr

    return dict(
        server_name=args.host,
        server_port=args.port,
        share=bool(args.share),
        max_file_size=int(args.max_upload_mb * 2**20),
        show_error=False,
        ssr_mode=False,
        # system fonts: the page loads nothing from the internet
        theme=gr.themes.Soft(
            font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
        ),
        css=CSS,
    )


def create_app(args: argparse.Namespace):
    """The engine and the queued Blocks, ready to launch."""
    from app.examples import load_examples
    from app.ui import build_demo  # imports gradio: only when serving, so --help stays instant

    engine = build_engine(args)
    settings = start_settings(args, engine.adapters)
    if settings.instructions:
        engine.instruction_hint = settings.instructions[0]
    demo = build_demo(engine, load_examples(args.examples), settings=settings)
    demo.queue(max_size=args.queue_size, default_concurrency_limit=1)
    return engine, demo


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if not is_loopback(args.host):
        logger.warning("listening on %s: other machines can reach the app (there is no login)", args.host)
    from app.engine import EditError

    try:
        engine, demo = create_app(args)
    except EditError as error:
        sys.exit(f"error: {error}")
    logger.info(
        "serving %s with adapters %s (input fitted to %d px)",
        engine.base_label,
        engine.adapters or "none",
        engine.limits.max_side,
    )
    demo.launch(**launch_kwargs(args))


if __name__ == "__main__":
    main()
