"""Backbones without torch: registry/taps, BatchNorm and pooling vs numpy references, strict
state_dict conversion errors, legacy keys and prefixes, safetensors/msgpack/CLI round trips,
merge_pretrained."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy

from jaxproto import convert
from jaxproto.backbones import (
    BACKBONES,
    CheckpointMismatchError,
    backbone_channels,
    backbone_stride,
    build_backbone,
    convert_state_dict,
    layers,
    load_pretrained,
    merge_pretrained,
    tap_centre,
)
from jaxproto.backbones.layers import BatchNorm, DropPath, adaptive_avg_pool
from jaxproto.common.errors import ConfigError

# ----------------------------------------------------------------------------- registry / taps


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny", "convnext_tiny_test", "vgg19"])
def test_tap_shapes_match_channels_and_strides(name):
    spec = BACKBONES[name]
    model = build_backbone(name, taps=spec.taps, with_head=True, num_classes=7)
    x = jnp.zeros((2, 64, 64, 3))
    out = jax.eval_shape(lambda: model.apply(model.init(jax.random.key(0), x), x))
    assert set(out) == set(spec.taps)
    for tap, value in out.items():
        assert value.shape[-1] == backbone_channels(name, tap, num_classes=7), tap
        stride = backbone_stride(name, tap)
        if stride:
            assert value.shape[1:3] == (64 // stride, 64 // stride), tap
        else:
            assert value.ndim == 2, tap


def test_full_size_channels():
    assert backbone_channels("densenet121", "block4_prenorm") == 1024
    assert backbone_channels("densenet169", "final_relu") == 1664
    assert backbone_channels("resnet50", "layer4") == 2048
    assert backbone_channels("resnet18", "pooled") == 512
    assert backbone_channels("convnext_tiny", "stage4") == 768
    assert backbone_channels("vgg19_bn", "features") == 512
    assert backbone_stride("densenet121", "final_relu") == 32
    assert set(BACKBONES) >= {
        "resnet18",
        "resnet34",
        "resnet50",
        "densenet121",
        "densenet169",
        "vgg19",
        "vgg19_bn",
        "convnext_tiny",
        "resnet_tiny",
        "densenet_tiny",
        "convnext_tiny_test",
    }


def test_build_errors():
    with pytest.raises(ValueError, match="unknown backbone 'densenet12'"):
        build_backbone("densenet12")
    with pytest.raises(ValueError, match="unknown taps \\['layer4'\\]"):
        build_backbone("densenet121", taps=("layer4",))
    with pytest.raises(ValueError, match="need the classifier head"):
        build_backbone("resnet18", taps=("logits",))
    with pytest.raises(ValueError, match="unknown options \\['growth'\\]"):
        build_backbone("densenet_tiny", growth=3)
    with pytest.raises(ValueError, match="unknown tap"):
        backbone_channels("resnet18", "final_relu")


def test_densenet_norm5_updates_with_prenorm_tap():
    """CIPL: norm5 runs in train mode (stats update) even if only block4_prenorm is used."""
    model = build_backbone("densenet_tiny", taps=("block4_prenorm",))
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    out, upd = model.apply(variables, x, train=True, mutable=["batch_stats"])
    new = upd["batch_stats"]["features"]["norm5"]["mean"]
    prenorm = np.asarray(out["block4_prenorm"])
    np.testing.assert_allclose(new, 0.1 * prenorm.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    assert set(out) == {"block4_prenorm"}


def test_bf16_compute_dtype_keeps_float32_params_and_taps():
    model = build_backbone("resnet_tiny", taps=("layer4", "pooled"), dtype=jnp.bfloat16)
    x = jnp.ones((2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    # Computed in bfloat16 (a bfloat16-representable result), handed back as float32.
    out = model.apply(variables, x)
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}
    layer4 = np.asarray(out["layer4"])
    np.testing.assert_array_equal(layer4, layer4.astype(jnp.bfloat16).astype(np.float32))


# ----------------------------------------------------------------------------- layers vs numpy


@pytest.mark.parametrize("mode", ["unbiased", "biased"])
def test_batchnorm_matches_numpy(mode):
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, (4, 3, 5, 6)).astype(np.float32)
    scale, bias = rng.uniform(0.5, 1.5, 6), rng.normal(size=6)
    mean0, var0 = rng.normal(size=6), rng.uniform(0.5, 2.0, 6)
    variables = {
        "params": {
            "scale": jnp.asarray(scale, jnp.float32),
            "bias": jnp.asarray(bias, jnp.float32),
        },
        "batch_stats": {
            "mean": jnp.asarray(mean0, jnp.float32),
            "var": jnp.asarray(var0, jnp.float32),
        },
    }
    bn = BatchNorm(running_var=mode)
    y, upd = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    x64 = x.astype(np.float64).reshape(-1, 6)
    n = x64.shape[0]
    mu, var = x64.mean(0), x64.var(0)
    want = ((x64 - mu) / np.sqrt(var + 1e-5) * scale + bias).reshape(x.shape)
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    run_var = var * n / (n - 1) if mode == "unbiased" else var
    np.testing.assert_allclose(upd["batch_stats"]["mean"], 0.9 * mean0 + 0.1 * mu, rtol=1e-5)
    np.testing.assert_allclose(upd["batch_stats"]["var"], 0.9 * var0 + 0.1 * run_var, rtol=1e-5)
    y_eval = bn.apply(variables, x, train=False)
    want_eval = (x.astype(np.float64) - mean0) / np.sqrt(var0 + 1e-5) * scale + bias
    np.testing.assert_allclose(y_eval, want_eval, rtol=1e-4, atol=1e-4)


def test_batchnorm_errors():
    x = jnp.ones((1, 1, 1, 2))
    variables = BatchNorm().init(jax.random.key(0), x, train=True)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        BatchNorm().apply(variables, x, train=True, mutable=["batch_stats"])
    with pytest.raises(ValueError, match="bn_running_var"):
        BatchNorm(running_var="sample").init(jax.random.key(0), x, train=False)


@pytest.mark.parametrize(("size", "out"), [(5, 3), (2, 7), (13, 7), (7, 7)])
def test_adaptive_avg_pool_matches_loop(size, out):
    x = np.random.default_rng(1).normal(size=(2, size, size + 1, 3)).astype(np.float32)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), (out, out)))
    want = np.zeros((2, out, out, 3))
    for i in range(out):
        h0, h1 = int(np.floor(i * size / out)), int(np.ceil((i + 1) * size / out))
        for j in range(out):
            w0, w1 = int(np.floor(j * (size + 1) / out)), int(np.ceil((j + 1) * (size + 1) / out))
            want[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_drop_path():
    x = jnp.ones((64, 2, 2, 3))
    assert DropPath(0.0).apply({}, x, train=True) is x
    assert DropPath(0.5).apply({}, x, train=False) is x
    y = np.asarray(DropPath(0.25).apply({}, x, train=True, rngs={"drop_path": jax.random.key(0)}))
    per_example = y.reshape(64, -1)
    assert np.all((per_example == 0.0) | np.isclose(per_example, 1 / 0.75))
    assert np.all(per_example.min(1) == per_example.max(1))
    assert 0 < np.sum(per_example[:, 0] == 0) < 64


def test_convnext_drop_path_rate_needs_rng_and_changes_output():
    model = build_backbone("convnext_tiny_test", drop_path_rate=0.5)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    eval_out = model.apply(variables, x)["stage4"]
    train_out = model.apply(variables, x, train=True, rngs={"drop_path": jax.random.key(2)})
    assert not np.allclose(eval_out, train_out["stage4"])


# ----------------------------------------------------------------------------- fake state dicts


def fake_densenet_state_dict(
    growth=8, blocks=(2, 2, 2, 2), init=16, bn_size=4, num_classes=None, seed=0
) -> dict[str, np.ndarray]:
    """torchvision DenseNet keys/shapes (OIHW, (out, in)), written from torchvision's layout."""
    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}

    def bn(prefix, c):
        sd[f"{prefix}.weight"] = rng.uniform(0.5, 1.5, c).astype(np.float32)
        sd[f"{prefix}.bias"] = rng.normal(size=c).astype(np.float32)
        sd[f"{prefix}.running_mean"] = rng.normal(size=c).astype(np.float32)
        sd[f"{prefix}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
        sd[f"{prefix}.num_batches_tracked"] = np.array(3, np.int64)

    def conv(key, o, i, k):
        sd[key] = rng.normal(size=(o, i, k, k)).astype(np.float32)

    conv("features.conv0.weight", init, 3, 7)
    bn("features.norm0", init)
    ch = init
    for b, n in enumerate(blocks):
        for li in range(n):
            p = f"features.denseblock{b + 1}.denselayer{li + 1}"
            cin = ch + li * growth
            bn(f"{p}.norm1", cin)
            conv(f"{p}.conv1.weight", bn_size * growth, cin, 1)
            bn(f"{p}.norm2", bn_size * growth)
            conv(f"{p}.conv2.weight", growth, bn_size * growth, 3)
        ch += n * growth
        if b != len(blocks) - 1:
            bn(f"features.transition{b + 1}.norm", ch)
            conv(f"features.transition{b + 1}.conv.weight", ch // 2, ch, 1)
            ch //= 2
    bn("features.norm5", ch)
    if num_classes:
        sd["classifier.weight"] = rng.normal(size=(num_classes, ch)).astype(np.float32)
        sd["classifier.bias"] = rng.normal(size=num_classes).astype(np.float32)
    return sd


LEGACY = (
    ("norm1.", "norm.1."),
    ("conv1.", "conv.1."),
    ("norm2.", "norm.2."),
    ("conv2.", "conv.2."),
)


def _legacy(sd):
    out = {}
    for k, v in sd.items():
        if ".denselayer" in k:
            for new, old in LEGACY:
                k = k.replace(new, old)
        out[k] = v
    return out


def _assert_trees_equal(a, b):
    fa, fb = jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    assert [p for p, _ in fa] == [p for p, _ in fb]
    for (p, x), (_, y) in zip(fa, fb, strict=True):
        np.testing.assert_array_equal(x, y, err_msg=str(p))


def test_conversion_rules_and_values():
    sd = fake_densenet_state_dict(num_classes=5)
    v = convert_state_dict(sd, "densenet_tiny")
    p, s = v["params"], v["batch_stats"]
    np.testing.assert_array_equal(
        p["features"]["conv0"]["kernel"], sd["features.conv0.weight"].transpose(2, 3, 1, 0)
    )
    layer = p["features"]["denseblock2"]["denselayer1"]
    assert layer["conv2"]["kernel"].shape == (3, 3, 32, 8)
    np.testing.assert_array_equal(
        layer["norm1"]["scale"], sd["features.denseblock2.denselayer1.norm1.weight"]
    )
    np.testing.assert_array_equal(s["features"]["norm5"]["var"], sd["features.norm5.running_var"])
    np.testing.assert_array_equal(p["classifier"]["kernel"], sd["classifier.weight"].T)
    np.testing.assert_array_equal(p["classifier"]["bias"], sd["classifier.bias"])
    model = build_backbone("densenet_tiny", taps=("logits",), with_head=True, num_classes=5)
    x = jnp.zeros((1, 32, 32, 3))
    ref = model.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, v)


def test_legacy_keys_and_prefixes_give_same_variables():
    sd = fake_densenet_state_dict(num_classes=14)
    clean = convert_state_dict(sd, "densenet_tiny")
    chexnet = {
        "module.densenet121." + k.replace("classifier.", "classifier.0."): v
        for k, v in _legacy(sd).items()
        if not k.endswith("num_batches_tracked")
    }
    xmir = {
        "densenet121.0." + k[len("features.") :]: v
        for k, v in sd.items()
        if k.startswith("features.")
    }
    _assert_trees_equal(convert_state_dict(chexnet, "densenet_tiny"), clean)
    no_head = convert_state_dict(xmir, "densenet_tiny")
    assert "classifier" not in no_head["params"]
    _assert_trees_equal(no_head["params"]["features"], clean["params"]["features"])
    dropped = convert_state_dict(chexnet, "densenet_tiny", drop_head=True)
    _assert_trees_equal(dropped, no_head)


def test_strict_errors_list_every_key():
    sd = fake_densenet_state_dict()
    del sd["features.denseblock1.denselayer2.conv1.weight"]
    del sd["features.norm5.running_mean"]
    sd["features.extra.weight"] = np.zeros((3, 3, 1, 1), np.float32)
    sd["toplayer.bias"] = np.zeros(3, np.float32)
    sd["features.transition1.conv.weight"] = np.zeros((16, 31, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError) as e:
        convert_state_dict(sd, "densenet_tiny")
    msg = str(e.value)
    assert "5 problem(s)" in msg
    assert "missing: params/features/denseblock1/denselayer2/conv1/kernel" in msg
    assert "missing: batch_stats/features/norm5/mean" in msg
    assert "unexpected: features.extra.weight" in msg
    assert "unexpected: toplayer.bias" in msg
    assert "shape mismatch: features.transition1.conv.weight" in msg
    assert "expected (1, 1, 32, 16), got (1, 1, 31, 16)" in msg


def test_allow_missing_and_unexpected():
    sd = fake_densenet_state_dict()
    del sd["features.norm5.weight"]
    sd["toplayer.weight"] = np.zeros((4, 32, 1, 1), np.float32)
    with pytest.raises(CheckpointMismatchError, match="toplayer.weight"):
        convert_state_dict(sd, "densenet_tiny", allow_missing=r"norm5/scale$")
    v = convert_state_dict(
        sd, "densenet_tiny", allow_missing=r"norm5/scale$", allow_unexpected=r"^toplayer\."
    )
    assert "scale" not in v["params"]["features"]["norm5"]


def test_duplicate_mapping_is_an_error():
    sd = fake_densenet_state_dict()
    sd["features.denseblock1.denselayer1.norm.1.weight"] = sd[
        "features.denseblock1.denselayer1.norm1.weight"
    ]
    with pytest.raises(CheckpointMismatchError, match="both map to"):
        convert_state_dict(sd, "densenet_tiny")


def fake_convnext_timm(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128), nc=10, seed=0):
    rng = np.random.default_rng(seed)
    sd = {}

    def put(k, *shape):
        sd[k] = rng.normal(size=shape).astype(np.float32)

    put("stem.0.weight", dims[0], 3, 4, 4), put("stem.0.bias", dims[0])
    put("stem.1.weight", dims[0]), put("stem.1.bias", dims[0])
    for s, (d, c) in enumerate(zip(depths, dims, strict=True)):
        if s:
            put(f"stages.{s}.downsample.0.weight", dims[s - 1])
            put(f"stages.{s}.downsample.0.bias", dims[s - 1])
            put(f"stages.{s}.downsample.1.weight", c, dims[s - 1], 2, 2)
            put(f"stages.{s}.downsample.1.bias", c)
        for j in range(d):
            b = f"stages.{s}.blocks.{j}"
            put(f"{b}.conv_dw.weight", c, 1, 7, 7), put(f"{b}.conv_dw.bias", c)
            put(f"{b}.norm.weight", c), put(f"{b}.norm.bias", c)
            put(f"{b}.mlp.fc1.weight", 4 * c, c), put(f"{b}.mlp.fc1.bias", 4 * c)
            put(f"{b}.mlp.fc2.weight", c, 4 * c), put(f"{b}.mlp.fc2.bias", c)
            put(f"{b}.gamma", c)
    put("head.norm.weight", dims[-1]), put("head.norm.bias", dims[-1])
    put("head.fc.weight", nc, dims[-1]), put("head.fc.bias", nc)
    return sd


def test_timm_and_torchvision_convnext_names_agree():
    timm = fake_convnext_timm()
    tv = {}
    for k, v in timm.items():
        k2 = k.replace("stem.", "features.0.").replace("head.norm", "classifier.0")
        k2 = k2.replace("head.fc", "classifier.2")
        for s in range(4):
            k2 = k2.replace(f"stages.{s}.downsample.", f"features.{2 * s}.")
            k2 = k2.replace(f"stages.{s}.blocks.", f"features.{2 * s + 1}.")
        for old, new in (
            ("conv_dw", "block.0"),
            ("norm.", "block.2."),
            ("mlp.fc1", "block.3"),
            ("mlp.fc2", "block.5"),
        ):
            k2 = k2.replace(f".{old}", f".{new}")
        if k2.endswith(".gamma"):
            k2, v = k2.replace(".gamma", ".layer_scale"), v.reshape(-1, 1, 1)
        tv[k2] = v
    a = convert_state_dict(timm, "convnext_tiny_test")
    b = convert_state_dict(tv, "convnext_tiny_test")
    _assert_trees_equal(a, b)
    blk = a["params"]["stages_1_blocks_0"]
    assert blk["conv_dw"]["kernel"].shape == (7, 7, 1, 32)
    np.testing.assert_array_equal(
        blk["mlp_fc1"]["kernel"], timm["stages.1.blocks.0.mlp.fc1.weight"].T
    )
    np.testing.assert_array_equal(blk["gamma"], timm["stages.1.blocks.0.gamma"])
    assert a["params"]["head_fc"]["kernel"].shape == (128, 10)


# ----------------------------------------------------------------------------- files / CLI / merge


def test_safetensors_cli_msgpack_roundtrip(tmp_path):
    sd = fake_densenet_state_dict(num_classes=3)
    src, dst = tmp_path / "w.safetensors", tmp_path / "out" / "w.msgpack"
    safetensors.numpy.save_file(sd, str(src))
    direct = load_pretrained(str(src), "densenet_tiny")
    rc = convert.main(
        ["chexnet", "--arch", "densenet_tiny", "--input", str(src), "--out", str(dst)]
    )
    assert rc == 0
    _assert_trees_equal(load_pretrained(str(dst), "densenet_tiny"), direct)
    headless = load_pretrained(str(dst), "densenet_tiny", drop_head=True)
    assert "classifier" not in headless["params"]
    model = build_backbone("densenet_tiny", taps=("logits",), with_head=True, num_classes=3)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3))
    assert model.apply(direct, x)["logits"].shape == (1, 3)


def test_cli_rejects_wrong_arch_and_reports_mismatch(tmp_path, capsys):
    sd = fake_densenet_state_dict()
    src = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(sd, str(src))
    with pytest.raises(SystemExit):
        convert.main(["timm", "--arch", "densenet_tiny", "--input", str(src), "--out", "x"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(CheckpointMismatchError, match="missing: params/conv1/kernel"):
        convert.main(["torchvision", "--arch", "resnet_tiny", "--input", str(src), "--out", "x"])
    (tmp_path / "w.npz").write_bytes(b"")
    with pytest.raises(ValueError, match="unknown weights format"):
        load_pretrained(str(tmp_path / "w.npz"), "densenet_tiny")


class _Wrapper(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        f = build_backbone("densenet_tiny", taps=("block4_prenorm",), name="backbone")(x, train)
        return nn.Dense(2, name="head")(f["block4_prenorm"].mean((1, 2)))


def test_merge_pretrained_into_larger_model():
    x = jnp.zeros((1, 32, 32, 3))
    variables = _Wrapper().init(jax.random.key(0), x)
    pretrained = convert_state_dict(fake_densenet_state_dict(), "densenet_tiny")
    merged = merge_pretrained(variables, pretrained, prefix="backbone")
    _assert_trees_equal(merged["params"]["backbone"], pretrained["params"])
    _assert_trees_equal(merged["batch_stats"]["backbone"], pretrained["batch_stats"])
    _assert_trees_equal(merged["params"]["head"], variables["params"]["head"])
    assert all(isinstance(v, jax.Array) for v in jax.tree.leaves(merged))

    with_head = convert_state_dict(fake_densenet_state_dict(num_classes=4), "densenet_tiny")
    with pytest.raises(
        CheckpointMismatchError, match="unexpected: params/backbone/classifier/kernel"
    ):
        merge_pretrained(variables, with_head, prefix="backbone")
    merge_pretrained(variables, with_head, prefix="backbone", allow_unexpected="classifier")
    partial = {"params": dict(pretrained["params"]), "batch_stats": pretrained["batch_stats"]}
    partial["params"]["features"] = dict(partial["params"]["features"])
    del partial["params"]["features"]["norm5"]
    with pytest.raises(
        CheckpointMismatchError, match="missing: params/backbone/features/norm5/scale"
    ):
        merge_pretrained(variables, partial, prefix="backbone")
    out = merge_pretrained(
        variables, partial, prefix="backbone", allow_missing="norm5/(scale|bias)"
    )
    _assert_trees_equal(
        out["params"]["backbone"]["features"]["norm5"],
        variables["params"]["backbone"]["features"]["norm5"],
    )


def test_merge_pretrained_inside_jit():
    """The trainer builds its state under jit/eval_shape: merging must accept traced targets."""
    x = jnp.zeros((1, 32, 32, 3))
    pretrained = convert_state_dict(fake_densenet_state_dict(), "densenet_tiny")

    def init():
        return merge_pretrained(_Wrapper().init(jax.random.key(0), x), pretrained, "backbone")

    assert jax.eval_shape(init)["params"]["backbone"]["features"]["conv0"]["kernel"].shape == (
        pretrained["params"]["features"]["conv0"]["kernel"].shape
    )
    merged = jax.jit(init)()
    _assert_trees_equal(merged["params"]["backbone"], pretrained["params"])


@pytest.mark.parametrize(
    "name,tap,size,overrides",
    [
        ("resnet_tiny", "layer2", 96, {}),
        ("resnet_tiny", "stem", 48, {}),
        ("densenet_tiny", "block4_prenorm", 96, {"block_config": (1, 1, 1)}),
        ("convnext_tiny_test", "stage1", 64, {}),
    ],
)
def test_tap_centre_is_the_receptive_field_centre(name, tap, size, overrides):
    """The exact receptive field of an interior cell is where the input gradient is non-zero;
    its centre must be tap_centre + stride * j."""
    net = build_backbone(name, taps=(tap,), **overrides)
    variables = net.init(jax.random.key(1), jnp.zeros((1, size, size, 3)), train=False)
    stride = backbone_stride(name, tap, **overrides)
    j = size // stride // 2

    def cell(x):
        return jnp.sum(net.apply(variables, x, train=False)[tap][0, j, j])

    grad = jax.jit(jax.grad(cell))
    support = np.zeros((size, size), bool)
    for k in range(2):
        g = grad(jax.random.normal(jax.random.key(10 + k), (1, size, size, 3)))
        support |= np.abs(np.asarray(g[0])).sum(-1) > 0
    rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
    assert 0 < rows[0] and rows[-1] < size - 1, "receptive field clipped: enlarge the input"
    want = tap_centre(name, tap, **overrides) + stride * j
    assert (rows[0] + rows[-1] + 1) / 2 == want
    assert (cols[0] + cols[-1] + 1) / 2 == want


def test_conv1x1_matmul_equals_a_numpy_1x1_convolution():
    x = np.random.default_rng(0).normal(size=(2, 6, 6, 5)).astype(np.float32)
    conv = layers.Conv1x1(3, stride=2)
    params = conv.init(jax.random.key(0), x)
    kernel, bias = np.asarray(params["params"]["kernel"]), np.asarray(params["params"]["bias"])
    assert kernel.shape == (1, 1, 5, 3)
    ref = np.einsum("bhwc,cd->bhwd", x[:, ::2, ::2], kernel[0, 0]) + bias
    np.testing.assert_allclose(np.asarray(conv.apply(params, x)), ref, rtol=1e-5, atol=1e-5)


def _numpy_conv(x, kernel, stride, pad):
    """Reference cross-correlation (NHWC, HWIO) by loops over the kernel taps."""
    k = kernel.shape[0]
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (x.shape[1] + 2 * pad - k) // stride + 1
    wo = (x.shape[2] + 2 * pad - k) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            win = xp[:, i : i + stride * ho : stride, j : j + stride * wo : stride][:, :ho, :wo]
            y += np.einsum("nhwc,cd->nhwd", win, kernel[i, j])
    return y, xp, ho, wo


@pytest.mark.parametrize("k,stride,hw", [(7, 2, (13, 10)), (3, 1, (6, 5)), (3, 2, (7, 8))])
def test_im2col_grad_conv_matches_numpy_forward_and_gradients(k, stride, hw):
    """layers.im2col_grad_conv against a numpy loop: the forward pass, the kernel gradient
    (sum of padded input windows times the output gradient) and the input gradient."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *hw, 3)).astype(np.float32)
    kernel = rng.standard_normal((k, k, 3, 4)).astype(np.float32)
    pad = k // 2
    y_ref, xp, ho, wo = _numpy_conv(x.astype(np.float64), kernel.astype(np.float64), stride, pad)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)
    y, vjp = jax.vjp(lambda a, b: layers.im2col_grad_conv(a, b, stride, pad), x, kernel)
    dx, dk = vjp(jnp.asarray(dy))
    np.testing.assert_allclose(np.asarray(y), y_ref, rtol=1e-4, atol=1e-4)
    dk_ref = np.zeros(kernel.shape)
    dxp_ref = np.zeros(xp.shape)
    for i in range(k):
        for j in range(k):
            rows, cols = slice(i, i + stride * ho, stride), slice(j, j + stride * wo, stride)
            win = xp[:, rows, cols][:, :ho, :wo]
            dk_ref[i, j] = np.einsum("nhwc,nhwd->cd", win, dy)
            dxp_ref[:, rows, cols][:, :ho, :wo] += np.einsum("nhwd,cd->nhwc", dy, kernel[i, j])
    np.testing.assert_allclose(np.asarray(dk), dk_ref, rtol=1e-4, atol=1e-4)
    dx_ref = dxp_ref[:, pad : pad + hw[0], pad : pad + hw[1]]
    np.testing.assert_allclose(np.asarray(dx), dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["resnet_tiny", "densenet_tiny"])
@pytest.mark.parametrize("key,fast", [("conv1x1", "matmul"), ("stem_conv", "im2col_grad")])
def test_conv_modes_share_parameters_and_agree(name, key, fast):
    """model.conv1x1="matmul" (Conv1x1) and model.stem_conv="im2col_grad" (Im2colGradConv)
    build the same parameters as "xla" (nn.Conv: the default, runs saved before the keys) from
    the same key and give the same taps and gradients; im2col_grad's forward is XLA's, bit for
    bit."""
    x = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    nets = {
        m: build_backbone(name, taps=("logits",), with_head=True, num_classes=3, **{key: m})
        for m in (fast, "xla")
    }
    init = {m: net.init(jax.random.key(0), x, train=True) for m, net in nets.items()}
    flat = {m: dict(jax.tree_util.tree_leaves_with_path(v)) for m, v in init.items()}
    assert flat[fast].keys() == flat["xla"].keys()
    for path, leaf in flat["xla"].items():
        np.testing.assert_array_equal(np.asarray(flat[fast][path]), np.asarray(leaf))

    def loss(m, params):
        out, _ = nets[m].apply(
            {**init["xla"], "params": params}, x, train=True, mutable=["batch_stats"]
        )
        return jnp.sum(out["logits"] ** 2), out["logits"]

    params = init["xla"]["params"]
    (_, a), ga = jax.value_and_grad(lambda p: loss(fast, p), has_aux=True)(params)
    (_, b), gb = jax.value_and_grad(lambda p: loss("xla", p), has_aux=True)(params)
    if key == "stem_conv":
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    for u, v in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb), strict=True):
        scale = float(np.abs(np.asarray(v)).max())  # train-mode BN amplifies rounding
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=0, atol=1e-3 * scale + 1e-6)


def test_unknown_stem_conv_mode_is_a_config_error():
    net = build_backbone("densenet_tiny", stem_conv="winograd")
    with pytest.raises(ConfigError, match="model.stem_conv must be one of"):
        net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))


def test_unknown_conv1x1_mode_is_a_config_error():
    net = build_backbone("resnet_tiny", conv1x1="cudnn")
    with pytest.raises(ConfigError, match="model.conv1x1 must be one of"):
        net.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
