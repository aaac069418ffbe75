"""``pipe.load_loca(...)``: LoCA adapters on diffusers pipelines, the way diffusers loads LoRAs.

Three layers, each usable alone:

* :mod:`.adapter_files`: the files. :func:`read_loca_adapter` (local directory, Hub repo id, weights
  file or in-memory state dict; config and tensors checked, errors name the file) and the one
  writer, :func:`write_loca_adapter`, used by ``save_loca``, the training helpers and the training
  script alike.
* :mod:`.model_ops`: LoCA adapters on a model (a UNet, or any ``nn.Module``): load, set, enable,
  delete, fuse, unfuse, unload.
* :class:`LoCALoaderMixin`: the pipeline API (``load_loca``, ``set_loca_adapters``, ``fuse_loca`` /
  ``unfuse_loca`` (exact: the weights are restored bit for bit), ``unload_loca`` (the base model back,
  bit-identical outputs), ``disable_loca`` / ``enable_loca``, ``delete_loca_adapters``,
  ``get_loca_adapters``, ``save_loca``) on any pipeline with a ``unet`` (or a ``transformer``).

An adapter on disk is the PEFT layout: ``adapter_config.json`` + ``adapter_model.safetensors``, the
directory ``PeftModel.from_pretrained(unet, dir)`` reads and ``PeftModel.save_pretrained`` writes.
"""

from .adapter_files import (
    ADAPTER_CONFIG_NAME,
    DIFFUSERS_LORA_WEIGHTS_NAME,
    LOCA_PICKLE_WEIGHTS_NAME,
    LOCA_SUBFOLDER,
    LOCA_WEIGHTS_NAME,
    PEFT_PREFIX,
    LoCAAdapter,
    load_loca_state_dict,
    read_loca_adapter,
    save_safetensors,
    to_model_keys,
    write_loca_adapter,
)
from .mixin import LoCALoaderMixin
from .model_ops import LoCALoaderState

__all__ = [
    "LoCALoaderMixin",
    "LoCALoaderState",
    "LoCAAdapter",
    "read_loca_adapter",
    "write_loca_adapter",
    "load_loca_state_dict",
    "save_safetensors",
    "to_model_keys",
    "ADAPTER_CONFIG_NAME",
    "LOCA_WEIGHTS_NAME",
    "LOCA_PICKLE_WEIGHTS_NAME",
    "LOCA_SUBFOLDER",
    "DIFFUSERS_LORA_WEIGHTS_NAME",
    "PEFT_PREFIX",
]
