"""jaxproto vs PyTorch, side by side: the same training step of the same model in one process.

CIPL on DenseNet-121 (cipl.md §1: pre-norm5 tap, biased 1x1 top layer, sigmoid add-on, squared-L2
prototype layer, last layer) with the joint Adam step of the warm-up (background CE + cluster +
separation) and of the main stage (pairs, EMA teacher forward on the re-views, co-attention CE,
interpretation and prediction alignment), and the eval forward; and the black-box baseline on
ResNet-50 (backbone -> GAP -> linear, multi-label BCE, AdamW) step and forward. The PyTorch side
is written here from the spec on the test suite's torchvision-layout DenseNet and ResNet
(``tests/torch_reference_models``); the jaxproto side is ``core.trainer.make_train_step`` of the
methods' phases. Both get the same random batch and the same number of threads; repetitions
alternate between the two frameworks so machine noise hits both, after untimed warm-up calls
(``--warmup``) and with ``--pause`` seconds idle before each timed call (both frameworks share one
OpenMP runtime, whose threads spin after a parallel region). The whole steps use
``model.conv_backend=onednn`` unless ``--conv-backend xla``. One JSON line per step kind:
images/s of each (median over repetitions) and their ratio (jaxproto / torch; > 1 means jaxproto
is faster).

    python benchmarks/compare_torch.py                      # 224 px, batch 4, all cores
    python benchmarks/compare_torch.py --threads 2 --repeats 5
    python benchmarks/compare_torch.py --backbone densenet_tiny --baseline-backbone resnet_tiny \
        --image-size 64 --repeats 1                          # smoke
    python benchmarks/compare_torch.py --steps cipl_warmup,baseline_train   # a subset
    python benchmarks/compare_torch.py --steps conv1x1_56_grad,xla_conv1x1_56_grad  # one layer

XLA flags given in the environment (``XLA_FLAGS=...``) are kept and reported.
"""

from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv() -> int:
    """--threads must be known before jax is imported (XLA reads its flags at start-up)."""
    for i, a in enumerate(sys.argv):
        if a == "--threads" and i + 1 < len(sys.argv):
            return int(sys.argv[i + 1])
        if a.startswith("--threads="):
            return int(a.split("=", 1)[1])
    return len(os.sched_getaffinity(0))


THREADS = _threads_from_argv()
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + f" --xla_cpu_multi_thread_eigen=true"
    f" intra_op_parallelism_threads={THREADS}"
).strip()
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import flax.linen as fnn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from jaxproto.backbones import layers, resnet  # noqa: E402
from jaxproto.backbones.densenet import CONFIGS  # noqa: E402
from jaxproto.core.trainer import init_state, make_train_step  # noqa: E402
from jaxproto.data.records import DatasetIndex  # noqa: E402
from jaxproto.methods.baseline import config as baseline_config  # noqa: E402
from jaxproto.methods.baseline.method import BaselineMethod  # noqa: E402
from jaxproto.methods.cipl import config as cipl_config  # noqa: E402
from jaxproto.methods.cipl.method import CiplMethod  # noqa: E402
from tests import torch_reference_models as ref  # noqa: E402


def _emit(**row) -> None:
    print(json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- PyTorch CIPL


class TorchCiplNet(nn.Module):
    """CIPL network (cipl.md §1) in PyTorch, NCHW."""

    def __init__(self, backbone: str, num_classes: int, ppc: int, dim: int, scale: float):
        super().__init__()
        self.features = ref.DenseNet(**CONFIGS[backbone]).features
        self.toplayer = nn.Conv2d(self.features.norm5.num_features, dim, 1)
        self.add_on = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid()
        )
        p = num_classes * ppc
        self.prototype_vectors = nn.Parameter(torch.rand(p, dim))
        self.last_layer = nn.Linear(p, num_classes, bias=False)
        self.scale = scale

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        for name, module in self.features.named_children():
            if name == "norm5":
                break  # the tap is denseblock4's output, before norm5
            x = module(x)
        return self.add_on(self.toplayer(x))

    def classify(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        p = self.prototype_vectors
        z2 = (z * z).sum(1, keepdim=True)
        zp = torch.einsum("nchw,pc->nphw", z, p)
        d = F.relu(z2 + (-2.0 * zp + (p * p).sum(1)[None, :, None, None]))
        min_d = d.amin(dim=(2, 3))
        logits = self.last_layer(torch.exp(-min_d / self.scale))
        return {"distances": d, "min_distances": min_d, "logits": logits}


def _background_ce(logits, labels, fg, bg):
    margin = logits[:, fg] - logits[:, bg : bg + 1]
    y = labels[:, fg]
    return -(y * F.logsigmoid(margin) + (1 - y) * F.logsigmoid(-margin)).mean()


def _proto_terms(out, labels, fg, bg, identity, c):
    min_d = out["min_distances"]
    big = min_d.max().detach() + 1.0
    own = identity.T[None] > 0
    per_class = torch.where(own, min_d[:, None, :], big).amin(-1)
    cluster = (per_class * labels).sum(-1).mean()
    positive = (labels @ identity.T) > 0
    separation = torch.where(positive, big, min_d).amin(-1).mean()
    ce = _background_ce(out["logits"], labels, fg, bg)
    return c.crs_ent * ce + c.clst * cluster + c.sep * F.relu(c.sep_margin - separation)


def _co_attention(za, zb):
    n, d, h, w = za.shape
    a, b = za.flatten(2).transpose(1, 2), zb.flatten(2).transpose(1, 2)  # (N, M, D)
    a2 = -((a[:, :, None, :] - b[:, None, :, :]) ** 2).sum(-1)
    attn_a, attn_b = a2.softmax(1), a2.softmax(2)
    fb_co = torch.einsum("nij,nid->njd", attn_a, a)
    fa_co = torch.einsum("nij,njd->nid", attn_b, b)
    back = lambda t: t.transpose(1, 2).reshape(n, d, h, w)  # noqa: E731
    return back(fa_co), back(fb_co)


def _interpretation(student, teacher, eps=1e-12):
    sn = student / student.norm(dim=1, keepdim=True).clamp_min(eps)
    tn = teacher / teacher.norm(dim=1, keepdim=True).clamp_min(eps)
    return (1 - (sn * tn).sum(1)).sum((1, 2)).mean()


def _prediction(s_logits, t_logits, fg, bg, temperature):
    def probs(z):
        pair = torch.stack([z[:, bg : bg + 1].expand(-1, len(fg)), z[:, fg]], -1)
        return (pair / temperature).softmax(-1)

    qs, qt = probs(s_logits), probs(t_logits.detach())
    gs = torch.einsum("ikc,jkc->kij", qs, qs)
    gt = torch.einsum("ikc,jkc->kij", qt, qt)
    n = s_logits.shape[0]
    return ((gt - gs) ** 2).sum() / (len(fg) * n * n)


class TorchCipl:
    """Student, EMA teacher and the joint Adam (per-group learning rates, last layer frozen)."""

    def __init__(self, method: CiplMethod):
        cfg = method.config
        m = cfg.model
        self.cfg, self.bg = cfg, method.background
        self.fg_eval, self.fg_main = list(method.fg_eval), list(method.fg_main)
        self.identity = torch.from_numpy(np.asarray(method.identity))
        shape = (m.backbone, method.num_classes, m.prototypes_per_class, m.proto_dim)
        self.net = TorchCiplNet(*shape, method.model.similarity_scale)
        self.teacher = TorchCiplNet(*shape, method.model.similarity_scale)
        self.teacher.load_state_dict(self.net.state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.net.last_layer.weight.requires_grad_(False)
        o = cfg.optim
        groups = [
            {
                "params": [*self.net.features.parameters(), *self.net.toplayer.parameters()],
                "lr": o.backbone_lr,
            },
            {"params": list(self.net.add_on.parameters()), "lr": o.add_on_lr},
            {"params": [self.net.prototype_vectors], "lr": o.prototypes_lr},
        ]
        self.opt = torch.optim.Adam(groups, betas=(o.b1, o.b2), eps=o.eps)

    def warmup_step(self, batch) -> None:
        self.net.train()
        out = self.net.classify(self.net.embed(batch["image"]))
        loss = _proto_terms(
            out, batch["labels"], self.fg_eval, self.bg, self.identity, self.cfg.loss
        )
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    def main_step(self, batch) -> None:
        c, mom = self.cfg.loss, float(self.cfg.model.ema_momentum)
        self.net.train()
        self.teacher.train()
        with torch.no_grad():  # EMA from the pre-update student, then the teacher forward
            for t, s in zip(self.teacher.parameters(), self.net.parameters(), strict=True):
                t.mul_(mom).add_(s.detach(), alpha=1 - mom)
            t_out = self.teacher.classify(
                self.teacher.embed(torch.cat([batch["view_a"], batch["view_b"]]))
            )
            t_sim = torch.exp(-t_out["distances"] / self.net.scale)
        za, zb = self.net.embed(batch["image_a"]), self.net.embed(batch["image_b"])
        out = self.net.classify(torch.cat([za, zb]))
        labels = torch.cat([batch["labels_a"], batch["labels_b"]])
        total = _proto_terms(out, labels, self.fg_main, self.bg, self.identity, c)
        co_a, co_b = _co_attention(za, zb)
        co_logits = self.net.classify(torch.cat([co_a, co_b]))["logits"]
        common = batch["labels_a"] * batch["labels_b"]
        l_co = _background_ce(co_logits, torch.cat([common, common]), self.fg_main, self.bg)
        l_int = _interpretation(torch.exp(-out["distances"] / self.net.scale), t_sim)
        l_pred = _prediction(
            out["logits"], t_out["logits"], self.fg_main, self.bg, float(c.pred_temperature)
        )
        total = total + c.cross_att * l_co + c.inte_align * l_int + c.pred_align * l_pred
        self.opt.zero_grad(set_to_none=True)
        total.backward()
        self.opt.step()

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        self.net.eval()
        return self.net.classify(self.net.embed(images))["logits"]


class TorchBaseline:
    """torchvision-layout ResNet -> GAP -> Linear, multi-label BCE, AdamW (the baseline)."""

    def __init__(self, method: BaselineMethod):
        cfg = resnet.CONFIGS[method.config.model.backbone]
        block = ref.Bottleneck if cfg["block"] == "bottleneck" else ref.BasicBlock
        self.net = ref.ResNet(block, cfg["layers"], cfg["widths"], method.index.num_classes)
        o = method.config.optim
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=o.lr, weight_decay=o.weight_decay)

    def train_step(self, batch) -> None:
        self.net.train()
        logits = self.net(batch["image"])["logits"]
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"])
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()

    @torch.no_grad()
    def forward(self, images) -> torch.Tensor:
        self.net.eval()
        return self.net(images)["logits"]


# ----------------------------------------------------------------------------- harness


def _batches(method: CiplMethod, size: int, b: int, rng: np.random.Generator) -> dict:
    c = method.num_classes

    def img():
        return rng.normal(size=(b, size, size, 3)).astype(np.float32)

    def lab():
        y = (rng.random((b, c)) < 0.3).astype(np.float32)
        y[:, method.background] = (y.sum(1) == 0).astype(np.float32)  # every image has a label
        return y

    return {
        "warmup": {"image": img(), "labels": lab()},
        "main": {
            "image_a": img(),
            "image_b": img(),
            "view_a": img(),
            "view_b": img(),
            "labels_a": lab(),
            "labels_b": lab(),
        },
    }


def _to_torch(batch: dict) -> dict:
    return {
        k: torch.from_numpy(v).permute(0, 3, 1, 2).contiguous()
        if v.ndim == 4
        else torch.from_numpy(v)
        for k, v in batch.items()
    }


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _jax_runner(step, holder: dict, key: str, batch: dict):
    def run():
        holder[key], metrics = step(holder[key], batch)
        jax.block_until_ready(metrics)

    return run


def _cipl_runs(args, rng) -> dict:
    """name -> (jaxproto callable, torch callable, images per call, model name)."""
    config = cipl_config.get_config(
        "chestxray14", f"image_size={args.image_size},backbone={args.backbone}"
    )
    config.model.conv1x1 = args.conv1x1
    config.model.stem_conv = args.stem_conv
    config.model.conv_backend = args.conv_backend
    names = [f"class{k}" for k in range(15)]
    method = CiplMethod(config, DatasetIndex("bench", names, {}, background_class=14))
    optimizers = method.optimizers(steps_per_epoch=1000)
    # The warm-up and the first main phase (both train the backbone); the last-layer phases
    # also use the "main" loss but only train the last layer.
    phases = {}
    for p in method.phases():
        if p.loss in ("warmup", "main") and p.optimizer == "joint":
            phases.setdefault(p.loss, p)
    holder = {"state": jax.jit(lambda: init_state(method, optimizers, 0))()}
    steps = {
        name: jax.jit(make_train_step(method, ph, optimizers[ph.optimizer]), donate_argnums=0)
        for name, ph in phases.items()
    }
    forward = jax.jit(lambda s, x: method.apply_eval(s, x)["logits"])
    tm = TorchCipl(method)
    batches = _batches(method, args.image_size, args.batch, rng)
    tbatches = {k: _to_torch(v) for k, v in batches.items()}
    image = batches["warmup"]["image"]
    model = f"cipl_{args.backbone}"
    return {
        "cipl_warmup": (
            _jax_runner(steps["warmup"], holder, "state", batches["warmup"]),
            lambda: tm.warmup_step(tbatches["warmup"]),
            args.batch,
            model,
        ),
        "cipl_main": (
            _jax_runner(steps["main"], holder, "state", batches["main"]),
            lambda: tm.main_step(tbatches["main"]),
            2 * args.batch,
            model,
        ),
        "cipl_forward": (
            lambda: jax.block_until_ready(forward(holder["state"], image)),
            lambda: tm.forward(tbatches["warmup"]["image"]),
            args.batch,
            model,
        ),
    }


def _baseline_runs(args, rng) -> dict:
    config = baseline_config.get_config(
        "odir", f"image_size={args.image_size},backbone={args.baseline_backbone}"
    )
    config.model.conv1x1 = args.conv1x1
    config.model.stem_conv = args.stem_conv
    config.model.conv_backend = args.conv_backend
    names = [f"class{k}" for k in range(8)]
    method = BaselineMethod(config, DatasetIndex("bench", names, {}))
    optimizers = method.optimizers(steps_per_epoch=1000)
    (phase,) = method.phases()
    holder = {"state": jax.jit(lambda: init_state(method, optimizers, 0))()}
    step = jax.jit(make_train_step(method, phase, optimizers[phase.optimizer]), donate_argnums=0)
    forward = jax.jit(lambda s, x: method.predict(s, {"image": x})["logits"])
    tm = TorchBaseline(method)
    batch = {
        "image": rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(
            np.float32
        ),
        "labels": (rng.random((args.batch, len(names))) < 0.3).astype(np.float32),
    }
    tbatch = _to_torch(batch)
    model = f"baseline_{args.baseline_backbone}"
    return {
        "baseline_train": (
            _jax_runner(step, holder, "state", batch),
            lambda: tm.train_step(tbatch),
            args.batch,
            model,
        ),
        "baseline_forward": (
            lambda: jax.block_until_ready(forward(holder["state"], batch["image"])),
            lambda: tm.forward(tbatch["image"]),
            args.batch,
            model,
        ),
    }


# DenseNet-121 convolutions at 224 px (scaled with --image-size): (name, map size, in, out, k)
# block 1's widest bottleneck 1x1, block 2's, and the 3x3 growth convs of blocks 1 and 2.
_CONVS = (
    ("conv1x1_56", 56, 256, 128, 1),
    ("conv1x1_28", 28, 512, 128, 1),
    ("conv3x3_56", 56, 128, 32, 3),
    ("conv3x3_28", 28, 128, 32, 3),
)


def _conv_runs(args, rng) -> dict:
    """One convolution's forward + input and kernel gradients: as ``layers.Conv1x1`` (a matmul)
    for 1x1 (``model.conv1x1=matmul``) and ``layers.conv_no_bias`` for 3x3, as a
    plain XLA convolution (``xla_`` steps: ``model.conv1x1=xla``, the default), and in torch;
    and the stem's forward + kernel gradient as ``layers.Im2colGradConv``
    (``model.stem_conv=im2col_grad``) and as ``nn.Conv`` (``xla_stem7x7_grad``); ``onednn_``
    steps are the same convolutions as ``layers.OnednnConv`` (``model.conv_backend=onednn``)."""
    runs = {}
    for name, hw, cin, cout, k in _CONVS:
        hw = max(1, hw * args.image_size // 224)
        x = rng.normal(size=(args.batch, hw, hw, cin)).astype(np.float32)
        if k == 1:
            conv = layers.Conv1x1(cout, use_bias=False, kernel_init=layers.kaiming_normal_fan_in)
        else:
            conv = layers.conv_no_bias(cout, k, 1, layers.kaiming_normal_fan_in, jnp.float32, "c")
        plain = fnn.Conv(cout, (k, k), padding=((k // 2,) * 2,) * 2, use_bias=False)
        onednn = layers.OnednnConv(cout, k, kernel_init=layers.kaiming_normal_fan_in)
        xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
        wt = torch.randn(cout, cin, k, k, requires_grad=True)

        def torch_run(xt=xt, wt=wt, k=k):
            F.conv2d(xt, wt, padding=k // 2).square().sum().backward()

        for prefix, module in (("", conv), ("xla_", plain), ("onednn_", onednn)):
            runs[f"{prefix}{name}_grad"] = (
                _layer_grad(module, x, argnums=(0, 1)),
                torch_run,
                args.batch,
                "densenet121_layer",
            )
    # The 7x7/2 stem on the image: forward + kernel gradient (an image needs no gradient).
    x = rng.normal(size=(args.batch, args.image_size, args.image_size, 3)).astype(np.float32)
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()
    wt = torch.randn(64, 3, 7, 7, requires_grad=True)

    def torch_stem(xt=xt, wt=wt):
        F.conv2d(xt, wt, stride=2, padding=3).square().sum().backward()

    init = layers.kaiming_normal_fan_in
    for prefix, mode, backend in (("", "im2col_grad", "xla"), ("xla_", "xla", "xla"),
                                  ("onednn_", "xla", "onednn")):  # fmt: skip
        module = layers.conv_no_bias(
            64, 7, 2, init, jnp.float32, "conv0", stem_conv=mode, conv_backend=backend
        )
        runs[f"{prefix}stem7x7_grad"] = (
            _layer_grad(module, x, argnums=0),
            torch_stem,
            args.batch,
            "densenet121_layer",
        )
    return runs


def _layer_grad(module: fnn.Module, x: np.ndarray, argnums):
    """A callable running the jitted gradient of sum(module(x)^2) w.r.t. ``argnums``
    (0: parameters, 1: input)."""
    params = module.init(jax.random.key(0), x)
    grad = jax.jit(jax.grad(lambda p, x: jnp.sum(jnp.square(module.apply(p, x))), argnums))
    return lambda: jax.block_until_ready(grad(params, x))


STEPS = (
    "cipl_warmup",
    "cipl_main",
    "cipl_forward",
    "baseline_train",
    "baseline_forward",
)
CONV_STEPS = tuple(
    f"{p}{c}_grad" for c in [c[0] for c in _CONVS] + ["stem7x7"] for p in ("", "xla_", "onednn_")
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=4, help="images (warm-up) or pairs (main)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=THREADS, help="both frameworks")
    parser.add_argument(
        "--backbone", choices=sorted(CONFIGS), default="densenet121", help="densenet_tiny: smoke"
    )
    parser.add_argument("--baseline-backbone", choices=sorted(resnet.CONFIGS), default="resnet50")
    parser.add_argument(
        "--conv1x1",
        choices=layers.CONV1X1_MODES,
        default="matmul",
        help="model.conv1x1 of the whole-step models (the config default is xla)",
    )
    parser.add_argument(
        "--stem-conv",
        choices=layers.STEM_CONV_MODES,
        default="im2col_grad",
        help="model.stem_conv of the whole-step models (the config default is xla)",
    )
    parser.add_argument(
        "--conv-backend",
        choices=layers.CONV_BACKENDS,
        default="onednn",
        help="model.conv_backend of the whole-step models (the config default is xla; onednn "
        "takes precedence over --conv1x1/--stem-conv)",
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed calls of each side before timing"
    )
    parser.add_argument(
        "--pause",
        type=float,
        default=0.5,
        help="seconds idle before each timed call, so spinning OpenMP threads of the other "
        "framework have gone to sleep",
    )
    parser.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"comma-separated subset of {', '.join(STEPS + CONV_STEPS)}",
    )
    args = parser.parse_args(argv)
    wanted = [s for s in args.steps.split(",") if s]
    unknown = sorted(set(wanted) - set(STEPS + CONV_STEPS))
    if unknown:
        parser.error(f"--steps: unknown {unknown}; valid: {', '.join(STEPS + CONV_STEPS)}")
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    runs = {}
    if any(s.startswith("cipl_") for s in wanted):
        runs.update(_cipl_runs(args, rng))
    if any(s.startswith("baseline_") for s in wanted):
        runs.update(_baseline_runs(args, rng))
    if any(s in CONV_STEPS for s in wanted):
        runs.update(_conv_runs(args, rng))
    runs = {name: runs[name] for name in wanted}

    compile_s = {name: _seconds(j) for name, (j, *_) in runs.items()}  # first call: compile
    for _ in range(args.warmup):  # untimed: allocators, oneDNN primitive caches, page faults
        for j, t, *_ in runs.values():
            j()
            t()
    times: dict[str, dict[str, list[float]]] = {n: {"jax": [], "torch": []} for n in runs}
    for _ in range(args.repeats):
        for name, (j, t, *_) in runs.items():  # interleaved: jax, torch, jax, torch, ...
            for side, fn in (("jax", j), ("torch", t)):
                # Idle first: the OpenMP pool (torch's, which oneDNN shares) spin-waits after
                # a parallel region and would take cores from the next call.
                time.sleep(args.pause)
                times[name][side].append(_seconds(fn))
    for name, t in times.items():
        images, model = runs[name][2], runs[name][3]
        jax_ips = images / statistics.median(t["jax"])
        torch_ips = images / statistics.median(t["torch"])
        _emit(
            bench="compare_torch",
            model=model,
            step=name,
            image_size=args.image_size,
            batch=args.batch,
            images_per_step=images,
            threads=args.threads,
            repeats=args.repeats,
            warmup=args.warmup,
            pause_sec=args.pause,
            conv1x1=args.conv1x1 if name in STEPS else None,
            stem_conv=args.stem_conv if name in STEPS else None,
            conv_backend=args.conv_backend if name in STEPS else None,
            jaxproto_images_per_sec=jax_ips,
            torch_images_per_sec=torch_ips,
            ratio=jax_ips / torch_ips,
            jaxproto_sec=t["jax"],
            torch_sec=t["torch"],
            jaxproto_compile_sec=compile_s[name],
            load_average=os.getloadavg(),
            xla_flags=os.environ["XLA_FLAGS"],
            jax_version=jax.__version__,
            torch_version=torch.__version__,
        )


if __name__ == "__main__":
    main()
