"""bench/app_latency.py in its quick mode: every measurement is there, positive, and the report states the
goals with the numbers they were judged on."""

import json

import pytest


@pytest.fixture(scope="module")
def quick(tmp_path_factory, torch_single_thread):
    from bench.app_latency import main

    path = tmp_path_factory.mktemp("app_latency") / "app_latency_quick.json"
    main(["--quick", "--switches", "2", "--json", str(path)])
    return json.loads(path.read_text()), path.with_suffix(".md").read_text()


def test_quick_run_reports_every_measurement(quick):
    results, report = quick
    edits = results["edits_s"]
    assert list(edits)[0] == "base" and len(edits) == 5 and all(t > 0 for t in edits.values())
    assert any(name.endswith("x1 fused") for name in edits) and any(name.endswith("x1 unfused") for name in edits)
    assert len(results["switch_s"]) == 5 and all(t > 0 for t in results["switch_s"].values())
    reference = [name for name in results["switch_s"] if "cache_deltas=False" in name]
    assert len(reference) == 1  # the fused switch without the dW cache, side by side
    startup = results["startup"]
    assert 0 < startup["page_ready_s"] < startup["first_edit_done_s"] and startup["http_edit_s"] > 0
    assert results["machine"]["device"] == "cpu" and results["steps"] == 2
    assert set(results["edits_cpu_s"]) == set(edits) and all(t > 0 for t in results["edits_cpu_s"].values())
    worst = max(v for k, v in results["switch_cpu_s"].items() if k not in reference) / results["edits_cpu_s"]["base"]
    assert f"= {worst:.2%} of a base edit" in report
    assert "switching adapters < 5% of one edit" in report and "within 2% of the base edit" in report
