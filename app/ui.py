"""The Gradio Blocks layout: the controls of the original InstructPix2Pix demo, plus LoCA adapters.

Every event handler turns :class:`~app.engine.EditError` (and anything unexpected) into ``gr.Error``
with a short message; no traceback reaches the browser or an API client.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import gradio as gr

from .engine import NO_ADAPTER, EditEngine, EditError, EditResult
from .examples import Example

logger = logging.getLogger("loca_app")



@dataclass(frozen=True)
class Settings:
    """What the controls start at (and Reset and the examples use), for the loaded base model: sampling
    settings, the ranges "Randomize guidance" draws from, and the instructions the model is known to follow
    (listed under the instruction box; the first one is the placeholder)."""

    steps: int = 20
    guidance_scale: float = 7.5
    image_guidance_scale: float = 1.5
    random_guidance_scale: tuple[float, float] = (6.0, 9.0)
    random_image_guidance_scale: tuple[float, float] = (1.2, 1.8)
    instructions: tuple[str, ...] = ()


# the original demo's defaults and randomisation ranges (text 6-9, image 1.2-1.8)
ORIGINAL_DEMO_SETTINGS = Settings()
RANDOM_SEED_RANGE = (0, 100_000)
KEEP_DOWNLOADS_S = 3600
# shown for a base model without a list of known instructions (the original InstructPix2Pix can do this)
GENERIC_PLACEHOLDER = "e.g. turn it into a watercolor painting"

HELP = """
**Text guidance** pulls the result towards the instruction; **image guidance** keeps it close to the
input. Too little change: raise text guidance or lower image guidance. Too much: the other way round.
A single adapter at strength 1 runs fused into the weights (as fast as the base model); other strengths
and mixes run unfused. *Compare* runs the base model on the same seed as well.
"""


def upload_errors_as_messages(image: gr.Image) -> gr.Image:
    """Make a file PIL cannot open (sent through the API; the browser only offers images) a clear ``gr.Error``
    instead of gradio's message-less failure. Wraps the instance's ``preprocess``: a ``gr.Image`` subclass
    would make gradio write a ``.pyi`` stub next to this module at import."""
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error:
            raise
        except Exception:
            raise _refusal("The file is not an image this app can read (JPEG, PNG, WebP, BMP, TIFF, GIF)") from None

    image.preprocess = checked
    return image


def refusals_in_one_line(component: gr.components.Component) -> gr.components.Component:
    """A value the component itself refuses (gradio's checks: a number above its maximum, a choice not in the
    list) is logged in one line, like the app's own refusals: gradio prints a traceback for every ``gr.Error``
    whose ``print_exception`` is true, its own included. Wraps the instance's ``preprocess``."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except gr.Error as error:
            if error.print_exception:
                logger.info("request refused: %s", error.message)
                error.print_exception = False
            raise

    component.preprocess = checked
    return component


def _refusal(message: str) -> gr.Error:
    """A request refused for its inputs: the message for the user, one line in the server log (no traceback:
    nothing went wrong in the server)."""
    logger.info("request refused: %s", message)
    return gr.Error(message, print_exception=False)


def _user_error(error: Exception) -> gr.Error:
    if isinstance(error, EditError):
        return _refusal(str(error))
    logger.exception("edit failed")  # the traceback that matters; gradio's of the gr.Error would only repeat it
    return gr.Error(f"The edit failed ({type(error).__name__}); the server log has the details", print_exception=False)


def build_demo(
    engine: EditEngine,
    examples: list[Example] = (),
    *,
    out_dir: Optional[str] = None,
    settings: Settings = ORIGINAL_DEMO_SETTINGS,
) -> gr.Blocks:
    """The app's Blocks. ``out_dir`` receives the PNG files offered for download; ``settings`` are the
    sampling settings the controls start at (the base model's recommended ones)."""
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="loca-app-out-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    choices = [("none (base model)", NO_ADAPTER)] + [(name, name) for name in engine.adapters]
    limits = engine.limits

    def prepare(
        image_path, instruction, steps, text_guidance, image_guidance, seed, randomize_seed, randomize_guidance,
        adapter, strength, mix_adapter, mix_weight, compare,
    ):  # fmt: skip
        """The validated image and request (raises :class:`EditError`)."""
        if randomize_seed:
            seed = random.randint(*RANDOM_SEED_RANGE)
        if randomize_guidance:
            text_guidance = round(random.uniform(*settings.random_guidance_scale), 2)
            image_guidance = round(random.uniform(*settings.random_image_guidance_scale), 2)
        if not image_path:
            raise EditError("Upload an image first")
        image = engine.open_image(image_path)
        request = engine.request(
            instruction,
            steps=steps,
            guidance_scale=text_guidance,
            image_guidance_scale=image_guidance,
            seed=seed,
            adapters=[(adapter, strength), (mix_adapter, mix_weight)],
        )
        if compare and not request.adapters:
            raise EditError("Choose an adapter to compare with the base model")
        return image, request

    def run(*args, on_progress: Optional[Callable[[int, int], None]] = None, download: bool = True):
        try:
            image, request = prepare(*args)
            compare = args[-1]
            result = engine.edit(image, request, compare=bool(compare), progress=on_progress)
        except Exception as error:
            raise _user_error(error) from None
        return _outputs(result, out_dir, download=download)

    # Named parameters: the API page and gradio_client show these names (not param_0 ... param_12).
    def generate(
        image: Optional[str],
        instruction: str,
        steps: float,
        text_guidance: float,
        image_guidance: float,
        seed: float,
        randomize_seed: bool,
        randomize_guidance: bool,
        adapter: str,
        strength: float,
        mix_adapter: str,
        mix_weight: float,
        compare: bool,
        progress=gr.Progress(),
    ):
        """Edit the image following the instruction. Returns the edited image, before/after, the base vs
        adapter comparison (when asked for), the PNG file, the seed and guidance used, and a summary."""
        return run(
            image, instruction, steps, text_guidance, image_guidance, seed, randomize_seed, randomize_guidance,
            adapter, strength, mix_adapter, mix_weight, compare,
            on_progress=lambda done, total: progress((done, total), desc="Denoising"),
        )  # fmt: skip

    def check(*args) -> None:
        """Validate the inputs before the edit event: a refused request shows its message and leaves the
        result and the controls as they are (an error in the edit event itself would mark all its outputs)."""
        try:
            prepare(*args)
        except Exception as error:
            raise _user_error(error) from None

    def run_example(image_path, instruction, adapter):
        # Only plain values among the cached outputs: gradio's example cache cannot rebuild a DownloadButton
        # update (AttributeError 'info') nor read back an empty ImageSlider; the event chained after the
        # example loads offers the download and clears the comparison.
        values = run(
            image_path, instruction, settings.steps, settings.guidance_scale, settings.image_guidance_scale, 0,
            False, False, adapter or NO_ADAPTER, 1.0, NO_ADAPTER, 0.0, False, download=False,
        )  # fmt: skip
        return [value for value, output in zip(values, outputs_without_download) if output in example_outputs]

    def after_example(image):
        """The PNG of the edited image on display, offered for download; no base-vs-adapter comparison."""
        if image is None:
            return gr.DownloadButton(visible=False), None, None, None
        return gr.DownloadButton(value=str(_save_png(image, out_dir, "example")), visible=True), None, None, None

    # gradio's cache of served files is pruned hourly (files older than two hours)
    with gr.Blocks(title="LoCA InstructPix2Pix", analytics_enabled=False, delete_cache=(3600, 7200)) as demo:
        gr.Markdown("# Instruction-based image editing with LoCA adapters")
        gr.Markdown(engine.status_markdown(), elem_id="status")
        with gr.Row(equal_height=False):
            with gr.Column():
                input_image = gr.Image(
                    label="Input image",
                    type="filepath",
                    image_mode=None,  # the file as uploaded: the engine handles EXIF, 16-bit, alpha
                    sources=["upload", "clipboard"],
                    height=320,
                    elem_id="input_image",
                )
                upload_errors_as_messages(input_image)
                instruction = gr.Textbox(
                    label="Instruction",
                    placeholder=f"e.g. {settings.instructions[0]}" if settings.instructions else GENERIC_PLACEHOLDER,
                    max_length=limits.max_instruction_chars,
                    elem_id="instruction",
                )
                if settings.instructions:
                    gr.Markdown(
                        "**Instructions this model was trained on:** "
                        + " · ".join(f"*{text}*" for text in settings.instructions),
                        elem_id="instruction_hints",
                    )
                with gr.Row():
                    generate_btn = gr.Button("Generate", variant="primary", elem_id="generate")
                    reset_btn = gr.Button("Reset", elem_id="reset")
                with gr.Row():
                    adapter = gr.Dropdown(choices, value=NO_ADAPTER, label="Adapter", elem_id="adapter")
                    strength = gr.Slider(*limits.strength, value=1.0, step=0.05, label="Strength")
                with gr.Accordion("Mix a second adapter", open=False):
                    with gr.Row():
                        mix_adapter = gr.Dropdown(choices, value=NO_ADAPTER, label="Second adapter")
                        mix_weight = gr.Slider(*limits.strength, value=0.5, step=0.05, label="Its weight")
                compare = gr.Checkbox(False, label="Compare with the base model (same seed)")
                with gr.Accordion("Settings", open=False):
                    steps = gr.Slider(*limits.steps, value=settings.steps, step=1, label="Steps")
                    with gr.Row():
                        text_guidance = gr.Slider(
                            *limits.guidance_scale, value=settings.guidance_scale, step=0.1, label="Text guidance"
                        )
                        image_guidance = gr.Slider(
                            *limits.image_guidance_scale,
                            value=settings.image_guidance_scale,
                            step=0.05,
                            label="Image guidance",
                        )
                    randomize_guidance = gr.Checkbox(
                        False,
                        label="Randomize guidance (text {:g}-{:g}, image {:g}-{:g})".format(
                            *settings.random_guidance_scale, *settings.random_image_guidance_scale
                        ),
                        elem_id="randomize_guidance",
                    )
                    with gr.Row():
                        seed = gr.Number(0, label="Seed", precision=0, minimum=limits.seed[0], maximum=limits.seed[1])
                        randomize_seed = gr.Checkbox(True, label="Randomize seed")
                    gr.Markdown(HELP)
            with gr.Column():
                result = gr.Image(
                    label="Edited", type="pil", format="png", interactive=False, height=320, elem_id="result"
                )
                used = gr.Markdown(elem_id="used")
                download = gr.DownloadButton("Download PNG", visible=False)
                with gr.Tabs():
                    with gr.Tab("Before / after"):
                        before_after = gr.ImageSlider(
                            label="Input / edited", format="png", interactive=False, height=320, elem_classes="fit"
                        )
                    with gr.Tab("Base vs adapter"):
                        compare_slider = gr.ImageSlider(
                            label="Base / adapter", format="png", interactive=False, height=320, elem_classes="fit"
                        )
                        with gr.Row():
                            # a fixed height, scaled up by the page's CSS: 64 px results are not shown at 64 px
                            compare_base = gr.Image(
                                label="Base model", format="png", interactive=False, height=240, elem_id="compare_base"
                            )
                            compare_adapter = gr.Image(
                                label="With the adapter",
                                format="png",
                                interactive=False,
                                height=240,
                                elem_id="compare_adapter",
                            )

        outputs_without_download = [
            result, before_after, compare_slider, compare_base, compare_adapter, seed, text_guidance, image_guidance,
            used,
        ]  # fmt: skip
        example_outputs = [result, before_after, seed, text_guidance, image_guidance, used]
        inputs = [
            input_image, instruction, steps, text_guidance, image_guidance, seed, randomize_seed,
            randomize_guidance, adapter, strength, mix_adapter, mix_weight, compare,
        ]  # fmt: skip
        for component in inputs:
            refusals_in_one_line(component)
        outputs = [
            result, before_after, compare_slider, compare_base, compare_adapter, download, seed, text_guidance,
            image_guidance, used,
        ]  # fmt: skip
        # validation first, with no outputs; the edit only when it passed. The progress shows on the result only.
        for trigger, api_name in ((generate_btn.click, "edit"), (instruction.submit, False)):
            trigger(check, inputs, None, api_name=False, show_progress="hidden", concurrency_limit=None).success(
                generate, inputs, outputs, api_name=api_name, concurrency_limit=1, show_progress_on=[result]
            )

        defaults = [
            None, "", settings.steps, settings.guidance_scale, settings.image_guidance_scale, 0, True, False,
            NO_ADAPTER, 1.0, NO_ADAPTER, 0.5, False,
        ]  # fmt: skip
        cleared = [None, None, None, None, None, gr.DownloadButton(visible=False), ""]
        reset_btn.click(
            lambda: defaults + cleared,
            None,
            inputs + [result, before_after, compare_slider, compare_base, compare_adapter, download, used],
            api_name=False,
        )

        usable = [e for e in examples if e.adapter is None or e.adapter in engine.adapters]
        for skipped in (e for e in examples if e not in usable):
            logger.warning("example %s skipped: adapter %r is not loaded", skipped.image, skipped.adapter)
        if usable:
            examples_table = gr.Examples(
                [[e.image, e.instruction, e.adapter or NO_ADAPTER] for e in usable],
                inputs=[input_image, instruction, adapter],
                outputs=example_outputs,
                fn=run_example,
                cache_examples=True,
                cache_mode="lazy",
                api_name=False,
                label="Examples (default settings, seed 0; computed once on first click, then cached)",
                elem_id="examples",
            )
            examples_table.cache_event.success(
                after_example,
                [result],
                [download, compare_slider, compare_base, compare_adapter],
                api_name=False,
                queue=False,
            )
    return demo


def _save_png(image, out_dir: Path, tag: str) -> Path:
    """``image`` as a PNG in ``out_dir``, after removing downloads older than :data:`KEEP_DOWNLOADS_S`."""
    now = time.time()
    for old in out_dir.glob("edit-*.png"):  # downloads are offered once; keep the folder small
        if now - old.stat().st_mtime > KEEP_DOWNLOADS_S:
            old.unlink(missing_ok=True)
    png = Path(tempfile.mkstemp(prefix=f"edit-{tag}-", suffix=".png", dir=out_dir)[1])
    image.save(png)
    return png


def _outputs(result: EditResult, out_dir: Path, download: bool = True) -> list:
    """The values of the edit event's outputs (without the download button's when ``download`` is False)."""
    request = result.request
    png = _save_png(result.image, out_dir, f"seed{request.seed}") if download else None
    if result.base_image is not None:
        comparison = (result.base_image, result.image)
        base, adapted = result.base_image, result.image
    else:
        comparison = base = adapted = None
    return [
        result.image,
        (result.input_image, result.image),
        comparison,
        base,
        adapted,
        *([gr.DownloadButton(value=str(png), visible=True)] if download else []),
        request.seed,
        request.guidance_scale,
        request.image_guidance_scale,
        "**Used:** " + result.describe(),
    ]
