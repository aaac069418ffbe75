"""The app's model side, without any UI: load the base pipeline and the LoCA adapters once, validate
requests and uploads, and run edits one at a time per device.

Adapters are switched per request with the pipeline's public methods only: ``set_loca_adapters`` with
weights for a mix or a scaled adapter, ``fuse_loca`` when a single adapter runs at strength 1 (then an
edit costs what a base edit costs), ``unfuse_loca`` (bit-exact restore) before the next switch, and
``disable_loca`` for the base model.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional, Union

import torch
from PIL import Image, UnidentifiedImageError

from loca_diffusion.embedded import ASSETS_DIR
from loca_diffusion.images import fit_size, load_rgb

logger = logging.getLogger("loca_app")

ASSETS = ASSETS_DIR
DEFAULT_BASE_DIR = ASSETS / "tiny-instruct-pix2pix"
DEFAULT_ADAPTERS_DIR = ASSETS / "adapters"
SAFE_WEIGHTS_NAME = "adapter_model.safetensors"
NO_ADAPTER = "none"

__all__ = [
    "EditEngine",
    "EditError",
    "EditRequest",
    "EditResult",
    "Limits",
    "device_lock",
    "fit_size",
    "native_side",
    "resolve_device",
]


class EditError(ValueError):
    """A request the app refuses, with a message meant for the user."""


@dataclass(frozen=True)
class Limits:
    """What a request may ask for. Uploads beyond ``max_upload_bytes`` / ``max_pixels`` are refused before
    their pixels are decoded."""

    max_side: Optional[int] = None  # None: the model's native resolution (see native_side)
    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000
    max_instruction_chars: int = 500
    steps: tuple[int, int] = (1, 100)
    guidance_scale: tuple[float, float] = (0.0, 20.0)
    image_guidance_scale: tuple[float, float] = (0.0, 10.0)
    seed: tuple[int, int] = (0, 2**32 - 1)
    strength: tuple[float, float] = (0.0, 2.0)

    def __post_init__(self):
        if self.max_side is not None and (self.max_side < 8 or self.max_side % 8):
            raise ValueError(f"max_side must be a positive multiple of 8, got {self.max_side}")


@dataclass(frozen=True)
class EditRequest:
    """One edit: the instruction, sampler settings and the adapter mix (``(name, weight)`` pairs)."""

    instruction: str
    steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    seed: int = 0
    adapters: tuple[tuple[str, float], ...] = ()


@dataclass
class EditResult:
    image: Image.Image
    request: EditRequest
    fused: bool
    seconds: float
    base_image: Optional[Image.Image] = None  # the base model on the same seed (compare mode)
    input_image: Optional[Image.Image] = None

    def describe(self) -> str:
        """The seed and settings actually used, in one line."""
        r = self.request
        mix = " + ".join(f"{name} x{weight:g}" for name, weight in r.adapters) or "none (base model)"
        width, height = self.image.size
        return (
            f"seed {r.seed} · steps {r.steps} · text guidance {r.guidance_scale:g} · image guidance "
            f"{r.image_guidance_scale:g} · adapter {mix}{' (fused)' if self.fused else ''} · {width}x{height} px"
            f" · {self.seconds:.1f} s"
        )


def native_side(pipe) -> int:
    """The image size the model was trained at (UNet sample size x VAE factor; 512 for Stable Diffusion 1.5),
    at least 64, a multiple of 8."""
    sample = pipe.unet.config.sample_size
    sample = max(sample) if isinstance(sample, (tuple, list)) else sample
    return max(64, math.ceil(sample * pipe.vae_scale_factor / 8) * 8)


def resolve_device(device: str = "auto") -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA in float16 when available, else CPU in float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EditError(
            "--device cuda was asked for, but torch sees no CUDA GPU (is the CUDA build of torch installed?)"
        )
    if device not in ("cpu", "cuda"):
        raise EditError(f"--device must be auto, cpu or cuda, got {device!r}")
    torch_device = torch.device(device)
    return torch_device, (torch.float16 if torch_device.type == "cuda" else torch.float32)


_DEVICE_LOCKS: dict[str, threading.Lock] = {}
_DEVICE_LOCKS_GUARD = threading.Lock()


def device_lock(device: Union[str, torch.device]) -> threading.Lock:
    """One lock per device, shared by every engine on it: one generation at a time per GPU (or CPU)."""
    key = str(torch.device(device))
    with _DEVICE_LOCKS_GUARD:
        return _DEVICE_LOCKS.setdefault(key, threading.Lock())


def _number(value, name: str, bounds: tuple[float, float], integer: bool = False):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise EditError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise EditError(f"{name} must be a finite number, got {value!r}")
    if integer and number != int(number):
        raise EditError(f"{name} must be a whole number, got {value!r}")
    low, high = bounds
    if not low <= number <= high:
        raise EditError(f"{name} must be between {low:g} and {high:g}, got {number:g}")
    return int(number) if integer else number


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:500]


@dataclass
class _AdapterState:
    """What the pipeline currently applies: the mix, and whether it is fused into the weights."""

    mix: Optional[tuple[tuple[str, float], ...]] = None  # None: unknown (right after loading)
    fused: bool = False


class EditEngine:
    """A LoCA InstructPix2Pix pipeline with its adapters, serving edits.

    Args:
        pipe: a pipeline with the LoCA loader methods (``StableDiffusionInstructPix2PixLoCAPipeline``),
            already on ``device``, adapters loaded (see :meth:`load_adapters`).
        limits: request and upload limits.
        fuse: run a single adapter at strength 1 fused into the weights (no per-step adapter cost).
        cache_deltas: keep each fused adapter's dense dW, so that switching back to it skips the inverse DCT
            (one dW per adapter and adapted layer in memory: small next to the UNet for a few adapters).
    """

    def __init__(
        self,
        pipe,
        *,
        limits: Limits = Limits(),
        fuse: bool = True,
        cache_deltas: bool = True,
        base_label: str = "base",
    ):
        self.pipe = pipe
        self.limits = limits if limits.max_side is not None else replace(limits, max_side=native_side(pipe))
        self.fuse = fuse
        self.cache_deltas = cache_deltas
        self.base_label = base_label
        self.device = pipe.device
        self.lock = device_lock(self.device)
        # an instruction the model is known to follow, quoted when a request has none (None: no example)
        self.instruction_hint: Optional[str] = None
        self.adapter_errors: dict[str, str] = {}
        self.adapter_sources: dict[str, str] = {}
        self._state = _AdapterState()
        pipe.set_progress_bar_config(disable=True)

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(
        cls,
        base: Optional[str] = None,
        *,
        adapters_dir: Optional[Union[str, os.PathLike]] = None,
        adapters: Sequence[str] = (),
        device: str = "auto",
        limits: Limits = Limits(),
        fuse: bool = True,
        local_files_only: bool = False,
    ) -> "EditEngine":
        """Load the base pipeline (``base``: a local pipeline folder or a Hub id; default: the embedded tiny
        model under ``assets/``, else the tiny pipeline built in code) and every adapter: the subfolders of
        ``adapters_dir`` and each of ``adapters`` (folders or Hub ids). Adapter failures are recorded in
        :attr:`adapter_errors`, not raised; a base that cannot be loaded raises :class:`EditError`."""
        torch_device, dtype = resolve_device(device)
        pipe, label = _load_base(base, dtype, local_files_only)
        pipe.to(torch_device)
        engine = cls(pipe, limits=limits, fuse=fuse, base_label=label)
        engine.load_adapters(adapters_dir, adapters, local_files_only=local_files_only)
        return engine

    def load_adapters(
        self,
        adapters_dir: Optional[Union[str, os.PathLike]] = None,
        adapters: Sequence[str] = (),
        *,
        local_files_only: bool = False,
    ) -> None:
        """Load the subfolders of ``adapters_dir`` (name: the folder name) and ``adapters`` (folders or Hub
        ids; name: the last path component). Only ``adapter_model.safetensors`` is read (no pickle)."""
        sources: list[tuple[str, str]] = []
        if adapters_dir is not None:
            folder = Path(adapters_dir)
            if folder.is_dir():
                sources += [
                    (p.name, str(p)) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
                ]
            else:
                self.adapter_errors[folder.name or str(folder)] = f"adapters folder '{folder}' does not exist"
        for source in adapters:
            sources.append((Path(source.rstrip("/")).name or source, source))
        for name, source in sources:
            name = self._free_name(name)
            try:
                self._load_one(name, source, local_files_only)
            except Exception as error:  # any failure: report it, keep serving the others
                self.adapter_errors[name] = f"{source}: {_first_line(error)}"
                logger.warning("adapter %s not loaded: %s", name, self.adapter_errors[name])
            else:
                self.adapter_sources[name] = source
                logger.info("adapter %s loaded from %s", name, source)
        self._state = _AdapterState()  # load_loca activated the last one; the next request sets the mix

    def _free_name(self, name: str) -> str:
        taken = set(self.adapters) | set(self.adapter_errors) | {NO_ADAPTER}
        candidate, index = name, 2
        while candidate in taken:
            candidate, index = f"{name}-{index}", index + 1
        return candidate

    def _load_one(self, name: str, source: str, local_files_only: bool) -> None:
        local = Path(source).expanduser()
        if local.is_dir():
            folder = local if (local / "adapter_config.json").is_file() else local / "unet_loca"
            if not (folder / SAFE_WEIGHTS_NAME).is_file() and (folder / "adapter_model.bin").is_file():
                raise EditError(
                    f"only a pickle weights file (adapter_model.bin) is there; the app loads {SAFE_WEIGHTS_NAME} "
                    "only (convert it with safetensors)"
                )
        if self._state.fused:
            self.pipe.unfuse_loca()
            self._state = _AdapterState()
        self.pipe.load_loca(
            source, adapter_name=name, weight_name=SAFE_WEIGHTS_NAME, local_files_only=local_files_only
        )

    @property
    def adapters(self) -> list[str]:
        """Names of the loaded adapters, in load order."""
        return (
            self.pipe.get_loca_adapters() if hasattr(self.pipe, "get_loca_adapters") and self.adapter_sources else []
        )

    # ------------------------------------------------------------------ validation

    def request(
        self,
        instruction: str,
        steps=20,
        guidance_scale=7.5,
        image_guidance_scale=1.5,
        seed=0,
        adapters: Sequence[tuple[Optional[str], object]] = (),
    ) -> EditRequest:
        """A validated :class:`EditRequest`; :class:`EditError` names the field at fault. Adapter entries
        with no name, ``"none"`` or weight 0 are dropped."""
        limits = self.limits
        if not isinstance(instruction, str) or not instruction.strip():
            hint = f", e.g. '{self.instruction_hint}'" if self.instruction_hint else ""
            raise EditError(f"Write an instruction{hint}")
        instruction = instruction.strip()
        if len(instruction) > limits.max_instruction_chars:
            raise EditError(
                f"The instruction is too long ({len(instruction)} characters; at most {limits.max_instruction_chars})"
            )
        mix: list[tuple[str, float]] = []
        for name, weight in adapters:
            if name in (None, "", NO_ADAPTER):
                continue
            if name not in self.adapters:
                known = ", ".join(self.adapters) or "none are loaded"
                raise EditError(f"Unknown adapter {name!r} (loaded: {known})")
            weight = _number(weight, f"The strength of adapter {name!r}", limits.strength)
            if any(name == other for other, _ in mix):
                raise EditError(f"Adapter {name!r} is selected twice; pick two different adapters to mix")
            if weight != 0:
                mix.append((name, weight))
        return EditRequest(
            instruction=instruction,
            steps=_number(steps, "Steps", limits.steps, integer=True),
            guidance_scale=_number(guidance_scale, "Text guidance", limits.guidance_scale),
            image_guidance_scale=_number(image_guidance_scale, "Image guidance", limits.image_guidance_scale),
            seed=_number(seed, "Seed", limits.seed, integer=True),
            adapters=tuple(mix),
        )

    def open_image(self, source: Union[str, os.PathLike, Image.Image]) -> Image.Image:
        """An upload (file path) or image as upright 8-bit RGB, fitted to ``max_side``.

        Refused with :class:`EditError`: more than ``max_upload_bytes`` or ``max_pixels`` (checked before
        decoding), not an image, a truncated file.
        """
        limits = self.limits
        if isinstance(source, Image.Image):
            self._check_pixels(*source.size)
            return self.fit(load_rgb(source))
        path = Path(source)
        if not path.is_file():
            raise EditError(
                "No image was uploaded" if not str(source) else f"The uploaded file is missing ({path.name})"
            )
        size = path.stat().st_size
        if size > limits.max_upload_bytes:
            raise EditError(
                f"The file is too large ({size / 2**20:.1f} MB; at most {limits.max_upload_bytes / 2**20:.0f} MB)"
            )
        try:
            with Image.open(path) as probe:  # reads the header only
                self._check_pixels(*probe.size)
            image = load_rgb(path)
        except EditError:
            raise
        except Image.DecompressionBombError:
            raise EditError("The image has too many pixels (a decompression bomb?)") from None
        except UnidentifiedImageError:
            raise EditError("The file is not an image this app can read (JPEG, PNG, WebP, BMP, TIFF, GIF)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise EditError(f"The image file is damaged or truncated ({_first_line(error)})") from None
        return self.fit(image)

    def _check_pixels(self, width: int, height: int) -> None:
        if width * height > self.limits.max_pixels:
            raise EditError(
                f"The image is too large ({width}x{height} = {width * height / 1e6:.1f} megapixels; at most "
                f"{self.limits.max_pixels / 1e6:g})"
            )

    def fit(self, image: Image.Image) -> Image.Image:
        """Resize to the model's input size (unchanged when already there)."""
        size = fit_size(*image.size, self.limits.max_side)
        return image if image.size == size else image.resize(size, Image.Resampling.LANCZOS)

    # ------------------------------------------------------------------ running

    def activate(self, mix: tuple[tuple[str, float], ...]) -> bool:
        """Make the pipeline apply ``mix`` (``()``: the base model). Returns whether it runs fused.

        Nothing is done when the mix is already active, so repeated edits with one adapter pay no
        switching cost."""
        state = self._state
        fuse = self.fuse and len(mix) == 1 and mix[0][1] == 1.0
        if state.mix == mix and state.fused == fuse:
            return fuse
        pipe = self.pipe
        if state.fused:
            pipe.unfuse_loca()
        state.fused = False
        if not mix:
            if self.adapters:
                pipe.disable_loca()
        else:
            if not state.mix:  # only the base mix disables the adapters
                pipe.enable_loca()
            pipe.set_loca_adapters([name for name, _ in mix], [weight for _, weight in mix])
            if fuse:
                pipe.fuse_loca(cache_deltas=self.cache_deltas)
                state.fused = True
        state.mix = mix
        return state.fused

    def _run(self, image: Image.Image, request: EditRequest, on_step: Optional[Callable[[], None]]) -> Image.Image:
        def callback(pipe, step, timestep, callback_kwargs):
            if on_step is not None:
                on_step()
            return callback_kwargs

        # a CPU generator: the same seed gives the same noise on every device
        generator = torch.Generator().manual_seed(request.seed)
        with torch.inference_mode():
            output = self.pipe(
                request.instruction,
                image=image,
                num_inference_steps=request.steps,
                guidance_scale=request.guidance_scale,
                image_guidance_scale=request.image_guidance_scale,
                generator=generator,
                callback_on_step_end=callback,
            )
        return output.images[0]

    def edit(
        self,
        image: Image.Image,
        request: EditRequest,
        *,
        compare: bool = False,
        progress: Optional[Callable[[int, int], None]] = None,
    ) -> EditResult:
        """Edit ``image`` (RGB, already fitted: see :meth:`open_image`). ``compare`` also runs the base model
        on the same seed. ``progress(done, total)`` is called after every denoising step."""
        if compare and not request.adapters:
            raise EditError("Choose an adapter to compare with the base model")
        runs = 2 if compare else 1
        total, done = runs * request.steps, 0

        def on_step():
            nonlocal done
            done += 1
            if progress is not None:
                progress(done, total)

        with self.lock:
            start = time.perf_counter()
            base_image = None
            if compare:
                self.activate(())
                base_image = self._run(image, request, on_step)
            fused = self.activate(request.adapters)
            result = self._run(image, request, on_step)
            seconds = time.perf_counter() - start
        return EditResult(result, request, fused, seconds, base_image=base_image, input_image=image)

    def status_markdown(self) -> str:
        """Which adapters are loaded, and why the others are not."""
        lines = [f"**Base model:** {self.base_label} on {self.device}"]
        lines.append("**Adapters:** " + (", ".join(f"`{n}`" for n in self.adapters) or "none loaded"))
        for name, message in self.adapter_errors.items():
            lines.append(f"- could not load `{name}`: {message}")
        return "\n\n".join(lines)


def _load_base(base: Optional[str], dtype: torch.dtype, local_files_only: bool):
    from loca_diffusion.pipelines import StableDiffusionInstructPix2PixLoCAPipeline

    label = base
    if base is None:
        if DEFAULT_BASE_DIR.is_dir():
            base = str(DEFAULT_BASE_DIR)
            # the page names the model, not where this machine keeps the repository
            label = f"embedded tiny InstructPix2Pix (assets/{DEFAULT_BASE_DIR.name})"
        else:
            from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix

            logger.warning(
                "No embedded model at %s: using the tiny InstructPix2Pix built in code (random weights; its edits "
                "are noise). Pass --base timbrooks/instruct-pix2pix for real edits.",
                DEFAULT_BASE_DIR,
            )
            pipe = build_tiny_instruct_pix2pix(tempfile.mkdtemp(prefix="loca-app-tiny-"))
            if dtype != torch.float32:  # built in float32
                pipe.to(dtype=dtype)
            return pipe, "tiny InstructPix2Pix built in code (random weights)"
    try:
        pipe = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(
            base, dtype=dtype, use_safetensors=True, local_files_only=local_files_only
        )
    except Exception as error:
        hint = (
            ""
            if Path(base).exists()
            else " (a Hub id needs network access or a cached copy; pass a local pipeline "
            "folder with --base otherwise)"
        )
        raise EditError(f"Cannot load the base pipeline '{base}': {_first_line(error)}{hint}") from None
    return pipe, label
