"""bench/cartoon_ceiling.py: which parameters each trained part of the embedded UNet covers."""

import pytest

from bench.cartoon_ceiling import ATTENTION, part_parameters
from loca_diffusion.edit import load_pipeline


@pytest.fixture(scope="module")
def unet():
    return load_pipeline().unet


def ids(params):
    return {id(p) for p in params}


def test_attention_part_is_exactly_the_adapters_targets(unet):
    expected = {
        id(p)
        for name, p in unet.named_parameters()
        if any(f".{t}.weight" in name or f".{t}.bias" in name for t in ATTENTION) and name.count(".attn") == 1
    }
    assert expected and ids(part_parameters(unet, "attention")) == expected
    # the shipped base has attention from the 16 x 16 latent level down (down 1-3, mid, up 0-2), not at 32 x 32
    names = {n.split(".attentions")[0] for n, _ in unet.named_parameters() if ".to_q." in n}
    assert names == {f"down_blocks.{i}" for i in (1, 2, 3)} | {"mid_block"} | {f"up_blocks.{i}" for i in (0, 1, 2)}


def test_resnet_part_covers_the_resnet_blocks_only(unet):
    resnets = ids(part_parameters(unet, "resnets"))
    expected = {id(p) for name, p in unet.named_parameters() if ".resnets." in name}
    assert resnets == expected
    assert not resnets & ids(part_parameters(unet, "attention"))
    assert ids(part_parameters(unet, "unet")) == ids(unet.parameters())


def test_unknown_part_is_refused(unet):
    with pytest.raises(ValueError, match="part must be one of"):
        part_parameters(unet, "convs")


def test_each_run_starts_as_a_module_that_imports_bench(monkeypatch, tmp_path):
    # the driver runs every part in a child process: that child must find `bench` whatever the
    # driver's own working folder and PYTHONPATH were (a plain `python bench/cartoon_ceiling.py` child did not)
    import argparse
    import json
    import subprocess
    import sys

    from bench import cartoon_ceiling

    real_run, calls = subprocess.run, []

    def fake_run(command, check, env, cwd):
        calls.append((command, env, cwd))
        out = command[command.index("--out") + 1]
        with open(out, "w") as f:
            json.dump({"part": command[command.index("--run") + 1]}, f)

    monkeypatch.setattr(cartoon_ceiling.subprocess, "run", fake_run)
    monkeypatch.setattr(cartoon_ceiling, "RESULTS", tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(seed=0, eval_steps=[1, 2], batch_size=2)
    assert cartoon_ceiling.run_in_process("attention", 1e-3, args) == {"part": "attention"}
    ((command, env, cwd),) = calls
    assert command[1:3] == ["-m", "bench.cartoon_ceiling"] and command[-2:] == ["1", "2"]
    probe = [sys.executable, "-c", "import bench.cartoon_ceiling"]
    real_run(probe, check=True, env=env, cwd=cwd, capture_output=True)
