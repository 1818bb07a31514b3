"""Rule extraction from the DCR layer (specs/medmicn.md §3), on host arrays.

Local: for each sample and each class j with ŷ_neural_j > 0.5, concept i is kept when
(1 − r_ij) < (s_ij ⇔ ĉ_i); it is written ``name`` when s_ij ≥ 0.5, else ``~name``; its truth
degree is s_ij ⇔ ĉ_i and its attention ±r_ij (0 when dropped). Kept literals joined by " & "
form a minterm. A sample with no active class yields class −1 and an empty minterm. Global:
identical minterm strings are counted per class.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Literal:
    concept: int
    name: str
    positive: bool
    truth: float  # s ⇔ ĉ, the degree to which this literal holds for the sample

    def text(self, exact: bool = False) -> str:
        lit = self.name if self.positive else f"~{self.name}"
        return f"{self.truth:.3f} ({lit})" if exact else lit


@dataclasses.dataclass(frozen=True)
class LocalRule:
    sample: int
    class_index: int  # -1: no class active
    class_name: str
    literals: tuple[Literal, ...]
    attention: tuple[float, ...]
    truth: float  # ŷ_neural of the class (the rule's truth degree), 0 when no class

    def minterm(self, exact: bool = False) -> str:
        return " & ".join(lit.text(exact) for lit in self.literals)

    def text(self) -> str:
        return f"{self.class_name} <= {self.minterm() or 'true'}" if self.class_index >= 0 else ""


def _iff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.minimum(np.maximum(1.0 - a, b), np.maximum(a, 1.0 - b))


def local_rules(
    concept_probs: np.ndarray,
    sign: np.ndarray,
    relevance: np.ndarray,
    y_neural: np.ndarray,
    concept_names: Sequence[str],
    class_names: Sequence[str],
) -> list[LocalRule]:
    """One LocalRule per (sample, active class), or one class −1 rule for a sample without one.

    Shapes: concept_probs (B, N), sign and relevance (B, N, K), y_neural (B, K)."""
    c = np.asarray(concept_probs, np.float64)
    s = np.asarray(sign, np.float64)
    r = np.asarray(relevance, np.float64)
    y = np.asarray(y_neural, np.float64)
    b, n = c.shape
    if s.shape != (b, n, y.shape[1]) or r.shape != s.shape:
        raise ValueError(f"rule shapes: concepts {c.shape}, sign {s.shape}, relevance {r.shape}")
    if len(concept_names) != n:
        raise ValueError(f"{len(concept_names)} concept names for {n} concepts")
    truth = _iff(s, c[:, :, None])
    keep = (1.0 - r) < truth
    out = []
    for i in range(b):
        active = np.flatnonzero(y[i] > 0.5)
        if active.size == 0:
            out.append(LocalRule(i, -1, "", (), (), 0.0))
            continue
        for j in active:
            lits, att = [], []
            for k in range(n):
                if keep[i, k, j]:
                    pos = bool(s[i, k, j] >= 0.5)
                    lits.append(Literal(k, concept_names[k], pos, float(truth[i, k, j])))
                    att.append(float(r[i, k, j]) if pos else -float(r[i, k, j]))
                else:
                    att.append(0.0)
            out.append(
                LocalRule(i, int(j), class_names[j], tuple(lits), tuple(att), float(y[i, j]))
            )
    return out


def global_rules(rules: Sequence[LocalRule], class_names: Sequence[str]) -> dict[str, list]:
    """Class name -> [(minterm, count)], most frequent first (ties by minterm text)."""
    counts: dict[str, collections.Counter] = {name: collections.Counter() for name in class_names}
    for rule in rules:
        if rule.class_index >= 0:
            counts[rule.class_name][rule.minterm()] += 1
    return {
        name: sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        for name, counter in counts.items()
    }


def check_planted(minterm: str, planted: Sequence[Sequence[tuple[str, bool]]]) -> dict[str, object]:
    """Compares a minterm with the true rule of a class given as alternatives (a DNF: each a
    list of (concept name, positive)). ``ok`` when every literal of some alternative appears with
    its polarity; ``extra`` counts the minterm's literals outside the best alternative."""
    found = set()
    for lit in filter(None, (t.strip() for t in minterm.split("&"))):
        found.add((lit[1:], False) if lit.startswith("~") else (lit, True))
    best = None
    for alt in planted:
        want = set((name, bool(pos)) for name, pos in alt)
        hit = want <= found
        score = (hit, -len(found - want))
        if best is None or score > best[0]:
            best = (score, alt, hit, sorted(found - want), sorted(want - found))
    _, alt, hit, extra, missing = best
    return {
        "ok": bool(hit),
        "alternative": [f"{n}" if p else f"~{n}" for n, p in alt],
        "missing": [f"{n}" if p else f"~{n}" for n, p in missing],
        "extra_literals": len(extra),
        "extra": [f"{n}" if p else f"~{n}" for n, p in extra],
    }


def check_planted_rules(
    rules: Sequence[LocalRule],
    concepts: np.ndarray,
    concept_names: Sequence[str],
    planted: dict[str, Sequence[Sequence[tuple[str, bool]]]],
) -> dict[str, dict]:
    """Per class, whether its learned rules contain its planted rule (a DNF of conjunctions).

    A class whose planted rule is one conjunction (the positive class, e.g. malignant ⇔ Papule
    ∧ ¬Xerosis) is checked on its most frequent global minterm. A class whose rule is a
    disjunction (its negation, ¬Papule ∨ Xerosis) cannot be contained in one minterm; each
    disjunct is checked on the most frequent minterm of the samples (true concepts
    ``concepts``, (B, N)) for which that disjunct is the only one that holds; samples where
    several hold are counted as ``ambiguous``. ``ok``: every checked conjunction appears with
    its polarities; extra literals are counted."""
    col = {name: i for i, name in enumerate(concept_names)}
    c = np.asarray(concepts) > 0.5
    out = {}
    for name, alts in planted.items():
        holds = np.stack(
            [np.all([c[:, col[n]] == bool(pos) for n, pos in alt], axis=0) for alt in alts], 1
        )
        mine = [r for r in rules if r.class_index >= 0 and r.class_name == name]
        rows = []
        for a, alt in enumerate(alts):
            group = mine
            if len(alts) > 1:
                group = [r for r in mine if holds[r.sample, a] and holds[r.sample].sum() == 1]
            counts = collections.Counter(r.minterm() for r in group)
            top = min(counts.items(), key=lambda kv: (-kv[1], kv[0])) if counts else ("", 0)
            row = {"samples": len(group), "rule": top[0], "count": int(top[1])}
            row.update(check_planted(top[0], [alt]))
            row["ok"] = bool(row["ok"] and group)
            rows.append(row)
        ambiguous = sum(1 for r in mine if holds[r.sample].sum() > 1)
        out[name] = {"ok": all(r["ok"] for r in rows), "alternatives": rows, "ambiguous": ambiguous}
    return out
