"""The registration shim (loca_diffusion/tuners/loca/peft_type.py and register()) against the installed peft.

peft's enum of methods is closed; the shim adds ``PeftType.LOCA`` and registers the config and tuner
classes. These tests fail loudly if a peft upgrade changes the enum or the mappings it relies on.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys

from peft import PeftConfig, PeftModel, get_peft_config, get_peft_model
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils import PeftType

import loca_diffusion
from loca_diffusion import LoCAConfig, LoCAModel
from loca_diffusion.tuners.loca import register
from loca_diffusion.tuners.loca.peft_type import ensure_peft_type

from _models import MLP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_peft_type_member():
    member = PeftType("LOCA")
    assert member is PeftType.LOCA is PeftType["LOCA"]
    assert member.value == "LOCA" and member.name == "LOCA"
    assert isinstance(member, str) and member == "LOCA"
    assert member in list(PeftType)
    assert "LOCA" in PeftType.__members__
    # the enum still holds peft's own members
    assert PeftType("LORA") is PeftType.LORA
    assert len(set(PeftType)) == len(list(PeftType))


def test_mappings_hold_our_classes():
    assert PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.LOCA] is LoCAConfig
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LOCA] is LoCAModel
    assert PEFT_TYPE_TO_PREFIX_MAPPING[PeftType.LOCA] == "loca_"
    # the mappings are also reachable by the plain string that adapter_config.json stores
    assert PEFT_TYPE_TO_CONFIG_MAPPING["LOCA"] is LoCAConfig
    assert LoCAConfig().peft_type is PeftType.LOCA
    assert LoCAModel.prefix == "loca_"


def test_registration_is_idempotent():
    n_members = len(list(PeftType))
    assert ensure_peft_type() is PeftType.LOCA
    register()
    register()
    assert len(list(PeftType)) == n_members
    assert PEFT_TYPE_TO_TUNER_MAPPING[PeftType.LOCA] is LoCAModel


def test_config_from_pretrained_returns_loca_config(tmp_path):
    config = LoCAConfig(n_frequency=7, target_modules=["lin0"], scaling=2.0, location_steps=3)
    config.save_pretrained(tmp_path)
    with open(tmp_path / "adapter_config.json") as f:
        assert json.load(f)["peft_type"] == "LOCA"
    for loader in (PeftConfig, LoCAConfig):
        loaded = loader.from_pretrained(tmp_path)
        assert type(loaded) is LoCAConfig
        assert loaded.peft_type is PeftType.LOCA
        assert (loaded.n_frequency, loaded.scaling, loaded.location_steps) == (7, 2.0, 3)
        assert set(loaded.target_modules) == {"lin0"}


def test_get_peft_config_from_dict():
    config = get_peft_config({"peft_type": "LOCA", "n_frequency": 5, "target_modules": ["lin0"]})
    assert type(config) is LoCAConfig and config.n_frequency == 5


def test_config_copy_and_pickle():
    config = LoCAConfig(n_frequency=9, target_modules=["lin0"])
    for clone in (copy.deepcopy(config), pickle.loads(pickle.dumps(config))):
        assert type(clone) is LoCAConfig and clone.peft_type is PeftType.LOCA and clone.n_frequency == 9
    assert json.loads(json.dumps(config.to_dict(), default=list))["peft_type"] == "LOCA"


def test_get_peft_model_dispatches_to_loca(tmp_path):
    model = get_peft_model(MLP(), LoCAConfig(n_frequency=4, target_modules=["lin0"]))
    assert isinstance(model.base_model, LoCAModel)
    assert model.peft_type is PeftType.LOCA
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(MLP(), tmp_path)
    assert isinstance(loaded.base_model, LoCAModel)


def test_import_alone_registers_in_a_fresh_interpreter(tmp_path):
    # no state from this test session: importing the package is enough
    LoCAConfig(n_frequency=3, target_modules=["lin0"]).save_pretrained(tmp_path)
    code = (
        "import peft, loca_diffusion, sys\n"
        "from peft import PeftConfig\n"
        "from peft.utils import PeftType\n"
        f"c = PeftConfig.from_pretrained({str(tmp_path)!r})\n"
        "assert type(c).__name__ == 'LoCAConfig', type(c)\n"
        "assert c.peft_type is PeftType('LOCA') and c.n_frequency == 3\n"
        "print('ok')\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_package_exports():
    assert loca_diffusion.LoCAConfig is LoCAConfig and loca_diffusion.LoCAModel is LoCAModel
