"""The embedded default: a tiny InstructPix2Pix trained in-house on photos that ship in packages.

- :mod:`.photos`: the photo set (sources, licenses, fixed held-out split, random crops);
- :mod:`.edits`: the base edits made in code, with instruction paraphrases;
- :mod:`.pretraining`: the UNet stage's data (crops and their edits, encoded once), batches and step;
- :mod:`.models`: the model configurations (VAE, UNet, text encoder, scheduler) and the pipeline builder;
- :mod:`.metrics`: PSNR / SSIM on [0, 1] images;
- :mod:`.pipeline`: loading the pipeline (and an adapter) from a folder, for the CLI, the app and the benches.

This is the one place that names the assets folder: :data:`ASSETS_DIR` (and :data:`BASE_DIR`,
:data:`ADAPTERS_DIR`, :data:`EXAMPLES_DIR` in it). The model files are not package data (they are
built by ``make assets`` and live in the repository), so an installed package finds them through the
``LOCA_DIFFUSION_ASSETS`` environment variable; a checkout (``pip install -e .``) finds its own
``assets/``.
"""

import os
from pathlib import Path

ASSETS_ENV = "LOCA_DIFFUSION_ASSETS"
ASSETS_DIR = Path(os.environ.get(ASSETS_ENV) or Path(__file__).resolve().parents[2] / "assets")
BASE_DIR = ASSETS_DIR / "tiny-instruct-pix2pix"
ADAPTERS_DIR = ASSETS_DIR / "adapters"
EXAMPLES_DIR = ASSETS_DIR / "examples"
RESOLUTION = 64
#: Where to get the embedded model when it is not at :data:`BASE_DIR` (one line, for error messages).
WHERE_TO_GET_IT = (
    f"the embedded model ships in the loca-diffusion repository's assets/ folder, not in the installed "
    f"package: run from a checkout (pip install -e .), or set {ASSETS_ENV} to a copy of that assets/ "
    "folder, or pass --model with any InstructPix2Pix pipeline folder"
)
