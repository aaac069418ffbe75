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
    # the attention projections live on the 8 x 8 and 4 x 4 latent levels only (down 2-3, mid, up 0-1)
    names = {n.split(".attentions")[0] for n, _ in unet.named_parameters() if ".to_q." in n}
    assert names == {"down_blocks.2", "down_blocks.3", "mid_block", "up_blocks.0", "up_blocks.1"}


def test_resnet_part_covers_the_resnet_blocks_only(unet):
    resnets = ids(part_parameters(unet, "resnets"))
    expected = {id(p) for name, p in unet.named_parameters() if ".resnets." in name}
    assert resnets == expected
    assert not resnets & ids(part_parameters(unet, "attention"))
    assert ids(part_parameters(unet, "unet")) == ids(unet.parameters())


def test_unknown_part_is_refused(unet):
    with pytest.raises(ValueError, match="part must be one of"):
        part_parameters(unet, "convs")
