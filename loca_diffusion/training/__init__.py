"""What the ``train/`` scripts share (imported as an installed package, not through ``sys.path``):

- :mod:`.args`: the one set of adapter flags (LoCA's defaults from ``LoCAConfig``) and the peft config they make;
- :mod:`.loop`: the one accelerate training loop (a loss callback per script), with exact resume;
- :mod:`.checkpoints`: adapter saving, accelerate checkpoint hooks, atomic ``checkpoint-<step>`` folders;
- :mod:`.cards`: the model card; :mod:`.evaluation`: the task scripts' metrics;
- :mod:`.pix2pix`: InstructPix2Pix's loss, conditioning dropout and the location heatmap.

The names of the former ``loca_diffusion.training`` module are re-exported here so that
``from loca_diffusion.training import save_adapter, ...`` keeps working.
"""

from .args import ADAPTERS, UNET_ATTENTION_TARGETS, build_adapter_config, trainable_parameter_count
from .cards import ADAPTER_TITLES, write_model_card
from .checkpoints import (
    ADAPTER_SUBDIR,
    CHECKPOINT_INFO_FILE,
    LIVE_STATE_FILE,
    checkpoint_dirs,
    checkpoint_info,
    checkpoint_step,
    complete_checkpoints,
    epoch_batches,
    latest_checkpoint,
    register_checkpoint_hooks,
    save_adapter,
    save_checkpoint,
)
from .loop import check_replicas_in_sync, count_moved_locations, location_snapshot
from .pix2pix import conditioning_dropout, instruct_pix2pix_loss

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
