"""The app in a real browser: headless Chromium loads the page, uploads a photo, picks an adapter, clicks
Generate and gets the edited image (the same pixels a direct pipeline call gives)."""

from __future__ import annotations

import base64
import copy
import io
import os
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from app.app import launch_kwargs, parse_args  # noqa: E402
from app.browser import chromium_driver, edit_in_browser  # noqa: E402
from app.engine import EditEngine, Limits  # noqa: E402
from loca_diffusion import LoCAConfig  # noqa: E402
from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix  # noqa: E402

ROOT_EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "chelsea.png"
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def served(tmp_path_factory, torch_single_thread):
    root = tmp_path_factory.mktemp("browser")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples_cache")
    try:
        driver = chromium_driver()
    except RuntimeError as error:
        pytest.fail(str(error))
    pipe = build_tiny_instruct_pix2pix(root / "work")
    pipe.set_progress_bar_config(disable=True)
    reference = copy.deepcopy(pipe)
    config = LoCAConfig(init_weights=False, target_modules=["to_q", "to_k", "to_v"], n_frequency=16, scaling=4.0)
    pipe.unet.add_adapter(config, adapter_name="cartoon")
    pipe.save_loca(root / "adapters" / "cartoon", adapter_name="cartoon")
    pipe.unload_loca()
    engine = EditEngine(pipe, limits=Limits(max_side=64))
    engine.load_adapters(root / "adapters")

    from app.ui import build_demo

    demo = build_demo(engine, out_dir=root / "out")
    demo.queue(max_size=4, default_concurrency_limit=1)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(parse_args(["--port", str(port)])))
    yield root, demo, driver, reference
    driver.quit()
    demo.close()


def test_upload_generate_and_see_the_result(served):
    root, demo, driver, reference = served
    from skimage import data

    photo = Image.fromarray(data.chelsea()).resize((64, 48), Image.Resampling.LANCZOS)
    photo.save(root / "cat.png")
    shot = root / "app.png"
    src = edit_in_browser(driver, demo.local_url, root / "cat.png", "make it a cartoon", adapter="cartoon",
                          screenshot=shot, timeout=120)  # fmt: skip

    assert shot.stat().st_size > 10_000 and Image.open(shot).size[0] >= 1000
    # the page shows what the model made: fetch the displayed image from the page itself
    data_url = driver.execute_async_script(
        """const [src, done] = arguments;
        fetch(src).then(r => r.blob()).then(b => { const f = new FileReader(); f.onload = () => done(f.result);
        f.readAsDataURL(b); });""",
        src,
    )
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))).convert("RGB"))
    used = driver.find_element("css selector", "#used").text
    seed = int(used.split("seed ", 1)[1].split(" ", 1)[0])
    reference.load_loca(root / "adapters" / "cartoon")
    expected = reference(
        "make it a cartoon", image=photo, num_inference_steps=20, guidance_scale=7.5, image_guidance_scale=1.5,
        generator=torch.Generator().manual_seed(seed),
    ).images[0]  # fmt: skip
    assert "cartoon x1 (fused)" in used
    assert np.array_equal(shown, np.asarray(expected))


# ----------------------------------------------------------------------------------------------------
# issue 17: the default app (`make demo`: the embedded model, its cartoonizer and the shipped examples) as a
# newcomer meets it


@pytest.fixture(scope="module")
def served_default(tmp_path_factory, torch_single_thread):
    from app.app import create_app

    root = tmp_path_factory.mktemp("browser_default")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples_cache")  # a fresh cache: every row computes
    try:
        driver = chromium_driver()
    except RuntimeError as error:
        pytest.fail(str(error))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = parse_args(["--port", str(port), "--device", "cpu"])
    engine, demo = create_app(args)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(args))
    driver.get(demo.local_url)
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 60).until(lambda d: d.find_elements("css selector", "#instruction textarea"))
    yield engine, demo, driver
    driver.quit()
    demo.close()


def _shown(driver, src) -> np.ndarray:
    from app.browser import image_bytes

    return np.asarray(Image.open(io.BytesIO(image_bytes(driver, src))).convert("RGB"), dtype=float)


def test_every_example_row_shows_its_edit(served_default):
    """Each row, clicked in the browser, shows the edit a direct pipeline call makes of that photo with that
    instruction and adapter at the default settings and seed 0 (the README tells newcomers to click them)."""
    from app.browser import click_example, example_rows
    from app.examples import load_examples
    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline
    from loca_diffusion.embedded import ADAPTERS_DIR, BASE_DIR
    from loca_diffusion.images import fit_size, load_rgb

    engine, demo, driver = served_default
    from selenium.webdriver.support.ui import WebDriverWait

    examples = load_examples()
    WebDriverWait(driver, 60).until(lambda d: example_rows(d))
    assert len(example_rows(driver)) == len(examples) >= 9, driver.find_element("id", "examples").get_attribute(
        "outerHTML"
    )[:3000]
    reference = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(BASE_DIR, dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    reference.load_loca(ADAPTERS_DIR / "cartoonizer", adapter_name="cartoonizer")
    for index, example in enumerate(examples):
        src = click_example(driver, index, timeout=180)
        shown = _shown(driver, src)
        photo = load_rgb(example.image)
        photo = photo.resize(fit_size(*photo.size, 64), Image.Resampling.LANCZOS)
        if example.adapter:
            reference.enable_loca()
        else:
            reference.disable_loca()
        expected = reference(
            example.instruction, image=photo, num_inference_steps=20, guidance_scale=2.0, image_guidance_scale=1.5,
            generator=torch.Generator().manual_seed(0), output_type="np",
        ).images[0]  # fmt: skip
        # the app runs a single adapter fused into the weights: the same edit up to float rounding
        assert shown.shape == expected.shape
        assert np.abs(shown - np.round(expected * 255)).max() <= 2, (index, example)
        used = driver.find_element("css selector", "#used").text
        assert "seed 0" in used and (f"{example.adapter} x1" if example.adapter else "none (base model)") in used
        download = driver.find_elements("css selector", "button.download-button, a[download]")
        assert any(d.is_displayed() for d in download), f"no download offered after example {index}"
    # the page shows no error anywhere
    assert not driver.find_elements("css selector", ".toast-body.error, [data-testid=toast-body].error")


def test_the_page_lists_what_the_embedded_model_can_do(served_default):
    """Items 4 and 5: the trained instructions are listed and suggested; randomize draws from the model's range."""
    from selenium.webdriver.support.ui import WebDriverWait

    from loca_diffusion.embedded.edits import WORKING_EDITS

    engine, demo, driver = served_default
    hints = driver.find_element("css selector", "#instruction_hints").text
    assert all(e.instructions[0] in hints for e in WORKING_EDITS) and "cartoon-style" in hints
    placeholder = driver.find_element("css selector", "#instruction textarea").get_attribute("placeholder")
    assert placeholder == "e.g. make it black and white" and "watercolor" not in driver.page_source
    _open_accordion(driver, "Settings")
    label = WebDriverWait(driver, 30).until(lambda d: d.find_elements("id", "randomize_guidance"))[0].text
    assert "Randomize guidance (text 1-3, image 1-1.5)" in label


def _open_accordion(driver, title: str) -> None:
    for button in driver.find_elements("css selector", "button.label-wrap"):
        if title in button.text and "open" not in (button.get_attribute("class") or ""):
            button.click()


def test_validation_error_keeps_the_result_and_marks_no_control(served_default):
    """Item 6: same adapter twice, Generate: a message; the last result stays, no Error badge on any control.
    Item 7: the base-vs-adapter images are shown scaled up, not at their native 64 px."""
    from selenium.webdriver.support.ui import WebDriverWait

    from app.browser import example_rows

    engine, demo, driver = served_default
    driver.get(demo.local_url)
    WebDriverWait(driver, 60).until(lambda d: example_rows(d))
    edit_in_browser(driver, demo.local_url, ROOT_EXAMPLE, "make it black and white", adapter="cartoonizer")
    before = driver.find_element("css selector", "#result img").get_attribute("src")
    _open_accordion(driver, "Mix a second adapter")
    second = [e for e in driver.find_elements("css selector", "input[role=listbox], .wrap input") if e.is_displayed()]
    inputs = driver.find_elements("css selector", "input")
    mix = [e for e in inputs if e.get_attribute("aria-label") == "Second adapter"]
    (mix or second[-1:])[0].click()
    WebDriverWait(driver, 30).until(
        lambda d: [o for o in d.find_elements("css selector", "li[role=option][aria-label='cartoonizer']")]
    )[0].click()
    driver.find_element("css selector", "#generate").click()
    WebDriverWait(driver, 30).until(lambda d: "selected twice" in d.page_source)
    time.sleep(1)
    assert driver.find_element("css selector", "#result img").get_attribute("src") == before
    badges = [e for e in driver.find_elements("xpath", "//*[normalize-space(text())='Error']") if e.is_displayed()]
    toasts = driver.find_elements("css selector", "[data-testid=toast-body]")
    assert len(badges) <= len(toasts) <= 1, badges  # the message's own title only, no badge on the controls

    # item 7: compare on a valid request; the two images fill their panels
    (mix or second[-1:])[0].click()
    WebDriverWait(driver, 30).until(
        lambda d: [o for o in d.find_elements("css selector", "li[role=option][aria-label='none (base model)']")]
    )[0].click()
    driver.find_element("xpath", "//label[contains(., 'Compare with the base model')]").click()
    driver.find_element("css selector", "#generate").click()
    driver.find_element("xpath", "//button[@role='tab' and contains(., 'Base vs adapter')]").click()
    for element_id in ("compare_base", "compare_adapter"):
        image = WebDriverWait(driver, 120).until(
            lambda d: [i for i in d.find_elements("css selector", f"#{element_id} img") if i.is_displayed()]
        )[0]
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return arguments[0].naturalWidth > 0", image))
        natural, shown = driver.execute_script(
            "return [arguments[0].naturalHeight, arguments[0].getBoundingClientRect().height]", image
        )
        assert natural == 64 and shown >= 150, (element_id, natural, shown)
