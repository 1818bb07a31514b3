"""Med-MICN evaluation protocols (specs/medmicn.md §8) and the global rule table.

``faithful`` (what the paper's numbers mean): predictions from train-mode BatchNorm on the test
batches; ``ỹ > 0.5`` per column against one-hot labels; sklearn multilabel **subset accuracy**
(right only if exactly the true column exceeds 0.5), macro precision/recall/F1 over the indicator
columns and AUC on the **binarised** predictions; model selection on the test split (best epoch).
``fair``: eval-mode BatchNorm, arg-max accuracy, macro F1, AUC on the scores, selection on a
validation split. Both report concept accuracy (ĉ > 0.5 vs c, elementwise) and the accuracy of
the neural-symbolic head (arg-max of ŷ_neural).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn import metrics as skm

from jaxproto.methods.medmicn import rules as rules_lib

PROTOCOLS = ("faithful", "fair")


def _auc(y: np.ndarray, s: np.ndarray) -> float | None:
    return float(skm.roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def protocol_metrics(
    protocol: str,
    fused: np.ndarray,
    y_neural: np.ndarray,
    concept_probs: np.ndarray,
    labels: np.ndarray,
    concepts: np.ndarray,
) -> dict[str, float | None]:
    """Metrics of one protocol from that protocol's outputs (fused ỹ is already a sigmoid)."""
    k = fused.shape[1]
    onehot = np.eye(k, dtype=np.int64)[labels]
    if protocol == "faithful":
        pred = (fused > 0.5).astype(np.int64)
        acc = skm.accuracy_score(onehot, pred)
        p, r, f1, _ = skm.precision_recall_fscore_support(
            onehot, pred, average="macro", zero_division=0
        )
        aucs = [_auc(onehot[:, j], pred[:, j]) for j in range(k)]
    elif protocol == "fair":
        pred = np.argmax(fused, axis=1)
        acc = skm.accuracy_score(labels, pred)
        p, r, f1, _ = skm.precision_recall_fscore_support(
            labels, pred, average="macro", labels=list(range(k)), zero_division=0
        )
        aucs = [_auc(onehot[:, j], fused[:, j]) for j in range(k)]
    else:
        raise ValueError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    defined = [a for a in aucs if a is not None]
    return {
        "task_accuracy": float(acc),
        "precision": float(p),
        "recall": float(r),
        "f1": float(f1),
        "auc": float(np.mean(defined)) if defined else None,
        "concept_accuracy": float(np.mean((concept_probs > 0.5) == (concepts > 0.5))),
        "neural_accuracy": float(np.mean(np.argmax(y_neural, axis=1) == labels)),
    }


def rule_table(
    global_rules: dict[str, list],
    planted: dict[str, list] | None,
    checks: dict[str, dict] | None = None,
    top: int = 5,
) -> dict[str, dict]:
    """Per class: the ``top`` most frequent minterms with counts and, when the true rule is
    known (synthetic data), the planted rule and ``checks`` (``rules.check_planted_rules``)."""
    out = {}
    for name, items in global_rules.items():
        row: dict = {
            "total": int(sum(c for _, c in items)),
            "distinct": len(items),
            "top": [{"rule": f"{name} <= {m or 'true'}", "count": int(c)} for m, c in items[:top]],
        }
        if planted is not None and name in planted:
            row["planted"] = [
                " & ".join(n if pos else f"~{n}" for n, pos in alt) for alt in planted[name]
            ]
        if checks is not None and name in checks:
            row["check"] = checks[name]
        out[name] = row
    return out


def evaluate(
    predictions: dict[str, np.ndarray],
    labels: np.ndarray,
    concepts: np.ndarray | None,
    class_names: Sequence[str],
    concept_names: Sequence[str],
    protocol: str,
    planted: dict[str, list] | None = None,
) -> dict:
    """Both protocols' metrics (flat ``<protocol>/<metric>`` keys too, for model selection),
    the headline protocol, and the global rule table from the headline protocol's outputs."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"eval.protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if concepts is None:
        concepts = np.full(predictions["concept_probs"].shape, np.nan)
    result: dict = {"protocol": protocol, "num_samples": int(len(labels))}
    for prot in PROTOCOLS:
        pre = "" if prot == "fair" else "faithful_"
        metrics = protocol_metrics(
            prot,
            predictions[f"{pre}fused"],
            predictions[f"{pre}y_neural"],
            predictions[f"{pre}concept_probs"],
            labels,
            concepts,
        )
        result[prot] = metrics
        result.update({f"{prot}/{k}": v for k, v in metrics.items() if v is not None})
    result.update({k: v for k, v in result[protocol].items()})
    pre = "" if protocol == "fair" else "faithful_"
    local = rules_lib.local_rules(
        predictions[f"{pre}concept_probs"],
        predictions[f"{pre}sign"],
        predictions[f"{pre}relevance"],
        predictions[f"{pre}y_neural"],
        concept_names,
        class_names,
    )
    result["no_active_class"] = int(sum(r.class_index < 0 for r in local))
    checks = None
    if planted is not None and not np.isnan(concepts).any():
        checks = rules_lib.check_planted_rules(local, concepts, concept_names, planted)
        result["planted_rules_ok"] = float(all(c["ok"] for c in checks.values()))
    result["rules"] = rule_table(rules_lib.global_rules(local, class_names), planted, checks)
    return result


def format_result(result: dict) -> str:
    """Both protocols side by side, then the global rule table."""
    names = ["task_accuracy", "concept_accuracy", "neural_accuracy", "precision", "recall"]
    names += ["f1", "auc"]
    lines = [f"Med-MICN evaluation on {result['num_samples']} images "
             f"(headline protocol: {result['protocol']})",
             f"{'metric':<18}{'faithful':>10}{'fair':>10}"]  # fmt: skip
    for n in names:
        vals = [result[p].get(n) for p in ("faithful", "fair")]
        lines.append(f"{n:<18}" + "".join(f"{'-' if v is None else f'{v:.4f}':>10}" for v in vals))
    lines.append(
        "faithful: train-mode BN, subset accuracy of ỹ>0.5, AUC on hard labels; "
        "fair: eval-mode BN, arg-max accuracy, AUC on scores"
    )
    lines.append(f"\nGlobal rules per class ({result['protocol']} outputs; count of samples):")
    for name, row in result["rules"].items():
        lines.append(f"  {name}: {row['total']} samples, {row['distinct']} distinct rules")
        for item in row["top"]:
            lines.append(f"    {item['count']:>5}  {item['rule']}")
        if row.get("check"):
            lines.append(f"    planted: {' | '.join(row['planted'])}")
            for alt, chk in zip(row["planted"], row["check"]["alternatives"], strict=True):
                scope = "top rule" if len(row["planted"]) == 1 else "top rule where only it holds"
                lines.append(
                    f"      {alt}: {'contained' if chk['ok'] else 'NOT contained'} in the {scope}"
                    f" ({chk['count']} of {chk['samples']} samples), "
                    f"{chk['extra_literals']} extra literal(s)"
                    + (f", missing {', '.join(chk['missing'])}" if chk["missing"] else "")
                )
            if row["check"]["ambiguous"]:
                lines.append(
                    f"      ({row['check']['ambiguous']} samples satisfy several: not checked)"
                )
    return "\n".join(lines)
