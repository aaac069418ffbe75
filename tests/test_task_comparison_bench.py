"""bench/task_comparison.py's bookkeeping on made-up finished runs (no training): the lr chosen with seed 0,
the fresh seeds' mean and std, partial results marked, and the ablation reusing LoCA's choice."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from bench import task_comparison as bench


@pytest.fixture
def finished(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    monkeypatch.setattr(bench, "FINISHED_ONLY", True)

    def write(tag: str, accuracy: float) -> None:
        (tmp_path / tag).mkdir(parents=True)
        result = dict(
            eval_accuracy=accuracy,
            eval_loss=1 - accuracy,
            eval_macro_f1=accuracy,
            trainable_parameters=7,
            train_seconds=2.0,
            peak_rss_mib=100.0,
        )
        (tmp_path / tag / "all_results.json").write_text(json.dumps(result))

    return write


def test_comparison_picks_the_lr_by_seed_0_and_reports_fresh_seeds(finished):
    finished("minilm/loca-lr0.003-s0", 0.5)
    finished("minilm/loca-lr0.03-s0", 0.9)  # the better candidate
    for seed, accuracy in ((1, 0.8), (2, 0.9), (3, 0.7)):
        finished(f"minilm/loca-lr0.03-s{seed}", accuracy)
        finished(f"minilm/loca-lr0.003-s{seed}", 0.1)  # not the chosen lr: ignored
    finished("minilm/none-lr0.01-s1", 0.6)  # head only: no search; one seed of three finished

    rows = bench.compare("minilm", seeds=3)
    assert rows["LoCA"]["lr"] == 0.03 and rows["LoCA"]["search"] == {"0.003": 0.5, "0.03": 0.9}
    assert [r["eval_accuracy"] for r in rows["LoCA"]["runs"]] == [0.8, 0.9, 0.7]
    assert rows["FourierFT"]["runs"] == [] and rows["FourierFT"]["lr"] is None

    lines = bench.table(rows, ["eval_accuracy"])
    loca = next(line for line in lines if line.startswith("| LoCA"))
    assert f"{statistics.mean([0.8, 0.9, 0.7]):.4f} ± {statistics.stdev([0.8, 0.9, 0.7]):.4f}" in loca
    assert "(n=1)" in next(line for line in lines if line.startswith("| head only"))
    assert "not run yet" in next(line for line in lines if line.startswith("| LoRA"))


def test_ablation_reuses_the_comparison_runs(finished):
    for seed in (1, 2, 3):
        finished(f"minilm/loca-lr0.03-s{seed}", 0.8)
        finished(f"minilm-ablation/fixed-lr0.03-s{seed}", 0.7)
        finished(f"minilm-ablation/alternate_throughout-lr0.01-s{seed}", 0.6)  # another lr: not this ablation's
    rows = bench.ablate("minilm", seeds=3, lr=0.03)
    assert [r["eval_accuracy"] for r in rows["LoCA (alternating, central differences)"]["runs"]] == [0.8] * 3
    assert [r["eval_accuracy"] for r in rows["V1: fixed random locations"]["runs"]] == [0.7] * 3
    assert rows["V2: alternating throughout (no T_s)"]["runs"] == []
    assert rows["V3: joint (both every step until T_s)"]["runs"] == []


def test_ship_copies_the_chosen_loca_seed_1_run_and_names_the_shipped_base(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path / "work")
    run = tmp_path / "work" / "cartoonizer" / "loca-lr0.03-s1"
    run.mkdir(parents=True)
    training_copy = str(bench.EMBEDDED / "base_fp32")
    files = {
        "adapter_config.json": json.dumps({"base_model_name_or_path": training_copy}),
        "adapter_model.safetensors": "weights",
        "README.md": f"---\nbase_model: {training_copy}\n---\n",
        "locations.png": "png",
        "samples.png": "png",
    }
    for name, text in files.items():
        (run / name).write_text(text)
    rows = {"LoCA": {"lr": 0.03, "runs": [{"eval_psnr": 20.0}]}}
    bench.ship_adapter("cartoonizer", rows, tmp_path / "shipped")
    shipped = {f.name: f.read_text() for f in (tmp_path / "shipped").iterdir()}
    assert set(shipped) == set(files)
    assert json.loads(shipped["adapter_config.json"])["base_model_name_or_path"] == "assets/tiny-instruct-pix2pix"
    assert "base_model: assets/tiny-instruct-pix2pix" in shipped["README.md"]
    assert shipped["adapter_model.safetensors"] == "weights"
    with pytest.raises(SystemExit, match="seed-1 run is not finished"):
        bench.ship_adapter("cartoonizer", {"LoCA": {"lr": None, "runs": []}}, tmp_path / "other")


def test_cartoonizer_lr_is_chosen_on_training_views_not_on_the_reported_photos(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    monkeypatch.setattr(bench, "FINISHED_ONLY", True)
    # held-out PSNR prefers 0.1, the training-view PSNR prefers 0.01: the choice must follow the latter
    for lr, held_out, selection in ((0.01, 16.0, 17.5), (0.03, 16.5, 17.0), (0.1, 17.0, 16.0)):
        run = tmp_path / bench.run_tag("cartoonizer", "loca", lr, 0)
        run.mkdir(parents=True)
        (run / "all_results.json").write_text(json.dumps({"eval_psnr": held_out, "selection_psnr": selection}))
    best, search = bench.search_lr("cartoonizer", "loca")
    assert best == 0.01 and search[0.1]["eval_psnr"] == 17.0
    # a selection run from before the selection score existed is not judged by the held-out score
    lora = tmp_path / bench.run_tag("cartoonizer", "lora", 0.003, 0)
    lora.mkdir(parents=True)
    (lora / "all_results.json").write_text(json.dumps({"eval_psnr": 16.0}))
    monkeypatch.setattr(bench, "cartoonizer_selection_psnr", lambda pipe: 15.5)
    import loca_diffusion.embedded.evaluate as evaluate

    merged = []
    monkeypatch.setattr(evaluate, "merged_adapter_pipeline", lambda base, adapter: merged.append((base, adapter)))
    result = bench.add_selection_score(bench.TASKS["cartoonizer"], {"eval_psnr": 16.0}, lora)
    assert result["selection_psnr"] == 15.5
    # scored on the base the run trained on, not on the shipped assets (they differ while a new base is built)
    args = bench.TASKS["cartoonizer"]["args"]
    trained_on = args[args.index("--pretrained_model_name_or_path") + 1]
    assert merged == [(bench.ROOT / trained_on, lora)]
    assert json.loads((lora / "all_results.json").read_text())["selection_psnr"] == 15.5


def test_an_unfinished_run_is_waited_for_only_while_its_driver_lives(tmp_path, monkeypatch):
    """A run folder left by a killed driver is trained again at once; one a live driver is training is waited
    for (the ablation and the comparison share runs) until its results appear."""
    monkeypatch.setattr(bench, "WORK", tmp_path)
    monkeypatch.setattr(bench.time, "sleep", lambda s: None)
    task = dict(args=[], script="unused.py")
    trained = []
    real_popen = subprocess.Popen  # bench.subprocess is the one subprocess module

    def fake_popen(command, stdout, **kwargs):  # stands in for the training script: writes its results
        out = tmp_path / command[command.index("--output_dir") + 1]
        trained.append(out.name)
        (out / "all_results.json").write_text(json.dumps(dict(eval_accuracy=0.9)))
        return real_popen([sys.executable, "-c", "pass"])

    monkeypatch.setattr(bench.subprocess, "Popen", fake_popen)

    stale = tmp_path / "stale"
    stale.mkdir()
    dead = real_popen([sys.executable, "-c", "pass"])
    dead.wait()  # reaped: its PID names no process now
    (stale / bench.DRIVER_PID).write_text(str(dead.pid))
    assert not bench.driver_alive(stale)
    assert bench.run_one(task, "loca", 0.01, 1, [], "stale")["eval_accuracy"] == 0.9
    assert trained == ["stale"]

    busy = tmp_path / "busy"
    busy.mkdir()
    other = real_popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (busy / bench.DRIVER_PID).write_text(str(other.pid))
        assert bench.driver_alive(busy)
        checks = []

        def finish_after_a_few_checks(seconds):  # the other driver writes its results on the third check
            checks.append(seconds)
            if len(checks) == 3:
                (busy / "all_results.json").write_text(json.dumps(dict(eval_accuracy=0.7)))

        monkeypatch.setattr(bench.time, "sleep", finish_after_a_few_checks)
        assert bench.run_one(task, "loca", 0.01, 1, [], "busy")["eval_accuracy"] == 0.7
        assert len(checks) == 3 and trained == ["stale"]  # waited, never trained it itself
    finally:
        other.kill()
        other.wait()
