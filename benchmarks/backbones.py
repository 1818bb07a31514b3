"""Backbone throughput: forward and forward+backward images/s in JAX and (if importable) PyTorch.

    python benchmarks/backbones.py --archs densenet121,resnet50 --sizes 224,512 --batch 32 \\
        --steps 20

Prints one JSON line per (arch, size, mode) with jax_ips, torch_ips and ratio (jax / torch).
Forward = eval mode with the classifier head; forward+backward = train mode (BN batch statistics)
with the gradient of mean(logits) w.r.t. all parameters. PyTorch models come from torchvision /
timm when installed, else from the reference modules in tests/torch_reference_models.py (same
architectures); weights are random (throughput does not depend on them).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.backbones import BACKBONES, build_backbone


def _jax_fns(arch: str, size: int, batch: int, dtype: str):
    model = build_backbone(
        arch, taps=("logits",), with_head=True, dtype=jnp.dtype(dtype), **_no_dropout(arch)
    )
    x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, size, size, 3)), jnp.float32)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
    forward = jax.jit(functools.partial(model.apply, train=False))

    @jax.jit
    def train_step(variables, x):
        def loss(params):
            out, upd = model.apply(
                {**variables, "params": params}, x, train=True, mutable=["batch_stats"]
            )
            return jnp.mean(out["logits"].astype(jnp.float32)), upd

        (value, upd), grads = jax.value_and_grad(loss, has_aux=True)(variables["params"])
        return value, grads, upd

    return {
        "forward": lambda: forward(variables, x),
        "forward_backward": lambda: train_step(variables, x),
    }


def _no_dropout(arch: str) -> dict:
    return {"dropout_rate": 0.0} if BACKBONES[arch].family == "vgg" else {}


def _torch_model(arch: str):
    import torch  # noqa: F401

    try:
        if arch == "convnext_tiny":
            import timm

            return timm.create_model("convnext_tiny")
        import torchvision

        return getattr(torchvision.models, arch)()
    except (ImportError, AttributeError):
        pass
    path = pathlib.Path(__file__).resolve().parents[1] / "tests" / "torch_reference_models.py"
    spec = importlib.util.spec_from_file_location("torch_reference_models", path)
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    spec_cfg = BACKBONES[arch].config
    family = BACKBONES[arch].family
    if family == "resnet":
        block = ref.BasicBlock if spec_cfg["block"] == "basic" else ref.Bottleneck
        return ref.ResNet(block, spec_cfg["layers"], spec_cfg["widths"])
    if family == "densenet":
        return ref.DenseNet(
            spec_cfg["growth_rate"], spec_cfg["block_config"], spec_cfg["num_init_features"]
        )
    if family == "vgg":
        return ref.VGG(list(spec_cfg["cfg"]), spec_cfg["batch_norm"], dropout=0.0)
    return ref.TimmConvNeXt(spec_cfg["depths"], spec_cfg["dims"])


def _logits(out):
    return out["logits"] if isinstance(out, dict) else out


def _torch_fns(arch: str, size: int, batch: int):
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = _torch_model(arch).to(device)
    x = torch.randn(batch, 3, size, size, device=device)

    def forward():
        model.eval()
        with torch.no_grad():
            return _logits(model(x))

    def forward_backward():
        model.train()
        model.zero_grad(set_to_none=True)
        loss = _logits(model(x)).mean()
        loss.backward()
        return loss

    def sync(_):
        if device == "cuda":
            torch.cuda.synchronize()

    return {"forward": forward, "forward_backward": forward_backward}, sync


def _images_per_second(fn, sync, batch: int, steps: int, warmup: int) -> float:
    for _ in range(warmup):
        sync(fn())
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    sync(out)
    return batch * steps / (time.perf_counter() - start)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", default="resnet50,densenet121,convnext_tiny")
    parser.add_argument("--sizes", default="224", help="comma-separated square input sizes")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-torch", action="store_true", help="skip the PyTorch measurement")
    args = parser.parse_args(argv)
    try:
        if args.no_torch:
            raise ImportError
        import torch  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False
    jax_sync = jax.block_until_ready
    for arch in args.archs.split(","):
        if arch not in BACKBONES:
            raise ValueError(f"unknown arch {arch!r}; valid: {sorted(BACKBONES)}")
        for size in (int(s) for s in args.sizes.split(",")):
            jfns = _jax_fns(arch, size, args.batch, args.dtype)
            tfns, tsync = _torch_fns(arch, size, args.batch) if have_torch else ({}, None)
            for mode, fn in jfns.items():
                jax_ips = _images_per_second(fn, jax_sync, args.batch, args.steps, args.warmup)
                torch_ips = (
                    _images_per_second(tfns[mode], tsync, args.batch, args.steps, args.warmup)
                    if have_torch
                    else None
                )
                record = {
                    "arch": arch,
                    "size": size,
                    "batch": args.batch,
                    "mode": mode,
                    "dtype": args.dtype,
                    "device": jax.devices()[0].device_kind,
                    "jax_ips": round(jax_ips, 2),
                    "torch_ips": round(torch_ips, 2) if torch_ips else None,
                    "ratio": round(jax_ips / torch_ips, 3) if torch_ips else None,
                }
                print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
