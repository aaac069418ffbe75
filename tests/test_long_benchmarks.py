"""Issue 18's benchmark code on tiny inputs (no training): the validation split carved from the training data and
used for the lr selection, never the test split; the paired statistics against scipy; the location movement on a
hand-built adapter; the budget of a LoRA rank; and the long tasks at the issue's numbers."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from bench import location_movement as lm
from bench import stats
from bench import task_comparison as bench
from loca_diffusion.data.splits import add_split_arguments, stratified_subset, task_splits

ROOT = Path(__file__).resolve().parents[1]
LONG = ("minilm-long", "bbc-headlines-long", "vit-long", "minilm-long-r1", "minilm-long-r8")


def split_args(**kw) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_split_arguments(p)
    args = p.parse_args([])
    return argparse.Namespace(**(vars(args) | dict(max_train_samples=None, max_eval_samples=None, seed=3) | kw))


def corpus(n: int, offset: int = 0) -> dict:
    return {"text": [f"doc{i + offset}" for i in range(n)], "label": [(i + offset) % 5 for i in range(n)]}


# ----------------------------------------------------------------------------------------------------
# splits


def test_validation_is_carved_from_train_disjoint_from_test_and_fixed():
    train, held_out = corpus(180), corpus(45, offset=180)  # BBC-like: a small held-out split, pooled below
    args = split_args(test_size=100, validation_from_train=25, eval_split="validation")
    t, validation, sizes = task_splits(train, held_out, args)
    _, test, test_sizes = task_splits(train, held_out, split_args(**(vars(args) | {"eval_split": "test"})))
    ids = [set(s["text"]) for s in (t, validation, test)]
    assert ids[0].isdisjoint(ids[1]) and ids[0].isdisjoint(ids[2]) and ids[1].isdisjoint(ids[2])
    assert len(ids[0] | ids[1] | ids[2]) == 225  # nothing lost, nothing twice
    assert sizes == dict(eval_split="validation", train_samples=100, validation_samples=25, test_samples=100)
    assert test_sizes["eval_split"] == "test" and len(test["text"]) == 100
    assert np.bincount(validation["label"]).tolist() == [5] * 5  # stratified
    # the same examples whatever --seed (every run and method sees the same validation and test split)
    _, again, _ = task_splits(train, held_out, split_args(**(vars(args) | {"seed": 11})))
    assert again["text"] == validation["text"]


def test_without_the_new_flags_the_splits_are_as_before():
    train, held_out = corpus(50), corpus(20, offset=50)
    t, evaluation, sizes = task_splits(train, held_out, split_args())
    assert t == train and evaluation == held_out and sizes["validation_samples"] == 0
    with pytest.raises(ValueError, match="validation_from_train"):
        task_splits(train, held_out, split_args(eval_split="validation"))


def test_stratified_subset_counts():
    labels = [0] * 50 + [1] * 30 + [2] * 20
    chosen = stratified_subset(labels, 10)
    assert np.bincount(np.asarray(labels)[chosen]).tolist() == [5, 3, 2] and len(set(chosen)) == 10


def test_the_text_script_reads_the_split_flags(tmp_path):
    for topic in ("a", "b"):
        (tmp_path / topic).mkdir()
        for i in range(20):
            (tmp_path / topic / f"{i}.txt").write_text(f"{topic} text {i}\n")
    spec = importlib.util.spec_from_file_location("tc", ROOT / "train" / "text_classification_loca.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    from loca_diffusion.data.tasks import load_text_classification

    argv = ["--train_dir", str(tmp_path), "--test_size", "10", "--validation_from_train", "6"]
    selection = script.parse_args(argv + ["--eval_split", "validation"])
    final = script.parse_args(argv + ["--eval_split", "test"])
    t, v, _, sizes = load_text_classification(selection, with_sizes=True)
    t2, test, _, _ = load_text_classification(final, with_sizes=True)
    assert t["text"] == t2["text"] and len(v["text"]) == 6 and len(test["text"]) == 10
    assert set(v["text"]).isdisjoint(test["text"]) and set(t["text"]).isdisjoint(v["text"] + test["text"])
    assert sizes["eval_split"] == "validation" and sizes["train_samples"] == 24


# ----------------------------------------------------------------------------------------------------
# the driver: selection on validation, reported runs on test


@pytest.fixture
def finished(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    monkeypatch.setattr(bench, "FINISHED_ONLY", True)

    def write(tag: str, accuracy: float, split: str) -> None:
        (tmp_path / tag).mkdir(parents=True)
        result = dict(eval_accuracy=accuracy, eval_loss=0.1, eval_macro_f1=accuracy, eval_split=split,
                      trainable_parameters=7, train_seconds=2.0, peak_rss_mib=100.0)  # fmt: skip
        (tmp_path / tag / "all_results.json").write_text(json.dumps(result))

    return write


def test_selection_runs_evaluate_on_validation_and_reported_runs_on_test():
    task = bench.TASKS["minilm-long"]
    selection = bench.run_command(task, "loca", 0.01, 0, [], Path("x"))
    final = bench.run_command(task, "loca", 0.01, 3, ["--schedule_variant", "fixed"], Path("x"))
    assert selection[selection.index("--eval_split") + 1] == "validation" and selection.count("--eval_split") == 1
    assert final[final.index("--eval_split") + 1] == "test" and final.count("--eval_split") == 1
    head = bench.run_command(task, "none", 0.03, 1, [], Path("x"))  # head only searches the head's lr
    assert head[len(head) - 1 - head[::-1].index("--head_learning_rate") + 1] == "0.03"


def test_the_lr_is_chosen_by_the_validation_metric(finished):
    for lr, accuracy in ((0.003, 0.5), (0.01, 0.9), (0.03, 0.7)):
        finished(f"minilm-long/loca-lr{lr:g}-s0", accuracy, "validation")
    assert bench.search_lr("minilm-long", "loca")[0] == 0.01


def test_a_selection_run_evaluated_on_test_is_refused(finished):
    finished("minilm-long/lora-lr0.001-s0", 0.5, "test")
    with pytest.raises(RuntimeError, match="validation split"):
        bench.search_lr("minilm-long", "lora")


def test_comparison_reports_paired_differences(finished):
    for a, lrs in bench.TASKS["minilm-long"]["lrs"].items():
        for i, lr in enumerate(lrs):
            finished(f"minilm-long/{a}-lr{lr:g}-s0", 0.5 + 0.1 * i, "validation")
    for s in range(1, 6):
        finished(f"minilm-long/loca-lr0.03-s{s}", 0.90 + 0.01 * s, "test")
        finished(f"minilm-long/lora-lr0.01-s{s}", 0.85 + 0.01 * s + 0.002 * (s % 2), "test")
    rows = bench.compare("minilm-long", seeds=5)
    assert [r["seed"] for r in rows["LoCA"]["runs"]] == [1, 2, 3, 4, 5]
    pairs = {(p["better"], p["other"]): p for p in bench.pair_rows(rows, bench.PAIRS, "eval_accuracy")}
    loca_lora = pairs[("LoCA", "LoRA")]
    assert loca_lora["n"] == 5 and loca_lora["label"] == stats.REPRODUCED and loca_lora["low"] > 0
    assert pairs[("LoCA", "FourierFT")]["n"] == 0  # FourierFT's reported runs are missing
    assert "not run yet" in "\n".join(bench.pair_table(list(pairs.values()), "eval_accuracy"))


# ----------------------------------------------------------------------------------------------------
# statistics


def test_paired_difference_matches_scipy_and_a_hand_computation():
    from scipy.stats import ttest_rel

    a = {1: 0.91, 2: 0.88, 3: 0.93, 4: 0.90, 5: 0.89}
    b = {1: 0.87, 2: 0.88, 3: 0.90, 4: 0.86, 5: 0.90, 6: 0.5}  # seed 6 has no partner: left out
    r = stats.paired_difference(a, b)
    d = [0.04, 0.0, 0.03, 0.04, -0.01]
    assert r["n"] == 5 and r["mean"] == pytest.approx(0.02)
    # hand: sd of d = sqrt(sum((d - 0.02)^2) / 4) = sqrt(0.002 / 4); t_{0.975, 4} = 2.776445
    sd = math.sqrt(sum((x - 0.02) ** 2 for x in d) / 4)
    half = 2.7764451051977987 * sd / math.sqrt(5)
    assert (r["low"], r["high"]) == pytest.approx((0.02 - half, 0.02 + half))
    reference = ttest_rel([a[s] for s in range(1, 6)], [b[s] for s in range(1, 6)])
    assert r["t"] == pytest.approx(reference.statistic)
    assert r["label"] == stats.UNDECIDED  # the CI holds zero
    assert stats.label(0.01, 0.02) == stats.REPRODUCED and stats.label(-0.02, -0.01) == stats.NOT_REPRODUCED


def test_mean_ci_of_one_value_is_undecided():
    mean, low, high = stats.mean_ci([0.7])
    assert mean == 0.7 and math.isnan(low) and stats.label(low, high) == stats.UNDECIDED


# ----------------------------------------------------------------------------------------------------
# location movement


def test_movement_of_a_hand_built_layer():
    initial = torch.tensor([[0, 1, 2, 3], [0, 1, 2, 3]])
    final = torch.tensor([[0, 2, 2, 3], [0, 1, 5, 3]])  # locations 1 and 2 moved
    coefficients = torch.tensor([1.0, 2.0, 2.0, 1.0])
    m = lm.layer_movement(initial, final, coefficients)
    assert m["moved"] == 2 and m["moved_share"] == 0.5
    assert m["moved_energy_share"] == pytest.approx(8 / 10)  # (4 + 4) / (1 + 4 + 4 + 1)
    assert m["energy_ratio"] == pytest.approx(4.0)  # mean 4 vs mean 1: the moved carry more


def test_movement_of_a_saved_adapter_recomputes_the_initial_locations(tmp_path):
    from safetensors.torch import save_file

    from loca_diffusion.tuners.loca.layer import initial_location_indices

    name, (d_out, d_in), n = "encoder.layer.0.query", (6, 5), 8
    start = initial_location_indices(7, name, d_out, d_in, n)
    end = start.clone()
    end[0, :3] = (end[0, :3] + 1) % d_out  # three moved
    coefficients = torch.tensor([3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    key = f"base_model.model.{name}"
    tensors = {f"{key}.loca_coefficients": coefficients, f"{key}.loca_locations": end}
    tensors[f"{key}.loca_shape"] = torch.tensor([d_out, d_in])
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LOCA", "random_loc_seed": 7}))
    m = lm.adapter_movement(tmp_path)[name]
    assert m["moved"] == 3 and m["energy_ratio"] == pytest.approx(9.0)
    summary = lm.summarize([lm.adapter_movement(tmp_path)] * 2)
    assert summary[name]["moved_share"] == pytest.approx(3 / 8) and summary[name]["runs"] == 2
    assert "| encoder.layer.0.query | 8 | 2 | 0.375 |" in "\n".join(lm.table(summary))


def test_initial_locations_are_those_of_a_fresh_layer():
    from peft import get_peft_model

    from loca_diffusion.tuners.loca.config import LoCAConfig
    from loca_diffusion.tuners.loca.layer import initial_location_indices
    from loca_diffusion.tuners.loca.utils import iter_loca_layers

    model = nn.Sequential()
    model.add_module("query", nn.Linear(12, 10))
    model.add_module("value", nn.Linear(12, 10))
    peft_model = get_peft_model(model, LoCAConfig(target_modules=["query", "value"], n_frequency=9, random_loc_seed=5))
    for _, layer in iter_loca_layers(peft_model):
        expected = initial_location_indices(5, layer.loca_layer_name, 10, 12, 9)
        assert torch.equal(layer.get_locations("default"), expected)


# ----------------------------------------------------------------------------------------------------
# budgets and the tasks at the issue's numbers


def test_budget_of_a_lora_rank():
    from loca_diffusion.training.args import build_adapter_config, lora_equivalent_n_frequency

    model = nn.Sequential()
    model.add_module("query", nn.Linear(384, 384))
    model.add_module("value", nn.Linear(384, 384))
    assert [lora_equivalent_n_frequency(model, ["query", "value"], r) for r in (1, 2, 8)] == [768, 1536, 6144]
    loca = build_adapter_config("loca", model, ["query", "value"], n_frequency=5, budget_lora_rank=2)
    lora = build_adapter_config("lora", model, ["query", "value"], match_budget=True, budget_lora_rank=2)
    assert loca.n_frequency == 1536 and lora.r == 2  # both 2 * 768 * 2 = 3,072 parameters


def flag(args: list[str], name: str) -> str:
    return args[len(args) - 1 - args[::-1].index(name) + 1]


@pytest.mark.parametrize("name", LONG)
def test_long_tasks_meet_the_issue_numbers(name):
    task = bench.TASKS[name]
    args = task["args"]
    steps = int(flag(args, "--max_train_steps"))
    assert steps >= 1000 and int(flag(args, "--location_training_steps")) == steps // 10
    assert task["seeds"] == 5
    assert all(len(lrs) >= 3 for lrs in task["lrs"].values())
    assert len({len(lrs) for lrs in task["lrs"].values()}) == 1  # the same search budget per method
    assert task["selection_args"] == ["--eval_split", "validation"] and task["final_args"] == ["--eval_split", "test"]
    assert int(flag(args, "--validation_from_train")) > 0
    test_size = int(flag(args, "--test_size" if "--test_size" in args else "--max_eval_samples"))
    assert test_size >= 1000
    if "--max_train_samples" in args:  # Fashion-MNIST: plenty
        assert int(flag(args, "--max_train_samples")) >= 2000
    else:  # BBC News (2,225 articles): all of them, 1,000 for test
        assert test_size == 1000 and 2225 - test_size - int(flag(args, "--validation_from_train")) >= 1000
    if "ablation" not in name and name in ("minilm-long", "vit-long", "bbc-headlines-long"):
        assert set(task["methods"].values()) == {"none", "loca", "fourierft", "lora"}


def test_the_sweep_covers_ranks_1_2_8_of_one_task():
    sweep = bench.TASKS["minilm-long"]["sweep"]
    assert sorted(sweep) == [1, 2, 8] and sweep[2] == "minilm-long"
    for rank, name in sweep.items():
        assert flag(bench.TASKS[name]["args"], "--budget_lora_rank") == str(rank)
        assert {"loca", "fourierft", "lora"} <= set(bench.TASKS[name]["lrs"])


def test_sweep_plot_is_written(tmp_path):
    runs = [dict(seed=s, eval_accuracy=0.8 + 0.01 * s) for s in range(1, 6)]
    result = {r: dict(rows={m: dict(runs=runs) for m in ("LoCA", "FourierFT", "LoRA")}) for r in (1, 2, 8)}
    bench.sweep_plot(result, "eval_accuracy", tmp_path / "sweep.png")
    assert (tmp_path / "sweep.png").stat().st_size > 1000
