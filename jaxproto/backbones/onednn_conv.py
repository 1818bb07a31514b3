"""``model.conv_backend = "onednn"``: a backbone's convolutions run as oneDNN primitives called
through XLA's FFI, forward and both gradients.

XLA:CPU's own convolution kernels are about 2x slower than oneDNN's (the library PyTorch uses on
x86) on ResNet/DenseNet layers, and their kernel gradients 2-7x (``benchmarks/compare_torch.py``
layer rows). The handlers in ``onednn_conv.cc`` are compiled once per machine with the system's
C++ compiler against the ``onednn-cpu-gomp`` wheel (``pip install -e ".[onednn]"``) into
``$JAXPROTO_CACHE`` (default ``~/.cache/jaxproto``), then registered as XLA custom calls.
Results equal XLA's within float32 rounding (tests/backbones/test_onednn_conv.py). Meant for
one CPU device: an FFI call has no partitioning rule, so XLA gathers a sharded batch.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.common.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("onednn_conv.cc")
TARGETS = {
    "forward": "DnnlConvForward",
    "input_grad": "DnnlConvBackwardData",
    "kernel_grad": "DnnlConvBackwardKernel",
}
_INSTALL = 'pip install -e ".[onednn]" (the onednn-cpu-gomp and onednn-devel-cpu-gomp wheels)'


def _wheel_file(dist: str, suffix: str) -> Path:
    """The installed file of distribution ``dist`` whose path ends with ``suffix``."""
    try:
        files = importlib.metadata.distribution(dist).files or []
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"model.conv_backend=onednn needs the {dist} package: {_INSTALL}"
        ) from None
    for f in files:
        if str(f).endswith(suffix):
            return Path(f.locate()).resolve()
    raise ConfigError(f"{dist} is installed but has no {suffix}; reinstall it: {_INSTALL}")


def _cache_dir() -> Path:
    return Path(os.environ.get("JAXPROTO_CACHE", Path.home() / ".cache" / "jaxproto"))


def _compile(out: Path, include: Path, lib: Path) -> None:
    """Build the handlers into ``out`` (atomically: concurrent processes may race)."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise ConfigError(
            "model.conv_backend=onednn compiles a small C++ file once and needs a C++17 "
            "compiler (g++) on PATH or in $CXX; install one or use model.conv_backend=xla"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [
        cxx, "-O2", "-std=c++17", "-shared", "-fPIC",
        f"-I{jax.ffi.include_dir()}", f"-I{include}", str(SOURCE),
        f"-L{lib.parent}", f"-l:{lib.name}", f"-Wl,-rpath,{lib.parent}", "-o", tmp,
    ]  # fmt: skip
    log.info("building the oneDNN convolution kernels: %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        os.unlink(tmp)
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        raise ConfigError(f"building {SOURCE.name} failed ({cxx}, exit {done.returncode}):\n{tail}")
    os.replace(tmp, out)


def build() -> Path:
    """The compiled handlers, built first if this source, jaxlib and oneDNN have none yet."""
    lib = _wheel_file("onednn-cpu-gomp", "libdnnl.so.3")
    include = _wheel_file("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp").parents[2]
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jax.ffi.include_dir().encode(), str(lib).encode()):
        key.update(part)
    key.update(importlib.metadata.version("jaxlib").encode())
    out = _cache_dir() / f"onednn_conv-{key.hexdigest()[:16]}.so"
    if not out.exists():
        _compile(out, include, lib)
    return out


@functools.cache
def library() -> Path:
    """:func:`build`, loaded and registered as XLA FFI targets (once per process)."""
    if jax.default_backend() != "cpu":
        raise ConfigError(
            f"model.conv_backend=onednn runs on the CPU; this process's backend is "
            f"{jax.default_backend()!r}: use model.conv_backend=xla"
        )
    out = build()
    handle = ctypes.CDLL(str(out))
    for target in TARGETS.values():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(handle, target)), "cpu")
    return out


@functools.lru_cache(maxsize=1)
def _warn_gathered(devices: int) -> None:
    log.warning(
        "model.conv_backend=onednn with %d devices: an FFI call has no partitioning rule, so "
        "XLA gathers a sharded batch onto every device for each convolution (correct, but no "
        "data parallelism); use model.conv_backend=xla for multi-device runs",
        devices,
    )


def _attrs(stride: int, padding: int) -> dict[str, np.int64]:
    s, p = np.int64(stride), np.int64(padding)
    return dict(stride_h=s, stride_w=s, pad_top=p, pad_bottom=p, pad_left=p, pad_right=p)


def _out_shape(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> tuple[int, ...]:
    n, h, w, _ = x.shape
    kh, kw, _, o = kernel.shape
    return (n, (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1, o)


def _call(target: str, shape: tuple[int, ...], *args: jax.Array, stride: int, padding: int):
    out = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.ffi.ffi_call(TARGETS[target], out)(*args, **_attrs(stride, padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
    """NHWC ``x`` (float32) convolved with HWIO ``kernel``, square ``stride`` and symmetric
    zero ``padding``: ``lax.conv_general_dilated`` computed by oneDNN."""
    if x.dtype != jnp.float32 or kernel.dtype != jnp.float32:
        raise ConfigError(
            f"model.conv_backend=onednn computes in float32, got {x.dtype}/{kernel.dtype}: "
            "use model.compute_dtype=float32 or model.conv_backend=xla"
        )
    library()
    if jax.device_count() > 1:
        _warn_gathered(jax.device_count())
    return _call("forward", _out_shape(x, kernel, stride, padding), x, kernel,
                 stride=stride, padding=padding)  # fmt: skip


def _forward(x, kernel, stride, padding):
    return conv2d(x, kernel, stride, padding), (x, kernel)


def _backward(stride, padding, residuals, dy):
    x, kernel = residuals
    dx = _call("input_grad", x.shape, dy, kernel, stride=stride, padding=padding)
    dk = _call("kernel_grad", kernel.shape, x, dy, stride=stride, padding=padding)
    return dx, dk


conv2d.defvjp(_forward, _backward)
