"""Shared command-line plumbing: absl flags plus ``--config file.py:arg --config.a.b=v``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from absl import app, flags

from jaxproto.common import config as config_lib
from jaxproto.common.errors import UserError

log = logging.getLogger(__name__)

CONFIG_HELP = (
    "  --config FILE.py[:ARG]   config file; ARG = comma-separated key=value/flags, e.g.\n"
    "                           configs/cipl_odir.py:synthetic,image_size=96\n"
    "  --config.KEY.SUB=VALUE   override one config leaf (e.g. --config.train.batch_size=8)\n"
)


class _State:
    spec: str | None = None
    overrides: list = []


def _flags_parser(argv):
    try:
        spec, overrides, rest = config_lib.split_config_args(argv[1:])
    except config_lib.ConfigError as e:
        _fail(str(e))
    _State.spec, _State.overrides = spec, overrides
    return flags.FLAGS([argv[0], *rest])


def _fail(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")
    sys.exit(2)


def config_from_flags(required: bool = True):
    """The config named by --config with --config.* overrides applied (None if absent)."""
    if _State.spec is None:
        if required:
            _fail(
                "--config is required, e.g. --config configs/cipl_odir.py:synthetic\n" + CONFIG_HELP
            )
        return None
    try:
        return config_lib.build_config(_State.spec, _State.overrides)
    except config_lib.ConfigError as e:
        _fail(str(e))


def run(main: Callable) -> None:
    """absl.app.run with the config-aware parser and readable errors for user mistakes.

    ``--help`` prints the calling module's docstring (absl's convention) and its flags.
    """
    app.run(_wrap(main), flags_parser=_flags_parser)


def _wrap(main):
    from jaxproto.common.errors import DataError

    def wrapped(argv):
        try:
            return main(argv)
        except (DataError, config_lib.ConfigError, FileNotFoundError, UserError) as e:
            _fail(str(e))

    return wrapped
