"""bench/embedded_quality.py --sample_spread: each sampling seed scored on its own, and the pixel mean of the
samples scored as one output (made-up samples, no sampling)."""

from __future__ import annotations

import json

import torch

from bench import embedded_quality as bench
from loca_diffusion.embedded.edits import cartoon_targets
from loca_diffusion.embedded.evaluate import cartoon_scores


def test_sample_spread_scores_each_seed_and_the_mean_of_the_samples(tmp_path, monkeypatch):
    views = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    shift = {0: 0.2, 1: -0.2, 2: 0.0}  # seeds 0 and 1 are off by the same amount either way

    def fake_edit(pipe, images, instructions, seed=0):
        assert pipe == "merged" and len(instructions) == len(images)
        return (images * 0.5 + 0.25 + shift[seed]).clamp(0, 1)

    monkeypatch.setattr(bench, "load_held_out", lambda: (["a", "b"], views))
    monkeypatch.setattr(bench, "DinoV2Similarity", lambda: None)
    monkeypatch.setattr(bench, "merged_adapter_pipeline", lambda model, adapter: "merged")
    monkeypatch.setattr(bench, "run_edit", fake_edit)

    result = bench.write_sample_spread(tmp_path / "spread", "base", "adapter", samples=3)
    rows = result["rows"]
    targets = cartoon_targets(views)
    # the mean of the three samples is the unshifted edit (no clamping happens at these values)
    unshifted = cartoon_scores(views * 0.5 + 0.25, targets)
    assert abs(rows["pixel mean of the 3 samples"]["psnr"] - unshifted["psnr"]) < 1e-4
    assert abs(rows["sample, seed 2"]["psnr"] - rows["pixel mean of the 3 samples"]["psnr"]) < 1e-4
    assert rows["sample, seed 0"]["psnr"] != rows["sample, seed 1"]["psnr"]  # each seed scored on its own
    assert rows["output = input"]["psnr"] == cartoon_scores(views, targets)["psnr"]
    assert json.loads((tmp_path / "spread.json").read_text())["adapter"] == "adapter"
    assert "| pixel mean of the 3 samples |" in (tmp_path / "spread.md").read_text()
