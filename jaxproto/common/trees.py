"""One parameter-path matcher for every pytree operation that selects leaves by name.

A leaf's name is its key path joined by "/" ("backbone/features/conv0/kernel"; inside the
trainer state "params/backbone/..."). Patterns are Python regexes searched in that name
(``re.search``), as in big_vision's ``make_mask_trees``. The same functions serve sharding
rules (``core.parallel``), optimizer freezing and per-group learning rates (methods'
``optimizers``) and pretrained-weight merging (``backbones``), so a regex means the same thing
everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from jaxproto.common.errors import CheckpointError

PyTree = Any


def path_str(path: Sequence[Any]) -> str:
    """ "params/features/conv0/kernel"-style name of a pytree key path."""
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        elif isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.FlattenedIndexKey):
            parts.append(str(k.key))
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_names(tree: PyTree, prefix: str = "") -> list[str]:
    """Names of every leaf, in flattening order (``prefix/`` prepended when given)."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    pre = f"{prefix}/" if prefix else ""
    return [pre + path_str(p) for p, _ in leaves]


def map_with_names(fn: Callable[[str, Any], Any], tree: PyTree, prefix: str = "") -> PyTree:
    """``fn(name, leaf)`` over every leaf."""
    pre = f"{prefix}/" if prefix else ""
    return jax.tree_util.tree_map_with_path(lambda p, x: fn(pre + path_str(p), x), tree)


def mask(tree: PyTree, pattern: str, prefix: str = "") -> PyTree:
    """True where the leaf's name matches ``pattern``."""
    compiled = re.compile(pattern)
    return map_with_names(lambda name, _: bool(compiled.search(name)), tree, prefix)


def first_match(name: str, rules: Sequence[tuple[str, Any]]) -> Any | None:
    """The value of the first (pattern, value) rule whose pattern matches ``name``."""
    for pattern, value in rules:
        if re.search(pattern, name):
            return value
    return None


def label_tree(
    tree: PyTree,
    groups: Sequence[tuple[str, str]],
    trainable: str | None = None,
    frozen_label: str = "frozen",
    prefix: str = "",
    strict: bool = True,
) -> PyTree:
    """Group label per leaf for ``optax.multi_transform``.

    ``groups`` is an ordered list of (label, pattern): the first match wins. A leaf whose name
    does not match ``trainable`` (when given) gets ``frozen_label``. With ``strict`` a leaf
    matching no group is an error naming it; otherwise it is frozen.
    """
    rules = [(pattern, label) for label, pattern in groups]
    train_re = re.compile(trainable) if trainable is not None else None

    def one(name: str, _):
        label = first_match(name, rules)
        if label is None:
            if strict:
                raise ValueError(
                    f"parameter {name!r} matches no group of {[(lbl, pat) for lbl, pat in groups]}"
                )
            return frozen_label
        if train_re is not None and not train_re.search(name):
            return frozen_label
        return label

    return map_with_names(one, tree, prefix)


def state_leaf_names(state: PyTree) -> PyTree:
    """Names for the leaves of a trainer state in which optimizer moments are named like the
    parameter they mirror: a leaf under ``opt/`` whose path ends with a parameter's path is
    named ``params/<that path>`` (so a sharding rule for a kernel also places its Adam moments).
    Other leaves keep their own name."""
    params = state.get("params", {}) if isinstance(state, dict) else {}
    param_paths = set(leaf_names(params))

    def one(name: str, _):
        if not name.startswith("opt/"):
            return name
        parts = name.split("/")
        for start in range(1, len(parts)):
            suffix = "/".join(parts[start:])
            if suffix in param_paths:
                return "params/" + suffix
        return name

    return map_with_names(one, state)


def check_like(name: str, got: PyTree, want: PyTree, hint: str = "") -> None:
    """``got`` has ``want``'s tree structure and leaf shapes (e.g. converted weights against the
    model's), else a CheckpointError naming the first mismatches and ``hint`` (what to check)."""
    flat_got = dict(jax.tree_util.tree_flatten_with_path(got)[0])
    flat_want = dict(jax.tree_util.tree_flatten_with_path(want)[0])
    tail = f" ({hint})" if hint else ""
    if flat_got.keys() != flat_want.keys():
        missing = sorted(map(jax.tree_util.keystr, flat_want.keys() - flat_got.keys()))
        extra = sorted(map(jax.tree_util.keystr, flat_got.keys() - flat_want.keys()))
        raise CheckpointError(
            f"{name}: converted tree differs from the model: missing {missing[:5]}, "
            f"unexpected {extra[:5]}{tail}"
        )
    for path, w in flat_want.items():
        if tuple(np.shape(flat_got[path])) != tuple(np.shape(w)):
            raise CheckpointError(
                f"{name}{jax.tree_util.keystr(path)}: checkpoint shape "
                f"{np.shape(flat_got[path])}, model expects {tuple(np.shape(w))}{tail}"
            )
