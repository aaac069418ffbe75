"""train/text_classification_loca.py, image_classification_loca.py and causal_lm_loca.py end to end on tiny
random models and tiny local data written here (issue 10): train, resume, the PEFT output read back by
``PeftModel.from_pretrained`` reproducing the reported metrics, the budget matching, the schedule options,
and clear errors. Each run is a real ``accelerate launch`` subprocess (or a plain ``python`` one for errors)."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from _scripts import launch_command, ok, script_env

ROOT = Path(__file__).resolve().parents[1]
WORDS = "market shares bank profit film actor music award match goal team player vote party minister election".split()
TOPICS = {"business": WORDS[0:4], "entertainment": WORDS[4:8], "politics": WORDS[12:16], "sport": WORDS[8:12]}


def run(script: str, args: list[str], launcher: bool = True, timeout: int = 300):
    path = ROOT / "train" / script
    command = launch_command(path) if launcher else [sys.executable, str(path)]
    return subprocess.run(
        command + args, capture_output=True, text=True, env=script_env(HF_HUB_OFFLINE="1"), timeout=timeout
    )


def failed_with(result, *needles: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode != 0, text[-2000:]
    assert "Traceback" not in text, text[-2000:]
    for needle in needles:
        assert needle in text, (needle, text[-2000:])


def results(directory: Path) -> dict:
    return json.loads((directory / "all_results.json").read_text())


# ----------------------------------------------------------------------------------------------------
# tiny models and data


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from transformers import BertTokenizer

    root = tmp_path_factory.mktemp("tokenizer")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        "#",
        ":",
        "instruction",
        "input",
        "response",
        "write",
        "the",
        "headline",
        "of",
        "this",
        "news",
        "article",
        ".",
    ] + WORDS
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(vocab)}, eos_token="[SEP]")
    assert tokenizer("market shares", add_special_tokens=False)["input_ids"] == [
        vocab.index("market"),
        vocab.index("shares"),
    ]
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, tokenizer_dir) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bert")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_dinov2(tmp_path_factory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(
        Dinov2Config(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2, image_size=28, patch_size=14
        )
    ).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory, tokenizer_dir) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("llama")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A folder-per-class text corpus: each text repeats its topic's words."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    for topic, words in TOPICS.items():
        (root / topic).mkdir()
        for i in range(10):
            (root / topic / f"{i:03d}.txt").write_text(" ".join(rng.choice(words, size=12)) + "\n")
    return root


def write_idx(path: Path, array: np.ndarray) -> None:
    codes = {np.dtype(np.uint8): 0x08}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.fixture(scope="module")
def idx_dir(tmp_path_factory) -> Path:
    """Fashion-MNIST-shaped IDX files: 3 classes told apart by which third of the image is bright."""
    root = tmp_path_factory.mktemp("idx")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 24), ("t10k", 12)):
        labels = np.arange(n, dtype=np.uint8) % 3
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, label in enumerate(labels):
            images[i, :, 9 * label : 9 * label + 9] += 180
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="module")
def instructions(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("instructions")
    rng = np.random.default_rng(0)
    files = []
    for name, n in (("train.jsonl", 16), ("validation.jsonl", 4)):
        rows = []
        for i in range(n):
            topic = list(TOPICS)[i % 4]
            body = " ".join(rng.choice(TOPICS[topic], size=10))
            rows.append(
                {
                    "instruction": "write the headline of this news article .",
                    "input": body,
                    "output": " ".join(TOPICS[topic][:2]),
                }
            )
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(root / name)
    return files[0], files[1]


TRAIN = [
    "--max_train_steps",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--per_device_eval_batch_size",
    "8",
    "--n_frequency",
    "16",
    "--coefficient_steps",
    "1",
    "--location_steps",
    "1",
    "--location_training_steps",
    "3",
    "--location_lr",
    "0.05",
    "--learning_rate",
    "0.01",
    "--seed",
    "0",
    "--logging_steps",
    "1",
    "--lr_scheduler_type",
    "constant",
]  # a resumed run with a shorter --max_train_steps keeps the same lr


# ----------------------------------------------------------------------------------------------------
# text classification


def text_args(model: Path, corpus: Path, out: Path) -> list[str]:
    return [
        "--model_name_or_path",
        str(model),
        "--train_dir",
        str(corpus),
        "--output_dir",
        str(out),
        "--max_length",
        "16",
        *TRAIN,
    ]


def test_text_classification_train_resume_and_load(tiny_bert, corpus, tmp_path, torch_single_thread):
    straight = tmp_path / "straight"
    ok(run("text_classification_loca.py", text_args(tiny_bert, corpus, straight), launcher=False))
    out = tmp_path / "out"
    ok(
        run(
            "text_classification_loca.py",
            text_args(tiny_bert, corpus, out) + ["--checkpointing_steps", "2", "--max_train_steps", "2"],
            launcher=False,
        )
    )
    second = ok(
        run("text_classification_loca.py", text_args(tiny_bert, corpus, out) + ["--resume_from_checkpoint", "latest"])
    )
    assert "Resuming from" in second and "checkpoint-2" in second

    # the resumed run ends where the uninterrupted one does: adapter, locations and head
    resumed, reference = (
        load_file(out / "adapter_model.safetensors"),
        load_file(straight / "adapter_model.safetensors"),
    )
    assert resumed.keys() == reference.keys() and any("classifier" in k for k in reference)
    for key in reference:
        torch.testing.assert_close(resumed[key], reference[key], rtol=1e-5, atol=1e-6)

    # PEFT format: PeftModel.from_pretrained gives back the model that was evaluated
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    import loca_diffusion  # noqa: F401
    from loca_diffusion.offline import read_class_folders

    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LOCA" and config["modules_to_save"] == ["classifier"]
    base = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    model = PeftModel.from_pretrained(base, out).eval()
    texts, labels, names = read_class_folders(corpus)
    held_out = [i for i in range(len(texts)) if i % 10 in (4, 9)]  # every 5th text of each class of 10
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = tokenizer([texts[i] for i in held_out], truncation=True, max_length=16, padding=True, return_tensors="pt")
    with torch.no_grad():
        predicted = model(**batch).logits.argmax(-1)
    accuracy = (predicted == torch.tensor([labels[i] for i in held_out])).float().mean().item()
    report = results(out)
    assert report["eval_samples"] == len(held_out) and report["eval_accuracy"] == pytest.approx(accuracy)
    # trainable parameters: 16 coefficients x 4 layers + the head (32 x 4 + 4)
    assert report["trainable_parameters"] == 16 * 4 + 32 * 4 + 4

    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and "eval_accuracy" in card and "sport" in card
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((out / "logs").rglob("events.out.tfevents.*")).parent)).Reload()
    assert {"train_loss", "eval_accuracy"} <= set(events.Tags()["scalars"])


@pytest.mark.parametrize("adapter", ["lora", "fourierft", "none"])
def test_text_classification_baselines_at_matched_budget(tiny_bert, corpus, tmp_path, adapter, torch_single_thread):
    out = tmp_path / adapter
    ok(
        run(
            "text_classification_loca.py",
            text_args(tiny_bert, corpus, out)
            + ["--adapter", adapter, "--match_budget", "--n_frequency", "128", "--max_train_steps", "2"],
            launcher=False,
        )
    )
    head = 32 * 4 + 4
    # budget: 128 per layer x 4 layers = 512 = LoRA rank 4 x (32 + 32) x 4 layers... / 2 -> r = 512 / 256 = 2
    expected = {"lora": 2 * (32 + 32) * 4 + head, "fourierft": 128 * 4 + head, "none": head}[adapter]
    assert results(out)["trainable_parameters"] == expected
    if adapter == "none":
        assert set(load_file(out / "head_model.safetensors")) == {"classifier.weight", "classifier.bias"}
    else:
        assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == adapter.upper()


def test_text_classification_clear_errors(tiny_bert, corpus, tmp_path):
    train = tmp_path / "train.csv"
    train.write_text("sentence,label\nthe market,business\nthe film,entertainment\n")
    validation = tmp_path / "validation.csv"
    validation.write_text("sentence,label\nthe goal,sport\n")
    base = ["--model_name_or_path", str(tiny_bert), "--output_dir", str(tmp_path / "e"), "--max_train_steps", "1"]
    files = ["--train_file", str(train), "--validation_file", str(validation)]

    failed_with(run("text_classification_loca.py", base + files, launcher=False), "no column 'text'", "sentence")
    failed_with(
        run("text_classification_loca.py", base + files + ["--text_column", "sentence"], launcher=False),
        "unknown labels ['sport']",
        str(train),
    )
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    failed_with(
        run(
            "text_classification_loca.py",
            base + ["--train_file", str(empty), "--validation_file", str(validation)],
            launcher=False,
        ),
        "empty",
        str(empty),
    )
    (tmp_path / "corpus2" / "sport").mkdir(parents=True)
    (tmp_path / "corpus2" / "sport" / "a.txt").write_text("   \n")
    failed_with(
        run("text_classification_loca.py", base + ["--train_dir", str(tmp_path / "corpus2")], launcher=False),
        "empty text file",
        "a.txt",
    )
    failed_with(
        run(
            "text_classification_loca.py",
            base + ["--train_dir", str(corpus), "--model_name_or_path", "someone/not-a-model"],
            launcher=False,
        ),
        "someone/not-a-model",
    )


# ----------------------------------------------------------------------------------------------------
# image classification


def test_image_classification_schedule_options_and_load(tiny_dinov2, idx_dir, tmp_path, torch_single_thread):
    out = tmp_path / "vit"
    ok(
        run(
            "image_classification_loca.py",
            [
                "--model_name_or_path",
                str(tiny_dinov2),
                "--idx_dir",
                str(idx_dir),
                "--output_dir",
                str(out),
                "--resolution",
                "28",
                "--schedule_variant",
                "joint",
                "--location_grad",
                "forward",
                *TRAIN,
            ],
        )
    )
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["schedule_variant"] == "joint" and config["location_grad"] == "forward"
    assert set(config["target_modules"]) == {"query", "value", "q_proj", "v_proj"}
    report = results(out)
    # 16 coefficients x (q, v) x 2 layers + the DINOv2 head (CLS and mean patch token: 64 x 3 + 3)
    assert report["trainable_parameters"] == 16 * 4 + 64 * 3 + 3 and report["eval_samples"] == 12

    from peft import PeftModel
    from transformers import AutoModelForImageClassification

    import loca_diffusion  # noqa: F401
    from loca_diffusion.offline import read_idx

    model = PeftModel.from_pretrained(
        AutoModelForImageClassification.from_pretrained(tiny_dinov2, num_labels=3), out
    ).eval()
    images = torch.from_numpy(read_idx(idx_dir / "t10k-images-idx3-ubyte.gz").astype(np.float32) / 255)
    mean, std = (
        torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1),
        torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1),
    )
    pixels = (images[:, None].expand(-1, 3, -1, -1) - mean) / std  # 28 px already: no resize
    with torch.no_grad():
        predicted = model(pixel_values=pixels).logits.argmax(-1)
    labels = torch.from_numpy(read_idx(idx_dir / "t10k-labels-idx1-ubyte.gz").astype(np.int64))
    assert report["eval_accuracy"] == pytest.approx((predicted == labels).float().mean().item())


def test_image_classification_clear_errors(tiny_dinov2, tmp_path):
    base = ["--model_name_or_path", str(tiny_dinov2), "--output_dir", str(tmp_path / "e"), "--max_train_steps", "1"]
    failed_with(
        run("image_classification_loca.py", base + ["--idx_dir", str(tmp_path / "nowhere")], launcher=False),
        "train-images-idx3-ubyte",
        "nowhere",
    )
    (tmp_path / "folder" / "cat").mkdir(parents=True)
    failed_with(
        run("image_classification_loca.py", base + ["--train_dir", str(tmp_path / "folder")], launcher=False),
        "has no images",
        "cat",
    )


# ----------------------------------------------------------------------------------------------------
# causal LM


def test_instruction_prompts_are_masked(tokenizer_dir, instructions):
    from transformers import AutoTokenizer

    from loca_diffusion.data.tasks import InstructionDataset, load_instructions, prompt_text

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    class Args:
        train_file, validation_file = map(str, instructions)
        dataset_name = dataset_config_name = cache_dir = max_train_samples = max_eval_samples = None
        instruction_column, input_column, output_column, seed = "instruction", "input", "output", 0

    train, _ = load_instructions(Args)
    data = InstructionDataset(train, tokenizer, max_length=24, max_target_length=8)
    for i, item in enumerate(data.items):
        ids, labels = item["input_ids"], item["labels"]
        assert len(ids) <= 24 and len(labels) == len(ids)
        n = item["prompt_length"]
        assert all(v == -100 for v in labels[:n]) and labels[n:] == ids[n:]
        assert tokenizer.decode(ids[n:-1]) == train["output"][i] and ids[-1] == tokenizer.eos_token_id
        # the prompt is the Alpaca frame around a (possibly cut) input
        assert tokenizer.decode(ids[:n]).startswith(
            tokenizer.decode(
                tokenizer(prompt_text(train["instruction"][i], ""), add_special_tokens=False)["input_ids"][:6]
            )
        )


def test_causal_lm_train_generate_and_load(tiny_llama, instructions, tmp_path, torch_single_thread):
    out = tmp_path / "lm"
    train_file, validation_file = instructions
    ok(
        run(
            "causal_lm_loca.py",
            [
                "--model_name_or_path",
                str(tiny_llama),
                "--train_file",
                str(train_file),
                "--validation_file",
                str(validation_file),
                "--output_dir",
                str(out),
                "--max_length",
                "48",
                "--target_modules",
                "q_proj,v_proj,down_proj",
                "--num_generation_samples",
                "2",
                "--max_new_tokens",
                "4",
                "--schedule_variant",
                "alternate_throughout",
                *TRAIN,
            ],
        )
    )
    report = results(out)
    assert report["trainable_parameters"] == 16 * 3 * 2 and 0 <= report["eval_rougeL"] <= 1
    generations = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and generations[0]["reference"] == "market shares"

    # the saved adapter reproduces the reported held-out loss
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import loca_diffusion  # noqa: F401
    from loca_diffusion.data.tasks import InstructionDataset, read_records

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    rows = read_records(validation_file)
    data = InstructionDataset({k: [r[k] for r in rows] for k in ("instruction", "input", "output")}, tokenizer, 48)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), out).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for item in data.items:
            ids = torch.tensor([item["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            labels = torch.tensor(item["labels"][1:])
            keep = labels != -100
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    assert report["eval_loss"] == pytest.approx(total / count, rel=1e-4)


def test_causal_lm_clear_errors(tiny_llama, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "output": "y"}\n')
    base = ["--model_name_or_path", str(tiny_llama), "--output_dir", str(tmp_path / "e"), "--max_train_steps", "1"]
    failed_with(
        run("causal_lm_loca.py", base + ["--train_file", str(bad), "--validation_file", str(bad)], launcher=False),
        "no column 'instruction'",
        "bad.jsonl",
    )
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"instruction": "x", "output": "y"}\n{"instruction": \n')
    failed_with(
        run(
            "causal_lm_loca.py", base + ["--train_file", str(broken), "--validation_file", str(broken)], launcher=False
        ),
        "line 2",
        "broken.jsonl",
    )


# ----------------------------------------------------------------------------------------------------
# helpers against independent references


def test_rouge_l_matches_the_longest_common_subsequence():
    from loca_diffusion.training.evaluation import rouge_l

    # LCS("the cat sat on the mat", "the cat lay on a mat") = the cat on mat: 4 of 6 tokens each way
    assert rouge_l(["the cat sat on the mat"], ["the cat lay on a mat"]) == pytest.approx(4 / 6)
    assert rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_read_idx_round_trip_and_errors(tmp_path):
    from loca_diffusion.offline import read_idx

    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    (tmp_path / "b").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "b")
    (tmp_path / "c").write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match="magic"):
        read_idx(tmp_path / "c")


@pytest.mark.parametrize("task, message", [("stsb", "regression"), ("sst3", "not a GLUE task")])
def test_glue_task_names_are_checked_before_any_download(task, message):
    import argparse

    from loca_diffusion.data.tasks import load_text_classification

    args = argparse.Namespace(train_dir=None, train_file=None, dataset_name=None, task_name=task)
    with pytest.raises(ValueError, match=message):
        load_text_classification(args)
