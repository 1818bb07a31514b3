"""ViT vs an independent PyTorch VisionTransformer with torchvision's ``vit_b_16`` module layout
(``conv_proj``, ``class_token``, ``encoder.pos_embedding``, ``encoder.layers.encoder_layer_i``
with ``nn.MultiheadAttention`` and ``mlp.0``/``mlp.3``, ``encoder.ln``, ``heads.head``), tiny
sizes, random weights: the converted Linen model must give the same logits and class-token
embedding (max abs error <= 1e-5)."""

from __future__ import annotations

import collections

import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxproto.backbones import (  # noqa: E402
    CheckpointMismatchError,
    build_backbone,
    convert_state_dict,
    get_spec,
)

pytestmark = pytest.mark.torch

TINY = {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 2}
TINY |= {"hidden_dim": 32, "mlp_dim": 64}


class EncoderBlock(torch.nn.Module):
    def __init__(self, heads: int, dim: int, mlp: int):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = torch.nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_2 = torch.nn.LayerNorm(dim, eps=1e-6)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, mlp),
            torch.nn.GELU(),
            torch.nn.Dropout(0.0),
            torch.nn.Linear(mlp, dim),
            torch.nn.Dropout(0.0),
        )

    def forward(self, x):
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + y
        return x + self.mlp(self.ln_2(x))


class Encoder(torch.nn.Module):
    def __init__(self, seq: int, layers: int, heads: int, dim: int, mlp: int):
        super().__init__()
        self.pos_embedding = torch.nn.Parameter(torch.empty(1, seq, dim).normal_(std=0.02))
        self.layers = torch.nn.Sequential(
            collections.OrderedDict(
                (f"encoder_layer_{i}", EncoderBlock(heads, dim, mlp)) for i in range(layers)
            )
        )
        self.ln = torch.nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x):
        return self.ln(self.layers(x + self.pos_embedding))


class TorchViT(torch.nn.Module):
    """torchvision.models.VisionTransformer's forward with its parameter names."""

    def __init__(self, image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, classes):
        super().__init__()
        self.patch_size = patch_size
        self.conv_proj = torch.nn.Conv2d(3, hidden_dim, patch_size, stride=patch_size)
        self.class_token = torch.nn.Parameter(torch.randn(1, 1, hidden_dim))
        seq = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq, num_layers, num_heads, hidden_dim, mlp_dim)
        self.heads = torch.nn.Sequential(
            collections.OrderedDict([("head", torch.nn.Linear(hidden_dim, classes))])
        )

    def forward(self, x):
        n = x.shape[0]
        x = self.conv_proj(x).reshape(n, self.conv_proj.out_channels, -1).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        cls = self.encoder(x)[:, 0]
        return self.heads(cls), cls


def _reference(seed: int = 0) -> TorchViT:
    torch.manual_seed(seed)
    model = TorchViT(**TINY, classes=5).eval()
    with torch.no_grad():  # non-trivial biases everywhere (torch zero-initialises some)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_vit_matches_torchvision_layout():
    model = _reference()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    assert "encoder.layers.encoder_layer_1.self_attention.in_proj_weight" in sd
    variables = convert_state_dict(sd, "vit_b_16", **TINY)
    net = build_backbone("vit_b_16", taps=("cls", "logits"), with_head=True, num_classes=5, **TINY)
    x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    with jax.default_matmul_precision("highest"):
        got = net.apply(variables, x, train=False)
    with torch.no_grad():
        logits, cls = model(torch.from_numpy(np.transpose(x, (0, 3, 1, 2))))
    np.testing.assert_allclose(got["logits"], logits.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["cls"], cls.numpy(), rtol=0, atol=1e-5)


def test_vit_old_mlp_names_module_prefix_and_strict_errors():
    sd = {k: v.numpy() for k, v in _reference(1).state_dict().items()}
    old = {}
    for k, v in sd.items():
        k = k.replace("mlp.0.", "mlp.linear_1.").replace("mlp.3.", "mlp.linear_2.")
        old[f"module.{k}"] = v
    a = convert_state_dict(sd, "vit_b_16", **TINY)
    b = convert_state_dict(old, "vit_b_16", **TINY)
    jax.tree.map(np.testing.assert_array_equal, a, b)
    bad = dict(sd)
    bad["encoder.layers.encoder_layer_0.extra.weight"] = np.zeros(3, np.float32)
    del bad["encoder.ln.bias"]
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(bad, "vit_b_16", **TINY)
    assert "extra.weight" in str(e.value) and "ln/bias" in str(e.value)
    assert get_spec("vit_b_16").family == "vit"


def test_vit_b_16_parameter_shapes_match_torchvision():
    """The full-size template has torchvision vit_b_16's tensor shapes (spec: conv_proj
    [768, 3, 16, 16], pos_embedding [1, 197, 768], in_proj [2304, 768])."""
    net = build_backbone("vit_b_16", taps=("cls",), with_head=True, num_classes=1000)
    shapes = jax.eval_shape(lambda: net.init(jax.random.key(0), np.zeros((1, 224, 224, 3))))
    p = shapes["params"]
    assert p["conv_proj"]["kernel"].shape == (16, 16, 3, 768)
    assert p["pos_embedding"].shape == (1, 197, 768)
    assert p["encoder_layer_11"]["self_attention"]["query"]["kernel"].shape == (768, 12, 64)
    assert p["encoder_layer_11"]["self_attention"]["out"]["kernel"].shape == (12, 64, 768)
    assert p["head"]["kernel"].shape == (768, 1000)
