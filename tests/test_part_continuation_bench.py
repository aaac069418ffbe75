"""bench/part_continuation.py: the edit mix of the continued pretraining, and its report (made-up logs)."""

from __future__ import annotations

import json

import pytest

from bench import part_continuation as bench
from loca_diffusion.embedded.edits import PART_EDITS, PRETRAINING_EDITS


@pytest.mark.parametrize("weight", [4.0, 1.0])
def test_parts_are_drawn_weight_times_as_often_and_the_cartoon_never(weight):
    weights = bench.edit_weights(weight)
    assert len(weights) == len(PRETRAINING_EDITS)
    names = [e.name for e in PRETRAINING_EDITS]
    assert "cartoon" not in names  # the mix is over the pretraining edits only
    parts = {e.name for e in PART_EDITS}
    assert parts and parts <= set(names)
    for name, w in zip(names, weights.tolist()):
        assert w == (weight if name in parts else 1.0), name


def test_report_reads_the_logs_and_tables_the_gains(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "ROOT", tmp_path)
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results" / "part_continuation")
    run = tmp_path / bench.PROBE / "part-w4"
    (run / "cartoonizer" / "loca-s1").mkdir(parents=True)
    (run / "run.log").write_text(
        "step 0: black_outlines 17.26/16.34, invert 20.21/4.99\n"
        "step 50 loss 0.1 1.2 step/s\n"  # a loss line is not an evaluation
        "step 500: black_outlines 17.62/16.34, invert 20.25/4.99\n"
    )
    (run / "cartoonizer" / "loca-s1" / "all_results.json").write_text(
        json.dumps({"eval_psnr": 17.5, "eval_dinov2": 0.9, "eval_ink_f1": 0.3, "seed": 1})
    )
    (run / "base_alone.json").write_text(
        json.dumps({"psnr": 15.9, "dinov2": 0.86, "ink_f1": 0.74, "identity_psnr": 15.6})
    )
    evals = bench.read_evaluations(run / "run.log")
    assert evals == {
        0: {"black_outlines": (17.26, 16.34), "invert": (20.21, 4.99)},
        500: {"black_outlines": (17.62, 16.34), "invert": (20.25, 4.99)},
    }
    bench.report()
    md = (tmp_path / "results" / "part_continuation.md").read_text()
    assert "## Part weight 4 (parts of a cartoon drawn 4x as often)" in md
    assert "| 500 | 20.25 (+15.26) |" in md and "17.62 (+1.28)" in md
    assert "PSNR 17.50 (mean 17.50" in md
    assert "Bars: output = input + 2 = 17.60, base + 2 = 17.90." in md
    record = json.loads((tmp_path / "results" / "part_continuation.json").read_text())
    assert record["runs"]["4"]["cartoonizer"][0]["eval_psnr"] == 17.5 and "machine" in record
