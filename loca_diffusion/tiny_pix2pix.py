"""A tiny InstructPix2Pix pipeline built in code (random weights), for tests and offline runs.

Same architecture family as ``timbrooks/instruct-pix2pix`` (a UNet with 8 input channels: 4 noisy
latents + 4 image latents, a VAE, a CLIP text encoder and the real CLIP tokenizer), small enough to
train a few steps on a CPU. The tokenizer is rebuilt from the BPE vocabulary that ``open_clip_torch``
ships, so token ids are exactly CLIP's; only the file is read (importing open_clip needs torchvision).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .pipelines import StableDiffusionInstructPix2PixLoCAPipeline

CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"


def find_clip_bpe_vocab() -> Path:
    """Path of open_clip's ``bpe_simple_vocab_16e6.txt.gz`` (``pip install --no-deps open_clip_torch``)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "The CLIP BPE vocabulary comes from the open_clip_torch package; install it without its "
            "dependencies: pip install --no-deps open_clip_torch"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / CLIP_VOCAB_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed open_clip_torch")
    return path


def _bytes_to_unicode() -> dict[int, str]:
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, codes)))


@lru_cache(maxsize=2)
def clip_tokenizer_files(directory: str) -> str:
    """Write ``vocab.json`` / ``merges.txt`` of the CLIP tokenizer into ``directory`` (the same 49408
    tokens, in the same order, as OpenAI's CLIP) and return it."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(find_clip_bpe_vocab()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab += [v + "</w>" for v in vocab]
    vocab += ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return str(out)


def build_clip_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """The real CLIP tokenizer (max length 77), rebuilt offline."""
    files = clip_tokenizer_files(str(directory))
    # from_pretrained reads vocab.json / merges.txt by name (transformers 5's constructor ignores the
    # old vocab_file= / merges_file= keywords)
    return CLIPTokenizer.from_pretrained(files, model_max_length=77, pad_token="<|endoftext|>")


def build_tiny_unet(width: int = 32) -> UNet2DConditionModel:
    """The tiny InstructPix2Pix UNet: 8 input channels, two levels (``width``, ``2 * width``), cross-attention
    width 32 (the tiny CLIP text encoder's)."""
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=8,  # noisy latents + image latents
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    )


def build_clip_text_encoder(width: int, intermediate_size: int, layers: int = 2, heads: int = 4) -> CLIPTextModel:
    """A small ``CLIPTextModel`` with CLIP's vocabulary and special tokens (77 positions)."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=width,
            intermediate_size=intermediate_size,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        )
    )


def build_tiny_instruct_pix2pix(work_dir: str | Path, seed: int = 0) -> StableDiffusionInstructPix2PixLoCAPipeline:
    """A randomly initialised tiny InstructPix2Pix pipeline (LoCA-enabled class), on CPU in float32.

    ``work_dir`` receives the tokenizer files. Save it with ``save_pretrained`` to get a local
    ``--pretrained_model_name_or_path`` for the training script.
    """
    torch.manual_seed(seed)
    unet = build_tiny_unet()
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(16, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
    )
    text_encoder = build_clip_text_encoder(width=32, intermediate_size=64)
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,  # as in SD / instruct-pix2pix configs (diffusers' SD pipelines warn otherwise)
    )
    tokenizer = build_clip_tokenizer(Path(work_dir) / "tokenizer_files")
    for model in (unet, vae, text_encoder):
        model.eval()  # as from_pretrained returns them
    return StableDiffusionInstructPix2PixLoCAPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
