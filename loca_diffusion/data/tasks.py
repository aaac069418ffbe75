"""Data of the task training scripts: labelled texts, labelled images and instruction triples, from the Hub
(``datasets``), local files, or the offline sets (``offline:bbc-news``, ``offline:bbc-headlines``,
``offline:fashion-mnist``); then tokenisation / pixel transforms and collators.

Every loader returns plain columns (``dict`` of lists or arrays) per split, so the scripts see the same
shape whatever the source; bad input raises ``FileNotFoundError`` / ``ValueError`` naming the file, column
or row.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .splits import balanced_holdout_mask, take, task_splits

GLUE_TEXT_COLUMNS = {
    "cola": ("sentence", None),
    "sst2": ("sentence", None),
    "mrpc": ("sentence1", "sentence2"),
    "qqp": ("question1", "question2"),
    "stsb": ("sentence1", "sentence2"),
    "mnli": ("premise", "hypothesis"),
    "qnli": ("question", "sentence"),
    "rte": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
OFFLINE_DATASETS = ("offline:bbc-news", "offline:bbc-headlines", "offline:fashion-mnist")
HEADLINE_INSTRUCTION = "Write the headline of this news article."


# ----------------------------------------------------------------------------------------------------
# arguments


def add_data_arguments(parser, label_column: str = "label") -> None:
    """The data options every task script has: a Hub dataset, local files or folders, and subsets."""
    g = parser.add_argument_group("data")
    g.add_argument("--dataset_name", default=None, help=f"A Hub dataset id or one of {OFFLINE_DATASETS}.")
    g.add_argument("--dataset_config_name", default=None)
    g.add_argument("--validation_split", default="validation")
    g.add_argument("--train_file", default=None, help="Local csv/tsv/json/jsonl file.")
    g.add_argument("--validation_file", default=None)
    g.add_argument("--label_column", default=label_column)
    g.add_argument("--max_train_samples", type=int, default=None, help="A fixed random subset (by --seed).")
    g.add_argument("--max_eval_samples", type=int, default=None, help="A fixed random subset (seed 0).")
    g.add_argument("--cache_dir", default=None)
    g.add_argument("--dataloader_num_workers", type=int, default=0)


# ----------------------------------------------------------------------------------------------------
# reading files


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a ``.csv``, ``.tsv``, ``.json`` (a list) or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"data file is empty: {path}")
    if suffix in (".csv", ".tsv"):
        rows = list(csv.DictReader(text.splitlines(), delimiter="\t" if suffix == ".tsv" else ","))
    elif suffix == ".jsonl":
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}, line {number}: not valid JSON ({err.msg})") from None
    elif suffix == ".json":
        rows = json.loads(text)
        if isinstance(rows, dict) and "data" in rows:
            rows = rows["data"]
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records")
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .json or .jsonl)")
    if not rows:
        raise ValueError(f"data file has no rows: {path}")
    return rows


def columns_of(rows: Sequence[dict], columns: Sequence[str], where: str) -> dict[str, list]:
    """The named columns of ``rows``; a missing column or an empty value is an error naming it."""
    available = list(rows[0].keys()) if rows else []
    out: dict[str, list] = {}
    for column in columns:
        if column not in available:
            raise ValueError(f"{where}: no column {column!r} (columns: {available})")
        values = [row.get(column) for row in rows]
        for i, value in enumerate(values):
            if value is None:
                raise ValueError(f"{where}, row {i}: empty {column!r}")
        out[column] = values
    return out


def _hub_split(name: str, config: Optional[str], split: str, cache_dir: Optional[str]):
    from .edit_pairs import _load_hub  # one Hub probe with a clear error when offline

    return _load_hub(name, config, split, cache_dir, None, 10.0)


def encode_labels(
    train: list, validation: list, names: Optional[list[str]], where: str
) -> tuple[list[int], list[int], list[str]]:
    """Integer labels for both splits. String labels are numbered in sorted order of the training labels;
    a validation label unseen in training is an error."""
    if names is None:
        if all(isinstance(v, (int, np.integer)) for v in train) and not any(isinstance(v, bool) for v in train):
            names = [str(i) for i in range(int(max(train)) + 1)]
        else:
            names = sorted({str(v) for v in train})
    if all(isinstance(v, (int, np.integer)) for v in train + validation):
        out = [int(v) for v in train], [int(v) for v in validation]
    else:
        index = {n: i for i, n in enumerate(names)}
        encoded = []
        for split, values in (("train", train), ("validation", validation)):
            unknown = sorted({str(v) for v in values} - index.keys())
            if unknown:
                raise ValueError(f"{where} ({split}): unknown labels {unknown[:5]}; known: {names}")
            encoded.append([index[str(v)] for v in values])
        out = encoded[0], encoded[1]
    for split, values in zip(("train", "validation"), out):
        bad = [v for v in values if not 0 <= v < len(names)]
        if bad:
            raise ValueError(f"{where} ({split}): labels {sorted(set(bad))[:5]} outside 0..{len(names) - 1}")
    return out[0], out[1], names


def _class_folder_splits(
    read, train_dir: str, validation_dir: Optional[str], key: str
) -> tuple[dict, dict, list[str]]:
    """Train and validation splits of a folder-per-class corpus (``read(folder) -> (items, labels, classes)``):
    ``validation_dir`` with the same classes, or a balanced 1-in-5 holdout of ``train_dir``."""
    items, labels, names = read(train_dir)
    if validation_dir:
        v_items, v_labels, v_names = read(validation_dir)
        if v_names != names:
            raise ValueError(f"{validation_dir}: classes {v_names} differ from {train_dir}: {names}")
        return {key: items, "label": labels}, {key: v_items, "label": v_labels}, names
    mask = balanced_holdout_mask(len(items), labels)
    split = [
        {key: [x for x, m in zip(items, mask) if m == held], "label": [y for y, m in zip(labels, mask) if m == held]}
        for held in (False, True)
    ]
    return split[0], split[1], names


# ----------------------------------------------------------------------------------------------------
# text classification


def load_text_classification(args, with_sizes: bool = False) -> tuple:
    """``(train, evaluation, class_names)`` (and the split sizes with ``with_sizes``: :func:`.splits.task_splits`,
    which also applies ``--test_size`` / ``--validation_from_train`` / ``--eval_split``); splits hold ``text``
    (and ``text_pair``) and ``label``.

    Sources, first match wins: ``--train_dir`` (a folder of text files per class; ``--validation_dir`` or a
    balanced 1-in-5 holdout), ``--train_file`` / ``--validation_file`` (csv/tsv/json/jsonl with
    ``--text_column`` and ``--label_column``), ``--dataset_name offline:bbc-news`` (``offline:bbc-headlines``: the
    same topics from the headline alone), ``--task_name`` (GLUE on the
    Hub) or ``--dataset_name`` (any Hub dataset with those columns)."""
    from ..offline.data import bbc_news, read_class_folders

    pair = None
    if args.train_dir:
        train, validation, names = _class_folder_splits(
            read_class_folders, args.train_dir, args.validation_dir, "text"
        )
    elif args.train_file:
        if not args.validation_file:
            raise ValueError("--train_file needs --validation_file")
        columns = [args.text_column or "text", args.label_column] + (
            [args.text_pair_column] if args.text_pair_column else []
        )
        train_cols = columns_of(read_records(args.train_file), columns, args.train_file)
        val_cols = columns_of(read_records(args.validation_file), columns, args.validation_file)
        t_labels, v_labels, names = encode_labels(
            train_cols[args.label_column], val_cols[args.label_column], None, args.train_file
        )
        train = {"text": [str(t) for t in train_cols[columns[0]]], "label": t_labels}
        validation = {"text": [str(t) for t in val_cols[columns[0]]], "label": v_labels}
        if args.text_pair_column:
            train["text_pair"], validation["text_pair"] = (
                train_cols[args.text_pair_column],
                val_cols[args.text_pair_column],
            )
    elif args.dataset_name in ("offline:bbc-news", "offline:bbc-headlines"):
        data = bbc_news()
        names = data["train"]["classes"]
        column = "headline" if args.dataset_name == "offline:bbc-headlines" else "text"
        train, validation = ({"text": data[s][column], "label": data[s]["label"]} for s in ("train", "validation"))
    else:
        if args.task_name == "stsb":
            raise ValueError("--task_name stsb is a regression task; this script trains classifiers")
        if args.task_name and args.task_name not in GLUE_TEXT_COLUMNS:
            raise ValueError(f"--task_name {args.task_name!r} is not a GLUE task; known: {sorted(GLUE_TEXT_COLUMNS)}")
        name, config = (
            ("nyu-mll/glue", args.task_name) if args.task_name else (args.dataset_name, args.dataset_config_name)
        )
        if not name:
            raise ValueError("pass --task_name, --dataset_name, --train_file or --train_dir")
        text_column, pair = GLUE_TEXT_COLUMNS.get(args.task_name, (args.text_column or "text", args.text_pair_column))
        validation_split = "validation_matched" if args.task_name == "mnli" else args.validation_split
        splits = {s: _hub_split(name, config, s, args.cache_dir) for s in ("train", validation_split)}
        columns = [text_column, args.label_column] + ([pair] if pair else [])
        cols = {}
        for s, ds in splits.items():
            missing = [c for c in columns if c not in ds.column_names]
            if missing:
                raise ValueError(f"dataset {name} ({s}): no column(s) {missing} (columns: {ds.column_names})")
            cols[s] = {c: ds[c] for c in columns}
        feature = splits["train"].features[args.label_column]
        t_labels, v_labels, names = encode_labels(
            cols["train"][args.label_column],
            cols[validation_split][args.label_column],
            getattr(feature, "names", None),
            name,
        )
        train = {"text": cols["train"][text_column], "label": t_labels}
        validation = {"text": cols[validation_split][text_column], "label": v_labels}
        if pair:
            train["text_pair"], validation["text_pair"] = cols["train"][pair], cols[validation_split][pair]
    for split_name, split in (("train", train), ("validation", validation)):
        if not split["label"]:
            raise ValueError(f"the {split_name} split is empty")
    train, evaluation, sizes = task_splits(train, validation, args)
    return (train, evaluation, names, sizes) if with_sizes else (train, evaluation, names)


class TokenizedClassification(torch.utils.data.Dataset):
    """Texts tokenised once up front (truncated to ``max_length``), padded per batch by :func:`pad_collate`."""

    def __init__(self, split: dict, tokenizer, max_length: int) -> None:
        pairs = split.get("text_pair")
        encoded = tokenizer(split["text"], pairs, truncation=True, max_length=max_length)
        self.features = [
            {k: encoded[k][i] for k in encoded.keys()} | {"labels": split["label"][i]}
            for i in range(len(split["label"]))
        ]

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def pad_collate(pad_token_id: int):
    """A collator that right-pads ``input_ids`` (with ``pad_token_id``), the masks (0) and ``labels`` when they
    are sequences (-100); scalar labels stay a vector."""

    def collate(examples: Sequence[dict]) -> dict[str, torch.Tensor]:
        longest = max(len(e["input_ids"]) for e in examples)
        batch: dict[str, torch.Tensor] = {}
        for key in examples[0]:
            values = [e[key] for e in examples]
            if isinstance(values[0], (list, tuple)):
                fill = pad_token_id if key == "input_ids" else (-100 if key == "labels" else 0)
                batch[key] = torch.tensor([list(v) + [fill] * (longest - len(v)) for v in values])
            else:
                batch[key] = torch.tensor(values)
        return batch

    return collate


# ----------------------------------------------------------------------------------------------------
# image classification


def load_image_classification(args, with_sizes: bool = False) -> tuple:
    """``(train, evaluation, class_names)`` (and the split sizes with ``with_sizes``, as
    :func:`load_text_classification`); splits hold ``image`` (uint8 arrays H x W [x C] or PIL images)
    and ``label``. Sources: ``--train_dir`` (imagefolder: one sub-folder of images per class;
    ``--validation_dir`` or a 1-in-5 holdout), ``--idx_dir`` (MNIST-format IDX files),
    ``--dataset_name offline:fashion-mnist``, or a Hub ``--dataset_name`` with ``--image_column`` and
    ``--label_column``."""
    from ..offline.data import fashion_mnist

    if args.train_dir:
        train, validation, names = _class_folder_splits(
            _read_imagefolder, args.train_dir, args.validation_dir, "image"
        )
    elif args.idx_dir or args.dataset_name == "offline:fashion-mnist":
        x, y, names = fashion_mnist("train", args.idx_dir)
        vx, vy, _ = fashion_mnist("validation", args.idx_dir)
        if args.idx_dir:  # any IDX data set: classes are the label values
            names = [str(i) for i in range(int(max(y.max(), vy.max())) + 1)]
        train, validation = {"image": x, "label": y.tolist()}, {"image": vx, "label": vy.tolist()}
    else:
        if not args.dataset_name:
            raise ValueError("pass --dataset_name, --train_dir or --idx_dir")
        splits = {
            s: _hub_split(args.dataset_name, args.dataset_config_name, s, args.cache_dir)
            for s in ("train", args.validation_split)
        }
        cols = {}
        for s, ds in splits.items():
            missing = [c for c in (args.image_column, args.label_column) if c not in ds.column_names]
            if missing:
                raise ValueError(
                    f"dataset {args.dataset_name} ({s}): no column(s) {missing} (columns: {ds.column_names})"
                )
            cols[s] = ds
        feature = splits["train"].features[args.label_column]
        t_labels, v_labels, names = encode_labels(
            list(cols["train"][args.label_column]),
            list(cols[args.validation_split][args.label_column]),
            getattr(feature, "names", None),
            args.dataset_name,
        )
        train = {"image": cols["train"][args.image_column], "label": t_labels}
        validation = {"image": cols[args.validation_split][args.image_column], "label": v_labels}
    train, evaluation, sizes = task_splits(train, validation, args)
    return (train, evaluation, names, sizes) if with_sizes else (train, evaluation, names)


def _read_imagefolder(root: str | Path) -> tuple[list, list[int], list[str]]:
    from PIL import Image, UnidentifiedImageError

    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names:
        raise ValueError(f"{root} has no class sub-folders (expected one folder of images per class)")
    images, labels = [], []
    for label, name in enumerate(names):
        files = sorted(
            f for f in (root / name).iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp")
        )
        if not files:
            raise ValueError(f"class folder {root / name} has no images")
        for file in files:
            try:
                with Image.open(file) as image:
                    images.append(image.convert("RGB"))
            except (UnidentifiedImageError, OSError) as err:
                raise ValueError(f"cannot read image {file}: {err}") from None
            labels.append(label)
    return images, labels, names


class PixelClassification(torch.utils.data.Dataset):
    """Images as normalised ``pixel_values`` (RGB, ``resolution`` x ``resolution``); random horizontal flips
    when ``flip``. Grey images are repeated over the three channels."""

    def __init__(
        self, split: dict, resolution: int, mean: Sequence[float], std: Sequence[float], flip: bool = False
    ) -> None:
        self.images, self.labels, self.flip = split["image"], split["label"], flip
        self.resolution = resolution
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        image = self.images[i]
        array = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array)
        tensor = tensor[None].expand(3, -1, -1) if tensor.ndim == 2 else tensor.permute(2, 0, 1)[:3]
        tensor = torch.nn.functional.interpolate(
            tensor[None], size=(self.resolution, self.resolution), mode="bilinear", align_corners=False, antialias=True
        )[0]
        if self.flip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
        return {"pixel_values": (tensor - self.mean) / self.std, "labels": int(self.labels[i])}


# ----------------------------------------------------------------------------------------------------
# instruction tuning


def load_instructions(args) -> tuple[dict, dict]:
    """``(train, validation)`` with ``instruction``, ``input``, ``output`` lists. Sources: ``--train_file`` /
    ``--validation_file`` (json/jsonl/csv with those columns; ``input`` may be absent),
    ``--dataset_name offline:bbc-headlines`` (article body -> headline), or a Hub ``--dataset_name``
    (Alpaca-style columns; without a validation split, 2% of train is held out)."""
    from ..offline.data import bbc_news

    keys = (args.instruction_column, args.input_column, args.output_column)
    if args.train_file:
        if not args.validation_file:
            raise ValueError("--train_file needs --validation_file")
        splits = []
        for file in (args.train_file, args.validation_file):
            rows = read_records(file)
            present = [k for k in keys if k in rows[0]]
            cols = columns_of(rows, [k for k in keys if k != args.input_column or k in present], file)
            cols.setdefault(args.input_column, [""] * len(rows))
            splits.append({"instruction": cols[keys[0]], "input": cols[keys[1]], "output": cols[keys[2]]})
        train, validation = splits
    elif args.dataset_name == "offline:bbc-headlines":
        data = bbc_news()
        train, validation = (
            {
                "instruction": [HEADLINE_INSTRUCTION] * len(data[s]["body"]),
                "input": data[s]["body"],
                "output": data[s]["headline"],
            }
            for s in ("train", "validation")
        )
    else:
        if not args.dataset_name:
            raise ValueError("pass --dataset_name or --train_file/--validation_file")
        ds = _hub_split(args.dataset_name, args.dataset_config_name, "train", args.cache_dir)
        missing = [c for c in (keys[0], keys[2]) if c not in ds.column_names]
        if missing:
            raise ValueError(f"dataset {args.dataset_name}: no column(s) {missing} (columns: {ds.column_names})")
        split = ds.train_test_split(test_size=0.02, seed=0)
        train, validation = (
            {
                "instruction": s[keys[0]],
                "input": s[keys[1]] if keys[1] in s.column_names else [""] * len(s),
                "output": s[keys[2]],
            }
            for s in (split["train"], split["test"])
        )
    for name, split in (("train", train), ("validation", validation)):
        if not split["output"]:
            raise ValueError(f"the {name} split is empty")
    return take(train, args.max_train_samples, args.seed), take(validation, args.max_eval_samples, 0)


def prompt_text(instruction: str, input_text: str) -> str:
    """The Alpaca prompt (as in the paper's instruction-tuning setup), ending where the response starts."""
    if input_text:
        return f"### Instruction:\n{instruction}\n\n### Input:\n{input_text}\n\n### Response:\n"
    return f"### Instruction:\n{instruction}\n\n### Response:\n"


class InstructionDataset(torch.utils.data.Dataset):
    """Prompt + response + EOS token ids with the prompt masked out of the labels (-100): the loss is on the
    response only. The input is truncated first so that the response always fits ``max_length``."""

    def __init__(self, split: dict, tokenizer, max_length: int, max_target_length: int = 64) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer has no EOS token (needed to end the responses)")
        self.items = []
        for instruction, input_text, output in zip(split["instruction"], split["input"], split["output"]):
            target = tokenizer(str(output), add_special_tokens=False)["input_ids"][:max_target_length] + [
                tokenizer.eos_token_id
            ]
            frame = tokenizer(prompt_text(instruction, ""), add_special_tokens=False)["input_ids"]
            room = max(0, max_length - len(target) - len(frame) - 8)
            if input_text:
                ids = tokenizer(str(input_text), add_special_tokens=False)["input_ids"][:room]
                input_text = tokenizer.decode(ids)
            prompt = tokenizer(prompt_text(instruction, input_text), add_special_tokens=False)["input_ids"]
            prompt = prompt[: max(1, max_length - len(target))]
            ids = prompt + target
            self.items.append(
                {
                    "input_ids": ids,
                    "attention_mask": [1] * len(ids),
                    "labels": [-100] * len(prompt) + target,
                    "prompt_length": len(prompt),
                    "reference": str(output),
                }
            )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        return {k: item[k] for k in ("input_ids", "attention_mask", "labels")}
