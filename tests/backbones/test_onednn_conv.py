"""model.conv_backend="onednn": the oneDNN FFI convolution against a numpy loop, under sharding,
in whole backbones against XLA's, and its errors."""

import importlib.metadata

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxproto.backbones import onednn_conv
from jaxproto.backbones.registry import build_backbone
from jaxproto.common.errors import ConfigError


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


needs_onednn = pytest.mark.skipif(
    not (_installed("onednn-cpu-gomp") and _installed("onednn-devel-cpu-gomp")),
    reason='needs pip install -e ".[onednn]"',
)


def _reference(x, kernel, dy, stride, pad):
    """Forward, input gradient and kernel gradient of a zero-padded strided convolution, as
    sums over the kernel taps in float64."""
    n, h, w, _ = x.shape
    k = kernel.shape[0]
    xp = np.pad(x.astype(np.float64), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho, wo = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    y = np.zeros((n, ho, wo, kernel.shape[-1]))
    dxp = np.zeros(xp.shape)
    dk = np.zeros(kernel.shape)
    for i in range(k):
        for j in range(k):
            rows = slice(i, i + stride * (ho - 1) + 1, stride)
            cols = slice(j, j + stride * (wo - 1) + 1, stride)
            win = xp[:, rows, cols]
            y += np.einsum("nhwc,cd->nhwd", win, kernel[i, j])
            dk[i, j] = np.einsum("nhwc,nhwd->cd", win, dy)
            dxp[:, rows, cols] += np.einsum("nhwd,cd->nhwc", dy, kernel[i, j])
    return y, dxp[:, pad : pad + h, pad : pad + w], dk


@needs_onednn
@pytest.mark.parametrize(
    "k,stride,pad,hw,cin,cout",
    [(3, 1, 1, (9, 7), 5, 4), (7, 2, 3, (16, 13), 3, 6), (1, 1, 0, (6, 6), 8, 3),
     (1, 2, 0, (7, 9), 4, 5), (3, 2, 1, (10, 11), 6, 2)],
)  # fmt: skip
def test_onednn_conv_matches_numpy_forward_and_gradients(k, stride, pad, hw, cin, cout):
    rng = np.random.default_rng(k * 10 + stride)
    x = rng.standard_normal((2, *hw, cin)).astype(np.float32)
    kernel = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
    y, vjp = jax.vjp(
        lambda a, b: onednn_conv.conv2d(a, b, stride, pad), jnp.asarray(x), jnp.asarray(kernel)
    )
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dk = vjp(jnp.asarray(dy))
    y_ref, dx_ref, dk_ref = _reference(x, kernel, dy, stride, pad)
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(dk), dk_ref, rtol=1e-5, atol=1e-4)


@needs_onednn
def test_onednn_conv_on_a_batch_sharded_over_devices_gives_the_same_result():
    """8 CPU devices (conftest): XLA gathers the FFI call's sharded operand; the result and the
    kernel gradient are those of the unsharded call."""
    mesh = jax.make_mesh((8,), ("data",))
    sharding = jax.NamedSharding(mesh, jax.P("data"))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((8, 6, 6, 3)).astype(np.float32))
    kernel = jnp.asarray(rng.standard_normal((3, 3, 3, 4)).astype(np.float32))

    def loss(a, b):
        return jnp.sum(onednn_conv.conv2d(a, b, 1, 1) ** 2)

    want = jax.jit(jax.value_and_grad(loss, argnums=1))(x, kernel)
    got = jax.jit(jax.value_and_grad(loss, argnums=1))(jax.device_put(x, sharding), kernel)
    for u, v in zip(got, want, strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-4)


@needs_onednn
@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny"])
def test_onednn_backbone_shares_parameters_and_agrees_with_xla(name):
    """The same parameters as nn.Conv from the same key; eval-mode logits and every gradient
    equal XLA's within float32 rounding."""
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    nets = {
        b: build_backbone(name, taps=("logits",), with_head=True, num_classes=3, conv_backend=b)
        for b in ("onednn", "xla")
    }
    init = {b: net.init(jax.random.key(0), x, train=False) for b, net in nets.items()}
    flat = {b: dict(jax.tree_util.tree_leaves_with_path(v)) for b, v in init.items()}
    assert flat["onednn"].keys() == flat["xla"].keys()
    for path, leaf in flat["xla"].items():
        np.testing.assert_array_equal(np.asarray(flat["onednn"][path]), np.asarray(leaf))

    def loss(b, params):
        out = nets[b].apply({**init["xla"], "params": params}, x, train=False)
        return jnp.sum(out["logits"] ** 2), out["logits"]

    params = init["xla"]["params"]
    (_, a), ga = jax.value_and_grad(lambda p: loss("onednn", p), has_aux=True)(params)
    (_, b), gb = jax.value_and_grad(lambda p: loss("xla", p), has_aux=True)(params)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        scale = float(np.abs(np.asarray(v)).max())
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=1e-4 * scale + 1e-6)


def test_unknown_conv_backend_is_a_config_error():
    net = build_backbone("resnet_tiny", conv_backend="mkl")
    with pytest.raises(ConfigError, match="model.conv_backend must be one of"):
        net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_onednn_with_bfloat16_compute_is_a_config_error():
    net = build_backbone("resnet_tiny", conv_backend="onednn", dtype="bfloat16")
    with pytest.raises(ConfigError, match="computes in float32"):
        net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_missing_onednn_wheel_names_the_install_command(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(onednn_conv.importlib.metadata, "distribution", missing)
    with pytest.raises(ConfigError, match=r"onednn-cpu-gomp package: pip install -e"):
        onednn_conv.build()


@needs_onednn
def test_a_failing_compiler_is_one_config_error_with_its_message(monkeypatch, tmp_path):
    fake = tmp_path / "fake-cxx"
    fake.write_text("#!/bin/sh\necho 'fake-cxx: error: no space left' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("CXX", str(fake))
    monkeypatch.setenv("JAXPROTO_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"(?s)exit 3.*no space left"):
        onednn_conv.build()
    assert not list((tmp_path / "cache").glob("*.so"))
