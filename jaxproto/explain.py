"""Explain one prediction: probabilities plus the evidence, as PNG + JSON + an HTML report.

  python -m jaxproto.explain --workdir runs/demo --image X.png [--box x,y,w,h] --out report/
  python -m jaxproto.explain --export exports/csr --image X.png \\
      --negative_box 10,10,40,40 --reject_concept 3 --out report/

What the report shows is the method's (``Method.explain``): CIPL, for each predicted class, its
top prototypes' similarity maps over the image next to the prototype's training patch (``--box``
draws a reference box, e.g. from BBox_List_2017); CSR, per-concept maps and a before/after report
for doctor-in-the-loop corrections (``--positive_box``/``--negative_box``, ``--reject_concept``
by index or name). Boxes are x,y,w,h in the original image's pixels. X-MIR explains retrievals:
``python -m jaxproto.retrieve query``. An image that looks out of distribution (see
``python -m jaxproto.predict``) gets a visible warning at the top of the report.
"""

from __future__ import annotations

import html
import logging
import os
import sys
from collections.abc import Sequence

from jaxproto import inference
from jaxproto.common import cli
from jaxproto.common.errors import UserError
from jaxproto.core import logging as log_lib
from jaxproto.core import ood, prediction
from jaxproto.core.method import ExplainRequest

log = logging.getLogger("jaxproto.explain")


OOD_BANNER = (
    '<div style="background:#fdd;border:2px solid #c00;padding:1em;font-size:1.2em">'
    "<b>Warning: this image does not look like the images the model was trained on</b> ({}). "
    "The probabilities and evidence below are not a diagnosis.</div>"
)


def warn_at_top(page: str, reason: str) -> None:
    """Puts the out-of-distribution warning first in the report's body."""
    with open(page) as f:
        text = f.read()
    banner = OOD_BANNER.format(html.escape(reason))
    at = text.find(">", text.find("<body")) + 1 if "<body" in text else 0
    with cli.atomic_write(page) as f:
        f.write(text[:at] + banner + text[at:])


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.explain")
    cli.exclusive_source(parser)
    parser.add_argument("--image", required=True, help="image to explain (PNG, JPEG or DICOM)")
    parser.add_argument("--out", help="report folder (default <workdir>/explain/<image stem>)")
    box = {"action": "append", "default": [], "metavar": "X,Y,W,H"}
    parser.add_argument("--box", **box, help="reference box to draw (repeatable)")
    parser.add_argument("--positive_box", **box, help="CSR: region to focus on (repeatable)")
    parser.add_argument("--negative_box", **box, help="CSR: region to ignore (repeatable)")
    parser.add_argument(
        "--reject_concept",
        action="append",
        default=[],
        metavar="INDEX_OR_NAME",
        help="CSR: concept to reject (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    if not os.path.isfile(args.image):
        raise UserError(f"--image {args.image}: no such file")
    request_boxes = {
        name: tuple(cli.parse_box(b, f"--{name}") for b in getattr(args, name))
        for name in ("box", "positive_box", "negative_box")
    }
    log_lib.setup_logging()
    source = args.workdir or args.export
    config, method, state = inference.load_for_inference(args.workdir, args.export)
    stem = os.path.splitext(os.path.basename(args.image))[0]
    out = args.out or os.path.join(source, "explain", stem)
    os.makedirs(out, exist_ok=True)
    request = ExplainRequest(
        image=args.image,
        out_dir=out,
        source=source,
        boxes=request_boxes["box"],
        positive_boxes=request_boxes["positive_box"],
        negative_boxes=request_boxes["negative_box"],
        reject_concepts=tuple(args.reject_concept),
    )
    written = method.explain(state, request)
    kept, preds, _ = prediction.predict_files(method, state, [args.image], 1, skip_bad=False)
    flags = ood.flags(kept, preds, ood.stats_for(args.export, config))
    if not flags["in_distribution"][0] and "html" in written:
        reason = str(flags["ood_reason"][0])
        log.warning(
            "%s looks out of distribution (%s): do not trust this report", args.image, reason
        )
        warn_at_top(written["html"], reason)
    log.info("report: %s", written.get("html", out))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
