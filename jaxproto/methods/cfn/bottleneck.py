"""The finished concept bottleneck read back from ``<workdir or export>/cfn/`` (cfn.md §8): the
selected CAVs with their SAE latents and names, the OMP settings and the logistic regression, so
``evaluate``, ``predict`` and ``explain`` score new embeddings exactly as the CBM stage did."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.methods.cfn import omp as omp_lib

# What an export carries of the stage folders (relative to ``cfn/``); ``report/img`` (the
# selected concepts' probing images, for ``explain``) is added. The browsable concept pages
# (``report/concepts.html`` and ``report/latents/``: every latent) stay in the workdir.
EXPORT_FILES = (
    "selection/done.json", "selection/select_idx.npy", "cav/concept_cav.npy", "cav/latents.npy",
    "naming/names.json", "cbm/done.json", "cbm/cbm.npz", "sae/done.json", "report/done.json",
    "report/evaluation.json",
)  # fmt: skip


def cbm_features(kind: str, cavs: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Classifier input: OMP rebuild f_hat = w C + beta (default) or the weights w."""
    if kind == "reconstruction":
        return np.asarray(omp_lib.reconstruct(cavs.T, w, b))
    if kind == "weights":
        return w
    raise ValueError(f"cfn.cbm.features must be reconstruction or weights, got {kind!r}")


def class_weights(kind: str, coef: np.ndarray, cavs: np.ndarray) -> np.ndarray:
    """V (C, K): each concept's weight per class logit, V[y, k] = a_y . c_k for the
    reconstruction features (cfn.md §8), the classifier weight itself for the weights variant."""
    return coef @ cavs.T if kind == "reconstruction" else coef


@dataclasses.dataclass(frozen=True)
class Bottleneck:
    """Selected CAVs (K, D), their latents (K,), names {latent: name}, the classifier
    (coef (C, F), intercept (C,)) and how its features are made."""

    cavs: np.ndarray
    latents: np.ndarray
    names: dict[int, str]
    coef: np.ndarray
    intercept: np.ndarray
    features: str
    n_nonzero: int
    fit_intercept: bool
    chunk: int
    root: str

    def rebuild(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """OMP weights (N, K) and intercepts (N,) of embeddings (N, D)."""
        return omp_lib.omp_batched(
            self.cavs.T, np.asarray(emb, np.float32), self.n_nonzero, self.fit_intercept,
            min(self.chunk, max(1, len(emb))),
        )  # fmt: skip

    def scores(self, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(CBM logits (N, C), OMP weights (N, K), intercepts (N,)) of embeddings (N, D)."""
        w, beta = self.rebuild(emb)
        feats = cbm_features(self.features, self.cavs, w, beta)
        return feats @ self.coef.T + self.intercept, w, beta

    def contributions(self, w: np.ndarray, beta: float, cls: int) -> tuple[np.ndarray, float]:
        """(per-concept contributions w_k V[y, k] (K,), residual beta (a_y . 1)) for class
        ``cls`` of one image (cfn.md §8); the weights variant has no residual term."""
        v = class_weights(self.features, self.coef[cls : cls + 1], self.cavs)[0]
        residual = beta * float(self.coef[cls].sum()) if self.features == "reconstruction" else 0.0
        return w * v, residual

    def thumbnails(self, latent: int) -> list[str]:
        """The concept page's probing-image thumbnails of ``latent`` (may be empty)."""
        img_dir = os.path.join(self.root, "report", "img")
        if not os.path.isdir(img_dir):
            return []
        names = sorted(p for p in os.listdir(img_dir) if p.startswith(f"latent{latent}_"))
        return [os.path.join(img_dir, p) for p in names]


def available(source: str) -> bool:
    """Whether ``source`` (a workdir or export) holds a finished concept bottleneck."""
    return os.path.isfile(os.path.join(source, "cfn", "cbm", "done.json"))


def load(source: str, cfg) -> Bottleneck:
    """The bottleneck under ``<source>/cfn/``; UserError naming the unfinished stage."""
    root = os.path.join(source, "cfn")
    for stage in ("selection", "cbm", "report"):
        if not os.path.isfile(os.path.join(root, stage, "done.json")):
            raise UserError(f"{source}: CFN stage {stage!r} not finished; rerun jaxproto.train")
    sel = np.load(os.path.join(root, "selection", "select_idx.npy"))
    cavs = np.load(os.path.join(root, "cav", "concept_cav.npy"))[sel]
    latents = np.load(os.path.join(root, "cav", "latents.npy"))[sel]
    with open(os.path.join(root, "naming", "names.json")) as f:
        names = {int(k): str(v) for k, v in json.load(f).items()}
    with np.load(os.path.join(root, "cbm", "cbm.npz")) as f:
        coef, intercept = f["coef"], f["intercept"]
    return Bottleneck(
        cavs=cavs, latents=latents, names=names, coef=coef, intercept=intercept,
        features=str(cfg.cbm.features), n_nonzero=int(cfg.omp.n_nonzero),
        fit_intercept=bool(cfg.omp.fit_intercept), chunk=int(cfg.omp.chunk), root=root,
    )  # fmt: skip


def export_files(workdir: str) -> dict[str, str]:
    """{name in an export: file in ``workdir``} of the bottleneck (empty when unfinished)."""
    if not available(workdir):
        return {}
    root = os.path.join(workdir, "cfn")
    files = {f"cfn/{rel}": os.path.join(root, rel) for rel in EXPORT_FILES}
    img_dir = os.path.join(root, "report", "img")
    for name in sorted(os.listdir(img_dir)) if os.path.isdir(img_dir) else ():
        files[f"cfn/report/img/{name}"] = os.path.join(img_dir, name)
    return {k: v for k, v in files.items() if os.path.isfile(v)}
