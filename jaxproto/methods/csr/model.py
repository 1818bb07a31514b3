"""CSR network (specs/csr.md §1–3): backbone F, bias-free 1×1 concept head C, projector P with IBN
blocks, M prototypes per concept, similarity maps S and the linear task head H.

Layout of the parameter tree (spec, "Mapping to Linen")::

    {backbone, concept_head: {kernel}, projector: {in_proj, blocks_0..2: {dense, ibn: {in_scale,
     in_bias, bn}}}, prototypes: [K, M, D], task_head: {kernel, bias}}

Feature maps are NHWC, so spatial index (h, w) = (row y, column x) everywhere (S, A, pointing).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxproto.kernels.prototypes import l2_normalize

IBN_MODES = ("r1_groupnorm", "instancenorm_over_patches", "none")
PROTO_INITS = ("normal", "unit_random", "sample_vectors")
CLIP_MODES = ("interactive_only", "always", "never")

# CSR's own ``predict`` keys (the shared ones are in ``jaxproto.core.outputs``).
CONCEPT_MAPS = "concept_maps"  # (B, K, H, W) max over the concept's unpruned prototypes of S
BEST_PROTOTYPE = "best_prototype"  # (B, K) index m of the concept's top-scoring prototype
V_PROJ = "v_proj"  # (B, K, D) projected local concept vectors (atlas, prototype init)
ALIVE_PROTOTYPES = "alive_prototypes"  # (B,) number of unpruned prototypes

_NORM_EPS = 1e-5  # PyTorch InstanceNorm/GroupNorm/BatchNorm default


def spatial_softmax_pool(features: jax.Array, cam: jax.Array) -> jax.Array:
    """Local concept vectors v^k = Σ_hw softmax_hw(cam^k)(h,w) · f(h,w) (spec Eq. 2).

    features (B,H,W,C), cam (B,H,W,K) raw logits (no temperature) -> (B,K,C).
    """
    b, h, w, c = features.shape
    k = cam.shape[-1]
    attn = jax.nn.softmax(cam.reshape(b, h * w, k).astype(jnp.float32), axis=1)
    return jnp.einsum("bnk,bnc->bkc", attn, features.reshape(b, h * w, c).astype(jnp.float32))


class IBN(nn.Module):
    """IBN-a (ratio 0.5): first half of the channels instance-normalised, second half BatchNorm.

    Inputs are (B, L, D) with a validity mask (B, L). ``mode`` (spec §2.2 flag ``ibn_mode``):
    ``r1_groupnorm`` normalises each vector across its instance channels (GroupNorm with one group,
    R1's substitute for InstanceNorm on length-1 inputs); ``instancenorm_over_patches`` normalises
    each channel over the L axis (K concept vectors in training, H·W patches at inference);
    ``none`` is the identity.
    """

    features: int
    mode: str = "r1_groupnorm"

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        if self.mode == "none":
            return x
        half = self.features // 2
        x_in, x_bn = x[..., :half], x[..., half:]
        if self.mode == "r1_groupnorm":
            mean = jnp.mean(x_in, axis=-1, keepdims=True)
            var = jnp.mean(jnp.square(x_in - mean), axis=-1, keepdims=True)
        elif self.mode == "instancenorm_over_patches":
            m = mask[..., None].astype(x.dtype)
            count = jnp.maximum(jnp.sum(m, axis=1, keepdims=True), 1.0)
            mean = jnp.sum(x_in * m, axis=1, keepdims=True) / count
            var = jnp.sum(jnp.square(x_in - mean) * m, axis=1, keepdims=True) / count
        else:
            raise ValueError(f"ibn_mode must be one of {IBN_MODES}, got {self.mode!r}")
        scale = self.param("in_scale", nn.initializers.ones, (half,))
        bias = self.param("in_bias", nn.initializers.zeros, (half,))
        y_in = (x_in - mean) * jax.lax.rsqrt(var + _NORM_EPS) * scale + bias
        y_bn = nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=_NORM_EPS, name="bn"
        )(x_bn, mask=mask[..., None])
        return jnp.concatenate([y_in, y_bn], axis=-1)


class ProjectorBlock(nn.Module):
    """x <- x + ReLU(IBN(Conv1d_k1(x))) (spec §2.2; kernel size 1 = a Dense on channels)."""

    features: int
    ibn_mode: str

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array, train: bool) -> jax.Array:
        y = nn.Dense(self.features, name="dense")(x)
        y = IBN(self.features, self.ibn_mode, name="ibn")(y, mask, train)
        return x + nn.relu(y)


class Projector(nn.Module):
    """P: in-projection to D, three residual IBN blocks, L2-normalised output (R1 layout, [U])."""

    features: int = 256
    ibn_mode: str = "r1_groupnorm"
    num_blocks: int = 3

    @nn.compact
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, train: bool = False
    ) -> jax.Array:
        """x (B, L, C) -> (B, L, D) unit vectors; ``mask`` (B, L) marks the entries that feed
        normalisation statistics."""
        if mask is None:
            mask = jnp.ones(x.shape[:2], bool)
        x = nn.Dense(self.features, name="in_proj")(x.astype(jnp.float32))
        for i in range(self.num_blocks):
            x = ProjectorBlock(self.features, self.ibn_mode, name=f"blocks_{i}")(x, mask, train)
        return l2_normalize(x)


def _prototype_init(kind: str):
    def init(key: jax.Array, shape: Sequence[int]) -> jax.Array:
        p = jax.random.normal(key, shape, jnp.float32)
        if kind == "unit_random":
            return l2_normalize(p)
        # "normal" and "sample_vectors" (replaced by training vectors in a stage-2 hook).
        return p

    if kind not in PROTO_INITS:
        raise ValueError(f"proto_init must be one of {PROTO_INITS}, got {kind!r}")
    return init


def _feature_map(out) -> jax.Array:
    """The backbone's last tapped NHWC feature map, whatever container it is returned in."""
    if isinstance(out, dict):
        return out[list(out)[-1]]
    if isinstance(out, (tuple, list)):
        return out[-1]
    return out


def similarity_maps(patches: jax.Array, prototypes: jax.Array) -> jax.Array:
    """S^{k_m}(h,w) = cos(p^{k_m}, P(f(h,w))) (spec Eq. 10).

    patches (B,H,W,D) already unit-norm; prototypes raw (K,M,D) -> S (B,K,M,H,W) in [-1, 1].
    """
    p = l2_normalize(prototypes.astype(jnp.float32))
    return jnp.einsum("bhwd,kmd->bkmhw", patches.astype(jnp.float32), p)


def pool_scores(
    sims: jax.Array,
    importance: jax.Array | None = None,
    clip_negative: str = "interactive_only",
    proto_mask: jax.Array | None = None,
    rejected: jax.Array | None = None,
) -> jax.Array:
    """Max-pooled prototype scores s (B, K·M) with optional doctor interaction (spec §3.2, §4).

    ``importance`` A is (H,W) or (B,H,W), applied to every map before the max (Eq. 13);
    ``clip_negative`` decides when S is clipped at 0 (spec §4.1 flag); ``proto_mask`` (K,M) zeroes
    pruned prototypes (§4.3); ``rejected`` (K,) or (B,K) in {0,1} zeroes rejected concepts (§4.2).
    """
    if clip_negative not in CLIP_MODES:
        raise ValueError(f"clip_negative must be one of {CLIP_MODES}, got {clip_negative!r}")
    b, k, m = sims.shape[:3]
    clip = clip_negative == "always" or (
        clip_negative == "interactive_only" and importance is not None
    )
    if clip:
        sims = jnp.maximum(sims, 0.0)
    if importance is not None:
        a = jnp.asarray(importance, sims.dtype)
        a = a[None] if a.ndim == 2 else a
        sims = sims * a[:, None, None]
    s = jnp.max(sims, axis=(-2, -1))
    if proto_mask is not None:
        s = s * jnp.asarray(proto_mask, s.dtype)
    if rejected is not None:
        r = jnp.asarray(rejected, s.dtype)
        r = r[None] if r.ndim == 1 else r
        s = s * (1.0 - r)[..., None]
    return s.reshape(b, k * m)


class CsrModel(nn.Module):
    """The full CSR network; each stage is a separate method (``model.apply(..., method=...)``)."""

    backbone: nn.Module
    num_concepts: int
    num_classes: int
    prototypes_per_concept: int = 100
    proj_dim: int = 256
    ibn_mode: str = "r1_groupnorm"
    proto_init: str = "normal"
    head_bias: bool = True
    head_input_bn: bool = False

    def setup(self):
        self.concept_head = nn.Dense(self.num_concepts, use_bias=False)
        self.projector = Projector(self.proj_dim, self.ibn_mode)
        self.prototypes = self.param(
            "prototypes",
            _prototype_init(self.proto_init),
            (self.num_concepts, self.prototypes_per_concept, self.proj_dim),
        )
        if self.head_input_bn:
            self.head_bn = nn.BatchNorm(momentum=0.9, epsilon=_NORM_EPS)
        self.task_head = nn.Dense(self.num_classes, use_bias=self.head_bias)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """F(x): NHWC feature map (B,H,W,C) in float32."""
        return _feature_map(self.backbone(x, train=train)).astype(jnp.float32)

    def concepts(self, f: jax.Array) -> tuple[jax.Array, jax.Array]:
        """CAMs (B,H,W,K) = w_k·f(h,w) and concept logits z_k = GAP(cam^k) (spec §1.2)."""
        cam = self.concept_head(f)
        return cam, jnp.mean(cam, axis=(1, 2))

    def project(self, x: jax.Array, mask: jax.Array | None = None, train: bool = False):
        """P on (B, L, C) vectors -> (B, L, D) unit vectors."""
        return self.projector(x, mask, train)

    def similarity(self, f: jax.Array) -> jax.Array:
        """S (B,K,M,H,W) from a feature map: P per patch (eval statistics), cosine to prototypes."""
        b, h, w, c = f.shape
        patches = self.projector(f.reshape(b, h * w, c), None, False).reshape(b, h, w, -1)
        return similarity_maps(patches, self.prototypes)

    def head(self, s: jax.Array, train: bool = False) -> jax.Array:
        """H(s): class logits from the K·M scores (spec Eq. 1)."""
        if self.head_input_bn:
            s = self.head_bn(s, use_running_average=not train)
        return self.task_head(s)

    def __call__(self, x: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """Full forward (used for init and plain prediction)."""
        f = self.features(x, train)
        cam, concept_logits = self.concepts(f)
        v = spatial_softmax_pool(f, cam)
        v_proj = self.project(v, None, train)
        sims = self.similarity(f)
        logits = self.head(pool_scores(sims), train)
        return {
            "logits": logits,
            "concept_logits": concept_logits,
            "cam": cam,
            "v_proj": v_proj,
            "sims": sims,
        }


def fold_head_bn(params: dict, batch_stats: dict) -> tuple[dict, dict]:
    """Folds the task-head input BatchNorm (``head_input_bn``, eval statistics) into the linear
    head: H(BN(s)) = s·W' + b' with W' = diag(γ/√(σ²+ε))·W and b' = b + (β − μγ/√(σ²+ε))·W.
    Returns (params, batch_stats) for a ``CsrModel(head_input_bn=False, head_bias=True)``."""
    bn, stats = params["head_bn"], batch_stats["head_bn"]
    scale = bn["scale"] / jnp.sqrt(stats["var"] + _NORM_EPS)
    shift = bn["bias"] - stats["mean"] * scale
    head = params["task_head"]
    kernel = head["kernel"] * scale[:, None]
    bias = head.get("bias", jnp.zeros(kernel.shape[1], kernel.dtype)) + shift @ head["kernel"]
    new_params = {k: v for k, v in params.items() if k != "head_bn"}
    new_params["task_head"] = {"kernel": kernel, "bias": bias}
    return new_params, {k: v for k, v in batch_stats.items() if k != "head_bn"}
