"""PyTorch state_dict -> Linen variables for the registered backbones, strictly checked.

Files are read with ``torch.load(path, map_location="cpu", weights_only=True)`` (no arbitrary
unpickling) or ``safetensors.numpy.load_file``. Accepted key schemes:

- torchvision ResNet / DenseNet / VGG / ConvNeXt names, including DenseNet's legacy
  ``denselayerN.norm.1``/``conv.1``/``norm.2``/``conv.2`` names (xmir.md, cipl.md);
- timm ``convnext_tiny`` names (``stem.0``, ``stages.N.downsample``, ``stages.N.blocks.M...``,
  ``head.norm``, ``head.fc``) (csr.md, Checkpoint conversion);
- CheXNet / X-MIR DenseNet-121 checkpoints: ``module.`` and ``densenet121.`` prefixes,
  ``densenet121.0.`` for ``features.``, ``classifier.0`` (Linear + Sigmoid) for ``classifier``,
  possibly wrapped in ``{"state_dict": ...}``.

Rules (specs README): conv OIHW -> HWIO; Linear (out, in) -> (in, out); BN/LN weight/bias ->
params scale/bias; BN running_mean/var -> batch_stats mean/var; num_batches_tracked dropped;
ConvNeXt gamma / torchvision layer_scale (C,1,1) -> ``gamma`` (C,).

Strict by default: missing keys, unexpected keys and shape mismatches are reported together in
one :class:`CheckpointMismatchError`. ``allow_missing`` is a regex searched in Linen paths
written ``collection/module/.../leaf`` (e.g. ``params/classifier/kernel``); ``allow_unexpected``
is a regex searched in the file's own key names.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from jaxproto.backbones import vit_import
from jaxproto.backbones.registry import build_backbone, get_spec
from jaxproto.common.errors import CheckpointError

log = logging.getLogger(__name__)

Variables = dict[str, Any]
FlatKey = tuple[str, str]  # (collection, "module/.../leaf")

TORCH_SUFFIXES = (".pth", ".pt", ".bin", ".tar", ".ckpt")


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not match the model: lists every missing/unexpected/mis-shaped key."""


# ---------------------------------------------------------------------------------------------
# Reading files


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a PyTorch (.pth/.pt/.bin/.tar/.ckpt) or .safetensors file as numpy arrays.

    A ``{"state_dict": ...}`` (or ``{"model": ...}``) wrapper is unwrapped. Torch files are
    loaded with ``weights_only=True``; bfloat16/float16 tensors are widened to float32.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    if path.endswith(".safetensors"):
        import safetensors.numpy

        try:
            return dict(safetensors.numpy.load_file(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise CheckpointError(
                f"{path}: cannot read safetensors ({type(e).__name__}: {e})"
            ) from e
    if not path.endswith(TORCH_SUFFIXES):
        raise CheckpointError(
            f"{path}: unknown weights format; expected one of {TORCH_SUFFIXES + ('.safetensors',)}"
            " (or a converted .msgpack for load_pretrained)"
        )
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading {path} needs PyTorch (pip install torch); or convert the file to "
            ".safetensors / .msgpack on a machine that has it"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with non-tensor objects, not a torch file
        raise CheckpointError(f"{path}: cannot read torch file ({type(e).__name__}: {e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state_dict (a mapping of tensors), got {type(obj)}"
        )
    out = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{path}: entry {key!r} is a {type(value).__name__}, expected a tensor "
                "(is this a state_dict?)"
            )
        value = value.detach().cpu()
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        out[key] = value.numpy()
    return out


# ---------------------------------------------------------------------------------------------
# Key mapping: torch module path -> Linen module path ("a/b/c"), per family


def _normalize_densenet(key: str) -> str:
    key = re.sub(r"^module\.", "", key)
    key = re.sub(r"^densenet(121|169)\.0\.", "features.", key)
    key = re.sub(r"^densenet(121|169)\.", "", key)
    # Legacy torchvision names (pytorch/vision #474): denselayerN.norm.1 -> denselayerN.norm1.
    key = re.sub(r"(denselayer\d+)\.(norm|conv)\.([12])\.", r"\1.\2\3.", key)
    return re.sub(r"^classifier\.0\.", "classifier.", key)


def _strip_module(key: str) -> str:
    return re.sub(r"^module\.", "", key)


def _map_resnet(module: str) -> str | None:
    if module in ("conv1", "bn1", "fc"):
        return module
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv\d|bn\d)", module)
    if m:
        return f"layer{m[1]}_{m[2]}/{m[3]}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.downsample\.([01])", module)
    if m:
        return f"layer{m[1]}_{m[2]}/downsample_{'conv' if m[3] == '0' else 'bn'}"
    return None


def _map_densenet(module: str) -> str | None:
    if module == "classifier":
        return module
    if module.startswith("features."):
        return module.replace(".", "/")
    return None


def _map_vgg(module: str) -> str | None:
    m = re.fullmatch(r"(features|classifier)\.(\d+)", module)
    return f"{m[1]}_{m[2]}" if m else None


_TV_CONVNEXT_BLOCK = {"0": "conv_dw", "2": "norm", "3": "mlp_fc1", "5": "mlp_fc2"}


# Plain renames (regex on the torch module path -> Linen name with the groups filled in), timm
# then torchvision (features.0 = stem, classifier.0/2 = head norm/fc).
_CONVNEXT_RENAMES = (
    (r"stem\.([01])", "stem_{0}"),
    (r"stages\.(\d)\.downsample\.([01])", "stages_{0}_downsample_{1}"),
    (r"head\.(norm|fc)", "head_{0}"),
    (r"features\.0\.([01])", "stem_{0}"),
    (r"classifier\.0", "head_norm"),
    (r"classifier\.2", "head_fc"),
)


def _map_convnext(module: str) -> str | None:
    for pattern, template in _CONVNEXT_RENAMES:
        m = re.fullmatch(pattern, module)
        if m:
            return template.format(*m.groups())
    m = re.fullmatch(r"stages\.(\d)\.blocks\.(\d+)(?:\.(conv_dw|norm|mlp\.fc1|mlp\.fc2))?", module)
    if m:
        block = f"stages_{m[1]}_blocks_{m[2]}"
        return block if m[3] is None else f"{block}/{m[3].replace('.', '_')}"
    # torchvision: odd features.{2s+1} are stage s, even features.{2s} its downsample
    m = re.fullmatch(r"features\.(\d)\.(\d+)(?:\.block\.(\d))?", module)
    if m:
        n = int(m[1])
        if n % 2 == 1:
            block = f"stages_{(n - 1) // 2}_blocks_{m[2]}"
            if m[3] is None:
                return block
            return f"{block}/{_TV_CONVNEXT_BLOCK[m[3]]}" if m[3] in _TV_CONVNEXT_BLOCK else None
        if m[3] is None and m[2] in ("0", "1"):
            return f"stages_{n // 2}_downsample_{m[2]}"
    return None


# family -> (key normaliser, module mapper, head modules, final head module)
_FAMILIES: dict[str, tuple[Callable[[str], str], Callable[[str], str | None], tuple, str]] = {
    "resnet": (_strip_module, _map_resnet, ("fc",), "fc"),
    "densenet": (_normalize_densenet, _map_densenet, ("classifier",), "classifier"),
    "vgg": (
        _strip_module,
        _map_vgg,
        ("classifier_0", "classifier_3", "classifier_6"),
        "classifier_6",
    ),
    "convnext": (_strip_module, _map_convnext, ("head_fc",), "head_fc"),
    "vit": (_strip_module, vit_import.unmapped, ("head",), "head"),
}
# family -> whole-state_dict rewrite into Linen paths before the per-key mapping
_PREPARE = {"vit": vit_import.torch_to_linen}


def _convert_leaf(leaf: str, value: np.ndarray) -> tuple[str, str, np.ndarray] | None:
    """(collection, Linen leaf name, converted value); None = drop; KeyError = unknown leaf."""
    if leaf == "weight":
        if value.ndim == 4:
            return "params", "kernel", np.transpose(value, (2, 3, 1, 0))
        if value.ndim == 2:
            return "params", "kernel", np.transpose(value)
        if value.ndim == 1:
            return "params", "scale", value
        raise KeyError(leaf)
    if leaf == "bias":
        return "params", "bias", value
    if leaf == "running_mean":
        return "batch_stats", "mean", value
    if leaf == "running_var":
        return "batch_stats", "var", value
    if leaf in ("gamma", "layer_scale"):
        return "params", "gamma", value.reshape(-1)
    if leaf == "num_batches_tracked":
        return None
    raise KeyError(leaf)


# ---------------------------------------------------------------------------------------------
# Trees


def _flatten(variables: Mapping[str, Any]) -> dict[FlatKey, Any]:
    out = {}
    for coll, tree in variables.items():
        for path, leaf in flax.traverse_util.flatten_dict(dict(tree), sep="/").items():
            out[(coll, path)] = leaf
    return out


def _unflatten(flat: Mapping[FlatKey, Any], collections: tuple[str, ...]) -> Variables:
    out: Variables = {c: {} for c in collections}
    for (coll, path), leaf in flat.items():
        out.setdefault(coll, {})[path] = leaf
    return {c: flax.traverse_util.unflatten_dict(t, sep="/") for c, t in out.items()}


def _shape_of(x: Any) -> tuple[int, ...]:
    return tuple(np.shape(x)) if not hasattr(x, "shape") else tuple(x.shape)


def _template(arch: str, with_head: bool, num_classes: int, overrides: Mapping[str, Any]) -> dict:
    """Flat {(collection, path): ShapeDtypeStruct} of the model's variables (no allocation)."""
    items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()))
    return _cached_template(arch, with_head, num_classes, items)


@functools.lru_cache(maxsize=32)
def _cached_template(
    arch: str, with_head: bool, num_classes: int, overrides: tuple[tuple[str, Any], ...]
) -> dict:
    model = build_backbone(arch, with_head=with_head, num_classes=num_classes, **dict(overrides))
    x = jnp.zeros((1, 64, 64, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    return _flatten(shapes)


def _check(
    expected: Mapping[FlatKey, Any],
    got: Mapping[FlatKey, Any],
    source_names: Mapping[FlatKey, str],
    unexpected: list[str],
    allow_missing: str | None,
    allow_unexpected: str | None,
    what: str,
) -> None:
    """Raises one CheckpointMismatchError listing every problem; filters by the allow regexes.

    What an allow regex lets through is logged by name as a warning (never dropped silently);
    a shape mismatch of a tensor the model has is always an error."""
    problems, allowed_missing, allowed_unexpected = [], [], []
    for key in sorted(set(expected) - set(got)):
        name = "/".join(key)
        if allow_missing and re.search(allow_missing, name):
            allowed_missing.append(name)
        else:
            problems.append(f"missing: {name} (expected shape {_shape_of(expected[key])})")
    for key in sorted(set(got) - set(expected)):
        src = source_names.get(key, "/".join(key))
        if allow_unexpected and re.search(allow_unexpected, src):
            allowed_unexpected.append(f"{src} {list(_shape_of(got[key]))}")
        else:
            problems.append(f"unexpected: {src} (-> {'/'.join(key)}, shape {_shape_of(got[key])})")
    for src in unexpected:
        if allow_unexpected and re.search(allow_unexpected, src):
            allowed_unexpected.append(src)
        else:
            problems.append(f"unexpected: {src} (no matching parameter in the model)")
    if allowed_missing:
        log.warning(
            "%s: %d parameter(s) not in the file keep their initial values (allowed by "
            "allow_missing): %s",
            what,
            len(allowed_missing),
            ", ".join(allowed_missing),
        )
    if allowed_unexpected:
        log.warning(
            "%s: %d tensor(s) of the file are NOT loaded (no place in this model; allowed by "
            "allow_unexpected): %s",
            what,
            len(allowed_unexpected),
            ", ".join(allowed_unexpected),
        )
    for key in sorted(set(expected) & set(got)):
        want, have = _shape_of(expected[key]), _shape_of(got[key])
        if want != have:
            src = source_names.get(key, "/".join(key))
            problems.append(
                f"shape mismatch: {src} -> {'/'.join(key)}: expected {want}, got {have}"
                " (after layout conversion)"
            )
    if problems:
        raise CheckpointMismatchError(
            f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(problems)
        )


# ---------------------------------------------------------------------------------------------
# Public API


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    arch: str,
    *,
    with_head: bool | None = None,
    num_classes: int | None = None,
    drop_head: bool = False,
    allow_missing: str | None = None,
    allow_unexpected: str | None = None,
    source_name: str = "state_dict",
    **overrides: Any,
) -> Variables:
    """Converts a PyTorch state_dict into ``{"params", "batch_stats"}`` for backbone ``arch``.

    Keys are torch names, or Linen paths ``collection/module/.../leaf`` (a converted .msgpack's
    tree, taken as they are; torch names never contain ``/``). ``with_head``/``num_classes``
    default to what the checkpoint contains; ``drop_head`` discards the classifier tensors (e.g.
    CheXNet's 14-way head) and builds the model without a head. ``overrides`` are passed to
    ``build_backbone`` (e.g. a tiny variant's hyper-parameters).
    """
    family = get_spec(arch).family
    normalize, map_module, head_modules, final_head = _FAMILIES[family]
    if family in _PREPARE:
        state_dict = _PREPARE[family](state_dict, {**get_spec(arch).config, **overrides})
    flat: dict[FlatKey, np.ndarray] = {}
    names: dict[FlatKey, str] = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if "/" in key:
            coll, _, path = key.partition("/")
            target, _, name = path.rpartition("/")
            array = np.asarray(value)
        else:
            module, _, leaf = normalize(key).rpartition(".")
            target = map_module(module)
            try:
                converted = _convert_leaf(leaf, np.asarray(value)) if target else None
            except KeyError:
                target = None
            if target is None:
                unexpected.append(key)
                continue
            if converted is None:
                continue
            coll, name, array = converted
        if drop_head and target.split("/")[0] in head_modules:
            continue
        flat_key = (coll, f"{target}/{name}" if target else name)
        if flat_key in flat:
            raise CheckpointMismatchError(
                f"{source_name}: keys {names[flat_key]!r} and {key!r} both map to "
                f"{'/'.join(flat_key)}"
            )
        flat[flat_key] = array.astype(np.float32)
        names[flat_key] = key
    present = {p.split("/")[0] for _, p in flat}
    if with_head is None:
        with_head = any(m in present for m in head_modules)
    if num_classes is None:
        bias = flat.get(("params", f"{final_head}/bias"))
        kernel = flat.get(("params", f"{final_head}/kernel"))
        num_classes = (
            bias.shape[0] if bias is not None else kernel.shape[-1] if kernel is not None else 1000
        )
    expected = _template(arch, with_head, num_classes, overrides)
    _check(
        expected,
        flat,
        names,
        unexpected,
        allow_missing,
        allow_unexpected,
        f"{source_name} -> {arch} (with_head={with_head}, num_classes={num_classes})",
    )
    flat = {k: v for k, v in flat.items() if k in expected}
    log.info("converted %d tensors from %s into %s", len(flat), source_name, arch)
    return _unflatten(flat, ("params", "batch_stats"))


def _read_msgpack(path: str) -> dict[str, np.ndarray]:
    """A ``.msgpack`` of ``{"params", "batch_stats"}`` as ``{"collection/.../leaf": array}``."""
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    try:
        restored = flax.serialization.msgpack_restore(data)
    except Exception as e:  # msgpack raises several types for truncated or foreign bytes
        raise CheckpointError(f"{path}: cannot read msgpack ({type(e).__name__}: {e})") from e
    if not isinstance(restored, Mapping) or "params" not in restored:
        raise CheckpointError(f"{path}: expected a msgpack dict with 'params' (and 'batch_stats')")
    variables = {"params": restored["params"], "batch_stats": restored.get("batch_stats") or {}}
    return {f"{coll}/{p}": leaf for (coll, p), leaf in _flatten(variables).items()}


def load_pretrained(path: str, arch: str, **options: Any) -> Variables:
    """``{"params", "batch_stats"}`` (numpy) for ``arch`` from a PyTorch/safetensors file
    (converted on the fly) or a ``.msgpack`` written by ``python -m jaxproto.convert``, checked
    the same way. ``options`` are :func:`convert_state_dict`'s keyword arguments (``with_head``,
    ``num_classes``, ``drop_head``, ``allow_missing``, ``allow_unexpected``, overrides)."""
    tensors = _read_msgpack(path) if path.endswith(".msgpack") else read_state_dict(path)
    return convert_state_dict(tensors, arch, source_name=path, **options)


def merge_pretrained(
    variables: Mapping[str, Any],
    pretrained: Mapping[str, Any],
    prefix: str = "",
    *,
    allow_missing: str | None = None,
    allow_unexpected: str | None = None,
) -> Variables:
    """Copies ``pretrained`` (``{"params", "batch_stats"}``) into ``variables`` under ``prefix``
    (a ``/``-separated module path inside each collection, e.g. ``"backbone"``), strictly.

    Every leaf of ``variables[coll][prefix]`` must be provided with the same shape, unless its
    full path ``coll/prefix/...`` matches ``allow_missing``; pretrained leaves with no place in
    the model are errors unless they match ``allow_unexpected``. Values take the target's dtype
    (and sharding when the target leaf is a jax.Array). Returns a new dict; leaves outside the
    prefix are untouched.
    """
    parts = tuple(p for p in prefix.split("/") if p)
    target_flat = _flatten({c: v for c, v in variables.items() if isinstance(v, Mapping)})
    scope = {
        k: v
        for k, v in target_flat.items()
        if tuple(k[1].split("/")[: len(parts)]) == parts and len(k[1].split("/")) > len(parts)
    }
    pre = "/".join(parts)
    incoming = {
        (coll, f"{pre}/{path}" if pre else path): leaf
        for (coll, path), leaf in _flatten(
            {c: v for c, v in pretrained.items() if isinstance(v, Mapping)}
        ).items()
    }
    _check(
        scope,
        incoming,
        {},
        [],
        allow_missing,
        allow_unexpected,
        f"merge_pretrained(prefix={prefix!r})",
    )
    out_flat = dict(target_flat)
    for key, value in incoming.items():
        if key not in scope:
            continue
        old = scope[key]
        if isinstance(old, jax.core.Tracer):  # inside jit/eval_shape (the trainer's init)
            out_flat[key] = jnp.asarray(value, old.dtype)
        elif isinstance(old, jax.Array):
            out_flat[key] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)
        else:
            out_flat[key] = np.asarray(value, dtype=getattr(old, "dtype", np.float32))
    merged = _unflatten(out_flat, ())
    return {**dict(variables), **merged}


def save_msgpack(variables: Mapping[str, Any], path: str) -> None:
    """Writes ``{"params", "batch_stats"}`` with ``flax.serialization.msgpack_serialize``."""
    tree = {
        "params": variables["params"],
        "batch_stats": variables.get("batch_stats") or {},
    }
    tree = jax.tree.map(np.asarray, tree)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "wb") as f:
        f.write(flax.serialization.msgpack_serialize(tree))


def init_with_pretrained(
    variables: Mapping[str, Any],
    init_from: str,
    arch: str,
    prefix: str = "backbone",
    **load_kwargs: Any,
) -> dict[str, Any]:
    """``variables`` with the backbone under ``prefix`` replaced by the weights in ``init_from``
    (a torchvision/timm/CheXNet file or a converted .msgpack; the classifier head dropped
    unless ``load_kwargs`` say otherwise). Empty ``init_from`` returns ``variables`` as is.
    The one "start from pretrained weights" step every method's ``init`` uses."""
    if not init_from:
        return dict(variables)
    load_kwargs.setdefault("drop_head", "with_head" not in load_kwargs)
    pretrained = load_pretrained(init_from, arch, **load_kwargs)
    return {**variables, **merge_pretrained(variables, pretrained, prefix=prefix)}
