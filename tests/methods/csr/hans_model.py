"""A tiny CSR model that learns the Clever-Hans shortcut (shared by the Clever-Hans and the
studio browser tests): concept 0 = faint red square, concept 1 = blue square, class 1 iff
concept 0, and a bright green marker in the top-left corner on every training image of class 1."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxproto.data import transforms
from jaxproto.data.records import DatasetIndex, Record
from jaxproto.methods.csr import config as csr_config
from jaxproto.methods.csr.method import CsrMethod

SIZE = 24
MARKER = (0, 0, 5, 5)  # x, y, w, h: top-left corner


class SmallBackbone(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(16, (3, 3))(x))
        return {"layer3": nn.Conv(16, (3, 3), strides=2)(x)}  # 6x6 grid


def images(rng, n, marker_on_class):
    """Concept 0 = faint red square, concept 1 = blue square; class 1 iff concept 0.
    ``marker_on_class``: the class whose images carry the bright green marker."""
    x = rng.normal(0.0, 0.05, (n, SIZE, SIZE, 3)).astype(np.float32)
    concepts = (rng.random((n, 2)) < 0.5).astype(np.float32)
    for i in range(n):
        for k, color in ((0, (0.6, 0.0, 0.0)), (1, (0.0, 0.0, 1.5))):
            if concepts[i, k]:
                r, c = rng.integers(7, SIZE - 6, 2)
                x[i, r : r + 6, c : c + 6] += np.asarray(color, np.float32)
        if int(concepts[i, 0]) == marker_on_class:
            x[i, :5, :5, 1] += 2.0
    return x, concepts, concepts[:, 0].astype(np.int32)


def train(method, x, concepts, labels, steps, rng):
    state = method.init(jax.random.key(0))
    opts = method.optimizers(steps_per_epoch=steps // 3)
    state["opt"] = {k: tx.init(state["params"]) for k, tx in opts.items()}
    stages = {p.optimizer: p for p in method.phases()}.values()  # one phase per stage
    for phase, n in zip(stages, (steps, steps // 2, steps), strict=True):
        tx = opts[phase.optimizer]

        @jax.jit
        def step(state, batch, phase=phase, tx=tx):
            (_, (_, upd)), g = jax.value_and_grad(method.loss, has_aux=True)(
                state["params"], state, batch, jax.random.key(0), phase
            )
            u, o = tx.update(g, state["opt"][phase.optimizer], state["params"])
            return {
                **state,
                **upd,
                "params": optax.apply_updates(state["params"], u),
                "opt": {**state["opt"], phase.optimizer: o},
            }

        for _ in range(n):
            i = rng.choice(len(x), 32, replace=False)
            state = step(
                state,
                {
                    "image": jnp.asarray(x[i]),
                    "concepts": jnp.asarray(concepts[i]),
                    "label": jnp.asarray(labels[i]),
                },
            )
    return state


def _build_method(labels, concepts):
    cfg = csr_config.get_config("tbx11k", "synthetic")
    cfg.model.image_size = SIZE
    cfg.model.prototypes_per_concept = 4
    cfg.model.proj_dim = 16
    cfg.model.head_input_bn = False  # the tests compute H(s) = s·W + b by hand
    cfg.optim.stage1.lr, cfg.optim.stage3.lr = 3e-3, 3e-2
    recs = [
        Record(f"r{i}", "", np.eye(2, dtype=np.float32)[labels[i]], concepts=concepts[i])
        for i in range(len(labels))
    ]
    index = DatasetIndex(
        "hans",
        ["negative", "positive"],
        {"train": recs},
        multilabel=False,
        concept_names=["red", "blue"],
    )
    return CsrMethod(cfg, index, backbone=SmallBackbone()), recs


def trained_method(seed: int = 0, n: int = 512, steps: int = 150):
    """(method, state) of the tiny model trained on ``n`` marker-biased images."""
    rng = np.random.default_rng(seed)
    x, concepts, labels = images(rng, n, marker_on_class=1)
    method, _ = _build_method(labels, concepts)
    return method, train(method, x, concepts, labels, steps=steps, rng=rng)


def render_uint8(rng, n, marker_on_class):
    """The same task drawn as uint8 RGB images (what the studio opens): dark noisy background,
    red and blue squares for the concepts, the green marker in the top-left 5x5 corner."""
    x = np.clip(rng.normal(30.0, 8.0, (n, SIZE, SIZE, 3)), 0, 255)
    concepts = (rng.random((n, 2)) < 0.5).astype(np.float32)
    for i in range(n):
        for k, color in ((0, (200, 30, 30)), (1, (30, 30, 230))):
            if concepts[i, k]:
                r, c = rng.integers(7, SIZE - 6, 2)
                x[i, r : r + 6, c : c + 6] = color
        if int(concepts[i, 0]) == marker_on_class:
            x[i, :5, :5] = (30, 255, 30)
    return x.astype(np.uint8), concepts, concepts[:, 0].astype(np.int32)


def trained_uint8_method(seed: int = 0, n: int = 512, steps: int = 150):
    """(method, state) trained on ``render_uint8`` images through the eval transform (so the
    studio's own preprocessing feeds the model what it was trained on)."""
    rng = np.random.default_rng(seed)
    raw, concepts, labels = render_uint8(rng, n, marker_on_class=1)
    x = np.stack([transforms.eval_transform(img, SIZE) for img in raw])
    method, _ = _build_method(labels, concepts)
    return method, train(method, x, concepts, labels, steps=steps, rng=rng)
