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
