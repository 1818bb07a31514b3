"""Naming SAE latents from their probing images (cfn.md §5), behind one interface.

A namer gets, per latent, the top-k activating training images (paths, in activation order) and
their texts, and returns a name. ``csv``: a user's ``latent,name`` file; ``reports``: the most
distinguishing n-gram of the top-k reports against all reports (log-odds ratio with an
informative Dirichlet prior, Monroe et al. 2008); ``command``: an external program (e.g. a
user's multimodal LLM) that reads one JSON object {"latent", "texts", "images"} on stdin and
prints the name; ``index``: "latent #j".
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import re
import shlex
import subprocess
from collections.abc import Sequence

import numpy as np

from jaxproto.common.errors import ConfigError, DataError

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z][a-z0-9\-]*")
STOPWORDS = frozenset(
    "a an and the of with without to in on at for from by is are was were be been this that these "
    "those it its or as no not any there which showing shows".split()
)


def ngrams(text: str, n_max: int) -> list[str]:
    """Lower-cased word n-grams (1..n_max) without stop-word unigrams, one count per text."""
    words = _TOKEN.findall(text.lower())
    grams = set()
    for n in range(1, n_max + 1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
                continue
            grams.add(" ".join(gram))
    return sorted(grams)


class ReportNamer:
    """Log-odds (informative Dirichlet prior) of document frequencies: top-k vs all reports."""

    def __init__(self, all_texts: Sequence[str], n_max: int = 2, prior_scale: float = 10.0):
        self.n_max = n_max
        self.background = collections.Counter()
        for t in all_texts:
            self.background.update(ngrams(t, n_max))
        self.bg_total = max(1, sum(self.background.values()))
        self.prior_scale = prior_scale

    def scores(self, texts: Sequence[str]) -> list[tuple[str, float]]:
        """(n-gram, z-scored log-odds ratio) sorted best first.

        Counts are per report (an n-gram counts once per text); the top-k reports are compared
        with the remaining reports, the prior alpha_w = prior_scale * background share of w
        (Monroe et al. eq. 16, 18-20)."""
        fg = collections.Counter()
        for t in texts:
            fg.update(ngrams(t, self.n_max))
        n_fg = sum(fg.values())
        n_rest = max(self.bg_total - n_fg, 1)
        a0 = self.prior_scale
        out = []
        for gram, y in fg.items():
            a = a0 * self.background[gram] / self.bg_total
            rest = max(self.background[gram] - y, 0)
            d = np.log((y + a) / (n_fg + a0 - y - a)) - np.log(
                (rest + a) / (n_rest + a0 - rest - a)
            )
            var = 1.0 / (y + a) + 1.0 / (rest + a)
            out.append((gram, float(d / np.sqrt(var))))
        # Equal evidence (e.g. 'red', 'ulcer', 'red ulcer' always together): the longest phrase.
        out.sort(key=lambda t: (-round(t[1], 6), -len(t[0].split()), t[0]))
        return out

    def __call__(self, latent: int, texts: Sequence[str], images: Sequence[str]) -> str:
        ranked = self.scores(texts)
        return ranked[0][0] if ranked else f"latent #{latent}"


class CsvNamer:
    """Names from a ``latent,name`` CSV (header line required); other latents keep "latent #j"."""

    def __init__(self, path: str):
        self.names: dict[int, str] = {}
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:
                reader = csv.reader(f)
                header = [h.strip() for h in next(reader, [])]
                if header[:2] != ["latent", "name"]:
                    raise DataError(f"{path}:1: header must be 'latent,name', got {header}")
                for row in reader:
                    if not row:
                        continue
                    try:
                        self.names[int(row[0])] = row[1].strip()
                    except (ValueError, IndexError):
                        raise DataError(
                            f"{path}:{reader.line_num}: expected '<latent int>,<name>', got {row}"
                        ) from None
        except FileNotFoundError:
            raise ConfigError(f"cfn.naming.csv: file not found: {path}") from None

    def __call__(self, latent: int, texts: Sequence[str], images: Sequence[str]) -> str:
        return self.names.get(int(latent), f"latent #{latent}")


class CommandNamer:
    """Runs ``command`` per latent with a JSON request on stdin; stdout's first line is the name."""

    def __init__(self, command: str, timeout_s: float = 300.0):
        if not command:
            raise ConfigError("cfn.naming.source='command' needs cfn.naming.command")
        self.argv = shlex.split(command)
        self.timeout_s = timeout_s

    def __call__(self, latent: int, texts: Sequence[str], images: Sequence[str]) -> str:
        request = json.dumps({"latent": int(latent), "texts": list(texts), "images": list(images)})
        try:
            done = subprocess.run(
                self.argv, input=request, capture_output=True, text=True, timeout=self.timeout_s
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ConfigError(f"cfn.naming.command {self.argv[0]!r} failed: {e}") from None
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise ConfigError(
                f"cfn.naming.command {self.argv[0]!r} exited {done.returncode} for latent "
                f"{latent} without a name on stdout; stderr: {done.stderr.strip()[-300:]}"
            )
        return lines[0].strip()


def make_namer(cfg, all_texts: Sequence[str]):
    """The namer ``cfg.source`` selects (``cfg`` = config.cfn.naming)."""
    if cfg.source == "reports":
        if not any(all_texts):
            raise ConfigError("cfn.naming.source='reports' but the dataset has no reports")
        return ReportNamer(all_texts, int(cfg.ngram_max), float(cfg.prior_scale))
    if cfg.source == "csv":
        return CsvNamer(cfg.csv)
    if cfg.source == "command":
        return CommandNamer(cfg.command, float(cfg.timeout_s))
    if cfg.source == "index":
        return lambda latent, texts, images: f"latent #{latent}"
    raise ConfigError(
        f"cfn.naming.source must be reports, csv, command or index, got {cfg.source!r}"
    )


def streaming_topk(z_chunks, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-latent top-k (values, row indices), best first, over an iterable of (offset, z chunk)."""
    best_v = best_i = None
    for offset, z in z_chunks:
        idx = np.broadcast_to(np.arange(offset, offset + len(z))[:, None], z.shape)
        v = z if best_v is None else np.concatenate([best_v, z])
        i = idx if best_i is None else np.concatenate([best_i, idx])
        kk = min(k, len(v))
        part = np.argpartition(-v, kk - 1, axis=0)[:kk]
        best_v, best_i = np.take_along_axis(v, part, 0), np.take_along_axis(i, part, 0)
    order = np.lexsort((best_i, -best_v), axis=0)
    return np.take_along_axis(best_v, order, 0).T, np.take_along_axis(best_i, order, 0).T
