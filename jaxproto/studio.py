"""CSR studio: the doctor-in-the-loop web app, and atlas pruning with a task-head re-fit.

  python -m jaxproto.studio --export DIR [--images DIR] [--port 8765]
  python -m jaxproto.studio --export DIR --prune 3,17 --out NEW_EXPORT [--by NAME]
  python -m jaxproto.studio --export DIR --prune_marker 0,0,20,20 --out NEW_EXPORT [--mask_only]

Serving: open the printed URL; pick or upload an image, draw negative/positive boxes, reject
concepts, move α, compare the prediction before and after, undo, export the corrections as JSON
lines, browse the prototype atlas and mark prototypes for pruning. The server binds to
127.0.0.1; with ``--host`` set to anything else every request needs the ``token`` printed in
the URL. It is the standard library's ``http.server`` with a plain JS/canvas page: nothing to
install, and re-prediction reuses the cached backbone features.

Pruning (``--prune`` flat prototype ids k·M + m, or ``--prune_marker`` x,y,w,h in network-input
pixels: every prototype whose atlas evidence sits in that box, by ``--prune_rule``: atlas_share,
the default, fires on the box on a share of its top-n atlas images; argmax, the arg-max of its map
on its one atlas image lies in the box): masks the prototypes, re-fits only
the task head on cached similarity scores of the training split, writes a new export with
``pruning.json`` (what was removed, by whom, when, test F1 and pointing game before, after
masking only and after the re-fit). ``--mask_only`` exports the masked model with its own head.
"""

from __future__ import annotations

import getpass
import http.server
import json
import logging
import os
import secrets
import sys
import threading
import urllib.parse
from collections.abc import Sequence

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import workdir as workdir_lib
from jaxproto.data import registry
from jaxproto.data.records import BadSampleReport
from jaxproto.methods.csr import prune as prune_lib
from jaxproto.methods.csr.studio import MAX_UPLOAD_BYTES, StudioApp, StudioError

MARKER_RULES = ("atlas_share", "argmax")

log = logging.getLogger("jaxproto.studio")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise UserError(f"--prune {text!r}: expected comma-separated prototype ids") from None


def make_handler(app: StudioApp, token: str | None):
    """The request handler class serving ``app`` (one request at a time through a lock)."""
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "jaxproto-studio"

        def log_message(self, fmt, *args):
            log.debug("%s " + fmt, self.address_string(), *args)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, obj) -> None:
            self._send(status, json.dumps(obj).encode(), "application/json")

        def _handle(self, method: str) -> None:
            parsed = urllib.parse.urlparse(self.path)
            query = dict(urllib.parse.parse_qsl(parsed.query))
            if token is not None and query.get("token") != token:
                self._json(403, {"error": "missing or wrong token in the URL"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_UPLOAD_BYTES:
                self._json(413, {"error": f"request of {length} bytes exceeds the limit"})
                self.close_connection = True
                return
            body = self.rfile.read(length) if length else b""
            try:
                with lock:
                    status, payload, kind = self._route(method, parsed.path, query, body)
            except StudioError as e:
                self._json(e.status, {"error": str(e)})
                return
            except UserError as e:
                self._json(400, {"error": str(e)})
                return
            except Exception as e:  # the server keeps serving; the page shows the message
                log.exception("studio request %s %s failed", method, parsed.path)
                self._json(500, {"error": f"internal error: {e}"})
                return
            if kind == "json":
                self._json(status, payload)
            else:
                self._send(status, payload.encode(), kind)

        def _route(self, method: str, path: str, query: dict, body: bytes):
            if method == "GET" and path == "/":
                return 200, app.page(), "text/html; charset=utf-8"
            if method == "GET" and path == "/api/info":
                return 200, app.info(), "json"
            if method == "GET" and path == "/api/atlas":
                return 200, app.atlas_page(), "json"
            if method == "GET" and path.startswith("/api/atlas/"):
                try:
                    pid = int(path.rsplit("/", 1)[1])
                except ValueError:
                    raise StudioError(f"bad prototype id in {path!r}", 404) from None
                return 200, app.atlas_image(pid), "json"
            if method == "GET" and path == "/api/corrections.jsonl":
                return 200, app.corrections_jsonl(), "application/x-ndjson"
            if method == "POST" and path == "/api/upload":
                return 200, app.open_image(query.get("name") or "upload", data=body), "json"
            if method == "POST" and path in (
                "/api/open",
                "/api/predict",
                "/api/record",
                "/api/mark",
            ):
                try:
                    request = json.loads(body or b"{}")
                except json.JSONDecodeError as e:
                    raise StudioError(f"request body is not JSON: {e}") from None
                if not isinstance(request, dict):
                    raise StudioError("request body must be a JSON object")
                if path == "/api/open":
                    return 200, app.open_image(request.get("name")), "json"
                handler = {"/api/predict": app.predict, "/api/record": app.record}
                return 200, handler.get(path, app.mark)(request), "json"
            raise StudioError(f"no such endpoint: {method} {path}", 404)

        def do_GET(self):
            self._handle("GET")

        def do_POST(self):
            self._handle("POST")

    return Handler


def serve(
    app: StudioApp, host: str = "127.0.0.1", port: int = 8765, token: str | None = None
) -> http.server.ThreadingHTTPServer:
    """A started-on-call server (``serve_forever`` to run); ``port=0`` picks a free port."""
    if token is None and host not in LOOPBACK:
        token = secrets.token_urlsafe(16)
    server = http.server.ThreadingHTTPServer((host, port), make_handler(app, token))
    server.url = f"http://{host}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    return server


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.studio")
    cli.exclusive_source(parser)
    parser.add_argument("--images", help="folder of images to pick from on the page")
    parser.add_argument("--atlas", help="prototype atlas folder (default <source>/atlas)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free port)")
    parser.add_argument("--token", help="access token (default: random when not on loopback)")
    parser.add_argument("--prune", help="prune these flat prototype ids (k*M+m), comma-separated")
    parser.add_argument(
        "--prune_marker",
        help="prune the prototypes whose atlas evidence sits in this box, x,y,w,h in network-input "
        "pixels (e.g. a spurious marker); which ones: --prune_rule",
    )
    parser.add_argument(
        "--prune_rule",
        choices=MARKER_RULES,
        default="atlas_share",
        help="with --prune_marker: atlas_share (default) = a prototype that fires on the box on at "
        "least --prune_share of its --prune_top atlas images (its n most similar training images "
        "with the concept, Eq. 11 extended to the top n), 'fires' = its map's maximum over the "
        "grid cells the box covers at least half of is within --prune_tolerance of the map's "
        "peak, relative to the map's range; argmax = the arg-max of its map on its one atlas "
        "image (Eq. 11) lies in a cell the box touches (--prune_margin)",
    )
    parser.add_argument(
        "--prune_top",
        type=int,
        default=prune_lib.MARKER_TOP_N,
        help=f"atlas_share: atlas images per prototype (default {prune_lib.MARKER_TOP_N})",
    )
    parser.add_argument(
        "--prune_tolerance",
        type=float,
        default=prune_lib.MARKER_TOLERANCE,
        help="atlas_share: how close to its peak, as a share of the map's range, the map in the "
        f"box must come (default {prune_lib.MARKER_TOLERANCE}; 0 = the peak is in the box)",
    )
    parser.add_argument(
        "--prune_share",
        type=float,
        default=prune_lib.MARKER_MIN_SHARE,
        help="atlas_share: the share of its atlas images on which a prototype must fire on the box "
        f"(default {prune_lib.MARKER_MIN_SHARE})",
    )
    parser.add_argument(
        "--prune_margin",
        type=float,
        default=0.0,
        help="argmax: also prune prototypes whose atlas map in the box comes within this "
        "(absolute cosine) of its maximum (default 0: the arg-max must be in the box)",
    )
    parser.add_argument("--out", help="with --prune/--prune_marker: the new export folder")
    parser.add_argument("--by", default=None, help="who prunes (recorded; default: user name)")
    parser.add_argument(
        "--mask_only",
        action="store_true",
        help="with --prune/--prune_marker: export the masked model with its own head (refine.mode "
        "mask) instead of the re-fitted head; the record still reports both",
    )
    return parser


def select_marker_prototypes(args, method, state, train) -> tuple[list[int], dict]:
    """--prune_marker: the ids the chosen --prune_rule finds in the box, and what to record."""
    box = cli.parse_box(args.prune_marker, "--prune_marker")
    if args.prune_margin < 0:
        raise UserError(f"--prune_margin must be >= 0, got {args.prune_margin}")
    selection = {"box": list(box), "rule": args.prune_rule}
    if args.prune_rule == "argmax":
        found = prune_lib.prototypes_in_box(method, state, train, box, args.prune_margin)
        log.info("prototypes whose atlas patch lies in the box: %s", found)
        return found, {**selection, "margin": args.prune_margin}
    if args.prune_margin:
        raise UserError(
            "--prune_margin is for --prune_rule argmax; atlas_share has --prune_tolerance"
        )
    if args.prune_top < 1:
        raise UserError(f"--prune_top must be >= 1, got {args.prune_top}")
    if not 0 <= args.prune_tolerance < 1:
        raise UserError(f"--prune_tolerance must be in [0, 1), got {args.prune_tolerance}")
    if not 0 < args.prune_share <= 1:
        raise UserError(f"--prune_share must be in (0, 1], got {args.prune_share}")
    found, share = prune_lib.prototypes_on_marker(
        method, state, train, box, args.prune_top, args.prune_tolerance, args.prune_share
    )
    m_count = share.shape[1]
    shares = {str(i): round(float(share[i // m_count, i % m_count]), 4) for i in found}
    log.info("prototypes firing on the box on their atlas images (id: share): %s", shares)
    return found, {
        **selection,
        "top_n": args.prune_top,
        "tolerance": args.prune_tolerance,
        "min_share": args.prune_share,
        "share": shares,
    }


def run_prune(args, config, method, state, source: str, atlas: str) -> int:
    """--prune / --prune_marker: mask, re-fit the head, write the new export + record."""
    if not args.out:
        raise UserError("--prune/--prune_marker need --out NEW_EXPORT_FOLDER")
    cli.refuse_non_empty_dir(args.out)
    if config.method != "csr":
        raise UserError(f"pruning is for CSR models; this one is {config.method!r}")
    index = registry.load_index(config.data, BadSampleReport(config.data.on_bad_sample))
    train, test = index.split("train"), index.split("test")
    ids = parse_ids(args.prune) if args.prune else []
    selection = None
    if args.prune_marker:
        found, selection = select_marker_prototypes(args, method, state, train)
        ids = sorted(set(ids) | set(found))
    if not ids:
        raise UserError("nothing to prune: no ids given and none found in the box")
    method.index = index
    new_state, record = prune_lib.prune(
        method, state, ids, train, test, by=args.by or getpass.getuser()
    )
    if args.mask_only:
        mask = new_state["extra"]["proto_mask"]
        new_state = {**state, "extra": {**state["extra"], "proto_mask": mask}}
    record["exported"] = "mask_only" if args.mask_only else "after"
    if selection is not None:
        record["selection"] = selection
    config = config.copy_and_resolve_references()
    config.refine.prune = sorted(set(int(i) for i in config.refine.prune) | set(ids))
    if args.export:
        _, meta, _ = inference.read_export(args.export)
    else:
        meta = workdir_lib.read_dataset_meta(args.workdir)
    inference.write_export(args.out, config, meta, new_state)
    with open(os.path.join(args.out, "pruning.json"), "w") as f:
        json.dump({"source": source, **record}, f, indent=1)
    for name in ("before", "mask_only", "after"):
        log.info("%s: %s", name, record[name])
    sys.stdout.write(json.dumps(record) + "\n")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    log_lib.setup_logging()
    source = args.workdir or args.export
    config, method, state = inference.load_for_inference(args.workdir, args.export)
    if config.method != "csr":
        raise UserError(f"the studio serves CSR models; this one is {config.method!r}")
    atlas = args.atlas or os.path.join(source, "atlas")
    if args.prune or args.prune_marker:
        return run_prune(args, config, method, state, source, atlas)
    if args.images and not os.path.isdir(args.images):
        raise UserError(f"--images {args.images}: not a folder")
    app = StudioApp(method, state, args.images, atlas if os.path.isdir(atlas) else None)
    server = serve(app, args.host, args.port, args.token)
    log.info("CSR studio at %s (Ctrl-C to stop)", server.url)
    sys.stdout.write(server.url + "\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
