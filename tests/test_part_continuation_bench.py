"""bench/part_continuation.py: the edit mix of the continued pretraining, and its report (made-up logs)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import part_continuation as bench
from loca_diffusion.data.prompts import CARTOONIZATION_PARAPHRASES
from loca_diffusion.embedded.edits import CARTOON_INSTRUCTION, PART_EDITS, PRETRAINING_EDITS, cartoon_targets


@pytest.mark.parametrize("weight", [4.0, 1.0])
def test_parts_are_drawn_weight_times_as_often_and_the_cartoon_never(weight):
    edits, weights = bench.edit_mix(weight)
    assert edits == PRETRAINING_EDITS and len(weights) == len(edits)
    names = [e.name for e in edits]
    assert "cartoon" not in names and CARTOON_INSTRUCTION not in {i for e in edits for i in e.instructions}
    parts = {e.name for e in PART_EDITS}
    assert parts and parts <= set(names)
    for name, w in zip(names, weights.tolist()):
        assert w == (weight if name in parts else 1.0), name


def test_the_cartoon_enters_only_the_upper_bound_probe_and_under_its_own_folder():
    edits, weights = bench.edit_mix(4.0, cartoon_weight=2.0)
    assert edits[:-1] == PRETRAINING_EDITS and edits[-1].name == "cartoon" and weights[-1] == 2.0
    instructions = edits[-1].instructions
    assert instructions[0] == CARTOON_INSTRUCTION and len(set(instructions)) == len(instructions)
    assert set(instructions) == {CARTOON_INSTRUCTION, *CARTOONIZATION_PARAPHRASES}
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert torch.equal(edits[-1].apply(x), cartoon_targets(x))
    assert bench.run_dir(4.0).name == "part-w4" and bench.run_dir(4.0, 2.0).name == "part-w4-cartoon2"
    assert bench.run_label("part-w4-cartoon2") == (
        "Upper bound: the cartoon itself in the mix (weight 2, parts 4)",
        True,
    )
    assert bench.run_label("part-w1") == ("Part weight 1 (the control: uniform mix)", False)


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
    upper = tmp_path / bench.PROBE / "part-w4-cartoon4"
    upper.mkdir()
    (upper / "run.log").write_text("step 0: invert 20.21/4.99, cartoon 15.90/15.61\n")
    (upper / "base_alone.json").write_text(
        json.dumps({"psnr": 18.5, "dinov2": 0.9, "ink_f1": 0.8, "identity_psnr": 15.6})
    )
    (tmp_path / bench.PROBE / "part-wx").mkdir()  # not a run's name: left out
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
    # the upper bound comes last, with its cartoon column, and sets no bar
    upper_md = md.split("## Upper bound: the cartoon itself in the mix (weight 4, parts 4)")[1]
    assert "## Part weight" not in upper_md and "| step | invert | cartoon |" in upper_md
    assert "| 0 | 20.21 (+15.22) | 15.90 (+0.29) |" in upper_md
    assert "trained on the cartoon, given the cartoon instruction: PSNR 18.50" in upper_md
    assert md.count("Bars:") == 1
    record = json.loads((tmp_path / "results" / "part_continuation.json").read_text())
    assert record["runs"]["part-w4"]["cartoonizer"][0]["eval_psnr"] == 17.5 and "machine" in record
