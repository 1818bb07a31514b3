"""Config files and command-line overrides.

``--config configs/cipl_odir.py:synthetic,image_size=96`` loads ``get_config("synthetic,...")``;
``--config.train.batch_size=8`` overrides one leaf. Unknown keys and wrongly typed values are
errors that list what is valid, instead of a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

import ml_collections


class ConfigError(ValueError):
    """A config file, argument or override the user has to fix."""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    module_name = "jaxproto_config_" + os.path.splitext(os.path.basename(path))[0]
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(file_spec)
    config_dir = os.path.dirname(os.path.abspath(path))
    repo_dir = os.path.dirname(config_dir)
    added = [p for p in (repo_dir,) if p not in sys.path]
    sys.path[:0] = added  # so configs can `from configs import common`
    try:
        file_spec.loader.exec_module(module)
    finally:
        for p in added:
            sys.path.remove(p)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except ValueError as e:
        raise ConfigError(f"{spec}: {e}") from None
    return config


def _leaf_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, ml_collections.ConfigDict):
            out.extend(_leaf_paths(value, name + "."))
        else:
            out.append(name)
    return out


def _parse_value(text: str, current, where: str):
    """Parses ``text`` to the type of the current value."""
    if isinstance(current, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"{where} expects true/false, got {text!r}")
    if isinstance(current, int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{where} expects an int, got {text!r}") from None
    if isinstance(current, float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{where} expects a float, got {text!r}") from None
    if isinstance(current, str):
        return text
    if current is None:
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        raise ConfigError(
            f"{where} expects a Python literal like {current!r}, got {text!r}"
        ) from None
    if isinstance(current, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where} expects a list like {current!r}, got {text!r}")
    return type(current)(value) if isinstance(current, (list, tuple)) else value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
    """Sets ``config.<dotted> = text`` parsed to the existing leaf's type."""
    keys = dotted.split(".")
    node = config
    for depth, key in enumerate(keys):
        where = "--config." + ".".join(keys[: depth + 1])
        if not isinstance(node, ml_collections.ConfigDict) or key not in node:
            valid = node.keys() if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(
                f"unknown config key {where}; valid keys here: {', '.join(sorted(valid)) or '-'}"
            )
        if depth == len(keys) - 1:
            if isinstance(node[key], ml_collections.ConfigDict):
                raise ConfigError(
                    f"{where} is a group, not a value; its keys: {', '.join(sorted(node[key]))}"
                )
            with node.unlocked():
                node[key] = _parse_value(text, node[key], where)
        node = node[key]


def split_config_args(argv: Sequence[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Separates ``--config`` and ``--config.a.b=v`` from the other command-line arguments."""
    spec, overrides, rest = None, [], []
    it = iter(argv)
    for arg in it:
        if arg == "--config":
            spec = next(it, None)
            if spec is None:
                raise ConfigError("--config needs a value: --config configs/NAME.py[:ARG]")
        elif arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg.startswith("--config."):
            body = arg[len("--config.") :]
            if "=" in body:
                key, value = body.split("=", 1)
            else:
                key = body
                value = next(it, None)
                if value is None:
                    raise ConfigError(f"{arg} needs a value")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return spec, overrides, rest


def build_config(spec: str, overrides: Sequence[tuple[str, str]] = ()) -> ml_collections.ConfigDict:
    """Loads a config file and applies command-line overrides."""
    config = load_config_file(spec)
    for key, value in overrides:
        apply_override(config, key, value)
    return config


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    path = os.path.join(workdir, "config.json")
    with open(path, "w") as f:
        f.write(to_json(config))
    return path


def load_saved_config(workdir_or_file: str) -> ml_collections.ConfigDict:
    """Reads the ``config.json`` a run wrote (a workdir or the file itself)."""
    path = workdir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"no config.json at {path!r}: is this a jaxproto workdir or export?")
    with open(path) as f:
        data = json.load(f)
    return ml_collections.ConfigDict(data)


def leaf_names(config: ml_collections.ConfigDict) -> list[str]:
    """All dotted leaf names, for help texts."""
    return _leaf_paths(config)
