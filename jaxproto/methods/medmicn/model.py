"""Med-MICN's network (specs/medmicn.md §2-3): backbone -> feature f(x) (the 1000 ImageNet
logits by default, or the pooled feature), pre-projection, concept embedding module, DCR layer,
fusion MLP on [f(x), vec(c_emb)], and the side head (computed, not in the loss)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.backbones import build_backbone, get_spec
from jaxproto.methods.medmicn import dcr

BACKBONE_FEATURES = ("imagenet_logits", "pooled")


def _torch_uniform(fan_in: int) -> nn.initializers.Initializer:
    """PyTorch's default Linear init, U(±1/√fan_in), for weight and bias alike."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, torch_init: bool, name: str) -> nn.Dense:
    """Dense with torch-style init when ``torch_init`` (else Flax's lecun_normal / zeros)."""
    if torch_init:
        init = _torch_uniform(fan_in)
        return nn.Dense(features, kernel_init=init, bias_init=init, name=name)
    return nn.Dense(features, name=name)


class ConceptEmbedding(nn.Module):
    """N context generators Linear(h→2e)+LeakyReLU as one einsum, one shared probability head
    Linear(2e→1)+σ, embedding e_i = p_i·h_i[:e] + (1−p_i)·h_i[e:] (§2)."""

    num_concepts: int
    emb_size: int
    torch_init: bool = False

    @nn.compact
    def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        n, e, h = self.num_concepts, self.emb_size, z.shape[-1]
        if self.torch_init:
            k_init = b_init = _torch_uniform(h)
        else:
            k_init = nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
            b_init = nn.initializers.zeros
        kernel = self.param("context_kernel", k_init, (n, h, 2 * e))
        bias = self.param("context_bias", b_init, (n, 2 * e))
        ctx = nn.leaky_relu(jnp.einsum("bh,nhk->bnk", z, kernel) + bias, 0.01)
        logit = dense(1, 2 * e, self.torch_init, "prob_head")(ctx)[..., 0]
        p = jax.nn.sigmoid(logit)
        emb = p[..., None] * ctx[..., :e] + (1.0 - p[..., None]) * ctx[..., e:]
        return emb, p, logit


class ConceptReasoning(nn.Module):
    """Φ (polarity) and Ψ (relevance): Linear(e→e)+LeakyReLU+Linear(e→K), shared over concepts."""

    num_classes: int
    temperature: float = 100.0
    gate: str = "softselect"
    torch_init: bool = False

    @nn.compact
    def __call__(self, emb: jax.Array, probs: jax.Array) -> dict[str, jax.Array]:
        e = emb.shape[-1]

        def mlp(name):
            h = nn.leaky_relu(dense(e, e, self.torch_init, f"{name}_0")(emb), 0.01)
            return dense(self.num_classes, e, self.torch_init, f"{name}_2")(h)

        sign = jax.nn.sigmoid(mlp("sign_nn"))
        rel = dcr.relevance(mlp("filter_nn"), self.gate, self.temperature)
        return {"y_neural": dcr.reason(probs, sign, rel), "sign": sign, "relevance": rel}


class MedMicnModel(nn.Module):
    """The whole Med-MICN network; returns a dict of every output the losses, rules and
    explanations need (ỹ as logits and σ, ŷ_neural, ĉ, c_emb, s, r, side head, CAM tap)."""

    backbone: str
    num_concepts: int
    num_classes: int
    backbone_feature: str = "imagenet_logits"
    pre_proj_dim: int = 10
    pre_proj_dropout: float = 0.0
    emb_size: int = 8
    fusion_hidden: Sequence[int] = (1000,)
    fusion_dropout: Sequence[float] = ()
    dcr_temperature: float = 100.0
    relevance_gate: str = "softselect"
    torch_init: bool = False
    cam_tap: str = ""
    compute_dtype: str = "float32"
    conv1x1: str = "xla"
    stem_conv: str = "xla"
    conv_backend: str = "xla"
    backbone_overrides: tuple[tuple[str, object], ...] = ()

    def feature_tap(self) -> str:
        if self.backbone_feature not in BACKBONE_FEATURES:
            raise ValueError(
                f"model.backbone_feature must be one of {BACKBONE_FEATURES}, "
                f"got {self.backbone_feature!r}"
            )
        return "logits" if self.backbone_feature == "imagenet_logits" else "pooled"

    def conv_tap(self) -> str:
        return self.cam_tap or get_spec(self.backbone).default_taps[-1]

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        tap = self.feature_tap()
        net = build_backbone(
            self.backbone,
            taps=(self.conv_tap(), tap),
            with_head=tap == "logits",
            name="backbone",
            dtype=self.compute_dtype,
            conv1x1=self.conv1x1,
            stem_conv=self.stem_conv,
            conv_backend=self.conv_backend,
            **dict(self.backbone_overrides),
        )
        taps = net(x, train=train)
        feat = taps[tap].reshape(x.shape[0], -1)
        z = nn.leaky_relu(
            dense(self.pre_proj_dim, feat.shape[-1], self.torch_init, "pre_proj")(feat), 0.01
        )
        if self.pre_proj_dropout:
            z = nn.Dropout(self.pre_proj_dropout, deterministic=not train)(z)
        emb, probs, c_logits = ConceptEmbedding(
            self.num_concepts, self.emb_size, self.torch_init, name="concepts"
        )(z)
        reasoning = ConceptReasoning(
            self.num_classes,
            self.dcr_temperature,
            self.relevance_gate,
            self.torch_init,
            name="reasoning",
        )(emb, probs)
        flat = emb.reshape(x.shape[0], -1)
        h = jnp.concatenate([feat, flat], axis=-1)
        for i, width in enumerate(self.fusion_hidden):
            h = nn.leaky_relu(dense(width, h.shape[-1], self.torch_init, f"fusion_{i}")(h), 0.01)
            if i < len(self.fusion_dropout) and self.fusion_dropout[i]:
                h = nn.Dropout(self.fusion_dropout[i], deterministic=not train)(h)
        fused_logits = dense(
            self.num_classes, h.shape[-1], self.torch_init, f"fusion_{len(self.fusion_hidden)}"
        )(h)
        side = dense(self.num_classes, flat.shape[-1], self.torch_init, "side_head")(flat)
        return {
            "fused_logits": fused_logits,
            "fused": jax.nn.sigmoid(fused_logits),
            "side": jax.nn.sigmoid(side),
            "concept_logits": c_logits,
            "concept_probs": probs,
            "concept_emb": emb,
            "feature": feat,
            "cam_map": taps[self.conv_tap()],
            **reasoning,
        }
