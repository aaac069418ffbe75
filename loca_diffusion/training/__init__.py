"""What the ``train/`` scripts share (imported as an installed package, not through ``sys.path``).

The names of the former ``loca_diffusion.training`` module are re-exported here so that
``from loca_diffusion.training import save_adapter, ...`` keeps working.
"""

from .checkpoints import (
    ADAPTER_SUBDIR,
    ADAPTER_TITLES,
    ADAPTERS,
    CHECKPOINT_INFO_FILE,
    LIVE_STATE_FILE,
    UNET_ATTENTION_TARGETS,
    build_adapter_config,
    check_replicas_in_sync,
    checkpoint_dirs,
    checkpoint_info,
    checkpoint_step,
    complete_checkpoints,
    conditioning_dropout,
    count_moved_locations,
    epoch_batches,
    instruct_pix2pix_loss,
    latest_checkpoint,
    location_snapshot,
    register_checkpoint_hooks,
    save_adapter,
    save_checkpoint,
    trainable_parameter_count,
    write_model_card,
)

__all__ = [
    "ADAPTER_SUBDIR",
    "ADAPTER_TITLES",
    "ADAPTERS",
    "CHECKPOINT_INFO_FILE",
    "LIVE_STATE_FILE",
    "UNET_ATTENTION_TARGETS",
    "build_adapter_config",
    "check_replicas_in_sync",
    "checkpoint_dirs",
    "checkpoint_info",
    "checkpoint_step",
    "complete_checkpoints",
    "conditioning_dropout",
    "count_moved_locations",
    "epoch_batches",
    "instruct_pix2pix_loss",
    "latest_checkpoint",
    "location_snapshot",
    "register_checkpoint_hooks",
    "save_adapter",
    "save_checkpoint",
    "trainable_parameter_count",
    "write_model_card",
]
