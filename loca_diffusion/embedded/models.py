"""Model configurations of the embedded tiny InstructPix2Pix, and the pipeline assembled from them.

Sizes were chosen with the 2-core CPU budget in mind (see ``train/pretrain_tiny_pix2pix.py``):
64 px images, a VAE with 2x downsampling to 4 latent channels (32 x 32 x 4 latents: 3x fewer numbers
than pixels). 4x downsampling stalled near 20.5 dB held-out PSNR whatever the latent width (4, 8 or
16 channels); 2x downsampling with (16, 32) channels reached 23.4 dB in 1,300 steps (4.6 min) and
(32, 64) channels were no better per step at 3x the cost. A two-layer width-64 CLIP text encoder
with the real CLIP tokenizer, and a four-level UNet on the 32 x 32 latents (8 input channels: 4 noisy
+ 4 image latents), v-prediction and a zero-terminal-SNR DDIM schedule.
"""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel

from ..pipelines import StableDiffusionInstructPix2PixLoCAPipeline
from ..tiny_pix2pix import build_clip_text_encoder, build_clip_tokenizer
from . import RESOLUTION

LATENT_CHANNELS = 4
TEXT_WIDTH = 64


def build_vae() -> AutoencoderKL:
    """2x downsampling (two blocks), 4 latent channels, no mid-block attention (it cost time, not quality)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        latent_channels=LATENT_CHANNELS,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=RESOLUTION,
        mid_block_add_attention=False,
    )


def build_text_encoder() -> CLIPTextModel:
    """CLIP text transformer, 2 layers of width 64, CLIP's vocabulary and special tokens."""
    return build_clip_text_encoder(width=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH)


# Where self- and cross-attention sit. The first base had them on the 8 x 8 and 4 x 4 latent levels
# only (8-16 px per token): no training of its attention projections got past +0.74 dB on the cartoon
# pairs (bench/results/cartoon_ceiling.md), since the cartoon's ink lines are 1 px wide. From the
# 16 x 16 level down, as Stable Diffusion puts attention on its fine levels too, costs 2x the step.
ATTENTION_LAYOUTS = {
    "8x8": (
        ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    ),
    "16x16": (
        ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    ),
}


def build_unet(attention: str = "16x16") -> UNet2DConditionModel:
    """Four levels on 32 x 32 latents (32, 16, 8, 4: a receptive field that covers the image), self-
    and cross-attention to the instruction from the ``attention`` level down (a key of
    :data:`ATTENTION_LAYOUTS`; attention on all 1,024 tokens of the top level would cost more CPU time
    than the rest of the step)."""
    if attention not in ATTENTION_LAYOUTS:
        raise ValueError(f"attention must be one of {sorted(ATTENTION_LAYOUTS)}, got {attention!r}")
    down, up = ATTENTION_LAYOUTS[attention]
    return UNet2DConditionModel(
        sample_size=RESOLUTION // 2,
        in_channels=2 * LATENT_CHANNELS,  # noisy latents + image latents
        out_channels=LATENT_CHANNELS,
        layers_per_block=1,
        block_out_channels=(32, 64, 96, 128),
        down_block_types=down,
        up_block_types=up,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=16,
        norm_num_groups=16,
    )


def build_scheduler() -> DDIMScheduler:
    """DDIM, v-prediction, betas rescaled to zero terminal SNR with trailing timesteps (so the last
    sampling step starts from pure noise, as training saw it). The training script reads the same
    config as a ``DDPMScheduler``."""
    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )


def assemble_pipeline(
    vae, text_encoder, unet, tokenizer_dir: str | Path
) -> StableDiffusionInstructPix2PixLoCAPipeline:
    """The diffusers pipeline of the embedded model (the tokenizer is rebuilt from open_clip's vocabulary)."""
    return StableDiffusionInstructPix2PixLoCAPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(tokenizer_dir),
        unet=unet,
        scheduler=build_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
