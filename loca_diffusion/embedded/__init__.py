"""The embedded default: a tiny InstructPix2Pix trained in-house on photos that ship in packages.

- :mod:`.photos`: the photo set (sources, licenses, fixed held-out split, random crops);
- :mod:`.edits`: the base edits made in code, with instruction paraphrases;
- :mod:`.models`: the model configurations (VAE, UNet, text encoder, scheduler) and the pipeline builder;
- :mod:`.metrics`: PSNR / SSIM on [0, 1] images.

Paths of the shipped assets are in :data:`ASSETS_DIR`, :data:`BASE_DIR` and :data:`ADAPTERS_DIR`.
"""

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
BASE_DIR = ASSETS_DIR / "tiny-instruct-pix2pix"
ADAPTERS_DIR = ASSETS_DIR / "adapters"
EXAMPLES_DIR = ASSETS_DIR / "examples"
RESOLUTION = 64
