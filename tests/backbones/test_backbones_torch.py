"""Backbones vs independent PyTorch reference modules (torchvision/timm parameter names).

Each test fills a reference nn.Module with seeded random weights and running statistics, saves its
state_dict, converts it, and compares eval-mode outputs, one train-mode forward's outputs and the
updated BN running statistics. Tolerance: max|jax - torch| <= 1e-4 * max|torch| per tensor, in
float32 (train-mode outputs: or twice PyTorch's own float32-vs-float64 error, see
_float32_noise), under ``jax.default_matmul_precision("highest")`` (so no TF32/bf16 passes on
accelerators; on CPU it is already the default).
"""

from __future__ import annotations

import copy
import functools

import flax
import jax
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from jaxproto import convert  # noqa: E402
from jaxproto.backbones import build_backbone, convert_state_dict, load_pretrained  # noqa: E402
from jaxproto.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402

pytestmark = pytest.mark.torch

from tests import torch_reference_models as ref  # noqa: E402

RTOL = 1e-4


def _rel_err(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-12))


def _to_nhwc(t: torch.Tensor) -> np.ndarray:
    a = t.detach().numpy()
    return np.transpose(a, (0, 2, 3, 1)) if a.ndim == 4 else a


def _images(size: int, batch: int = 2, seed: int = 0) -> np.ndarray:
    """ImageNet-normalised random uint8 images, NHWC float32."""
    img = np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    return ((img.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _state_dict(module: torch.nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


def _compare_outputs(out: dict, tout: dict, taps: dict[str, str], what: str, tol=None) -> None:
    for tap, tkey in taps.items():
        err = _rel_err(out[tap], _to_nhwc(tout[tkey]))
        limit = RTOL if tol is None else tol[tap]
        assert err <= limit, f"{what}: tap {tap} relative error {err:.2e} > {limit:.2e}"


def _float32_noise(tmodel: torch.nn.Module, xt: torch.Tensor, taps: dict[str, str]) -> dict:
    """Per-tap train-mode tolerance: max(RTOL, 2 x torch-float32-vs-torch-float64 error).

    Train-mode BN on tiny late-stage maps (e.g. 8 values per channel) is ill-conditioned: there,
    PyTorch's own float32 result is ~2e-4 away from float64, so a fixed 1e-4 cannot hold."""
    t64 = copy.deepcopy(tmodel).double().train()
    t32 = copy.deepcopy(tmodel).train()
    with torch.no_grad():
        o64, o32 = t64(xt.double()), t32(xt)
    return {t: max(RTOL, 2 * _rel_err(_to_nhwc(o32[k]), _to_nhwc(o64[k]))) for t, k in taps.items()}


def _check_against_torch(
    arch: str,
    tmodel: torch.nn.Module,
    variables: dict,
    taps: dict[str, str],
    size: int,
    with_head: bool,
    train: bool = True,
    **overrides,
) -> None:
    """Eval outputs, then one train-mode forward's outputs and running statistics."""
    model = build_backbone(arch, taps=tuple(taps), with_head=with_head, **overrides)
    x = _images(size)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with jax.default_matmul_precision("highest"):
        out = jax.jit(functools.partial(model.apply, train=False))(variables, x)
        tmodel.eval()
        with torch.no_grad():
            tout = tmodel(xt)
        _compare_outputs(out, tout, taps, f"{arch} eval")
        if not train:
            return
        tol = _float32_noise(tmodel, xt, taps)
        apply_train = functools.partial(model.apply, train=True, mutable=["batch_stats"])
        out, upd = jax.jit(apply_train)(variables, x)
        tmodel.train()
        with torch.no_grad():
            tout = tmodel(xt)
        _compare_outputs(out, tout, taps, f"{arch} train", tol)
    want = convert_state_dict(_state_dict(tmodel), arch, with_head=with_head, **overrides)
    got_stats = flax.traverse_util.flatten_dict(upd["batch_stats"], sep="/")
    want_stats = flax.traverse_util.flatten_dict(want["batch_stats"], sep="/")
    old_stats = flax.traverse_util.flatten_dict(variables["batch_stats"], sep="/")
    assert set(got_stats) == set(want_stats)
    for key, value in want_stats.items():
        assert not np.allclose(value, old_stats[key]), f"{key} was not updated by torch"
        err = _rel_err(got_stats[key], value)
        assert err <= RTOL, f"{arch} running stat {key}: relative error {err:.2e}"


def _convert_via_file(tmodel, arch, tmp_path, **kwargs) -> dict:
    path = tmp_path / f"{arch}.pth"
    torch.save(tmodel.state_dict(), path)
    return load_pretrained(str(path), arch, **kwargs)


def test_densenet121_cli_acceptance(tmp_path):
    """Acceptance (issue 3): a torchvision DenseNet-121 file with the legacy key names of the
    published weights -> ``python -m jaxproto.convert torchvision`` -> ``load_pretrained`` ->
    the same logits as PyTorch on the same preprocessed image; plus train-mode BN statistics."""
    tmodel = ref.randomize_(ref.DenseNet(), seed=1)
    legacy = {
        k.replace("norm1.", "norm.1.")
        .replace("conv1.", "conv.1.")
        .replace("norm2.", "norm.2.")
        .replace("conv2.", "conv.2."): v
        for k, v in tmodel.state_dict().items()
    }
    assert any("norm.1." in k for k in legacy)
    src, dst = tmp_path / "densenet121.pth", tmp_path / "densenet121.msgpack"
    torch.save(legacy, src)
    rc = convert.main(
        ["torchvision", "--arch", "densenet121", "--input", str(src), "--out", str(dst)]
    )
    assert rc == 0
    variables = load_pretrained(str(dst), "densenet121")
    assert "classifier" in variables["params"]
    _check_against_torch(
        "densenet121",
        tmodel,
        variables,
        {"logits": "logits", "block4_prenorm": "block4_prenorm", "final_relu": "final_relu"},
        size=64,
        with_head=True,
    )


def test_densenet_tiny_and_chexnet_prefixes(tmp_path):
    tmodel = ref.randomize_(ref.DenseNet(8, (2, 2, 2, 2), 16, num_classes=14), seed=2)
    wrapped = {
        "state_dict": {
            "module.densenet121." + k.replace("classifier.", "classifier.0."): v
            for k, v in tmodel.state_dict().items()
        }
    }
    path = tmp_path / "model.pth.tar"
    torch.save(wrapped, path)
    variables = load_pretrained(str(path), "densenet_tiny")
    assert variables["params"]["classifier"]["kernel"].shape == (32, 14)
    _check_against_torch(
        "densenet_tiny",
        tmodel,
        variables,
        {"logits": "logits", "block4_prenorm": "block4_prenorm"},
        size=32,
        with_head=True,
        num_classes=14,
    )


@pytest.mark.slow
def test_densenet169(tmp_path):
    tmodel = ref.randomize_(ref.DenseNet(32, (6, 12, 32, 32), 64), seed=3)
    variables = _convert_via_file(tmodel, "densenet169", tmp_path)
    _check_against_torch(
        "densenet169", tmodel, variables, {"logits": "logits"}, size=64, with_head=True
    )


@pytest.mark.parametrize(
    ("arch", "block", "layers", "widths", "size"),
    [
        ("resnet18", ref.BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512), 64),
        ("resnet_tiny", ref.BasicBlock, (1, 1, 1, 1), (8, 16, 32, 64), 32),
        pytest.param(
            "resnet34",
            ref.BasicBlock,
            (3, 4, 6, 3),
            (64, 128, 256, 512),
            64,
            marks=pytest.mark.slow,
        ),
        # 128 px: at 64 px layer4's train-mode BN sees 8 values per channel and float32 itself
        # (torch f32 vs torch f64) is off by ~2.5e-4; in float64 the two agree to 1e-12.
        pytest.param(
            "resnet50",
            ref.Bottleneck,
            (3, 4, 6, 3),
            (64, 128, 256, 512),
            128,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_resnet(tmp_path, arch, block, layers, widths, size):
    tmodel = ref.randomize_(ref.ResNet(block, layers, widths), seed=4)
    variables = _convert_via_file(tmodel, arch, tmp_path)
    _check_against_torch(
        arch, tmodel, variables, {"layer4": "layer4", "logits": "logits"}, size, with_head=True
    )


def test_resnet50_bottleneck_small(tmp_path):
    """Bottleneck blocks (resnet50's code path) at reduced width, in the default run."""
    widths = (8, 16, 32, 64)
    tmodel = ref.randomize_(ref.ResNet(ref.Bottleneck, (1, 2, 1, 1), widths), seed=5)
    overrides = {"layers": (1, 2, 1, 1), "widths": widths}
    variables = _convert_via_file(tmodel, "resnet50", tmp_path, **overrides)
    _check_against_torch(
        "resnet50", tmodel, variables, {"logits": "logits"}, 32, with_head=True, **overrides
    )


def test_vgg19_bn_with_head(tmp_path):
    """VGG-19-BN incl. the head (adaptive 7x7 pool from a 2x2 map, (C,H,W) flatten); the hidden
    width is reduced to keep the 25088-input Linear small; dropout off to compare train mode."""
    tmodel = ref.randomize_(ref.VGG(ref_cfg("E"), True, dropout=0.0, hidden=64), seed=6)
    variables = _convert_via_file(tmodel, "vgg19_bn", tmp_path, hidden_features=64)
    _check_against_torch(
        "vgg19_bn",
        tmodel,
        variables,
        {"features": "features", "logits": "logits"},
        64,
        with_head=True,
        hidden_features=64,
        dropout_rate=0.0,
    )


def test_vgg19_features_without_head(tmp_path):
    """Plain VGG-19 backbone: the file's classifier is dropped explicitly (drop_head)."""
    tmodel = ref.randomize_(ref.VGG(ref_cfg("E"), False, hidden=16), seed=7)
    variables = _convert_via_file(tmodel, "vgg19", tmp_path, drop_head=True)
    assert not any(k.startswith("classifier") for k in variables["params"])
    _check_against_torch(
        "vgg19", tmodel, variables, {"features": "features"}, 32, with_head=False, train=False
    )


def ref_cfg(name: str) -> list:
    e = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M"] + [512, 512, 512, 512, "M"] * 2
    return {"E": e}[name]


@pytest.mark.parametrize(
    ("arch", "flavour", "depths", "dims", "size"),
    [
        ("convnext_tiny", "timm", (3, 3, 9, 3), (96, 192, 384, 768), 64),
        ("convnext_tiny_test", "torchvision", (1, 1, 1, 1), (16, 32, 64, 128), 32),
        ("convnext_tiny_test", "timm", (1, 1, 1, 1), (16, 32, 64, 128), 32),
        pytest.param(
            "convnext_tiny",
            "torchvision",
            (3, 3, 9, 3),
            (96, 192, 384, 768),
            64,
            marks=pytest.mark.slow,
        ),
    ],
)
def test_convnext(tmp_path, arch, flavour, depths, dims, size):
    cls = ref.TimmConvNeXt if flavour == "timm" else ref.TorchvisionConvNeXt
    tmodel = ref.randomize_(cls(depths, dims), seed=8)
    variables = _convert_via_file(tmodel, arch, tmp_path)
    assert variables["batch_stats"] == {}
    taps = {"stage4": "stage4", "logits": "logits"}
    if flavour == "timm":
        taps["pooled"] = "pooled"
    _check_against_torch(arch, tmodel, variables, taps, size, with_head=True, train=False)
    model = build_backbone(arch, taps=("stage4",))
    with jax.default_matmul_precision("highest"):
        out, upd = model.apply(variables, _images(size), train=True, mutable=["batch_stats"])
        tmodel.train()
        with torch.no_grad():
            tout = tmodel(torch.from_numpy(_images(size).transpose(0, 3, 1, 2).copy()))
    assert _rel_err(out["stage4"], _to_nhwc(tout["stage4"])) <= RTOL
