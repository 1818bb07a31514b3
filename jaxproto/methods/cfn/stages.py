"""CFN's resumable stage chain after the opaque model (cfn.md §1): opaque -> embeddings -> sae ->
naming -> cav -> selection -> cbm -> report, each under ``<workdir>/cfn/<stage>/``.

A stage's key hashes its config slice and the previous stage's key; ``done.json`` holds the key,
so a finished, up-to-date stage is skipped and a changed upstream setting reruns everything
below it. Work happens in ``<stage>.partial/`` (kept across restarts while its key matches, so
the embedding pass resumes per split) and is renamed into place when complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable

import jax
import numpy as np
from flax import traverse_util

from jaxproto.core import logging as log_lib
from jaxproto.core import outputs
from jaxproto.methods.cfn import bottleneck
from jaxproto.methods.cfn import cav as cav_lib
from jaxproto.methods.cfn import cbm as cbm_lib
from jaxproto.methods.cfn import naming as naming_lib
from jaxproto.methods.cfn import omp as omp_lib
from jaxproto.methods.cfn import report as report_lib
from jaxproto.methods.cfn import sae as sae_lib
from jaxproto.methods.cfn import selection as selection_lib

log = logging.getLogger(__name__)

STAGES = ("opaque", "embeddings", "sae", "naming", "cav", "selection", "cbm", "report")
SPLITS = ("train", "val", "test")


def _slice(config, stage: str) -> dict:
    c = config.to_dict()
    if stage == "opaque":
        return {k: v for k, v in c.items() if k not in ("cfn", "mesh", "distributed")} | {
            "opaque_checkpoint": c["cfn"]["opaque_checkpoint"]
        }
    part = {
        "embeddings": {},
        "sae": c["cfn"]["sae"],
        "naming": c["cfn"]["naming"],
        "cav": c["cfn"]["cav"],
        "selection": c["cfn"]["select"],
        "cbm": {"omp": c["cfn"]["omp"], "cbm": c["cfn"]["cbm"]},
        "report": c["cfn"]["report"],
    }[stage]
    return {"stage": stage, **part}


def stage_keys(config) -> dict[str, str]:
    """Stage name -> key (hash of its settings and everything upstream)."""
    keys, prev = {}, ""
    for stage in STAGES:
        blob = json.dumps([prev, _slice(config, stage)], sort_keys=True, default=str)
        prev = keys[stage] = hashlib.sha1(blob.encode()).hexdigest()[:16]
    return keys


def stage_dir(workdir: str, stage: str) -> str:
    return os.path.join(workdir, "cfn", stage)


def is_done(workdir: str, stage: str, key: str) -> bool:
    path = os.path.join(stage_dir(workdir, stage), "done.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f).get("key") == key


def save_tree(path: str, tree: dict) -> None:
    np.savez(path, **traverse_util.flatten_dict(jax.tree.map(np.asarray, tree), sep="/"))


def load_tree(path: str) -> dict:
    with np.load(path) as f:
        return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep="/")


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, obj) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=1, default=float)


class StageRunner:
    """Runs the stages for one workdir. ``ctx`` is the trainer's HookContext."""

    def __init__(self, ctx, method, state):
        self.ctx, self.method, self.state = ctx, method, state
        self.config, self.workdir, self.index = ctx.config, ctx.workdir, ctx.index
        self.keys = stage_keys(self.config)
        self.cfg = self.config.cfn

    def d(self, stage: str) -> str:
        return stage_dir(self.workdir, stage)

    def run(self) -> None:
        fns: dict[str, Callable[[str], dict]] = {
            "opaque": self._opaque, "embeddings": self._embeddings, "sae": self._sae,
            "naming": self._naming, "cav": self._cav, "selection": self._selection,
            "cbm": self._cbm, "report": self._report,
        }  # fmt: skip
        for stage in STAGES:
            key = self.keys[stage]
            if is_done(self.workdir, stage, key):
                log.info("cfn stage %s: up to date, skipped", stage)
                continue
            final = self.d(stage)
            tmp = final + ".partial"
            if not (os.path.isdir(tmp) and _key_of(tmp) == key):
                shutil.rmtree(tmp, ignore_errors=True)
                os.makedirs(tmp)
                _write_json(os.path.join(tmp, "key.json"), {"key": key})
            log.info("cfn stage %s: running", stage)
            stats = fns[stage](tmp)
            _write_json(os.path.join(tmp, "done.json"), {"key": key, "stats": stats})
            shutil.rmtree(final, ignore_errors=True)
            os.rename(tmp, final)
            log.info("cfn stage %s: done %s", stage, _brief(stats))

    # ------------------------------------------------------------------ stages
    def _opaque(self, out: str) -> dict:
        """The frozen source model. ``best``: the state the trainer keeps as its best
        checkpoint once this phase's final evaluation has run (the end state only if it beats
        the best so far, as the trainer's strict comparison), so ``evaluate``, ``export`` and
        ``explain`` load by default the model the concepts were built on; ``last``: the end
        state."""
        state, source = self.state, "last"
        val = self._accuracy(state)
        if self.cfg.opaque_checkpoint == "best":
            best = _restore_best(self.workdir, state)
            best_val = None if best is None else self._accuracy(best)
            if best_val is not None and best_val >= val:
                state, source, val = best, "best", best_val
        elif self.cfg.opaque_checkpoint != "last":
            raise ValueError(
                f"cfn.opaque_checkpoint must be best or last, got {self.cfg.opaque_checkpoint!r}"
            )
        save_tree(
            os.path.join(out, "model.npz"),
            {"params": state["params"], "batch_stats": state["batch_stats"]},
        )
        return {"checkpoint": source, "val_accuracy": val, "step": int(state["step"])}

    def _accuracy(self, state) -> float:
        records = self.index.split("val")
        preds = _collect(self.ctx.stream_predictions(state, records), len(records))
        return self.method.evaluate(preds, records)["accuracy"]

    def opaque_state(self) -> dict:
        return load_tree(os.path.join(self.d("opaque"), "model.npz"))

    def _embeddings(self, out: str) -> dict:
        state = self.opaque_state()
        sizes = {}
        for split in SPLITS:
            records = self.index.split(split)
            sizes[split] = len(records)
            if os.path.isfile(os.path.join(out, f"{split}.done")):
                continue
            emb = logits = None
            progress = log_lib.Progress(len(records), 0, f"embed {split}", 1)
            try:
                stream = self.ctx.stream_predictions(state, records, int(self.cfg.embed_batch_size))
                for idx, preds in stream:
                    e, lg = np.asarray(preds[outputs.FEATURES]), np.asarray(preds[outputs.LOGITS])
                    if emb is None:
                        emb = np.lib.format.open_memmap(
                            os.path.join(out, f"emb_{split}.npy"),
                            "w+",
                            np.float32,
                            (len(records), e.shape[1]),
                        )
                        logits = np.zeros((len(records), lg.shape[1]), np.float32)
                    emb[idx] = e[: len(idx)]
                    logits[idx] = lg[: len(idx)]
                    progress.update(int(idx[-1]) + 1)
            finally:
                progress.close()
            emb.flush()
            np.save(os.path.join(out, f"logits_{split}.npy"), logits)
            np.save(os.path.join(out, f"labels_{split}.npy"), np.stack([r.labels for r in records]))
            _write_json(os.path.join(out, f"ids_{split}.json"), [r.image_id for r in records])
            open(os.path.join(out, f"{split}.done"), "w").close()
        return {"sizes": sizes}

    def emb(self, split: str) -> np.ndarray:
        return np.load(os.path.join(self.d("embeddings"), f"emb_{split}.npy"), mmap_mode="r")

    def _sae(self, out: str) -> dict:
        c = self.cfg.sae
        x = np.asarray(self.emb("train"))
        batch, steps = sae_lib.num_steps(len(x), int(c.batch_size), float(c.epochs), int(c.steps))
        params, history = sae_lib.train_sae(
            x, int(c.expansion) * x.shape[1], float(c.l1), float(c.lr), batch, steps,
            int(self.config.train.seed), self.ctx.mesh,
        )  # fmt: skip
        save_tree(os.path.join(out, "sae.npz"), params)
        _write_json(os.path.join(out, "history.json"), history)
        stats = {"steps": steps, "batch": batch, "num_latents": int(params["decoder"].shape[0])}
        for split in SPLITS:
            xs = np.asarray(self.emb(split))
            z, x_hat = sae_lib.encode(params, xs)
            np.save(os.path.join(out, f"z_{split}.npy"), z)
            stats[split] = sae_lib.statistics(xs, z, x_hat)
        return stats

    def sae_params(self) -> dict:
        return load_tree(os.path.join(self.d("sae"), "sae.npz"))

    def z(self, split: str) -> np.ndarray:
        return np.load(os.path.join(self.d("sae"), f"z_{split}.npy"), mmap_mode="r")

    def _naming(self, out: str) -> dict:
        c = self.cfg.naming
        z = self.z("train")
        chunks = ((s, np.asarray(z[s : s + 4096])) for s in range(0, len(z), 4096))
        values, rows = naming_lib.streaming_topk(chunks, int(c.top_k))
        alive = np.flatnonzero(values[:, 0] > 0)
        records = self.index.split("train")
        texts = [r.meta.get("report", "") for r in records]
        namer = naming_lib.make_namer(c, texts)
        names = {}
        progress = log_lib.Progress(len(alive), 0, "naming", 1)
        try:
            for i, j in enumerate(alive):
                top = [int(r) for r, v in zip(rows[j], values[j], strict=True) if v > 0]
                names[int(j)] = namer(
                    int(j), [texts[r] for r in top], [records[r].path for r in top]
                )
                progress.update(i + 1)
        finally:
            progress.close()
        np.save(os.path.join(out, "topk_rows.npy"), rows)
        np.save(os.path.join(out, "topk_values.npy"), values)
        np.save(os.path.join(out, "alive.npy"), alive)
        _write_json(os.path.join(out, "names.json"), {str(k): v for k, v in names.items()})
        return {"alive": len(alive), "source": c.source}

    def naming(self) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
        d = self.d("naming")
        names = {int(k): v for k, v in load_json(os.path.join(d, "names.json")).items()}
        return (
            np.load(os.path.join(d, "alive.npy")),
            np.load(os.path.join(d, "topk_rows.npy")),
            names,
        )

    def _cav(self, out: str) -> dict:
        c = self.cfg.cav
        alive, rows, _ = self.naming()
        if c.source == "linear_probe":
            cavs = cav_lib.linear_probe_cavs(
                np.asarray(self.emb("train")), self.z("train"), alive, rows[alive], c.positives,
                c.classifier, float(c.negatives_per_positive), int(c.min_negatives),
                int(self.config.train.seed),
            )  # fmt: skip
        elif c.source == "decoder_column":
            cavs = cav_lib.decoder_cavs(
                load_tree(os.path.join(self.d("sae"), "sae.npz"))["decoder"], alive
            )
        else:
            raise ValueError(
                f"cfn.cav.source must be linear_probe or decoder_column, got {c.source!r}"
            )
        np.save(os.path.join(out, "concept_cav.npy"), cavs)
        np.save(os.path.join(out, "latents.npy"), alive)
        return {"num_cavs": len(cavs), "source": c.source}

    def _selection(self, out: str) -> dict:
        cavs = np.load(os.path.join(self.d("cav"), "concept_cav.npy"))
        k = min(int(self.cfg.select.k), len(cavs))
        chosen, values = selection_lib.facility_location(selection_lib.cosine_matrix(cavs), k)
        np.save(os.path.join(out, "select_idx.npy"), np.asarray(chosen, np.int64))
        return {"k": k, "requested": int(self.cfg.select.k), "objective": values[-1]}

    def selected(self) -> tuple[np.ndarray, np.ndarray]:
        """(selected CAVs (K, D), their SAE latent ids (K,)), in selection order."""
        sel = np.load(os.path.join(self.d("selection"), "select_idx.npy"))
        cavs = np.load(os.path.join(self.d("cav"), "concept_cav.npy"))
        latents = np.load(os.path.join(self.d("cav"), "latents.npy"))
        return cavs[sel], latents[sel]

    def _cbm(self, out: str) -> dict:
        c = self.cfg
        cavs, _ = self.selected()
        feats, labels = {}, {}
        for split in SPLITS:
            w, b = omp_lib.omp_batched(
                cavs.T,
                np.asarray(self.emb(split)),
                int(c.omp.n_nonzero),
                bool(c.omp.fit_intercept),
                int(c.omp.chunk),
            )
            np.save(os.path.join(out, f"omp_w_{split}.npy"), w)
            np.save(os.path.join(out, f"omp_b_{split}.npy"), b)
            feats[split] = bottleneck.cbm_features(c.cbm.features, cavs, w, b)
            labels[split] = np.load(os.path.join(self.d("embeddings"), f"labels_{split}.npy"))
        ml = bool(self.index.multilabel)
        chosen, tried = cbm_lib.search_c(
            feats["train"], labels["train"], feats["val"], labels["val"], ml,
            int(c.cbm.max_iter), int(c.cbm.bisection_rounds),
        )  # fmt: skip
        coef, intercept = cbm_lib.fit(
            feats["train"], labels["train"], chosen, ml, int(c.cbm.max_iter)
        )
        np.savez(os.path.join(out, "cbm.npz"), coef=coef, intercept=intercept, C=chosen)
        stats = {"C": chosen, "tried": tried}
        for split in SPLITS:
            scores = cbm_lib.logits(feats[split], coef, intercept)
            np.save(os.path.join(out, f"logits_{split}.npy"), scores)
            stats[f"{split}_accuracy"] = cbm_lib.accuracy(labels[split], scores, ml)
        return stats

    def _report(self, out: str) -> dict:
        return report_lib.write(self, out)


def _key_of(folder: str) -> str | None:
    path = os.path.join(folder, "key.json")
    return load_json(path).get("key") if os.path.isfile(path) else None


def _brief(stats: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in stats.items() if not isinstance(v, (list, dict)))


def _collect(stream, total: int) -> dict[str, np.ndarray]:
    parts: dict[str, list] = {}
    for idx, out in stream:
        for k, v in out.items():
            parts.setdefault(k, []).append(np.asarray(v)[: len(idx)])
    return {k: np.concatenate(v)[:total] for k, v in parts.items()}


def _restore_best(workdir: str, state):
    """The best-validation checkpoint's params/batch_stats (None when there is none)."""
    from jaxproto.core import checkpoint as ckpt_lib

    ckpt = ckpt_lib.Checkpointer(workdir, async_save=False)
    try:
        step = ckpt.best.latest_step()
        if step is None:
            return None
        shardings = jax.tree.map(lambda x: x.sharding, state)
        best, _ = ckpt.restore(step, state, shardings, best=True)
        return best
    finally:
        ckpt.close()
