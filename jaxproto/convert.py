"""Convert PyTorch checkpoints into Flax variables (``{"params", "batch_stats"}`` as msgpack).

Examples::

    python -m jaxproto.convert torchvision --arch densenet121 --input densenet121-a639ec97.pth \\
        --out densenet121.msgpack
    python -m jaxproto.convert timm --arch convnext_tiny --input model.safetensors --out cnx.msgpack
    python -m jaxproto.convert chexnet --input model.pth.tar --out chexnet.msgpack --drop-head

Inputs are read with ``torch.load(..., weights_only=True)`` or safetensors; nothing is
unpickled. Conversion is strict: every missing, unexpected or mis-shaped tensor is listed in one
error unless allowed with ``--allow-missing`` / ``--allow-unexpected`` (regexes).

Extension point: built-in subcommands live in ``SUBCOMMANDS``; a method adds its own by naming a
module in ``SUBCOMMAND_MODULES`` (``{"name": "package.module"}``) that defines ``HELP: str``,
``add_arguments(parser)`` and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
from collections.abc import Callable, Sequence

import jax

from jaxproto.backbones import BACKBONES, load_pretrained
from jaxproto.backbones.torch_import import save_msgpack

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Subcommand:
    """One ``python -m jaxproto.convert <name>`` subcommand."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


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
            "--allow-missing",
            default=None,
            metavar="REGEX",
            help="model parameters (paths like params/classifier/kernel) allowed to be absent",
        )
        parser.add_argument(
            "--allow-unexpected",
            default=None,
            metavar="REGEX",
            help="checkpoint keys (as named in the file) allowed to be ignored",
        )
        parser.add_argument(
            "--drop-head",
            action="store_true",
            help="discard the classifier tensors and write a backbone without head",
        )

    return add


def _run_backbone(args: argparse.Namespace) -> int:
    variables = load_pretrained(
        args.input,
        args.arch,
        drop_head=args.drop_head,
        allow_missing=args.allow_missing,
        allow_unexpected=args.allow_unexpected,
    )
    save_msgpack(variables, args.out)
    n_params = len(jax.tree.leaves(variables["params"]))
    n_stats = len(jax.tree.leaves(variables["batch_stats"]))
    log.info("wrote %s (%d params, %d batch_stats arrays)", args.out, n_params, n_stats)
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "torchvision": Subcommand(
        "torchvision state_dict (resnet*, densenet*, vgg*, convnext_tiny); DenseNet legacy "
        "key names accepted",
        _backbone_arguments(("resnet", "densenet", "vgg", "convnext"), None),
        _run_backbone,
    ),
    "timm": Subcommand(
        "timm ConvNeXt state_dict (stem.0, stages.N..., head.norm, head.fc)",
        _backbone_arguments(("convnext",), "convnext_tiny"),
        _run_backbone,
    ),
    "chexnet": Subcommand(
        "CheXNet / X-MIR DenseNet checkpoint (module./densenet121. prefixes, classifier.0, "
        "optional {'state_dict': ...} wrapper)",
        _backbone_arguments(("densenet",), "densenet121"),
        _run_backbone,
    ),
}

# name -> module defining HELP, add_arguments(parser), run(args); imported when the CLI starts.
SUBCOMMAND_MODULES: dict[str, str] = {"cipl": "jaxproto.methods.cipl.convert"}


def _all_subcommands() -> dict[str, Subcommand]:
    out = dict(SUBCOMMANDS)
    for name, module_name in SUBCOMMAND_MODULES.items():
        module = importlib.import_module(module_name)
        out[name] = Subcommand(module.HELP, module.add_arguments, module.run)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with one sub-parser per registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="python -m jaxproto.convert",
        description="Convert PyTorch checkpoints to Flax msgpack ({'params', 'batch_stats'}).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in _all_subcommands().items():
        p = sub.add_parser(name, help=cmd.help, description=cmd.help)
        cmd.add_arguments(p)
        p.set_defaults(_run=cmd.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    return args._run(args)


if __name__ == "__main__":
    sys.exit(main())
