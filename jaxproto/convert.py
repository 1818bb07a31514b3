"""Convert PyTorch checkpoints into Flax variables (``{"params", "batch_stats"}`` as msgpack).

Examples::

    python -m jaxproto.convert torchvision --arch densenet121 --input densenet121-a639ec97.pth \\
        --out densenet121.msgpack
    python -m jaxproto.convert timm --arch convnext_tiny --input model.safetensors --out cnx.msgpack
    python -m jaxproto.convert chexnet --input model.pth.tar --out chexnet.msgpack --drop_head

Inputs are read with ``torch.load(..., weights_only=True)`` or safetensors; nothing is
unpickled. Conversion is strict: every missing, unexpected or mis-shaped tensor is listed in one
error unless allowed with ``--allow_missing`` / ``--allow_unexpected`` (regexes).

Every registered method adds its own subcommands for its original checkpoints
(``Method.converters()``, e.g. ``cipl``).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import jax

from jaxproto import methods
from jaxproto.backbones import BACKBONES, load_pretrained
from jaxproto.backbones.torch_import import save_msgpack
from jaxproto.common import cli
from jaxproto.core.method import Converter

log = logging.getLogger(__name__)


def _backbone_arguments(families: tuple[str, ...], default_arch: str | None):
    archs = sorted(n for n, s in BACKBONES.items() if s.family in families)

    def add(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--arch",
            choices=archs,
            default=default_arch,
            required=default_arch is None,
            help="backbone architecture" + (f" (default {default_arch})" if default_arch else ""),
        )
        parser.add_argument(
            "--input", required=True, help="PyTorch .pth/.pt/.bin/.tar or .safetensors file"
        )
        parser.add_argument("--out", required=True, help="output .msgpack file")
        parser.add_argument(
            "--allow_missing",
            default=None,
            metavar="REGEX",
            help="model parameters (paths like params/classifier/kernel) allowed to be absent",
        )
        parser.add_argument(
            "--allow_unexpected",
            default=None,
            metavar="REGEX",
            help="checkpoint keys (as named in the file) allowed to be ignored",
        )
        parser.add_argument(
            "--drop_head",
            action="store_true",
            help="discard the classifier tensors and write a backbone without head",
        )

    return add


def _run_backbone(args: argparse.Namespace) -> int:
    cli.output_file(args.out)
    variables = load_pretrained(
        args.input,
        args.arch,
        drop_head=args.drop_head,
        allow_missing=args.allow_missing,
        allow_unexpected=args.allow_unexpected,
    )
    with cli.atomic_path(args.out) as tmp:
        save_msgpack(variables, tmp)
    n_params = len(jax.tree.leaves(variables["params"]))
    n_stats = len(jax.tree.leaves(variables["batch_stats"]))
    log.info("wrote %s (%d params, %d batch_stats arrays)", args.out, n_params, n_stats)
    return 0


SUBCOMMANDS: dict[str, Converter] = {
    "torchvision": Converter(
        "torchvision state_dict (resnet*, densenet*, vgg*, convnext_tiny); DenseNet legacy "
        "key names accepted",
        _backbone_arguments(("resnet", "densenet", "vgg", "convnext"), None),
        _run_backbone,
    ),
    "timm": Converter(
        "timm ConvNeXt state_dict (stem.0, stages.N..., head.norm, head.fc)",
        _backbone_arguments(("convnext",), "convnext_tiny"),
        _run_backbone,
    ),
    "chexnet": Converter(
        "CheXNet / X-MIR DenseNet checkpoint (module./densenet121. prefixes, classifier.0, "
        "optional {'state_dict': ...} wrapper)",
        _backbone_arguments(("densenet",), "densenet121"),
        _run_backbone,
    ),
}


def all_subcommands() -> dict[str, Converter]:
    """The backbone subcommands plus every registered method's ``Method.converters()``."""
    out = dict(SUBCOMMANDS)
    for name in methods.method_names():
        for sub, converter in methods.get_method(name).converters().items():
            if sub in out:
                raise RuntimeError(f"convert subcommand {sub!r} of method {name} is taken")
            out[sub] = converter
    return out


def build_parser() -> cli.ArgumentParser:
    """The parser with one sub-parser per subcommand."""
    parser = cli.make_parser(__doc__, "python -m jaxproto.convert")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, converter in all_subcommands().items():
        p = sub.add_parser(name, help=converter.help, description=converter.help)
        converter.add_arguments(p)
        cli.accept_overrides_with_own_config(p)
        p.set_defaults(_run=converter.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parses ``argv`` and runs the subcommand; returns its exit status (errors raise)."""
    args = cli.parse(build_parser(), argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(cli.run(main))
