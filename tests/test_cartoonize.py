"""The classical cartoonizer and the pair-dataset builder (loca_diffusion/data/cartoonize.py). Offline."""

from __future__ import annotations

import json
import time

import cv2  # noqa: F401  (a required dependency: fail loudly if missing)
import numpy as np
import pytest
from PIL import Image

from loca_diffusion.data.cartoonize import (  # noqa: E402
    build_cartoon_dataset,
    cartoonize,
    main,
    package_photos,
    prepare_photo,
)
from loca_diffusion.data.prompts import CARTOONIZATION_PARAPHRASES  # noqa: E402


def _photo(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(6 * (a * xx + b * yy) + c) for a, b, c in rng.normal(size=(3, 3))]
    noise = rng.normal(scale=6, size=(h, w, 3))
    return Image.fromarray((np.stack(channels, -1) * 100 + 128 + noise).clip(0, 255).astype(np.uint8), "RGB")


def test_cartoonize_changes_the_picture_and_keeps_its_size():
    photo = _photo(0, (96, 72))
    cartoon = cartoonize(photo)
    assert cartoon.size == photo.size and cartoon.mode == "RGB"
    a, b = np.asarray(photo).astype(int), np.asarray(cartoon).astype(int)
    assert np.abs(a - b).mean() > 3
    # Flat colours: a small palette (k-means, 8 colours) plus black ink.
    assert len(np.unique(b.reshape(-1, 3), axis=0)) <= 9
    assert np.array_equal(np.asarray(cartoonize(photo)), b)  # deterministic
    assert cartoonize(photo.convert("L")).mode == "RGB"
    with pytest.raises(ValueError):
        cartoonize(photo, num_colors=1)


def test_cartoonize_without_ink_is_the_same_picture_under_its_lines():
    """``ink=False`` gives the flat colours the inked picture is drawn on: equal wherever there is no line."""
    import torch

    from loca_diffusion.embedded.edits import cartoon_reference_outputs, cartoon_targets, ink_mask
    from loca_diffusion.embedded.photos import to_tensor

    photo = _photo(2, (64, 64))
    inked = np.asarray(cartoonize(photo)).astype(int)
    flat = np.asarray(cartoonize(photo, ink=False)).astype(int)
    lines = inked.max(axis=-1) == 0
    assert 0 < lines.mean() < 0.5
    assert np.array_equal(inked[~lines], flat[~lines])
    assert (flat.max(axis=-1) > 0).all()  # the lines are the only black pixels

    views = to_tensor(photo).unsqueeze(0)
    targets = cartoon_targets(views)
    mask = ink_mask(targets)
    refs = cartoon_reference_outputs(views, targets)
    no_ink, with_ink = refs["flat colours, no ink (exact)"], refs["input + the target's ink lines"]
    assert torch.equal(no_ink.masked_fill(mask, 0.0), targets)
    assert torch.equal(with_ink[mask.expand_as(views)], torch.zeros(int(mask.sum()) * 3))
    assert torch.equal(with_ink[~mask.expand_as(views)], views[~mask.expand_as(views)])


def test_cartoonize_speed_at_256px():
    photo = _photo(1, (256, 256))
    cartoonize(photo)
    start = time.perf_counter()
    cartoonize(photo)
    assert time.perf_counter() - start < 1.0  # ~30 ms on one free core; generous for shared CI


def test_prepare_photo_crops_square():
    assert prepare_photo(_photo(0, (90, 40)), 32).size == (32, 32)
    assert prepare_photo(_photo(0, (90, 40)), None).size == (90, 40)


def test_builder_writes_a_dataset_that_loads_back(tmp_path):
    from loca_diffusion.data import load_edit_dataset

    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    _photo(0).save(photos / "b.png")
    _photo(1).save(photos / "sub" / "a.jpg")
    _photo(2).convert("L").save(photos / "gray.png")
    (photos / "broken.jpg").write_bytes(b"not a jpeg")
    (photos / "notes.txt").write_text("not an image")  # ignored silently (no image extension)
    out = tmp_path / "ds"
    with pytest.warns(UserWarning, match="broken.jpg"):
        metadata = build_cartoon_dataset(out, input_dir=photos, resolution=40, seed=0)
    rows = [json.loads(line) for line in open(metadata)]
    assert len(rows) == 3
    for row in rows:
        assert set(row) == {"original_image_file_name", "edit_prompt", "cartoonized_image_file_name"}
        assert row["edit_prompt"] in CARTOONIZATION_PARAPHRASES
        assert (out / row["original_image_file_name"]).is_file()
        assert (out / row["cartoonized_image_file_name"]).is_file()

    ds = load_edit_dataset(train_data_dir=out, cache_dir=tmp_path / "cache")
    assert ds.column_names == ["original_image", "edit_prompt", "cartoonized_image"]
    assert len(ds) == 3
    for row in ds:
        assert row["original_image"].size == row["cartoonized_image"].size == (40, 40)
        assert row["original_image"].mode == row["cartoonized_image"].mode == "RGB"
        assert not np.array_equal(np.asarray(row["original_image"]), np.asarray(row["cartoonized_image"]))

    # Same seed, same prompts; an existing dataset is not overwritten by accident.
    with pytest.raises(FileExistsError, match="overwrite"):
        build_cartoon_dataset(out, input_dir=photos, resolution=40)
    with pytest.warns(UserWarning):
        again = build_cartoon_dataset(out, input_dir=photos, resolution=40, seed=0, overwrite=True, limit=2)
    assert [json.loads(line) for line in open(again)] == rows[:2]
    assert len(list((out / "original").glob("*.png"))) == 2

    # An output folder inside the input folder: its own files are not taken as photos on a rerun.
    inner = photos / "cartoons"
    with pytest.warns(UserWarning):
        build_cartoon_dataset(inner, input_dir=photos, resolution=40)
    with pytest.warns(UserWarning):
        build_cartoon_dataset(inner, input_dir=photos, resolution=40, overwrite=True)
    assert sum(1 for _ in open(inner / "metadata.jsonl")) == 3


def test_builder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no photos"):
        build_cartoon_dataset(tmp_path / "out", input_dir=tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="missing"):
        build_cartoon_dataset(tmp_path / "out", input_dir=tmp_path / "missing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"junk")
    with pytest.warns(UserWarning, match="x.png"), pytest.raises(ValueError, match="none of the photos"):
        build_cartoon_dataset(tmp_path / "out2", input_dir=tmp_path / "bad")


def test_package_photos_are_local_files():
    found = package_photos()
    assert {name for name, _ in found} >= {"astronaut", "chelsea", "china"}  # test extra: scikit-image, scikit-learn
    for name, path in found:
        assert path.is_file(), name
    with Image.open(found[0][1]) as im:
        assert im.mode in ("RGB", "RGBA", "P", "L")


def test_cli_from_package_photos(tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Make it a cartoon.\n\nCartoonify it.\n")
    out = tmp_path / "pkg"
    assert (
        main(
            [
                "--from_package_photos",
                "--output_dir",
                str(out),
                "--resolution",
                "48",
                "--limit",
                "2",
                "--prompts_file",
                str(prompts),
            ]
        )
        == 0
    )
    assert "wrote 2 pairs" in capsys.readouterr().out
    rows = [json.loads(line) for line in open(out / "metadata.jsonl")]
    assert len(rows) == 2 and {r["edit_prompt"] for r in rows} <= {"Make it a cartoon.", "Cartoonify it."}
    with Image.open(out / rows[0]["cartoonized_image_file_name"]) as im:
        assert im.size == (48, 48)
    with pytest.raises(SystemExit):
        main(["--output_dir", str(tmp_path / "x")])  # no source given


def test_cli_user_errors_are_one_line_and_exit_2(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    _photo(0).save(photos / "a.png")
    out = tmp_path / "out"
    assert main(["--input_dir", str(photos), "--output_dir", str(out), "--resolution", "16"]) == 0
    capsys.readouterr()
    empty_prompts = tmp_path / "prompts.txt"
    empty_prompts.write_text("\n  \n")
    cases = {
        "existing output": (["--input_dir", str(photos), "--output_dir", str(out)], "already exists"),
        "missing input folder": (
            ["--input_dir", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o2")],
            "nope",
        ),
        "empty prompts file": (
            ["--input_dir", str(photos), "--output_dir", str(tmp_path / "o3"), "--prompts_file", str(empty_prompts)],
            "prompts.txt",
        ),
    }
    for case, (argv, mentioned) in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2, case
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and mentioned in lines[0], (case, err)
        assert "Traceback" not in err
