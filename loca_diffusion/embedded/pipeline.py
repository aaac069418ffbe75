"""Loading an InstructPix2Pix pipeline from a folder (the embedded one by default), with a LoCA adapter.

It lives here rather than in :mod:`loca_diffusion.edit` so that the evaluation helpers
(:mod:`.evaluate`) and the CLI both import it from below, not from each other."""

from __future__ import annotations

from pathlib import Path

import torch

from . import BASE_DIR, WHERE_TO_GET_IT

__all__ = ["load_pipeline"]


def load_pipeline(model: str | Path = BASE_DIR, adapter: str | Path | None = None):
    """Load an InstructPix2Pix pipeline in float32 on CPU (the fp16 files are for size), offline.

    Args:
        model: A diffusers pipeline folder (with ``model_index.json``); default: the embedded tiny model.
        adapter: A LoCA adapter folder (PEFT layout) to load with ``pipe.load_loca``, or None.

    Raises:
        FileNotFoundError: ``model`` holds no pipeline; for the embedded default the message says, in
            one line, where to get it.
    """
    from ..pipelines import StableDiffusionInstructPix2PixLoCAPipeline

    model = Path(model)
    if not (model / "model_index.json").is_file():
        if model == BASE_DIR:
            raise FileNotFoundError(
                f"no pipeline at {model}: {WHERE_TO_GET_IT} (a checkout rebuilds it with `make assets`)"
            )
        raise FileNotFoundError(f"no pipeline at {model} (model_index.json missing)")
    pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(
        model, dtype=torch.float32, local_files_only=True
    )
    pipe.set_progress_bar_config(disable=True)
    if adapter is not None:
        pipe.load_loca(adapter)
    return pipe
