"""The CSR doctor-in-the-loop studio (issue #15 items 3–5): the request handling behind
``python -m jaxproto.studio``, independent of the HTTP server so it can be tested directly.

A user opens an image (upload or the ``--images`` folder); ``StudioApp`` runs the backbone,
projector and cosine maps once (``interact.CsrSession``) and keeps them; every correction —
positive/negative boxes, rejected concepts, α, prototypes marked for pruning — re-predicts from
the cached maps only. Each answer carries the task probabilities before and after with the
decision and its rule, and per concept (names spelled out) its score, its best prototype's
similarity map over the image with a colour scale (one scale for all concepts of an answer, so
their maps compare, rendered once: the answer stays under 100 ms), and that prototype's atlas
image with the matched patch boxed. Corrections can be exported as JSON lines for training-time use.

Bad requests raise ``StudioError`` with an HTTP status (400 bad input, 404 unknown item, 413
too large); the server turns it into a JSON ``{"error": message}`` and keeps serving.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import os

import cv2
import jax
import numpy as np

from jaxproto.common.errors import UserError
from jaxproto.data import transforms
from jaxproto.data.images import expand_image_paths, load_image
from jaxproto.methods.csr import interact
from jaxproto.viz import overlays

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAP_SIDE = 256  # px a similarity map is shown at
SCALE_LABEL = "cosine similarity, one scale for every concept"
_PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "studio_page.html")


class StudioError(UserError):
    """A request the studio refuses; ``status`` is the HTTP status code to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _jpeg_b64(image: np.ndarray) -> str:
    """A similarity map as a JPEG data URL (quality 90: a seventh of the PNG's encoding time,
    which dominated the re-prediction latency)."""
    ok, buf = cv2.imencode(
        ".jpg",
        np.ascontiguousarray(overlays.as_rgb(image)[..., ::-1]),
        [cv2.IMWRITE_JPEG_QUALITY, 90],
    )
    if not ok:
        raise StudioError("could not encode an image", 500)
    return "data:image/jpeg;base64," + base64.b64encode(buf.tobytes()).decode()


def colour_scale(width: int, lo: float, hi: float) -> np.ndarray:
    """The rows ``overlays.with_colorbar`` puts under a panel ``width`` pixels wide: stacked
    under every map of one answer (one scale for all of them, rendered once)."""
    blank = np.zeros((1, width, 3), np.uint8)
    return overlays.with_colorbar(blank, SCALE_LABEL, lo, hi)[1:]


def _png_b64(image: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(overlays.as_rgb(image)[..., ::-1]))
    if not ok:
        raise StudioError("could not encode an image", 500)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def _boxes(items: object, name: str, size: int) -> list[tuple[float, float, float, float]]:
    """(x, y, w, h) boxes in network-input pixels; each must overlap the image."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise StudioError(f"{name} must be a list of [x, y, w, h] boxes")
    out = []
    for i, b in enumerate(items):
        if not isinstance(b, list | tuple) or len(b) != 4:
            raise StudioError(f"{name}[{i}] must be [x, y, w, h], got {b!r}")
        try:
            x, y, w, h = (float(v) for v in b)
        except (TypeError, ValueError):
            raise StudioError(f"{name}[{i}] must hold four numbers, got {b!r}") from None
        if not all(np.isfinite([x, y, w, h])) or w <= 0 or h <= 0:
            raise StudioError(f"{name}[{i}] needs finite values and positive width/height")
        if x >= size or y >= size or x + w <= 0 or y + h <= 0:
            raise StudioError(f"{name}[{i}] = {[x, y, w, h]} lies outside the {size}x{size} image")
        out.append((x, y, w, h))
    return out


@dataclasses.dataclass
class _Opened:
    name: str
    shown: np.ndarray  # uint8 image at network resolution
    session: interact.CsrSession
    before: dict


class StudioApp:
    """State of one studio: the model, the opened images and the recorded corrections."""

    def __init__(
        self,
        method,
        state: dict,
        images_dir: str | None = None,
        atlas_dir: str | None = None,
    ):
        self.method = method
        self.state = state
        self.size = method.image_size
        self.concepts = list(method.index.concept_names)
        self.classes = method.class_names()
        cfg = method.config.model
        self.alpha = float(cfg.alpha)
        self.threshold = float(cfg.get("indecision_threshold", 0.3))
        self.images_dir = images_dir
        self.images = expand_image_paths([images_dir]) if images_dir else []
        self.atlas = self._read_atlas(atlas_dir)
        self.atlas_index = np.asarray(jax.device_get(state["extra"]["atlas_index"]))
        self.hit_count = np.asarray(jax.device_get(state["extra"]["hit_count"]))
        self.proto_mask = np.asarray(jax.device_get(state["extra"]["proto_mask"]), np.float32)
        self.marked: set[int] = set()
        self.opened: dict[str, _Opened] = {}
        self.corrections: list[dict] = []
        self._patches: dict[int, str] = {}

    # ---------------------------------------------------------------- helpers
    @staticmethod
    def _read_atlas(atlas_dir: str | None) -> dict[int, dict]:
        """prototype id -> atlas.json entry (with an absolute ``image`` path)."""
        path = os.path.join(atlas_dir, "atlas.json") if atlas_dir else ""
        if not path or not os.path.isfile(path):
            return {}
        with open(path) as f:
            data = json.load(f)
        entries = data.get("entries", data) if isinstance(data, dict) else data
        out = {}
        for e in entries:
            if isinstance(e, dict) and "prototype_id" in e:
                out[int(e["prototype_id"])] = {**e, "image": os.path.join(atlas_dir, e["image"])}
        return out

    def _decision(self, probs: np.ndarray) -> dict:
        order = np.argsort(-probs)
        margin = float(probs[order[0]] - probs[order[1]]) if len(probs) > 1 else 1.0
        return {
            "class": self.classes[int(order[0])],
            "probability": float(probs[order[0]]),
            "margin": margin,
            "rule": "arg-max class (softmax over classes); indecisive when top-1 minus top-2 < "
            f"{self.threshold:g}",
            "indecisive": margin < self.threshold,
        }

    def _patch(self, pid: int) -> str | None:
        """The prototype's atlas image with the matched patch (arg-max cell of its map) boxed."""
        if pid in self._patches:
            return self._patches[pid]
        entry = self.atlas.get(pid)
        if entry is None or not os.path.isfile(entry["image"]):
            return None
        image = cv2.resize(load_image(entry["image"]), (self.size, self.size))
        x = transforms.eval_transform(image, self.size)[None]
        session = interact.CsrSession(self.method.model, self.state, x)
        m_count = self.proto_mask.shape[1]
        sim = np.asarray(session.sims)[0, pid // m_count, pid % m_count]
        gh, gw = sim.shape
        r, c = np.unravel_index(int(np.argmax(sim)), sim.shape)
        cell = (c * self.size / gw, r * self.size / gh, self.size / gw, self.size / gh)
        out = _png_b64(overlays.draw_boxes(image, [cell], (255, 200, 0)))
        self._patches[pid] = out
        return out

    def _opened(self, image_id: object) -> _Opened:
        if not isinstance(image_id, str) or image_id not in self.opened:
            raise StudioError(f"unknown image {image_id!r}; open it first", 404)
        return self.opened[image_id]

    # ---------------------------------------------------------------- API
    def info(self) -> dict:
        k, m = self.proto_mask.shape
        return {
            "classes": self.classes,
            "concepts": self.concepts,
            "image_size": self.size,
            "alpha": self.alpha,
            "indecision_threshold": self.threshold,
            "prototypes_per_concept": m,
            "images": [os.path.relpath(p, self.images_dir) for p in self.images],
            "max_upload_bytes": MAX_UPLOAD_BYTES,
        }

    def open_image(self, name: str | None = None, data: bytes | None = None) -> dict:
        """Opens a folder image (``name``) or uploaded bytes; runs the expensive part once."""
        if data is not None:
            if len(data) > MAX_UPLOAD_BYTES:
                raise StudioError(
                    f"upload of {len(data)} bytes exceeds the {MAX_UPLOAD_BYTES}-byte limit", 413
                )
            raw = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
            if raw is None:
                raise StudioError("the uploaded file is not an image this studio can decode")
            raw = raw[..., ::-1]
            name = name or "upload"
        else:
            paths = {os.path.relpath(p, self.images_dir): p for p in self.images}
            if name not in paths:
                raise StudioError(f"no image {name!r} in the images folder", 404)
            try:
                raw = load_image(paths[name])
            except (UserError, OSError, ValueError) as e:
                raise StudioError(f"{name}: {e}") from None
        shown = cv2.resize(np.ascontiguousarray(raw), (self.size, self.size))
        x = transforms.eval_transform(np.ascontiguousarray(raw), self.size)[None]
        cfg = self.method.config.model
        session = interact.CsrSession(
            self.method.model, self.state, x, cfg.clip_negative, cfg.interaction_grid
        )
        before = session.predict(proto_mask=self.proto_mask)
        image_id = f"img{len(self.opened)}"
        self.opened[image_id] = _Opened(str(name), shown, session, before)
        return {
            "image_id": image_id,
            "name": name,
            "image": _png_b64(shown),
            **self.predict({"image_id": image_id}),
        }

    def predict(self, request: dict) -> dict:
        """Re-prediction from the cached maps with the request's corrections."""
        opened = self._opened(request.get("image_id"))
        pos = _boxes(request.get("positive"), "positive", self.size)
        neg = _boxes(request.get("negative"), "negative", self.size)
        alpha = request.get("alpha", self.alpha)
        if not isinstance(alpha, int | float) or not 0.0 <= float(alpha) < 1.0:
            raise StudioError(f"alpha must be a number in [0, 1), got {alpha!r}")
        rejected = request.get("rejected") or []
        if not isinstance(rejected, list):
            raise StudioError("rejected must be a list of concept names")
        for c in rejected:
            if c not in self.concepts:
                raise StudioError(f"unknown concept {c!r}; concepts: {self.concepts}")
        session = opened.session
        a = session.importance(pos, neg, float(alpha)) if (pos or neg) else None
        rej = interact.rejection_vector(rejected, self.concepts) if rejected else None
        mask = self.proto_mask.copy()
        m_count = mask.shape[1]
        for pid in self.marked:
            mask[pid // m_count, pid % m_count] = 0.0
        after = session.predict(a, rej, mask)
        before = opened.before
        heats = np.asarray(after["concept_maps"][0], np.float32)
        lo, hi = float(heats.min()), float(heats.max())
        scaled = (heats - lo) / (hi - lo) if hi > lo else np.zeros_like(heats)
        scale = None
        rows = []
        for k, name in enumerate(self.concepts):
            best = int(after["best_prototype"][0, k])
            pid = k * m_count + best
            panel = overlays.for_display(
                overlays.heatmap_overlay(opened.shown, scaled[k], 0.45, normalize="none"),
                MAP_SIDE,
            )
            if scale is None:
                scale = colour_scale(panel.shape[1], lo, hi)
            rows.append(
                {
                    "concept": name,
                    "probability": float(after["concept_probs"][0, k]),
                    "score_before": float(before["scores"][0, pid]),
                    "score": float(after["scores"][0, pid]),
                    "rejected": name in rejected,
                    "prototype_id": pid,
                    "hit_count": int(self.hit_count[k, best]),
                    "map": _jpeg_b64(np.concatenate([panel, scale])),
                    "atlas": self._patch(pid),
                }
            )
        pb, pa = before["probs"][0], after["probs"][0]
        return {
            "image_id": request.get("image_id"),
            "probs_before": dict(zip(self.classes, map(float, pb), strict=True)),
            "probs_after": dict(zip(self.classes, map(float, pa), strict=True)),
            "decision_before": self._decision(pb),
            "decision_after": self._decision(pa),
            "concepts": rows,
            "marked_for_pruning": sorted(self.marked),
        }

    def record(self, request: dict) -> dict:
        """Stores one correction (image, boxes, rejected concepts, before/after) for export."""
        opened = self._opened(request.get("image_id"))
        result = self.predict(request)
        row = {
            "image": opened.name,
            "image_size": self.size,
            "positive_boxes": _boxes(request.get("positive"), "positive", self.size),
            "negative_boxes": _boxes(request.get("negative"), "negative", self.size),
            "rejected_concepts": list(request.get("rejected") or []),
            "alpha": float(request.get("alpha", self.alpha)),
            "probs_before": result["probs_before"],
            "probs_after": result["probs_after"],
            "at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        self.corrections.append(row)
        return {"recorded": len(self.corrections)}

    def corrections_jsonl(self) -> str:
        return "".join(json.dumps(r) + "\n" for r in self.corrections)

    def atlas_page(self) -> dict:
        """Every prototype: concept, hit count, link, pruned/marked state (images lazily)."""
        k_count, m_count = self.proto_mask.shape
        rows = []
        for k in range(k_count):
            for m in range(m_count):
                pid = k * m_count + m
                rows.append(
                    {
                        "prototype_id": pid,
                        "concept": self.concepts[k],
                        "hit_count": int(self.hit_count[k, m]),
                        "has_image": pid in self.atlas,
                        "pruned": bool(self.proto_mask[k, m] == 0),
                        "marked": pid in self.marked,
                    }
                )
        return {"prototypes": rows}

    def atlas_image(self, pid: int) -> dict:
        k_count, m_count = self.proto_mask.shape
        if not 0 <= pid < k_count * m_count:
            raise StudioError(f"prototype id {pid} out of range [0, {k_count * m_count})", 404)
        return {"prototype_id": pid, "image": self._patch(pid)}

    def mark(self, request: dict) -> dict:
        """Marks (or unmarks) prototypes for pruning; re-predictions mask them at once."""
        ids = request.get("ids")
        k_count, m_count = self.proto_mask.shape
        if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
            raise StudioError("ids must be a list of integer prototype ids")
        bad = [i for i in ids if not 0 <= i < k_count * m_count]
        if bad:
            raise StudioError(f"prototype ids {bad} out of range [0, {k_count * m_count})")
        if request.get("marked", True):
            self.marked.update(ids)
        else:
            self.marked.difference_update(ids)
        return {"marked_for_pruning": sorted(self.marked)}

    def page(self) -> str:
        with open(_PAGE) as f:
            return f.read()
