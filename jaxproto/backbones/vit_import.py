"""torchvision ``VisionTransformer`` state_dict names -> ``jaxproto.backbones.vit`` Linen paths
(cfn.md, Checkpoint conversion): ``class_token``, ``conv_proj`` (OIHW -> HWIO),
``encoder.pos_embedding``, ``encoder.layers.encoder_layer_{i}.{ln_1, self_attention, ln_2,
mlp.0 | mlp.linear_1, mlp.3 | mlp.linear_2}``, ``encoder.ln``, ``heads.head``. The packed
``in_proj_weight`` (3D, D) / ``in_proj_bias`` (3D,) split into query, key, value kernels
(D, heads, D / heads) and biases (heads, D / heads); ``out_proj`` (D, D) becomes the out kernel
(heads, D / heads, D).

The result uses ``collection/module/.../leaf`` keys, which ``torch_import.convert_state_dict``
takes as they are; names it does not know stay torch names and are reported as unexpected.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

_LAYER = re.compile(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)\.(weight|bias)$")
_MLP = {"mlp.0": "mlp_0", "mlp.linear_1": "mlp_0", "mlp.3": "mlp_3", "mlp.linear_2": "mlp_3"}
_NORMS = {"ln_1": "ln_1", "ln_2": "ln_2"}


def _linear(prefix: str, leaf: str, value: np.ndarray) -> dict[str, np.ndarray]:
    if leaf == "weight":
        return {f"params/{prefix}/kernel": value.T}
    return {f"params/{prefix}/bias": value}


def _norm(prefix: str, leaf: str, value: np.ndarray) -> dict[str, np.ndarray]:
    return {f"params/{prefix}/{'scale' if leaf == 'weight' else 'bias'}": value}


def _attention(prefix: str, name: str, value: np.ndarray, heads: int) -> dict[str, np.ndarray]:
    d = value.shape[-1]
    if name == "in_proj_weight":  # (3D, D) rows q | k | v, each (out, in)
        parts = np.split(value, 3, axis=0)
        return {
            f"params/{prefix}/{p}/kernel": w.T.reshape(d, heads, d // heads)
            for p, w in zip(("query", "key", "value"), parts, strict=True)
        }
    if name == "in_proj_bias":
        parts = np.split(value, 3)
        d = value.shape[0] // 3
        return {
            f"params/{prefix}/{p}/bias": b.reshape(heads, d // heads)
            for p, b in zip(("query", "key", "value"), parts, strict=True)
        }
    if name == "out_proj.weight":  # (out D, in heads * D / heads)
        return {f"params/{prefix}/out/kernel": value.T.reshape(heads, d // heads, d)}
    if name == "out_proj.bias":
        return {f"params/{prefix}/out/bias": value}
    return {}


def _convert(key: str, value: np.ndarray, heads: int) -> dict[str, np.ndarray]:
    """The Linen entries of one torch tensor (empty when the name is unknown)."""
    if key == "class_token":
        return {"params/class_token": value}
    if key == "encoder.pos_embedding":
        return {"params/pos_embedding": value}
    if key == "conv_proj.weight":
        return {"params/conv_proj/kernel": np.transpose(value, (2, 3, 1, 0))}
    if key == "conv_proj.bias":
        return {"params/conv_proj/bias": value}
    if key.startswith("encoder.ln."):
        return _norm("ln", key.rsplit(".", 1)[1], value)
    if key.startswith("heads.head."):
        return _linear("head", key.rsplit(".", 1)[1], value)
    if key.startswith("encoder.layers.encoder_layer_") and ".self_attention." in key:
        layer, name = key[len("encoder.layers.encoder_layer_") :].split(".self_attention.")
        if layer.isdigit():
            return _attention(f"encoder_layer_{layer}/self_attention", name, value, heads)
        return {}
    m = _LAYER.match(key)
    if m is None:
        return {}
    layer, module, leaf = m.groups()
    if module in _NORMS:
        return _norm(f"encoder_layer_{layer}/{_NORMS[module]}", leaf, value)
    if module in _MLP:
        return _linear(f"encoder_layer_{layer}/{_MLP[module]}", leaf, value)
    return {}


def torch_to_linen(state_dict: Mapping[str, np.ndarray], config: Mapping) -> dict[str, np.ndarray]:
    """A torchvision ViT state_dict (``module.`` prefixes allowed) with every known tensor
    renamed to its Linen path and converted; unknown names are kept for the strict check.
    ``config`` is the backbone's hyper-parameters (``num_heads`` splits the attention)."""
    heads = int(config["num_heads"])
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        name = key[len("module.") :] if key.startswith("module.") else key
        converted = _convert(name, np.asarray(value), heads) if "/" not in key else {}
        out.update(converted or {key: value})
    return out


def unmapped(module: str) -> None:
    """Module mapper for names ``torch_to_linen`` left as torch names: all are unexpected."""
    return None
