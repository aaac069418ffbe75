"""Initial locations: seeded, distinct within a layer, different between same-shaped layers."""

import torch
import torch.nn as nn
from peft import get_peft_model

from loca_diffusion import LoCAConfig


class TwoSame(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.b = nn.Linear(16, 16)


def locations(seed):
    model = get_peft_model(TwoSame(), LoCAConfig(target_modules=["a", "b"], n_frequency=40, random_loc_seed=seed))
    inner = model.base_model.model
    return inner.a.get_locations("default"), inner.b.get_locations("default")


def test_initial_locations():
    a, b = locations(7)
    assert not torch.equal(a, b)  # same shape, different layers: different starting points
    a2, b2 = locations(7)
    assert torch.equal(a, a2) and torch.equal(b, b2)  # reproducible from the seed
    assert not torch.equal(a, locations(8)[0])
    flat = a[0] * 16 + a[1]
    assert flat.unique().numel() == 40  # no coincident starting locations
