"""The app in a real browser: headless Chromium loads the page, uploads a photo, picks an adapter, clicks
Generate and gets the edited image (the same pixels a direct pipeline call gives)."""

from __future__ import annotations

import base64
import copy
import io
import os
import socket

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
