"""Prototype atlas: a browsable page and a JSON index of what each prototype was matched to.

Each entry describes one prototype: ``prototype_id`` (int), ``class_name`` (str),
``source_image_id`` (str), ``image`` (a path relative to the atlas folder; the file must exist),
and optionally ``location`` (e.g. ``[row, col]`` on the feature grid or an ``[x, y, w, h]`` box),
``distance`` and/or ``similarity``. Further images (keys ending in ``_image``, e.g. a contour
or the source image with the patch's box; paths inside the atlas folder) are shown inline on the
card, and ``colorbar`` (``{"label", "min", "max"}``) draws the colour map's bar under them. Any
further keys (hit counts, a pruned flag, ...) are kept in the JSON and shown on the card. The
page (the shared template of `jaxproto.viz.report`) groups prototypes by class (in order of
first appearance, each with an anchor) and sorts them by id; ``atlas.json`` is its JSON twin.
"""

from __future__ import annotations

import html
import math
import os
import re
from collections.abc import Mapping, Sequence

from jaxproto.viz.report import DEFAULT_FOOTER, Header, colorbar_html, jsonable, write_page

_REQUIRED = ("prototype_id", "class_name", "source_image_id", "image")
_SHOWN = ("source_image_id", "location", "distance", "similarity")
_NOT_LISTED = (*_REQUIRED, "colorbar")

_ATLAS_CSS = """
nav{display:flex;flex-wrap:wrap;gap:8px;margin:.4em 0 1em}
nav a{padding:3px 10px;border:1px solid #c8d3e3;border-radius:12px;text-decoration:none;
color:#1f5fa8;font-size:.9em}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:18px}
.cards .imgs{display:grid;grid-template-columns:1fr 1fr;gap:4px}
.cards figure img{min-width:0}
.cards figure .imgs div{font-size:.75em;color:#5f6368;text-align:center}
dl{display:grid;grid-template-columns:auto 1fr;gap:1px 8px;margin:6px 0 0;font-size:.82em}
dt{color:#5f6368}dd{margin:0;word-break:break-all}
"""


def _image_keys(entry: Mapping[str, object]) -> list[str]:
    return ["image"] + [k for k in entry if k.endswith("_image") and entry[k]]


def _validate(entry: Mapping[str, object], index: int, out_dir: str) -> dict[str, object]:
    where = f"atlas entry {index}"
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"{where}: missing keys {missing}; required {list(_REQUIRED)}")
    e = jsonable(dict(entry))
    if not isinstance(e["prototype_id"], int) or isinstance(e["prototype_id"], bool):
        raise ValueError(f"{where}: prototype_id must be an int, got {e['prototype_id']!r}")
    for key in _image_keys(e):
        image = str(e[key])
        if os.path.isabs(image) or os.path.normpath(image).startswith(".."):
            raise ValueError(
                f"{where}: {key} must be a path inside the atlas folder, got {image!r}"
            )
        if not os.path.isfile(os.path.join(out_dir, image)):
            raise ValueError(f"{where}: {key} file {os.path.join(out_dir, image)!r} does not exist")
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
    images = _image_keys(e)
    extras = [k for k in e if k not in _NOT_LISTED and k not in _SHOWN and k not in images]
    rows = "".join(
        f"<dt>{html.escape(k.replace('_', ' '))}</dt><dd>{html.escape(_value(e[k]))}</dd>"
        for k in (*_SHOWN, *extras)
        if k in e and e[k] is not None
    )
    pid = html.escape(str(e["prototype_id"]))
    cls = html.escape(str(e["class_name"]))
    src = html.escape(str(e["source_image_id"]))
    imgs = "".join(
        f'<div><img src="{html.escape(str(e[k]))}" alt="prototype {pid} of {cls}: '
        f'{html.escape(_what(k))}, training image {src}">{html.escape(_what(k))}</div>'
        for k in images
    )
    bar = ""
    if e.get("colorbar"):
        cb = e["colorbar"]
        bar = colorbar_html(str(cb["label"]), float(cb["min"]), float(cb["max"]))
    return (
        f'<figure id="prototype-{pid}"><div class="imgs">{imgs}</div>{bar}<figcaption>'
        f"<b>Prototype p{pid} of {cls}</b>, from training image {src}<dl>{rows}</dl>"
        "</figcaption></figure>"
    )


def _what(key: str) -> str:
    return "overlay" if key == "image" else key[: -len("_image")].replace("_", " ")


def _anchor(name: str, k: int) -> str:
    return f"class-{k}-" + (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "x")


def write_atlas(
    out_dir: str,
    entries: Sequence[Mapping[str, object]],
    header: Header,
    title: str = "Prototype atlas",
    warnings: Sequence[str] = (),
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
        f'<div class="cards">{"".join(_card(e) for e in members)}</div></section>'
        for k, (name, members) in enumerate(groups.items())
    )
    summary = f"<p>{len(valid)} prototypes in {len(groups)} classes.</p>"
    os.makedirs(out_dir, exist_ok=True)
    html_path, json_path = write_page(
        os.path.join(out_dir, "atlas.html"),
        title,
        header,
        f"{summary}<nav>{nav}</nav>{sections}",
        {
            "num_prototypes": len(valid),
            "classes": list(groups),
            "entries": [e for members in groups.values() for e in members],
        },
        warnings,
        footer,
        _ATLAS_CSS,
    )
    return json_path, html_path
