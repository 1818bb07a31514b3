"""The one command-line entry helper every jaxproto CLI goes through.

Conventions (the same for train, evaluate, explain, predict, export, convert, retrieve,
data.prepare and data.synthetic):

* ``--help`` prints the module's docstring and its flags, exit status 0.
* Flags are spelled with underscores (``--skip_bad``, ``--num_queries``), like the config keys
  (``--config.train.batch_size``); the dashed spelling (``--skip-bad``) still works and prints
  a deprecation warning.
* An unknown flag, a missing required flag, mutually exclusive flags given together or a bad
  value is one line on stderr and exit status 2; so is any ``UserError`` (``ConfigError``,
  ``DataError``, ``CheckpointError``) or unreadable file raised while the command runs.
* A CLI that takes ``--config FILE.py[:ARG]`` also takes ``--config.KEY.SUB=VALUE`` overrides.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence

import ml_collections

from jaxproto.common import config as config_lib
from jaxproto.common.errors import UserError

# Exit statuses (documented in README): 2 = a mistake the message names; 130 = Ctrl-C.
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

CONFIG_HELP = (
    "config FILE.py[:ARG]; ARG = comma-separated key=value/flags, e.g. "
    "configs/cipl_odir.py:synthetic,image_size=96"
)
OVERRIDES_HELP = (
    "--config.KEY.SUB=VALUE overrides one config leaf, e.g. --config.data.root=DIR or\n"
    "--config.train.batch_size=8 (an unknown key lists the valid ones)."
)


def _one_line(prog: str, message: str) -> None:
    sys.stderr.write(f"{prog}: error: {message}\n")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with jaxproto's conventions: errors are one line (exit 2), the module docstring
    is the help text, prefixes of flags are not guessed, and flags are spelled with underscores:
    a flag declared ``--drop-head`` is shown and parsed as ``--drop_head``, and the dashed
    spelling is accepted with a deprecation warning. Sub-parsers inherit all of it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        _one_line(self.prog, f"{message} (see --help)")
        sys.exit(EXIT_USER_ERROR)

    def parse_known_args(self, args=None, namespace=None):
        self._underscore_flags()
        args = [self._respell(a) for a in (sys.argv[1:] if args is None else args)]
        self._reject_unknown_flags(args)
        return super().parse_known_args(args, namespace)

    def _reject_unknown_flags(self, args: list[str]) -> None:
        """Names an unknown flag before argparse complains about missing required ones."""
        if self._subparsers is not None:
            return  # the sub-command's parser checks its own flags
        for arg in args:
            if arg == "--":
                return
            name = arg.partition("=")[0]
            if name.startswith("--") and name not in self._option_string_actions:
                self.error(f"unrecognized arguments: {name}")

    def _underscore_flags(self) -> None:
        """Renames every declared ``--a-b`` to ``--a_b`` (help text and parsing)."""
        known = self._option_string_actions
        for action in self._actions:
            for i, flag in enumerate(action.option_strings):
                if flag.startswith("--") and "-" in flag[2:]:
                    canonical = "--" + flag[2:].replace("-", "_")
                    action.option_strings[i] = canonical
                    known[canonical] = known.pop(flag)

    def _respell(self, arg: str) -> str:
        """``--skip-bad[=v]`` -> ``--skip_bad[=v]``, with a deprecation warning."""
        if not arg.startswith("--") or arg.startswith("--config."):
            return arg
        name, sep, value = arg.partition("=")
        canonical = "--" + name[2:].replace("-", "_")
        if name == canonical or canonical not in self._option_string_actions:
            return arg
        sys.stderr.write(f"{self.prog}: warning: {name} is deprecated, use {canonical}\n")
        return canonical + sep + value


def make_parser(doc: str | None, prog: str, config: str | None = None) -> ArgumentParser:
    """The parser of one CLI: ``doc`` (its module docstring) is the help text.

    ``config``: None (no config), "required"/"optional" (``--config FILE.py[:ARG]`` plus
    ``--config.a.b=v`` overrides) or "overrides" (only overrides, applied to a saved config).
    """
    parser = ArgumentParser(prog=prog, description=doc)
    add_config_arguments(parser, config)
    return parser


def add_config_arguments(parser: argparse.ArgumentParser, config: str | None) -> None:
    """Declares ``--config`` (and documents the overrides) on a parser or sub-parser."""
    if config is None:
        return
    if config not in ("required", "optional", "overrides"):
        raise ValueError(f"config={config!r}")
    parser.set_defaults(_config_mode=config)
    parser.epilog = OVERRIDES_HELP
    if config != "overrides":
        parser.add_argument("--config", metavar="FILE.py[:ARG]", help=CONFIG_HELP)


def accept_overrides_with_own_config(parser: ArgumentParser) -> None:
    """A (sub)parser that declared its own ``--config`` also takes ``--config.a.b=v``
    (``args.overrides``; e.g. a method's ``convert`` subcommand)."""
    if "--config" in parser._option_string_actions:
        parser.set_defaults(_config_mode="optional")


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses ``argv`` (default: sys.argv[1:]). ``--config.a.b=v`` become ``args.overrides``
    [(dotted key, text)], accepted only where the (sub)command declared a config."""
    argv = list(sys.argv[1:] if argv is None else argv)
    rest, overrides = _split_overrides(parser, argv)
    if overrides and parser._subparsers is None and parser.get_default("_config_mode") is None:
        parser.error(
            f"unrecognized arguments: --config.{overrides[0][0]} (this command has no config)"
        )
    args = parser.parse_args(rest)
    mode = getattr(args, "_config_mode", None)
    if overrides and mode is None:
        parser.error(
            f"unrecognized arguments: --config.{overrides[0][0]} (this command has no config)"
        )
    if mode == "required" and not args.config:
        parser.error("--config is required, e.g. --config configs/cipl_odir.py:synthetic")
    args.overrides = overrides
    return args


def _split_overrides(parser, argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    rest, overrides = [], []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            rest.append(arg)
            rest.extend(it)
            break
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        key, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            value = next(it, None)
            if value is None:
                parser.error(f"{arg} needs a value: {arg}=VALUE")
        if not key:
            parser.error(f"{arg}: expected --config.KEY.SUB=VALUE")
        overrides.append((key, value))
    return rest, overrides


def load_config(args: argparse.Namespace) -> ml_collections.ConfigDict:
    """The config named by ``--config`` with the ``--config.*`` overrides applied."""
    return config_lib.build_config(args.config, args.overrides)


def apply_overrides(config: ml_collections.ConfigDict, args: argparse.Namespace) -> None:
    """Applies ``--config.*`` overrides to a config loaded from a workdir or export."""
    for key, value in args.overrides:
        config_lib.apply_override(config, key, value)


def exclusive_source(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--workdir DIR | --export DIR``: where the model comes from."""
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--workdir", help="training workdir (its best or latest checkpoint)")
    group.add_argument("--export", help="export folder (python -m jaxproto.export)")


def output_file(path: str, flag: str = "--out") -> str:
    """Checks, before any work, that ``path`` can be written as a file: not a folder, its
    folder exists (or is created now) and is writable. Returns ``path``."""
    if os.path.isdir(path):
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    output_dir(os.path.dirname(os.path.abspath(path)), flag, what=f"{flag} {path}:")
    return path


def output_dir(path: str, flag: str = "--out", what: str | None = None) -> str:
    """Checks, before any work, that folder ``path`` exists (or is created now) and that files
    can be written in it. Returns ``path``."""
    what = what or f"{flag} {path}:"
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError(f"{what} {path} is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError(f"{what} cannot write to {path} ({e.strerror})") from None
    return path


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A temporary file name beside ``path``, renamed to ``path`` only when the block finishes,
    so an interrupted or failed command never leaves a partial output behind."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "w", **kwargs) -> Iterator:
    """``open(path, mode)`` through ``atomic_path``: the file appears complete or not at all."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as f:
        yield f


@contextlib.contextmanager
def atomic_dir(path: str, flag: str = "--out") -> Iterator[str]:
    """A temporary folder beside ``path``, renamed to ``path`` when the block finishes. A
    ``path`` that already holds files is refused (nothing earlier is overwritten)."""
    refuse_non_empty_dir(path, flag)
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        yield tmp
        if os.path.isdir(path):
            os.rmdir(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp)


def refuse_non_empty_dir(path: str, flag: str = "--out") -> None:
    """Stops before any work when the output folder already holds files."""
    if os.path.isdir(path) and os.listdir(path):
        raise UserError(f"{flag} {path}: already holds files; give a new folder or delete it")


def run(
    main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None
) -> int:
    """Calls ``main(argv)`` inside the error boundary; returns the exit status.

    Use as ``sys.exit(cli.run(main))`` under ``if __name__ == "__main__"``. A ``UserError`` or
    an unreadable file is printed as its message (one line; ``convert`` key lists are several)
    without a traceback and gives status 2; Ctrl-C gives 130.
    """
    spec = getattr(sys.modules.get(main.__module__), "__spec__", None)
    prog = f"python -m {spec.name}" if spec is not None else sys.argv[0]
    _mark_absl_flags_parsed()
    try:
        return int(main(argv) or 0)
    except UserError as e:
        _one_line(prog, str(e))
    except OSError as e:  # a file the user named: missing, a folder, not readable
        _one_line(prog, f"{e.filename}: {e.strerror}" if e.filename else str(e))
    except KeyboardInterrupt:
        _one_line(prog, "interrupted")
        return EXIT_INTERRUPTED
    return EXIT_USER_ERROR


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; argparse CLIs never parse them."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
