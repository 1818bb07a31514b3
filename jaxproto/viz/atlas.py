"""Prototype atlas: a browsable page and a JSON index of what each prototype was matched to.

Each entry describes one prototype: ``prototype_id`` (int), ``class_name`` (str),
``source_image_id`` (str), ``image`` (a path relative to the atlas folder; the file must exist),
and optionally ``location`` (e.g. ``[row, col]`` on the feature grid or an ``[x, y, w, h]`` box),
``distance`` and/or ``similarity``. Any further keys (hit counts, a pruned flag, ...) are kept in
the JSON and shown on the card. The page groups prototypes by class (in order of first
appearance, each with an anchor) and sorts them by id.
"""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections.abc import Mapping, Sequence

import numpy as np

from jaxproto.viz.report import DEFAULT_FOOTER, html_page

_REQUIRED = ("prototype_id", "class_name", "source_image_id", "image")
_SHOWN = ("source_image_id", "location", "distance", "similarity")

_ATLAS_CSS = """
nav{display:flex;flex-wrap:wrap;gap:8px;margin:.4em 0 1em}
nav a{padding:3px 10px;border:1px solid #c8d3e3;border-radius:12px;text-decoration:none;
color:#1f5fa8;font-size:.9em}
.grid{grid-template-columns:repeat(auto-fill,minmax(210px,1fr))}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 8px;margin:6px 0 0;font-size:.82em}
dt{color:#5f6368}dd{margin:0;word-break:break-all}
"""


def _jsonable(value: object) -> object:
    """Python builtins for numpy scalars/arrays and nested containers."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _validate(entry: Mapping[str, object], index: int, out_dir: str) -> dict[str, object]:
    where = f"atlas entry {index}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; required {list(_REQUIRED)}")
    e = _jsonable(dict(entry))
    if not isinstance(e["prototype_id"], int) or isinstance(e["prototype_id"], bool):
        raise ValueError(f"{where}: prototype_id must be an int, got {e['prototype_id']!r}")
    image = str(e["image"])
    if os.path.isabs(image) or os.path.normpath(image).startswith(".."):
        raise ValueError(f"{where}: image must be a path inside the atlas folder, got {image!r}")
    if not os.path.isfile(os.path.join(out_dir, image)):
        raise ValueError(f"{where}: image file {os.path.join(out_dir, image)!r} does not exist")
    for key in ("distance", "similarity"):
        if key in e and not (isinstance(e[key], int | float) and math.isfinite(e[key])):
            raise ValueError(f"{where}: {key} must be a finite number, got {e[key]!r}")
    return e


def _value(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, list):
        return "(" + ", ".join(_value(x) for x in v) + ")"
    return str(v)


def _card(e: Mapping[str, object]) -> str:
    extras = [k for k in e if k not in _REQUIRED and k not in _SHOWN]
    rows = "".join(
        f"<dt>{html.escape(k.replace('_', ' '))}</dt><dd>{html.escape(_value(e[k]))}</dd>"
        for k in (*_SHOWN, *extras)
        if k in e and e[k] is not None
    )
    pid = html.escape(str(e["prototype_id"]))
    return (
        f'<figure id="prototype-{pid}"><img src="{html.escape(str(e["image"]))}" '
        f'alt="prototype {pid}" loading="lazy"><figcaption><b>Prototype {pid}</b>'
        f"<dl>{rows}</dl></figcaption></figure>"
    )


def _anchor(name: str, k: int) -> str:
    return f"class-{k}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")


def write_atlas(
    out_dir: str,
    entries: Sequence[Mapping[str, object]],
    title: str = "Prototype atlas",
    footer: str = DEFAULT_FOOTER,
) -> tuple[str, str]:
    """Writes ``atlas.json`` and ``atlas.html`` into ``out_dir``; returns their paths."""
    if not entries:
        raise ValueError("write_atlas needs at least one entry")
    valid = [_validate(e, i, out_dir) for i, e in enumerate(entries)]
    ids = [e["prototype_id"] for e in valid]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise ValueError(f"atlas entries repeat prototype_id values {dup}")
    groups: dict[str, list[dict[str, object]]] = {}
    for e in valid:
        groups.setdefault(str(e["class_name"]), []).append(e)
    for members in groups.values():
        members.sort(key=lambda e: e["prototype_id"])

    nav = "".join(
        f'<a href="#{_anchor(name, k)}">{html.escape(name)} ({len(members)})</a>'
        for k, (name, members) in enumerate(groups.items())
    )
    sections = "".join(
        f'<section id="{_anchor(name, k)}"><h2>{html.escape(name)}</h2>'
        f'<div class="grid">{"".join(_card(e) for e in members)}</div></section>'
        for k, (name, members) in enumerate(groups.items())
    )
    summary = f"<p>{len(valid)} prototypes in {len(groups)} classes.</p>"
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "atlas.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump(
            {
                "title": title,
                "num_prototypes": len(valid),
                "classes": list(groups),
                "entries": [e for members in groups.values() for e in members],
            },
            f,
            indent=1,
        )
    html_path = os.path.join(out_dir, "atlas.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(html_page(title, f"{summary}<nav>{nav}</nav>{sections}", footer, _ATLAS_CSS))
    return json_path, html_path
