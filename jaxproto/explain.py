"""Explain one prediction: probabilities plus the evidence, as PNG + JSON + an HTML report.

  python -m jaxproto.explain --workdir runs/demo --image X.png [--box x,y,w,h] --out report/
  python -m jaxproto.explain --export exports/csr --image X.png \
      --negative_box 10,10,40,40 --reject_concept 3 --out report/

CIPL: for each predicted class, its top prototypes' similarity maps over the image next to the
prototype's training patch (``--box`` draws a reference box, e.g. from BBox_List_2017).
CSR: per-concept maps, and a before/after report for doctor-in-the-loop corrections
(``--positive_box``/``--negative_box`` in image pixels, ``--reject_concept`` by index or name).
Boxes are x,y,w,h in the original image's pixels.
"""

from __future__ import annotations

import logging
import os

from absl import flags

from jaxproto.common import cli
from jaxproto.common.errors import UserError

log = logging.getLogger("jaxproto.explain")


def parse_box(text: str) -> tuple[float, float, float, float]:
    """'x,y,w,h' -> floats, with a clear error."""
    parts = text.split(",")
    try:
        x, y, w, h = (float(p) for p in parts)
    except ValueError:
        raise UserError(f"box {text!r}: expected x,y,w,h (four numbers)") from None
    if w <= 0 or h <= 0:
        raise UserError(f"box {text!r}: width and height must be positive")
    return x, y, w, h


def main(argv):
    del argv
    from jaxproto.core import logging as log_lib
    from jaxproto.core import restore

    log_lib.setup_logging()
    if not flags.FLAGS.image:
        raise UserError("--image is required")
    if not os.path.isfile(flags.FLAGS.image):
        raise UserError(f"image not found: {flags.FLAGS.image}")
    config, method, state = restore.load_for_inference(flags.FLAGS.workdir, flags.FLAGS.export)
    stem = os.path.splitext(os.path.basename(flags.FLAGS.image))[0]
    out = flags.FLAGS.out or os.path.join(
        flags.FLAGS.workdir or flags.FLAGS.export, "explain", stem
    )
    os.makedirs(out, exist_ok=True)
    boxes = [parse_box(b) for b in flags.FLAGS.box]
    if config.method == "cipl":
        from jaxproto.methods.cipl.explain import explain

        source = flags.FLAGS.workdir or flags.FLAGS.export
        result = explain(
            method, state, flags.FLAGS.image, out, box=boxes[0] if boxes else None, atlas_dir=source
        )
    elif config.method == "csr":
        from jaxproto.methods.csr.interact import explain_cli

        result = explain_cli(
            method,
            state,
            flags.FLAGS.image,
            out,
            [parse_box(b) for b in flags.FLAGS.positive_box],
            [parse_box(b) for b in flags.FLAGS.negative_box],
            list(flags.FLAGS.reject_concept),
        )
    else:
        raise UserError(
            f"explain supports cipl and csr models; this one is {config.method!r} "
            "(for X-MIR use python -m jaxproto.retrieve query, which writes saliency maps)"
        )
    log.info("report: %s", result.get("html", out) if isinstance(result, dict) else out)


def define_flags() -> None:
    """Command-line flags (defined only when run as a program, so modules import cleanly)."""
    flags.DEFINE_string("workdir", None, "Training workdir.")
    flags.DEFINE_string("export", None, "Export folder (instead of --workdir).")
    flags.DEFINE_string("image", None, "Image to explain (PNG, JPEG or DICOM).")
    flags.DEFINE_string("out", None, "Report folder (default <workdir>/explain/<image>).")
    flags.DEFINE_multi_string("box", [], "Reference box x,y,w,h to draw (repeatable).")
    flags.DEFINE_multi_string("positive_box", [], "CSR: region to focus on, x,y,w,h.")
    flags.DEFINE_multi_string("negative_box", [], "CSR: region to ignore, x,y,w,h.")
    flags.DEFINE_multi_string("reject_concept", [], "CSR: concept index or name to reject.")


if __name__ == "__main__":
    define_flags()
    cli.run(main)
