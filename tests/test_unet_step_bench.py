"""bench/unet_step.py in its quick mode (reduced UNet): JSON schema, one record per method and B, and the
model-sharing trick the benchmark relies on (frozen base tensors shared, merges never touch the base)."""

import json

import pytest
import torch

from bench.unet_step import (
    LORA_RANKS,
    QUICK_FREQUENCIES,
    QUICK_UNET,
    TARGET_MODULES,
    Inputs,
    TrainCase,
    adapted,
    build_unet,
    clone_sharing,
    count_unet,
    is_target_weight,
    main,
    unet_forward,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("unet_step") / "unet_step_quick.json"
    main(["--quick", "--device", "cpu", "--repeats", "1", "--warmup", "1", "--json", str(path)])
    return path, json.loads(path.read_text())


def test_json_top_level(quick_run):
    _, result = quick_run
    assert {"machine", "setup", "records", "summary", "targets", "max_rss_bytes", "wall_s"} <= set(result)
    assert result["machine"]["device"] == "cpu" and "cpu" in result["machine"]
    setup = result["setup"]
    assert setup["quick"] is True
    assert setup["n_frequencies"] == list(QUICK_FREQUENCIES)
    assert setup["lora_ranks"] == list(LORA_RANKS)
    assert setup["target_modules"] == TARGET_MODULES
    assert setup["command"].startswith("python -m bench.unet_step --quick")
    assert (setup["unet_parameters"], setup["target_layers"]) == count_unet(QUICK_UNET)
    assert setup["target_layers"] > 0


def test_records_schema(quick_run):
    _, result = quick_run
    for r in result["records"]:
        assert {"mode", "method", "n_frequency", "rank", "step_ms", "peak_bytes"} <= set(r), r
        assert r["mode"] in ("train", "inference")
        assert isinstance(r["step_ms"], float) and r["step_ms"] > 0
        assert isinstance(r["peak_bytes"], int) and r["peak_bytes"] >= r["persistent_bytes"] > 0
        assert r["peak_bytes"] == r["persistent_bytes"] + r["transient_bytes"]
        assert len(r["samples_ms"]) == result["setup"]["repeats"]
        assert sorted(r["samples_ms"])[len(r["samples_ms"]) // 2] == pytest.approx(r["step_ms"], abs=0.1)
        if r["method"].startswith(("loca", "fourierft")):
            assert r["n_frequency"] in QUICK_FREQUENCIES and r["rank"] is None, r
        elif r["method"].startswith("lora"):
            assert r["rank"] in LORA_RANKS and r["n_frequency"] is None, r
        else:
            assert r["method"] == "base" and r["n_frequency"] is None and r["rank"] is None, r


def test_one_record_per_method_and_budget(quick_run):
    _, result = quick_run
    keys = [(r["mode"], r["method"], r["n_frequency"], r["rank"]) for r in result["records"]]
    assert len(keys) == len(set(keys))
    b0 = QUICK_FREQUENCIES[0]
    expected_train = (
        {("train", "loca", b, None) for b in QUICK_FREQUENCIES}
        | {("train", "fourierft", b, None) for b in QUICK_FREQUENCIES}
        | {("train", "lora", None, r) for r in LORA_RANKS}
        | {("train", "loca_location_phase", b0, None)}
    )
    expected_inference = {("inference", "base", None, None), ("inference", "lora_fused", None, 16)} | {
        ("inference", m, b, None) for m in ("loca_fused", "loca_eval") for b in QUICK_FREQUENCIES
    }
    assert set(keys) == expected_train | expected_inference


def test_phases_and_trainable_parameter_counts(quick_run):
    _, result = quick_run
    layers = result["setup"]["target_layers"]
    train = {(r["method"], r["n_frequency"] or r["rank"]): r for r in result["records"] if r["mode"] == "train"}
    for b in QUICK_FREQUENCIES:
        assert train[("loca", b)]["phase"] == "coefficients"
        assert train[("loca", b)]["trainable_params"] == 3 * b * layers  # B coefficients + 2B locations per layer
        assert train[("fourierft", b)]["trainable_params"] == b * layers
    assert train[("loca_location_phase", QUICK_FREQUENCIES[0])]["phase"] == "locations"
    assert train[("lora", 16)]["trainable_params"] == 4 * train[("lora", 4)]["trainable_params"]


def test_summary_targets_and_markdown(quick_run):
    path, result = quick_run
    assert [row["n_frequency"] for row in result["summary"]] == list(QUICK_FREQUENCIES)
    for row in result["summary"]:
        for key in ("loca_over_lora16", "loca_over_fourierft", "memory_loca_over_lora16", "fused_over_base"):
            assert row[key] > 0
    assert len(result["targets"]) == 5 and all(isinstance(t["met"], bool) for t in result["targets"])
    small, large = sorted(QUICK_FREQUENCIES)
    assert [(t["n_frequency"], t["limit"]) for t in result["targets"]][-2:] == [(small, 1.01), (large, 1.10)]
    md = path.with_suffix(".md").read_text()
    assert "Machine:" in md and "Command: `python -m bench.unet_step --quick" in md
    for column in ("LoCA/LoRA16", "LoCA/FourierFT", "mem LoCA/LoRA16", "fused/base"):
        assert column in md


def test_clones_share_the_frozen_base_and_merging_leaves_it_alone():
    unet = build_unet(QUICK_UNET, CPU)
    reference = {name: p.detach().clone() for name, p in unet.named_parameters()}
    shared = clone_sharing(unet)
    assert all(a is b for a, b in zip(unet.parameters(), shared.parameters()))
    private = clone_sharing(unet, is_target_weight)
    for (name, a), b in zip(unet.named_parameters(), private.parameters()):
        assert (a is not b) if is_target_weight(name) else (a is b), name

    fused = adapted(unet, "loca", n_frequency=QUICK_FREQUENCIES[0], private_targets=True)
    fused.merge_adapter()
    unmerged = adapted(unet, "loca", n_frequency=QUICK_FREQUENCIES[0])
    for name, p in unet.named_parameters():
        assert torch.equal(p, reference[name]), f"merging changed the shared base tensor {name}"
    for model in (unet, fused, unmerged):
        model.eval()
    with torch.no_grad():
        ys = [unet_forward(m, Inputs(QUICK_UNET, CPU)) for m in (unet, fused, unmerged)]  # same timestep each
    torch.testing.assert_close(ys[1], ys[2], rtol=1e-4, atol=1e-4)  # same adapter, merged or not
    assert not torch.allclose(ys[0], ys[1], atol=1e-4)  # init_weights=False: the adapter is non-trivial


def test_training_steps_leave_the_base_untouched():
    unet = build_unet(QUICK_UNET, CPU)
    reference = {name: p.detach().clone() for name, p in unet.named_parameters()}
    inputs = Inputs(QUICK_UNET, CPU)
    for case in (
        TrainCase(unet, "loca", n_frequency=QUICK_FREQUENCIES[0]),
        TrainCase(unet, "loca_location_phase", n_frequency=QUICK_FREQUENCIES[0]),
        TrainCase(unet, "fourierft", n_frequency=QUICK_FREQUENCIES[0]),
        TrainCase(unet, "lora", rank=4),
    ):
        adapter = {n: p.detach().clone() for n, p in case.model.named_parameters() if p.requires_grad}
        case.step_fn(inputs)()
        changed = [n for n, p in case.model.named_parameters() if p.requires_grad and not torch.equal(p, adapter[n])]
        assert changed, f"{case.name}: the optimizer step updated no adapter parameter"
    for name, p in unet.named_parameters():
        assert torch.equal(p, reference[name]), name


def test_round_robin_reshuffles_the_order_and_keeps_every_sample():
    """No step may always follow the same neighbour (a predecessor's freed transient slows its successor)."""
    from bench.timing import time_round_robin

    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in "abcde"}
    samples = {}
    medians = time_round_robin(steps, repeats=4, device=CPU, warmup=1, samples=samples)
    assert calls[:5] == list("abcde")  # warm-up in the given order
    rounds = [tuple(calls[5 + 5 * i : 10 + 5 * i]) for i in range(4)]
    assert all(sorted(r) == list("abcde") for r in rounds)
    assert len(set(rounds)) > 1
    assert {name: len(values) for name, values in samples.items()} == dict.fromkeys("abcde", 4)
    assert set(medians) == set("abcde")


def test_cpu_peak_memory_counts_allocations_inside_ops():
    """The profiler-based CPU peak must see the memory that ops allocate (three live 4 MB tensors)."""
    from bench.timing import peak_transient_bytes

    x = torch.randn(1000, 1000)

    def step():
        y = x @ x
        z = y * 2
        w = z + y  # noqa: F841

    assert peak_transient_bytes(step, CPU) == 3 * x.numel() * x.element_size()


def test_curve_covers_every_size_and_plots(tmp_path):
    """--curve: one training record per (method, B) and per LoRA rank, a table and a plot next to the JSON."""
    from bench.unet_step import QUICK_CURVE_FREQUENCIES, QUICK_CURVE_RANKS

    path = tmp_path / "curve.json"
    result = main(["--quick", "--curve", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    keys = {(r["method"], r["n_frequency"], r["rank"]) for r in result["records"]}
    expected = {(m, b, None) for m in ("loca", "fourierft") for b in QUICK_CURVE_FREQUENCIES}
    assert keys == expected | {("lora", None, r) for r in QUICK_CURVE_RANKS}
    # trainable parameters grow with the size: B per layer for LoCA / FourierFT, rank for LoRA
    for method in ("loca", "fourierft", "lora"):
        sizes = [r["trainable_params"] for r in result["records"] if r["method"] == method]
        assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes), (method, sizes)
    assert path.with_suffix(".png").stat().st_size > 0
    assert "| loca | B=100 |" in path.with_suffix(".md").read_text()


def test_resolution_sets_the_latent_size(tmp_path):
    with pytest.raises(SystemExit):
        main(["--quick", "--resolution", "100", "--json", str(tmp_path / "x.json")])
    result = main(
        ["--quick", "--resolution", "64", "--repeats", "1", "--warmup", "0", "--json", str(tmp_path / "r.json")]
    )
    assert result["setup"]["resolution_px"] == 64 and result["setup"]["unet_config"]["sample_size"] == 8
