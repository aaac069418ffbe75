"""Edit-pair data (loca_diffusion/data.py): loading and validation, Hub failure, paired augmentation,
paraphrase sampling, training batches. Offline; the datasets are built here from synthetic photos."""

from __future__ import annotations

import json
import shutil
import time

import cv2  # noqa: F401  (required dependencies: fail loudly if missing)
import datasets  # noqa: F401
import numpy as np
import pytest
import torch
from PIL import Image

from loca_diffusion.data import (  # noqa: E402
    CorruptImageError,
    EditPairTransform,
    HubUnavailableError,
    ParaphraseSampler,
    collate_fn,
    load_edit_dataset,
    make_train_dataset,
)
from loca_diffusion.data.cartoonize import build_cartoon_dataset  # noqa: E402
from loca_diffusion.data.prompts import CARTOONIZATION_PARAPHRASES  # noqa: E402

RES = 32


def _photo(seed: int, size=(48, 40)) -> Image.Image:
    """A smooth random colour picture (w x h), like a tiny photo."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(w, h)
    channels = [np.sin(6 * (a * xx + b * yy) + c) for a, b, c in rng.normal(size=(3, 3))]
    array = (np.stack(channels, -1) * 100 + 128).clip(0, 255).astype(np.uint8)
    return Image.fromarray(array, "RGB")


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    """A 4-pair dataset written by the builder (imagefolder + metadata.jsonl)."""
    root = tmp_path_factory.mktemp("pairs")
    photos = root / "photos"
    photos.mkdir()
    for i in range(4):
        _photo(i).save(photos / f"photo{i}.png")
    build_cartoon_dataset(root / "ds", input_dir=photos, resolution=RES, seed=0)
    return root / "ds"


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "hf_cache"


class FakeTokenizer:
    """Byte-level stand-in with the tokenizer call signature diffusers uses."""

    model_max_length = 12

    def __call__(self, texts, max_length, padding, truncation, return_tensors):
        assert padding == "max_length" and truncation and return_tensors == "pt"
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            b = list(text.encode())[:max_length]
            ids[i, : len(b)] = torch.tensor(b)

        class Out:
            input_ids = ids

        return Out()

    @staticmethod
    def decode(ids) -> str:
        return bytes(int(i) for i in ids if int(i)).decode()


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------


def test_local_folder_loads_with_three_columns(pair_dir, cache_dir):
    ds = load_edit_dataset(train_data_dir=pair_dir, cache_dir=cache_dir)
    assert ds.column_names == ["original_image", "edit_prompt", "cartoonized_image"]
    assert len(ds) == 4
    row = ds[0]
    assert row["original_image"].size == row["cartoonized_image"].size == (RES, RES)
    assert all(p in CARTOONIZATION_PARAPHRASES for p in ds["edit_prompt"])
    # An existing folder passed as the "dataset name" is read the same way.
    assert len(load_edit_dataset(str(pair_dir), cache_dir=cache_dir)) == 4


def test_max_train_samples_is_a_seeded_subset(pair_dir, cache_dir):
    a = load_edit_dataset(train_data_dir=pair_dir, max_train_samples=2, seed=3, cache_dir=cache_dir)
    b = load_edit_dataset(train_data_dir=pair_dir, max_train_samples=2, seed=3, cache_dir=cache_dir)
    assert len(a) == 2 and a["edit_prompt"] == b["edit_prompt"]
    assert len(load_edit_dataset(train_data_dir=pair_dir, max_train_samples=99, cache_dir=cache_dir)) == 4


def test_missing_column_lists_available_columns_and_option(pair_dir, cache_dir):
    with pytest.raises(ValueError) as info:
        load_edit_dataset(train_data_dir=pair_dir, edited_image_column="edited_image", cache_dir=cache_dir)
    message = str(info.value)
    assert "'edited_image'" in message and "--edited_image_column" in message
    for column in ("original_image", "edit_prompt", "cartoonized_image"):
        assert column in message


def test_wrong_column_types_are_rejected(pair_dir, cache_dir):
    with pytest.raises(ValueError, match="edit prompts.*--edit_prompt_column"):
        load_edit_dataset(train_data_dir=pair_dir, edit_prompt_column="original_image", cache_dir=cache_dir)
    with pytest.raises(ValueError, match="should hold images.*--original_image_column"):
        load_edit_dataset(train_data_dir=pair_dir, original_image_column="edit_prompt", cache_dir=cache_dir)


def test_corrupt_and_missing_images_are_named(pair_dir, tmp_path, cache_dir):
    broken = tmp_path / "broken"
    shutil.copytree(pair_dir, broken)
    rows = [json.loads(line) for line in open(broken / "metadata.jsonl")]
    corrupt = broken / rows[1]["cartoonized_image_file_name"]
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    missing = broken / rows[2]["original_image_file_name"]
    missing.unlink()
    with pytest.raises(CorruptImageError) as info:
        load_edit_dataset(train_data_dir=broken, cache_dir=cache_dir)
    message = str(info.value)
    assert str(corrupt) in message and "cartoonized_image" in message and "row 1" in message
    assert str(missing) in message and "original_image" in message
    assert message.startswith("2 image(s)")

    # Without the up-front check, the training view names the file when it reaches it.
    ds = load_edit_dataset(train_data_dir=broken, verify=False, cache_dir=cache_dir)
    train = make_train_dataset(ds, FakeTokenizer(), RES)
    train[0]  # a good row
    with pytest.raises(CorruptImageError, match=str(corrupt)):
        train[1]


def test_missing_folder_and_missing_metadata(tmp_path, cache_dir):
    with pytest.raises(FileNotFoundError, match="does not exist.*loca_diffusion.data.cartoonize"):
        load_edit_dataset(train_data_dir=tmp_path / "nope", cache_dir=cache_dir)
    (tmp_path / "images").mkdir()
    _photo(0).save(tmp_path / "images" / "a.png")
    with pytest.raises(FileNotFoundError, match="no metadata file"):
        load_edit_dataset(train_data_dir=tmp_path / "images", cache_dir=cache_dir)


def test_source_arguments(pair_dir):
    with pytest.raises(ValueError, match="not both"):
        load_edit_dataset("a/b", train_data_dir=pair_dir)
    with pytest.raises(ValueError, match="--dataset_name.*--train_data_dir"):
        load_edit_dataset()
    with pytest.raises(FileNotFoundError, match="neither an existing local folder nor a valid"):
        load_edit_dataset("./no/such/folder")


def test_file_names_never_split_a_local_folder(tmp_path, cache_dir):
    """``datasets`` infers splits from names: pairs named like test/valid photos must stay in training."""
    root = tmp_path / "named"
    (root / "original").mkdir(parents=True)
    (root / "cartoonized").mkdir()
    names = ["cat", "test_card", "dog", "valid_photo", "eval"]
    with open(root / "metadata.jsonl", "w") as f:
        for i, name in enumerate(names):
            _photo(i, (20, 16)).save(root / "original" / f"{name}.png")
            _photo(10 + i, (20, 16)).save(root / "cartoonized" / f"{name}.png")
            row = {
                "original_image_file_name": f"original/{name}.png",
                "edit_prompt": name,
                "cartoonized_image_file_name": f"cartoonized/{name}.png",
            }
            f.write(json.dumps(row) + "\n")
    ds = load_edit_dataset(train_data_dir=root, cache_dir=cache_dir)
    assert sorted(ds["edit_prompt"]) == sorted(names)
    row = ds[ds["edit_prompt"].index("test_card")]
    assert np.array_equal(np.asarray(row["cartoonized_image"]), np.asarray(_photo(11, (20, 16))))


def test_diffusers_style_metadata_with_file_name_columns(tmp_path, cache_dir):
    """diffusers' examples: ``file_name`` plus extra image columns holding file names as strings."""
    root = tmp_path / "diffusers_style"
    root.mkdir()
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(2):
            _photo(i, (20, 16)).save(root / f"in{i}.png")
            _photo(10 + i, (20, 16)).save(root / f"out{i}.png")
            f.write(json.dumps({"file_name": f"in{i}.png", "edit_prompt": "x", "edited_image": f"out{i}.png"}) + "\n")
    ds = load_edit_dataset(
        train_data_dir=root, original_image_column="image", edited_image_column="edited_image", cache_dir=cache_dir
    )
    assert ds[1]["edited_image"].size == (20, 16)
    assert np.array_equal(np.asarray(ds[1]["edited_image"]), np.asarray(_photo(11, (20, 16))))


def test_hub_unreachable_fails_fast_and_clearly(monkeypatch, cache_dir):
    # A refused connection stands for "no network", whatever the machine running the tests has.
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    name = "loca-diffusion-tests/cartoonizer-dataset"
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError) as info:
        load_edit_dataset(name, cache_dir=cache_dir)
    assert time.perf_counter() - start < 10
    assert isinstance(info.value, OSError)
    message = str(info.value)
    assert name in message and "--train_data_dir" in message and "loca_diffusion.data.cartoonize" in message


def test_hub_offline_mode_fails_fast_and_clearly(monkeypatch, cache_dir):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # set after import: must still not touch the network
    name = "loca-diffusion-tests/cartoonizer-dataset"
    start = time.perf_counter()
    with pytest.raises(HubUnavailableError, match=f"{name}.*offline.*--train_data_dir"):
        load_edit_dataset(name, cache_dir=cache_dir)
    assert time.perf_counter() - start < 10


# ---------------------------------------------------------------------------------------------
# Paired augmentation
# ---------------------------------------------------------------------------------------------


def test_pair_transform_output_format():
    a, b = EditPairTransform(RES)(_photo(0, (50, 30)), _photo(1, (20, 70)))
    assert a.shape == b.shape == (3, RES, RES)
    assert a.dtype == b.dtype == torch.float32
    assert -1.0 <= float(a.min()) and float(a.max()) <= 1.0
    # Square mode is diffusers' resize, pixel for pixel.
    expected = np.asarray(_photo(0, (50, 30)).resize((RES, RES), Image.Resampling.BICUBIC)).astype(np.float32)
    assert torch.allclose(a, torch.from_numpy(expected).permute(2, 0, 1) / 127.5 - 1)
    with pytest.raises(ValueError):
        EditPairTransform(RES, resize_mode="stretch")


@pytest.mark.parametrize("resize_mode", ["square", "shorter_side"])
def test_same_image_stays_identical_under_random_crop_and_flip(resize_mode):
    image = _photo(5, (61, 43))
    flips = set()
    for seed in range(40):
        t = EditPairTransform(RES, center_crop=False, random_flip=True, seed=seed, resize_mode=resize_mode)
        a, b = t(image, image.copy())
        assert torch.equal(a, b)
        flips.add(bool(torch.equal(a, EditPairTransform(RES, resize_mode=resize_mode, seed=seed)(image, image)[0])))
    assert flips == {True, False}  # both flipped and unflipped draws happened


def test_different_images_get_the_same_geometry():
    """The edited image is the colour inverse of the original, stored at twice the size; a marker
    sits in the original's top-left corner. Whatever crop and flip are drawn, the outputs must stay
    inverses of each other and the marker must land at the same place in both."""
    w, h = 80, 56
    base = np.asarray(_photo(7, (w, h))).copy()
    base[:10, :10] = (255, 0, 0)  # top-left marker
    original = Image.fromarray(base)
    edited = Image.fromarray(255 - base).resize((2 * w, 2 * h), Image.Resampling.NEAREST)
    crops, flips = set(), set()
    for seed in range(60):
        t = EditPairTransform(RES, random_flip=True, seed=seed, resize_mode="shorter_side")
        # The same seed draws the same offsets: what the transform is about to use.
        _, left, flip = EditPairTransform(RES, random_flip=True, seed=seed).draw(RES, round(w * RES / h))
        crops.add(left)
        flips.add(flip)
        a, b = t(original, edited)
        assert float((a + b).abs().mean()) < 0.03, seed  # edited = -original, position by position
        marker_a = (a[0] > 0.9) & (a[1] < -0.9)  # red in the original
        marker_b = (b[0] < -0.9) & (b[1] > 0.9)  # cyan (inverse of red) in the edited image
        width = 10 * RES / h  # the marker's width after the resize (about 5.7 px)
        if left >= width + 1:  # cropped away
            assert not marker_a.any() and not marker_b.any(), seed
        elif left <= width - 2:  # at least 2 columns of it are inside the crop
            assert marker_a.sum() > 4, seed
            assert float((marker_a ^ marker_b).float().mean()) < 0.02, seed
            cols = marker_a.nonzero()[:, 1].float().mean()
            assert bool(cols > RES / 2) == flip, seed  # a flip moves the left marker to the right
    assert len(crops) > 3 and flips == {True, False}


def test_pair_transform_is_seeded_and_center_crop_is_deterministic():
    image = _photo(2, (70, 40))
    t1 = EditPairTransform(RES, random_flip=True, seed=11, resize_mode="shorter_side")
    t2 = EditPairTransform(RES, random_flip=True, seed=11, resize_mode="shorter_side")
    for _ in range(5):
        assert torch.equal(t1(image, image)[0], t2(image, image)[0])
    c = EditPairTransform(RES, center_crop=True, resize_mode="shorter_side")
    assert c.draw(RES, 56) == ((RES - RES) // 2, (56 - RES) // 2, False)
    assert torch.equal(c(image, image)[0], c(image, image)[0])


# ---------------------------------------------------------------------------------------------
# Paraphrases and training batches
# ---------------------------------------------------------------------------------------------


def test_paraphrase_sampler_draws_from_the_list_and_is_seeded():
    assert len(CARTOONIZATION_PARAPHRASES) == 50 and len(set(CARTOONIZATION_PARAPHRASES)) == 50
    a = [ParaphraseSampler(seed=1)() for _ in range(1)]
    s1, s2, s3 = ParaphraseSampler(seed=1), ParaphraseSampler(seed=1), ParaphraseSampler(seed=2)
    d1, d2, d3 = [s1() for _ in range(200)], [s2() for _ in range(200)], [s3() for _ in range(200)]
    assert d1 == d2 and d1 != d3 and a[0] == d1[0]
    assert set(d1) <= set(CARTOONIZATION_PARAPHRASES) and len(set(d1)) > 35
    custom = ParaphraseSampler(["make it a cartoon", "cartoonify"], seed=0)
    assert {custom() for _ in range(50)} == {"make it a cartoon", "cartoonify"}
    with pytest.raises(ValueError):
        ParaphraseSampler([])


def test_make_train_dataset_and_collate(pair_dir, cache_dir):
    ds = load_edit_dataset(train_data_dir=pair_dir, cache_dir=cache_dir)
    tok = FakeTokenizer()
    train = make_train_dataset(ds, tok, 16, random_flip=True, seed=0)
    example = train[0]
    assert example["original_pixel_values"].shape == example["edited_pixel_values"].shape == (3, 16, 16)
    assert tok.decode(example["input_ids"]) == ds[0]["edit_prompt"][: tok.model_max_length]
    batch = collate_fn([train[i] for i in range(3)])
    assert set(batch) == {"original_pixel_values", "edited_pixel_values", "input_ids"}
    assert batch["original_pixel_values"].shape == batch["edited_pixel_values"].shape == (3, 3, 16, 16)
    assert batch["input_ids"].shape == (3, tok.model_max_length) and batch["input_ids"].dtype == torch.long
    assert batch["original_pixel_values"].is_contiguous()

    loader = torch.utils.data.DataLoader(train, batch_size=2, collate_fn=collate_fn)
    assert sum(b["input_ids"].shape[0] for b in loader) == 4

    with pytest.raises(ValueError, match="available columns"):
        make_train_dataset(ds, tok, 16, edit_prompt_column="prompt")


def test_random_paraphrase_replaces_prompts_per_access(pair_dir, cache_dir):
    ds = load_edit_dataset(train_data_dir=pair_dir, cache_dir=cache_dir)
    custom = ["turn it into a cartoon", "cartoonify it", "toon it"]
    train = make_train_dataset(ds, FakeTokenizer(), 8, random_paraphrase=True, paraphrases=custom, seed=4)
    drawn = [train[0]["edit_prompt"] for _ in range(30)]
    assert set(drawn) == set(custom)
    again = make_train_dataset(ds, FakeTokenizer(), 8, random_paraphrase=True, paraphrases=custom, seed=4)
    assert [again[0]["edit_prompt"] for _ in range(30)] == drawn
    default = make_train_dataset(ds, FakeTokenizer(), 8, random_paraphrase=True, seed=0)
    assert default[1]["edit_prompt"] in CARTOONIZATION_PARAPHRASES


def test_real_clip_tokenizer_padding(pair_dir, cache_dir, tmp_path):
    from loca_diffusion.tiny_pix2pix import build_clip_tokenizer

    tokenizer = build_clip_tokenizer(tmp_path / "tok")  # CLIP's real vocabulary, offline
    ds = load_edit_dataset(train_data_dir=pair_dir, cache_dir=cache_dir)
    batch = collate_fn([make_train_dataset(ds, tokenizer, 8)[i] for i in range(2)])
    ids = batch["input_ids"]
    assert ids.shape == (2, 77)
    assert ids[0, 0] == tokenizer.bos_token_id and ids[0, -1] == tokenizer.pad_token_id
    assert ids[0, 0] == 49406 and tokenizer.eos_token_id == 49407  # CLIP's <|startoftext|>, <|endoftext|>
    words = tokenizer.decode(ids[0], skip_special_tokens=True).replace(" ", "")
    assert words == ds[0]["edit_prompt"].lower().replace(" ", "")


def test_missing_or_empty_prompts_are_named_up_front(pair_dir, pairs_with_bad_prompts, cache_dir):
    folder, rows = pairs_with_bad_prompts(pair_dir, missing=1, empty=3)
    with pytest.raises(ValueError) as info:
        load_edit_dataset(train_data_dir=folder, cache_dir=cache_dir)
    message = str(info.value)
    assert "2 row(s)" in message and "'edit_prompt'" in message and "--edit_prompt_column" in message
    assert f"row 1 ({folder / rows[1]['original_image_file_name']})" in message
    assert f"row 3 ({folder / rows[3]['original_image_file_name']})" in message


def test_validation_view_is_the_training_view_without_randomness():
    photo = _photo(3, size=(60, 44))
    for mode in ("square", "shorter_side"):
        transform = EditPairTransform(RES, center_crop=True, resize_mode=mode)
        view = transform.validation_view(photo)
        assert view.size == (RES, RES) and view.mode == "RGB"
        trained, _ = transform(photo, photo)
        np.testing.assert_allclose(
            np.asarray(view, dtype=np.float32) / 127.5 - 1, trained.permute(1, 2, 0).numpy(), atol=1e-6
        )
