"""The offline pretrained models and data (issue 10), against independent references: the ONNX ViT converted
to transformers' Dinov2Model reproduces onnxruntime's backbone output; MiniLM through transformers reproduces
sentence-transformers' embeddings; BBC News is read in sorted class order with its headlines; the scripts run
on the real offline models. Needs ``make offline-models`` (the Makefile's test setup installs it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Conversions go to a fresh cache: the test exercises them instead of finding an old result."""
    path = tmp_path_factory.mktemp("loca-cache")
    previous = os.environ.get("LOCA_DIFFUSION_CACHE")
    os.environ["LOCA_DIFFUSION_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("LOCA_DIFFUSION_CACHE")
    else:
        os.environ["LOCA_DIFFUSION_CACHE"] = previous


def test_onnx_vit_converts_to_dinov2_matching_onnxruntime(cache, torch_single_thread):
    from transformers import AutoModel

    from loca_diffusion.offline import resolve_model
    from loca_diffusion.offline.models import vit_onnx
    from loca_diffusion.offline.onnx_dinov2 import onnx_backbone_output

    path = resolve_model("offline:vit-s14")
    assert Path(path).parent == cache
    model = AutoModel.from_pretrained(path).eval()
    assert type(model).__name__ == "Dinov2Model" and model.config.num_hidden_layers == 12
    pixels = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    reference = onnx_backbone_output(vit_onnx(), pixels)
    with torch.no_grad():
        ours = model(pixel_values=torch.from_numpy(pixels)).last_hidden_state.numpy()
    assert ours.shape == reference.shape == (1, 257, 384)
    assert np.abs(ours - reference).max() < 1e-4  # float32 round-off of 12 blocks (~1e-5 measured)
    assert resolve_model("offline:vit-s14") == path  # cached: no second conversion


def test_minilm_matches_sentence_transformers(torch_single_thread):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    from loca_diffusion.offline import resolve_model

    path = resolve_model("offline:minilm")
    sentences = ["Shares in the bank rose after strong profits.", "The striker scored twice in the final."]
    reference = SentenceTransformer(path, device="cpu").encode(sentences, convert_to_tensor=True)
    tokenizer, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].float()
    pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # its mean pooling + norm
    torch.testing.assert_close(pooled, reference, atol=1e-5, rtol=1e-4)


def test_bbc_news_sorted_classes_fixed_split_and_headlines():
    from loca_diffusion.offline import bbc_news
    from loca_diffusion.offline.data import bbc_news_dir

    data = bbc_news()
    classes = data["train"]["classes"]
    assert classes == sorted(p.name for p in bbc_news_dir().iterdir() if p.is_dir() and not p.name.startswith("_"))
    assert len(classes) == 5 and len(data["train"]["label"]) + len(data["validation"]["label"]) == 2225
    # every 5th article of each class is held out
    for label, name in enumerate(classes):
        n = len(list((bbc_news_dir() / name).glob("*.txt")))
        assert data["validation"]["label"].count(label) == n // 5
    first = (bbc_news_dir() / classes[0] / "001.txt").read_text(encoding="utf-8", errors="replace")
    assert data["train"]["headline"][0] == first.splitlines()[0].strip()
    assert data["train"]["text"][0].startswith(data["train"]["headline"][0])
    assert data["train"]["headline"][0] not in data["train"]["body"][0][:5]


def test_text_script_on_the_offline_minilm_and_bbc_news(tmp_path, torch_single_thread):
    out = tmp_path / "minilm"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    args = ["--model_name_or_path", "offline:minilm", "--dataset_name", "offline:bbc-news", "--output_dir", str(out),
            "--max_train_samples", "16", "--max_eval_samples", "10", "--max_length", "32", "--max_train_steps", "2",
            "--per_device_train_batch_size", "8", "--n_frequency", "64", "--report_to", "none"]
    result = subprocess.run([sys.executable, str(ROOT / "train" / "text_classification_loca.py"), *args],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((out / "all_results.json").read_text())
    # 64 coefficients x (query, value) x 6 layers + the 5-way head on 384 features
    assert report["trainable_parameters"] == 64 * 12 + 384 * 5 + 5 and report["eval_samples"] == 10
