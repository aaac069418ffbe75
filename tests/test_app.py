"""The Gradio app (app/), launched in-process on a free loopback port and driven with gradio_client.

A tiny InstructPix2Pix pipeline with two tiny LoCA adapters (random non-zero coefficients, written with
``save_loca``) serves the app. References are independent of the app: direct pipeline calls on a copy
of the base pipeline taken before any adapter existed, and images whose correct reading is known by
construction (an upright picture stored sideways with an EXIF tag, 16-bit values ``257 * v``, ...).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from app.app import is_loopback, launch_kwargs, parse_args  # noqa: E402
from app.engine import EditEngine, EditError, Limits, device_lock, fit_size  # noqa: E402
from app.examples import Example, load_examples  # noqa: E402
from loca_diffusion import LoCAConfig  # noqa: E402
from loca_diffusion.tiny_pix2pix import build_tiny_instruct_pix2pix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIDE = 32  # images and max_side: the tiny model edits a 32x32 image in well under a second
STEPS = 3
PROMPT = "make it look like a cartoon"
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_adapters(pipe, folder: Path, names: list[str]) -> None:
    """LoCA adapters with random non-zero coefficients, saved with ``save_loca``; the pipeline is left as it was."""
    for seed, name in enumerate(names, 1):
        config = LoCAConfig(
            init_weights=False, target_modules=TARGETS, n_frequency=16, random_loc_seed=seed, scaling=4.0
        )
        pipe.unet.add_adapter(config, adapter_name=name)
        pipe.save_loca(folder / name, adapter_name=name)
    pipe.unload_loca()


def photo(seed: int = 0, size=(SIDE, SIDE)) -> Image.Image:
    """A smooth colourful test picture (random pixels would hide orientation mistakes less well)."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rng = np.random.default_rng(seed)
    channels = [
        np.sin(2 * math.pi * (rng.uniform(0.5, 2) * x + rng.uniform(0.5, 2) * y + rng.uniform())) for _ in "rgb"
    ]
    return Image.fromarray(np.uint8(np.stack(channels, -1) * 120 + 128))


class Env:
    pass


@pytest.fixture(scope="module")
def env(tmp_path_factory, torch_single_thread):
    root = tmp_path_factory.mktemp("app")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples_cache")
    e = Env()
    e.root = root
    pipe = build_tiny_instruct_pix2pix(root / "work")
    pipe.set_progress_bar_config(disable=True)
    e.reference = copy.deepcopy(pipe)  # taken before any adapter touched the pipeline
    adapters = root / "adapters"
    make_adapters(pipe, adapters, ["cartoon", "sketch"])
    # adapters the app must refuse while serving the others
    (adapters / "broken").mkdir()
    (adapters / "broken" / "adapter_config.json").write_text(
        (adapters / "cartoon" / "adapter_config.json").read_text()
    )
    (adapters / "broken" / "adapter_model.safetensors").write_bytes(
        (adapters / "cartoon" / "adapter_model.safetensors").read_bytes()[:200]
    )
    (adapters / "pickled").mkdir()
    (adapters / "pickled" / "adapter_config.json").write_text(
        (adapters / "cartoon" / "adapter_config.json").read_text()
    )
    torch.save({"x": torch.zeros(1)}, adapters / "pickled" / "adapter_model.bin")
    e.adapters = adapters

    limits = Limits(max_side=SIDE, max_upload_bytes=300_000, max_pixels=1_000_000)
    e.engine = EditEngine(pipe, limits=limits)
    e.engine.load_adapters(adapters, [str(root / "missing_adapter")])

    from app.ui import build_demo

    e.image_path = root / "photo.png"
    photo().save(e.image_path)
    e.demo = build_demo(e.engine, [Example(str(e.image_path), PROMPT, "cartoon")], out_dir=root / "out")
    e.demo.queue(max_size=8, default_concurrency_limit=1)
    args = parse_args(["--port", str(free_port()), "--max_upload_mb", "1"])
    e.demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(args))
    e.client = Client(e.demo.local_url, verbose=False, download_files=str(root / "downloads"))
    yield e
    e.demo.close()


def edit(env, image=None, instruction=PROMPT, steps=STEPS, text=7.5, image_guidance=1.5, seed=0, adapter="none",
         strength=1.0, mix="none", mix_weight=0.5, compare=False, randomize_seed=False):  # fmt: skip
    """One call of the app's /edit endpoint; returns its outputs."""
    path = image if image is not None else env.image_path
    return env.client.predict(
        handle_file(str(path)), instruction, steps, text, image_guidance, seed, randomize_seed, False, adapter,
        strength, mix, mix_weight, compare, api_name="/edit",
    )  # fmt: skip


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def direct(env, adapters=(), image=None, seed=0) -> np.ndarray:
    """The same edit by a direct pipeline call on the reference copy (adapters loaded from the folder)."""
    pipe = env.reference
    for name, _ in adapters:
        pipe.load_loca(env.adapters / name, adapter_name=name)
    try:
        if adapters:
            pipe.set_loca_adapters([n for n, _ in adapters], [w for _, w in adapters])
        out = pipe(
            PROMPT, image=image if image is not None else Image.open(env.image_path).convert("RGB"),
            num_inference_steps=STEPS, guidance_scale=7.5, image_guidance_scale=1.5,
            generator=torch.Generator().manual_seed(seed),
        ).images[0]  # fmt: skip
    finally:
        if adapters:
            pipe.unload_loca()
    return np.asarray(out)


# ----------------------------------------------------------------------------------------------------
# edits


def test_adapter_edit_equals_a_direct_pipeline_call(env):
    out = edit(env, adapter="cartoon", seed=7)
    result, (before, after), *_, seed, _, _, used = out
    assert np.array_equal(pixels(result), direct(env, [("cartoon", 1.0)], seed=7))
    assert np.array_equal(pixels(after), pixels(result)) and np.array_equal(pixels(before), pixels(env.image_path))
    assert seed == 7 and "seed 7" in used and "cartoon x1 (fused)" in used
    # unfused: a scaled adapter, and a mix of the two
    assert np.array_equal(pixels(edit(env, adapter="cartoon", strength=0.5)[0]), direct(env, [("cartoon", 0.5)]))
    mixed = edit(env, adapter="cartoon", strength=0.7, mix="sketch", mix_weight=0.4)[0]
    assert np.array_equal(pixels(mixed), direct(env, [("cartoon", 0.7), ("sketch", 0.4)]))


def test_no_adapter_equals_the_base_model(env):
    base = direct(env)
    assert np.array_equal(pixels(edit(env, adapter="none")[0]), base)
    assert np.array_equal(pixels(edit(env, adapter="cartoon", strength=0.0)[0]), base)
    # after fusing and switching, the base weights are back bit for bit
    edit(env, adapter="sketch")
    assert np.array_equal(pixels(edit(env)[0]), base)


def test_switching_adapters_and_strength_change_the_output(env):
    cartoon = pixels(edit(env, adapter="cartoon")[0])
    sketch = pixels(edit(env, adapter="sketch")[0])
    half = pixels(edit(env, adapter="cartoon", strength=0.5)[0])
    base = pixels(edit(env)[0])
    for a, b in [(cartoon, sketch), (cartoon, half), (half, base), (sketch, base)]:
        assert np.abs(a.astype(int) - b).mean() > 1.0
    assert np.array_equal(pixels(edit(env, adapter="cartoon")[0]), cartoon)  # no drift across switches


def test_compare_runs_base_and_adapter_on_the_same_seed(env):
    out = edit(env, adapter="sketch", seed=3, compare=True)
    result, _, (slider_base, slider_adapter), base, adapted = out[:5]
    assert np.array_equal(pixels(base), direct(env, seed=3))
    assert np.array_equal(pixels(adapted), direct(env, [("sketch", 1.0)], seed=3))
    assert np.array_equal(pixels(slider_base), pixels(base)) and np.array_equal(pixels(slider_adapter), pixels(result))
    download = out[5]["value"]
    assert download.endswith(".png") and np.array_equal(pixels(download), pixels(result))


def test_randomized_seed_is_reported_and_reproduces(env):
    out = edit(env, adapter="cartoon", seed=0, randomize_seed=True)
    seed = out[6]
    assert 0 <= seed <= 100_000 and f"seed {seed} " in out[-1]
    assert np.array_equal(pixels(out[0]), pixels(edit(env, adapter="cartoon", seed=seed)[0]))


# ----------------------------------------------------------------------------------------------------
# uploads in every common form


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_image_modes_are_read_as_the_picture_they_show(env, tmp_path):
    upright = photo(1)
    reference = pixels(edit(env, _save(upright, tmp_path / "upright.png"))[0])

    # stored rotated 90 degrees counter-clockwise, with EXIF orientation 6 ("rotate 90 clockwise to show")
    exif = Image.Exif()
    exif[0x0112] = 6
    sideways = _save(upright.transpose(Image.Transpose.ROTATE_90), tmp_path / "sideways.png", exif=exif)
    assert np.array_equal(pixels(edit(env, sideways)[0]), reference)

    # RGBA fully opaque reads as RGB; transparent pixels read as white
    rgba = upright.convert("RGBA")
    assert np.array_equal(pixels(edit(env, _save(rgba, tmp_path / "rgba.png"))[0]), reference)
    holed = np.asarray(rgba).copy()
    holed[:8, :8, 3] = 0
    white = np.asarray(upright).copy()
    white[:8, :8] = 255
    from_white = pixels(edit(env, _save(Image.fromarray(white), tmp_path / "white.png"))[0])
    assert np.array_equal(pixels(edit(env, _save(Image.fromarray(holed), tmp_path / "holed.png"))[0]), from_white)

    # grayscale 8-bit and 16-bit (values 257 * v) read as the gray RGB picture
    gray = np.asarray(upright.convert("L"))
    gray_rgb = pixels(edit(env, _save(Image.fromarray(np.stack([gray] * 3, -1)), tmp_path / "gray_rgb.png"))[0])
    assert np.array_equal(pixels(edit(env, _save(Image.fromarray(gray), tmp_path / "gray.png"))[0]), gray_rgb)
    sixteen = Image.fromarray(gray.astype(np.uint16) * 257)
    assert sixteen.mode.startswith("I;16")
    assert np.array_equal(pixels(edit(env, _save(sixteen, tmp_path / "gray16.png"))[0]), gray_rgb)

    # palette images, and inputs of another size are fitted to max_side (multiples of 8)
    palette = _save(upright.convert("P"), tmp_path / "palette.png")
    assert pixels(edit(env, palette)[0]).shape == (SIDE, SIDE, 3)
    wide = _save(photo(2, (100, 41)), tmp_path / "wide.jpg")
    assert pixels(edit(env, wide)[0]).shape == (16, SIDE, 3) == (*fit_size(100, 41, SIDE)[::-1], 3)


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_an_image", "not an image"),
        ("truncated", "damaged or truncated"),
        ("too_many_bytes", "too large"),
        ("too_many_pixels", "megapixels"),
        ("empty_instruction", "Write an instruction"),
        ("overlong_instruction", "too long"),
        ("steps_out_of_range", "maximum value 100"),
        ("negative_seed", "less than minimum value 0"),
        ("fractional_steps", "Steps must be a whole number"),
        ("unknown_adapter", "not in the list of choices"),
        ("same_adapter_twice", "selected twice"),
        ("compare_without_adapter", "Choose an adapter"),
    ],
)
def test_bad_inputs_get_a_clear_error_not_a_traceback(env, tmp_path, case, message):
    good = env.image_path
    kwargs = {}
    if case == "not_an_image":
        kwargs["image"] = tmp_path / "notes.png"
        kwargs["image"].write_text("these are not pixels")
    elif case == "truncated":
        data = good.read_bytes()
        kwargs["image"] = tmp_path / "cut.png"
        kwargs["image"].write_bytes(data[: len(data) // 2])
    elif case == "too_many_bytes":
        # larger than the engine's byte cap (300 kB), smaller than the server's upload cap (1 MiB)
        kwargs["image"] = tmp_path / "big.bmp"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 340, 3), dtype=np.uint8)).save(kwargs["image"])
    elif case == "too_many_pixels":
        kwargs["image"] = _save(Image.new("RGB", (1200, 1000), "white"), tmp_path / "huge.png")
    elif case == "empty_instruction":
        kwargs["instruction"] = "   "
    elif case == "overlong_instruction":
        kwargs["instruction"] = "make it red " * 100
    elif case == "steps_out_of_range":
        kwargs["steps"] = 500
    elif case == "negative_seed":
        kwargs["seed"] = -1
    elif case == "fractional_steps":
        kwargs["steps"] = 2.5
    elif case == "unknown_adapter":
        kwargs["adapter"] = str(env.adapters / "cartoon")  # a path typed in the UI is not an adapter
    elif case == "same_adapter_twice":
        kwargs.update(adapter="cartoon", mix="cartoon")
    elif case == "compare_without_adapter":
        kwargs["compare"] = True
    with pytest.raises(AppError) as caught:
        edit(env, **kwargs)
    text = str(caught.value)
    assert message in text and "Traceback" not in text and 'File "' not in text
    # the app keeps serving
    assert np.array_equal(pixels(edit(env)[0]), direct(env))


def test_refused_requests_log_one_line_and_internal_errors_their_traceback(env, capfd, caplog, monkeypatch):
    # issue 17 item 10: the server log printed a full traceback for every refused request (gradio prints one for
    # each gr.Error unless it says print_exception=False), burying the tracebacks of real failures
    caplog.set_level(logging.INFO, logger="loca_app")
    capfd.readouterr()
    refusals = {
        "selected twice": {"adapter": "cartoon", "mix": "cartoon"},  # the app's own checks
        "Write an instruction": {"instruction": "   "},
        "maximum value 100": {"steps": 500},  # gradio's component checks (Number, Dropdown)
        "not in the list of choices": {"adapter": "no-such-adapter"},
    }
    for message, kwargs in refusals.items():
        caplog.clear()
        with pytest.raises(AppError, match=message):
            edit(env, **kwargs)
        server_log = capfd.readouterr().err + caplog.text
        assert "Traceback" not in server_log and 'File "' not in server_log, server_log
        lines = [r.getMessage() for r in caplog.records if r.name == "loca_app"]
        assert len(lines) == 1 and message in lines[0] and "\n" not in lines[0], lines

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in the engine")

    monkeypatch.setattr(env.engine, "edit", broken)
    caplog.clear()
    with pytest.raises(AppError, match="the server log has the details"):
        edit(env)
    server_log = capfd.readouterr().err + caplog.text
    assert server_log.count("Traceback (most recent call last)") == 1, server_log  # the bug's, once
    assert "RuntimeError: a bug in the engine" in server_log and "in broken" in server_log


def test_upload_over_the_server_cap_is_refused(env, tmp_path):
    big = tmp_path / "noise.bmp"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (600, 700, 3), dtype=np.uint8)).save(big)
    assert big.stat().st_size > 2**20
    with pytest.raises(Exception, match="(?i)too large|413|size"):
        edit(env, big)


# ----------------------------------------------------------------------------------------------------
# adapters, security, serving


def test_adapter_load_errors_are_shown_and_the_others_served(env):
    engine = env.engine
    assert engine.adapters == ["cartoon", "sketch"]
    errors = engine.adapter_errors
    assert set(errors) == {"broken", "pickled", "missing_adapter"}
    assert "corrupt or truncated" in errors["broken"]
    assert "adapter_model.bin" in errors["pickled"] and "safetensors" in errors["pickled"]
    assert "missing_adapter" in errors["missing_adapter"]
    import httpx

    page = httpx.get(env.demo.local_url + "config", timeout=30).text
    for name in ("broken", "pickled", "missing_adapter"):
        assert f"could not load `{name}`" in page


def test_the_server_listens_on_loopback_only(env):
    addresses = [sock.getsockname()[0] for server in env.demo.server.servers for sock in server.sockets]
    assert addresses and all(is_loopback(a) for a in addresses), addresses
    defaults = launch_kwargs(parse_args([]))
    assert defaults["server_name"] == "127.0.0.1" and defaults["share"] is False and defaults["ssr_mode"] is False
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.2") and is_loopback("::1")


def test_one_generation_at_a_time_per_device(env):
    assert device_lock("cpu") is env.engine.lock is device_lock(torch.device("cpu"))
    engine, image = env.engine, photo()
    request = engine.request(PROMPT, steps=2)
    running, overlap = [0], [False]
    original = engine._run

    def counting(*args, **kwargs):
        running[0] += 1
        overlap[0] |= running[0] > 1
        time.sleep(0.05)
        try:
            return original(*args, **kwargs)
        finally:
            running[0] -= 1

    engine._run = counting
    try:
        threads = [threading.Thread(target=engine.edit, args=(image, request)) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        del engine._run
    assert not overlap[0]


def test_progress_reports_every_denoising_step(env):
    engine = env.engine
    calls = []
    engine.edit(photo(), engine.request(PROMPT, steps=2, adapters=[("cartoon", 1)]), compare=True,
                progress=lambda done, total: calls.append((done, total)))  # fmt: skip
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_engine_validation_names_the_field(env):
    engine = env.engine
    with pytest.raises(EditError, match="Seed must be between 0 and"):
        engine.request(PROMPT, seed=-1)
    with pytest.raises(EditError, match="Text guidance must be a finite number"):
        engine.request(PROMPT, guidance_scale=float("nan"))  # JSON clients cannot send NaN; Python callers can
    with pytest.raises(EditError, match="Image guidance must be a number"):
        engine.request(PROMPT, image_guidance_scale="lots")
    with pytest.raises(EditError, match="strength of adapter 'cartoon' must be between 0 and 2"):
        engine.request(PROMPT, adapters=[("cartoon", 3)])
    with pytest.raises(EditError, match="Unknown adapter"):
        engine.request(PROMPT, adapters=[("../cartoon", 1)])


# ----------------------------------------------------------------------------------------------------
# command line and examples


def test_command_line(tmp_path):
    args = parse_args([])
    assert (args.host, args.share, args.device, args.adapter, args.max_side) == ("127.0.0.1", False, "auto", [], None)
    args = parse_args(["--adapter", "a", "--adapter", "user/b", "--max_side", "256"])
    assert args.adapter == ["a", "user/b"] and args.max_side == 256
    with pytest.raises(SystemExit):
        parse_args(["--max_side", "100"])  # not a multiple of 8
    done = subprocess.run([sys.executable, "-m", "app", "--help"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 0 and "--adapters_dir" in done.stdout and "--max_upload_mb" in done.stdout, done.stderr
    # issue 17 item 5: the defaults --help states are the ones the UI and the README use
    flat = " ".join(done.stdout.split())
    assert "(default: 2.0 for the embedded model" in flat and "(default: 1.5 for the embedded model" in flat
    # run as a file, the app's folder would shadow its package: one line saying how to run it, no traceback
    done = subprocess.run([sys.executable, "app/app.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert done.returncode == 1 and done.stderr.strip().splitlines() == [
        "run the app as `python -m app` from the repository root (`make demo` does)"
    ], done.stderr


def test_examples_file(tmp_path):
    photo().save(tmp_path / "a.png")
    lines = [
        {"image": "a.png", "instruction": "make it a cartoon", "adapter": "cartoon"},
        {"image": "a.png", "instruction": "make it red", "adapter": None},
        {"image": "missing.png", "instruction": "x", "adapter": None},
        {"instruction": "no image"},
    ]
    (tmp_path / "examples.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\nnot json\n")
    examples = load_examples(tmp_path / "examples.jsonl")
    assert examples == [
        Example(str(tmp_path / "a.png"), "make it a cartoon", "cartoon"),
        Example(str(tmp_path / "a.png"), "make it red", None),
    ]
    fallback = load_examples(tmp_path / "absent.jsonl")  # photos shipped with scikit-image
    assert len(fallback) == 3 and all(Image.open(e.image).size[0] > 100 for e in fallback)


# ----------------------------------------------------------------------------------------------------
# the default configuration (`make demo`): the embedded model and its cartoonizer


def test_default_app_serves_the_embedded_model_and_its_cartoonizer(torch_single_thread):
    from app.app import build_engine, start_settings
    from app.engine import DEFAULT_ADAPTERS_DIR, DEFAULT_BASE_DIR
    from loca_diffusion import StableDiffusionInstructPix2PixLoCAPipeline

    args = parse_args(["--device", "cpu"])
    settings = start_settings(args)
    # the embedded model starts at the guidance chosen on training photos (embedded_guidance.md);
    # another base gets the original demo's
    assert (settings.steps, settings.guidance_scale, settings.image_guidance_scale) == (20, 2.0, 1.5)
    other = start_settings(parse_args(["--base", "timbrooks/instruct-pix2pix", "--guidance_scale", "8"]))
    assert (other.guidance_scale, other.image_guidance_scale) == (8.0, 1.5)

    engine = build_engine(args)
    assert engine.adapters == ["cartoonizer"] and engine.limits.max_side == 64
    # the page names the model, not where this machine keeps the repository
    assert "embedded tiny InstructPix2Pix (assets/tiny-instruct-pix2pix)" in engine.status_markdown()
    assert str(ROOT) not in engine.status_markdown()
    image = engine.fit(engine.open_image(ROOT / "assets" / "examples" / "chelsea.png"))
    instruction = "Change the natural image to a cartoon-style image."
    request = engine.request(
        instruction, steps=4, guidance_scale=1.0, image_guidance_scale=1.0, seed=0, adapters=[("cartoonizer", 1)]
    )
    served = engine.edit(image, request).image

    reference = StableDiffusionInstructPix2PixLoCAPipeline.from_pretrained(DEFAULT_BASE_DIR, dtype=torch.float32)
    reference.set_progress_bar_config(disable=True)
    reference.load_loca(DEFAULT_ADAPTERS_DIR / "cartoonizer")
    expected = reference(
        instruction, image=image, num_inference_steps=4, guidance_scale=1.0, image_guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0), output_type="np",
    ).images[0]  # fmt: skip
    # fused (the app) vs unfused (the reference): the same edit up to float rounding
    assert np.abs(np.asarray(served, dtype=float) - np.round(expected * 255)).max() <= 2


def test_the_api_names_its_parameters(env):
    """Issue 17 item 10: /edit's parameters carry their names (not param_0 ... param_12) and work as keywords."""
    info = env.client.view_api(print_info=False, return_format="dict")
    names = [p["parameter_name"] for p in info["named_endpoints"]["/edit"]["parameters"]]
    assert names[:6] == ["image", "instruction", "steps", "text_guidance", "image_guidance", "seed"]
    assert not any(name.startswith("param_") for name in names)
    out = env.client.predict(
        image=handle_file(str(env.image_path)), instruction=PROMPT, steps=STEPS, text_guidance=7.5,
        image_guidance=1.5, seed=0, randomize_seed=False, randomize_guidance=False, adapter="none", strength=1.0,
        mix_adapter="none", mix_weight=0.5, compare=False, api_name="/edit",
    )  # fmt: skip
    assert np.array_equal(pixels(out[0]), direct(env))
