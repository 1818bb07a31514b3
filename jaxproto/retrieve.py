"""X-MIR retrieval: build a gallery index, query it with explanations, score the explanations.

  python -m jaxproto.retrieve index --export EXPORT --images DIR_OR_LIST --out INDEX
        [--faiss ivf|hnsw [--nlist N --nprobe N | --M N --ef_search N]]
  python -m jaxproto.retrieve query --index INDEX --image X.png --k 10 --out DIR
        [--search auto|exact|faiss]
  python -m jaxproto.retrieve saliency-eval --workdir RUN --out DIR [--num_queries 20]

``index`` embeds every image of a folder (recursive) or a list file (one path per line) and
writes INDEX/embeddings.npy + INDEX/manifest.json; ``--faiss`` also writes INDEX/faiss.index,
an approximate FAISS index (``pip install -e ".[faiss]"``) for 10^6+ galleries. ``query`` finds
the k nearest gallery images (Euclidean distance of unit embeddings; exact search, or the FAISS
index when the index has one) and writes DIR/results.json and DIR/index.html with the query,
its neighbours and a saliency overlay (SBSM, SimAtt, SimCAM) per pair. ``saliency-eval``
runs leave-one-out retrieval on the model's test split and writes insertion/deletion AUCs of each
saliency method and of a random map (noise on the feature grid, upsampled): per-query JSON,
summary and a mean-curve plot. The model comes from --export or --workdir (``query`` defaults
to the one recorded in the index).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from jaxproto.common import cli
from jaxproto.core import logging as log_lib
from jaxproto.inference import load_for_inference
from jaxproto.methods.xmir import retrieval


def build_parser() -> cli.ArgumentParser:
    parser = cli.make_parser(__doc__, "python -m jaxproto.retrieve", config="overrides")
    retrieval.add_subcommands(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = cli.parse(build_parser(), argv)
    log_lib.setup_logging()

    def load_model(workdir, export):
        config, method, state = load_for_inference(workdir, export)
        cli.apply_overrides(config, args)  # e.g. --config.data.root for saliency-eval
        return config, method, state

    result = retrieval.COMMANDS[args.command](args, load_model)
    if args.command == "saliency-eval":
        summary = {m: {k: v for k, v in r.items() if k != "per_class"} for m, r in result.items()}
        sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
