"""Tiny models shared by the tests: a two-layer MLP and small HF / diffusers models built from configs in code
(no Hub access), each with inputs and a LoCA config (:class:`Spec`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn as nn
from peft import PeftModel, get_peft_model

import loca_diffusion  # noqa: F401  (registers PeftType.LOCA)
from loca_diffusion import LoCAConfig


class MLP(nn.Module):
    """``lin1(act(lin0(x)))``: the two-layer model of the LoCA unit tests."""

    def __init__(self, d_in: int = 10, hidden: int = 20, d_out: int = 2, activation: Optional[nn.Module] = None):
        super().__init__()
        self.lin0 = nn.Linear(d_in, hidden)
        self.act = nn.ReLU() if activation is None else activation
        self.lin1 = nn.Linear(hidden, d_out)

    def forward(self, x):
        return self.lin1(self.act(self.lin0(x)))


def _mlp(hidden=20):
    return MLP(hidden=hidden)


#: What the tiny BERT and RoBERTa share (dropout off: outputs are compared exactly).
_BERT_LIKE = dict(
    vocab_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=32,
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
)


def _bert(hidden=32):
    from transformers import BertConfig, BertModel

    return BertModel(BertConfig(hidden_size=hidden, **_BERT_LIKE))


def _roberta(hidden=32):
    from transformers import RobertaConfig, RobertaModel

    return RobertaModel(RobertaConfig(hidden_size=hidden, pad_token_id=1, **_BERT_LIKE))


def _gpt2(hidden=32):
    from transformers import GPT2Config, GPT2Model

    return GPT2Model(
        GPT2Config(
            vocab_size=64,
            n_positions=32,
            n_embd=hidden,
            n_layer=2,
            n_head=2,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
        )
    )


def _llama(hidden=32):
    from transformers import LlamaConfig, LlamaModel

    return LlamaModel(
        LlamaConfig(
            vocab_size=64,
            hidden_size=hidden,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
        )
    )


def _vit(hidden=32):
    from transformers import ViTConfig, ViTModel

    return ViTModel(
        ViTConfig(
            image_size=16,
            patch_size=4,
            num_channels=3,
            hidden_size=hidden,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )


def _unet(hidden=32):
    from loca_diffusion.tiny_pix2pix import build_tiny_unet

    return build_tiny_unet(hidden)


def _features():
    return {"x": torch.randn(4, 10, generator=torch.Generator().manual_seed(1))}


def _ids(batch=2, length=7):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(2, 64, (batch, length), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _pixels():
    g = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}


def _unet_inputs():
    g = torch.Generator().manual_seed(1)
    return {
        "sample": torch.randn(2, 8, 8, 8, generator=g),
        "timestep": torch.tensor([3, 500]),
        "encoder_hidden_states": torch.randn(2, 5, 32, generator=g),
    }


_BASE_CACHE: dict = {}


@dataclass
class Spec:
    name: str
    build: Callable[..., nn.Module]
    targets: list
    inputs: Callable[[], dict]
    n_frequency: int
    fan_in_fan_out: bool = False
    float_inputs: tuple = ()  # input names to cast with the model's dtype

    def base(self, seed: int = 0, **kwargs) -> nn.Module:
        """A fresh base model; the same seed gives the same weights (built once, then copied)."""
        key = (self.name, seed, tuple(sorted(kwargs.items())))
        if key not in _BASE_CACHE:
            torch.manual_seed(seed)
            _BASE_CACHE[key] = self.build(**kwargs).eval()
        return copy.deepcopy(_BASE_CACHE[key])

    def config(self, **kwargs) -> LoCAConfig:
        options = dict(n_frequency=self.n_frequency, target_modules=list(self.targets))
        if self.fan_in_fan_out:
            options["fan_in_fan_out"] = True
        options.update(kwargs)
        return LoCAConfig(**options)


SPECS = {
    "mlp": Spec("mlp", _mlp, ["lin0", "lin1"], _features, 8, float_inputs=("x",)),
    "bert": Spec("bert", _bert, ["query", "value"], _ids, 16),
    "roberta": Spec("roberta", _roberta, ["query", "value"], _ids, 16),
    "gpt2": Spec("gpt2", _gpt2, ["c_attn"], _ids, 16, fan_in_fan_out=True),
    "llama": Spec("llama", _llama, ["q_proj", "v_proj"], _ids, 16),
    "vit": Spec("vit", _vit, ["q_proj", "v_proj"], _pixels, 16, float_inputs=("pixel_values",)),
    "unet": Spec(
        "unet",
        _unet,
        ["to_q", "to_k", "to_v", "to_out.0"],
        _unet_inputs,
        16,
        float_inputs=("sample", "encoder_hidden_states"),
    ),
}
ALL = list(SPECS)


def run(model: nn.Module, spec: Spec, dtype: torch.dtype | None = None, **extra) -> torch.Tensor:
    inputs = spec.inputs()
    if dtype is not None:
        inputs = {k: (v.to(dtype) if k in spec.float_inputs else v) for k, v in inputs.items()}
    out = model(**inputs, **extra)
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample"):
        return out.sample
    return out.last_hidden_state


@torch.no_grad()
def run_eval(model, spec, **extra):
    model.eval()
    return run(model, spec, **extra)


def base_output(spec, seed=0):
    return run_eval(spec.base(seed), spec)


def peft(spec: Spec, seed=0, **config_kwargs) -> PeftModel:
    return get_peft_model(spec.base(seed), spec.config(**config_kwargs))
