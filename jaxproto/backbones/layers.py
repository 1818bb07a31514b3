"""Building blocks shared by the backbones: the common module fields (``Configured``,
``Backbone``), PyTorch-faithful BatchNorm, 1x1 convolutions as matmuls, drop-path, pooling,
torch-style initialisers, tap selection and ``model.compute_dtype``.

All tensors are NHWC. Parameter names follow Flax (``kernel``, ``bias``, ``scale``) and running
statistics live in the ``batch_stats`` collection as ``mean``/``var``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.backbones import onednn_conv
from jaxproto.common.errors import ConfigError

Dtype = Any

# model.compute_dtype: the dtype of convolutions, matmuls and activations inside a backbone.
# Parameters, BatchNorm statistics and every tap the backbone returns stay float32.
COMPUTE_DTYPES: dict[str, Dtype] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

BN_RUNNING_VAR_MODES = ("unbiased", "biased")

# model.conv1x1: how a backbone computes its 1x1 convolutions. "matmul" (:class:`Conv1x1`) gives
# the same result within float32 rounding as "xla" (``nn.Conv``, the default and what runs saved
# before the key existed used) and trains 2-18x faster per layer on XLA:CPU. It is opt-in until
# the synthetic demos are re-measured with it: the rounding difference changes their trajectories.
CONV1X1_MODES = ("matmul", "xla")

# model.stem_conv: how the stem (the first k x k convolution, on the image) is differentiated.
# "im2col_grad" (:class:`Im2colGradConv`) keeps XLA's forward bit for bit and computes the kernel
# gradient as one im2col matmul (about 2x faster than XLA:CPU's for ResNet/DenseNet's 7x7/2 stem);
# "xla" (``nn.Conv``) is the default, opt-in for the same reason as ``model.conv1x1``.
STEM_CONV_MODES = ("im2col_grad", "xla")

# model.conv_backend: who computes a backbone's (ungrouped) convolutions. "onednn"
# (:class:`OnednnConv`, ``onednn_conv``) calls oneDNN's primitives through XLA's FFI for the
# forward pass and both gradients (the library PyTorch uses on x86 CPUs; 2-7x faster than
# XLA:CPU's kernel gradients) and takes precedence over ``conv1x1``/``stem_conv``; "xla" (the
# default) leaves them to XLA. Same parameters and results within float32 rounding.
CONV_BACKENDS = ("onednn", "xla")

# kaiming_normal_(mode=..., nonlinearity="relu") without truncation (jax_stack.md §3.5).
kaiming_normal_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# PyTorch's default Linear/Conv weight init: kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_default_kernel = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def compute_dtype(name: str) -> Dtype:
    """The jnp dtype of a ``model.compute_dtype`` name; ConfigError for anything else."""
    if name not in COMPUTE_DTYPES:
        valid = list(COMPUTE_DTYPES)
        raise ConfigError(f"model.compute_dtype must be one of {valid}, got {name!r}")
    return COMPUTE_DTYPES[name]


def torch_default_bias(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Conv1x1(nn.Module):
    """A 1x1 convolution (optionally strided, no padding) computed as a matmul over channels.

    Same parameters as ``nn.Conv(features, (1, 1))`` (``kernel`` (1, 1, in, out), then ``bias``,
    initialised in that order) and the same result; but its kernel gradient is a plain GEMM,
    where XLA:CPU computes a 1x1 ``conv_general_dilated``'s as a convolution whose window spans
    the whole feature map (~28x slower at 56x56, the bulk of a DenseNet/ResNet training step).
    """

    features: int
    stride: int = 1
    use_bias: bool = True
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (1, 1, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        if self.stride > 1:
            x = x[:, :: self.stride, :: self.stride]
        y = jnp.einsum("...c,cd->...d", x.astype(self.dtype), kernel[0, 0].astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


def _conv_forward(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        kernel,
        (stride, stride),
        ((pad, pad), (pad, pad)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def _im2col(x: jax.Array, k: int, stride: int, pad: int) -> jax.Array:
    """(N, Ho, Wo, k*k*C) patches in HWIO order: column (i*k + j)*C + c is x[.., i, j, c]."""
    xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    ho = (x.shape[1] + 2 * pad - k) // stride + 1
    wo = (x.shape[2] + 2 * pad - k) // stride + 1
    span_h, span_w = stride * (ho - 1) + 1, stride * (wo - 1) + 1
    taps = [
        xp[:, i : i + span_h : stride, j : j + span_w : stride] for i in range(k) for j in range(k)
    ]
    return jnp.concatenate(taps, axis=-1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def im2col_grad_conv(x: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    """A square convolution (HWIO kernel, symmetric padding) whose kernel gradient is an im2col
    matmul; the forward pass and the input gradient are XLA's."""
    return _conv_forward(x, kernel, stride, pad)


def _im2col_grad_conv_fwd(x, kernel, stride, pad):
    return _conv_forward(x, kernel, stride, pad), (x, kernel)


def _im2col_grad_conv_bwd(stride, pad, residuals, dy):
    x, kernel = residuals
    dx = jax.vjp(lambda v: _conv_forward(v, kernel, stride, pad), x)[1](dy)[0]
    patches = _im2col(x, kernel.shape[0], stride, pad)
    dk = jnp.einsum("nhwp,nhwd->pd", patches, dy.astype(patches.dtype))
    return dx, dk.reshape(kernel.shape).astype(kernel.dtype)


im2col_grad_conv.defvjp(_im2col_grad_conv_fwd, _im2col_grad_conv_bwd)


class SquareConvNoBias(nn.Module):
    """``nn.Conv(features, (k, k), strides, padding=k // 2, use_bias=False)``'s parameter
    (``kernel``, HWIO, float32), computed by a subclass's :meth:`convolve`."""

    features: int
    kernel_size: int
    stride: int = 1
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
        return self.convolve(x, kernel, k // 2)

    def convolve(self, x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
        raise NotImplementedError


class Im2colGradConv(SquareConvNoBias):
    """The same forward result as ``nn.Conv``, differentiated by :func:`im2col_grad_conv`:
    XLA:CPU computes the kernel gradient of a convolution on few input channels (the 3-channel
    stem) as a slow windowed convolution, where the im2col matmul is one GEMM."""

    def convolve(self, x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
        return im2col_grad_conv(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, pad)


class OnednnConv(SquareConvNoBias):
    """Computed (forward and both gradients) by oneDNN (``onednn_conv.conv2d``)."""

    def convolve(self, x: jax.Array, kernel: jax.Array, pad: int) -> jax.Array:
        return onednn_conv.conv2d(x.astype(self.dtype), kernel.astype(self.dtype), self.stride, pad)


def conv_no_bias(
    features: int,
    k: int,
    stride: int,
    kernel_init: nn.initializers.Initializer,
    dtype: Dtype,
    name: str,
    conv1x1: str = "xla",
    stem_conv: str | None = None,
    conv_backend: str = "xla",
) -> nn.Module:
    """PyTorch ``Conv2d(k, stride, padding=k // 2, bias=False)`` with ``kernel_init``; a 1x1
    one is a :class:`Conv1x1` (same parameters) with ``conv1x1="matmul"`` (``CONV1X1_MODES``).
    ``stem_conv`` marks a backbone's stem and says how it is computed (``STEM_CONV_MODES``:
    "im2col_grad" is an :class:`Im2colGradConv`, same parameter). ``conv_backend="onednn"``
    (``CONV_BACKENDS``) makes every one an :class:`OnednnConv` (same parameter)."""
    if conv_backend not in CONV_BACKENDS:
        valid = list(CONV_BACKENDS)
        raise ConfigError(f"model.conv_backend must be one of {valid}, got {conv_backend!r}")
    if conv1x1 not in CONV1X1_MODES:
        raise ConfigError(f"model.conv1x1 must be one of {list(CONV1X1_MODES)}, got {conv1x1!r}")
    if stem_conv is not None and stem_conv not in STEM_CONV_MODES:
        valid = list(STEM_CONV_MODES)
        raise ConfigError(f"model.stem_conv must be one of {valid}, got {stem_conv!r}")
    if conv_backend == "onednn":
        return OnednnConv(features, k, stride, kernel_init=kernel_init, dtype=dtype, name=name)
    if stem_conv == "im2col_grad":
        return Im2colGradConv(features, k, stride, kernel_init=kernel_init, dtype=dtype, name=name)
    if k == 1 and conv1x1 == "matmul":
        return Conv1x1(
            features, stride=stride, use_bias=False, kernel_init=kernel_init, dtype=dtype, name=name
        )
    return nn.Conv(
        features,
        (k, k),
        strides=(stride, stride),
        padding=((k // 2, k // 2), (k // 2, k // 2)),
        use_bias=False,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )


class BatchNorm(nn.Module):
    """BatchNorm with PyTorch semantics (jax_stack.md §3.1).

    ``momentum`` uses PyTorch's convention (running = (1 - m) * running + m * batch; Flax's
    momentum 0.9 is PyTorch's 0.1). Normalisation uses the biased batch variance; the running
    variance is updated with the unbiased one (n / (n - 1)) like PyTorch when
    ``running_var="unbiased"``, or with the biased one (Flax's behaviour) when ``"biased"``.
    Statistics are reduced in float32 over every axis but the last.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    running_var: str = "unbiased"
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.running_var not in BN_RUNNING_VAR_MODES:
            raise ValueError(
                f"bn_running_var must be one of {BN_RUNNING_VAR_MODES}, got {self.running_var!r}"
            )
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
        if train:
            axes = tuple(range(x.ndim - 1))
            n = math.prod(x.shape[:-1])
            mean = jnp.mean(xf, axis=axes)
            var = jnp.mean(jnp.square(xf - mean), axis=axes)
            if not self.is_initializing():
                if self.running_var == "unbiased":
                    if n < 2:
                        raise ValueError(
                            "BatchNorm in train mode needs more than 1 value per channel "
                            f"(got input shape {x.shape})"
                        )
                    update_var = var * (n / (n - 1))
                else:
                    update_var = var
                m = self.momentum
                ra_mean.value = (1.0 - m) * ra_mean.value + m * mean
                ra_var.value = (1.0 - m) * ra_var.value + m * update_var
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (xf - mean) * (scale * jax.lax.rsqrt(var + self.epsilon)) + bias
        return y.astype(self.dtype)


class Configured(nn.Module):
    """Keyword-only fields every backbone module shares: the BatchNorm running-variance mode
    (``"unbiased"`` as PyTorch, ``"biased"`` as Flax), the compute dtype of its layers
    (parameters stay float32), how 1x1 convolutions are computed (``CONV1X1_MODES``), how the
    stem convolution is differentiated (``STEM_CONV_MODES``) and who computes convolutions
    (``CONV_BACKENDS``)."""

    bn_running_var: str = dataclasses.field(default="unbiased", kw_only=True)
    dtype: Dtype = dataclasses.field(default=jnp.float32, kw_only=True)
    conv1x1: str = dataclasses.field(default="xla", kw_only=True)
    stem_conv: str = dataclasses.field(default="xla", kw_only=True)
    conv_backend: str = dataclasses.field(default="xla", kw_only=True)

    def shared(self) -> dict[str, Any]:
        """These fields, for building a submodule with the same settings."""
        return {
            "bn_running_var": self.bn_running_var,
            "dtype": self.dtype,
            "conv1x1": self.conv1x1,
            "stem_conv": self.stem_conv,
            "conv_backend": self.conv_backend,
        }

    def norm(self, name: str) -> BatchNorm:
        """A PyTorch-faithful BatchNorm submodule with this module's settings."""
        return BatchNorm(running_var=self.bn_running_var, dtype=self.dtype, name=name)


class Backbone(Configured):
    """A whole backbone (keyword-only fields): the feature taps it returns, whether it has its
    classifier head, and the head's size."""

    taps: Sequence[str] = dataclasses.field(default=(), kw_only=True)
    with_head: bool = dataclasses.field(default=False, kw_only=True)
    num_classes: int = dataclasses.field(default=1000, kw_only=True)


def layer_norm(epsilon: float, dtype: Dtype, name: str) -> nn.LayerNorm:
    """Channel-last LayerNorm with the exact two-pass variance (as PyTorch computes it)."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False, name=name)


class DropPath(nn.Module):
    """Stochastic depth: drops whole residual branches per example (rng stream ``drop_path``)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if not train or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask_shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = jax.random.bernoulli(self.make_rng("drop_path"), keep, mask_shape)
        return jnp.where(mask, x / keep, jnp.zeros_like(x))


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """``nn.MaxPool2d(3, 2, padding=1)`` (padding with -inf, as PyTorch)."""
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


def _adaptive_pool_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Averaging matrix (size_out, size_in) of PyTorch's adaptive average pooling: output i
    averages inputs [floor(i*in/out), ceil((i+1)*in/out))."""
    mat = np.zeros((size_out, size_in), np.float32)
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        mat[i, start:end] = 1.0 / (end - start)
    return mat


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """``nn.AdaptiveAvgPool2d(out_hw)`` on an NHWC tensor."""
    ph = jnp.asarray(_adaptive_pool_matrix(x.shape[1], out_hw[0]), x.dtype)
    pw = jnp.asarray(_adaptive_pool_matrix(x.shape[2], out_hw[1]), x.dtype)
    return jnp.einsum("ih,nhwc,jw->nijc", ph, x, pw, precision=jax.lax.Precision.HIGHEST)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over the spatial axes of an NHWC tensor -> (N, C)."""
    return jnp.mean(x, axis=(1, 2))


def check_taps(model: str, taps: Sequence[str], available: Sequence[str], with_head: bool) -> None:
    """Raises ValueError for unknown taps or head taps requested without the head."""
    if not taps:
        raise ValueError(f"{model}: at least one tap is required; available: {list(available)}")
    unknown = [t for t in taps if t not in available]
    if unknown:
        raise ValueError(f"{model}: unknown taps {unknown}; available: {list(available)}")
    head_only = [t for t in taps if t in HEAD_TAPS]
    if head_only and not with_head:
        raise ValueError(f"{model}: taps {head_only} need the classifier head (with_head=True)")


HEAD_TAPS = ("logits", "penultimate")


def select_taps(values: Mapping[str, jax.Array], taps: Sequence[str]) -> dict[str, jax.Array]:
    """The requested subset of the computed feature taps, in request order, at least float32
    (a bfloat16 backbone hands its methods float32 features for their losses and distances)."""
    return {t: values[t].astype(jnp.promote_types(values[t].dtype, jnp.float32)) for t in taps}
