"""Config files, command-line overrides and the blocks every method config starts from.

``--config configs/cipl_odir.py:synthetic,image_size=96`` loads ``get_config("synthetic,...")``;
``--config.train.batch_size=8`` overrides one leaf. Unknown keys and wrongly typed values are
errors that list what is valid, instead of a traceback.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
from collections.abc import Sequence

import ml_collections

from jaxproto.common.errors import ConfigError


def load_config_file(spec: str) -> ml_collections.ConfigDict:
    """Loads ``path.py[:arg]`` by calling its ``get_config(arg)``."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r}")
    module_name = "jaxproto_config_" + os.path.splitext(os.path.basename(path))[0]
    file_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(file_spec)
    file_spec.loader.exec_module(module)
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


# Keys added after runs had been saved, each with the value that reproduces a run saved without
# it (its behaviour before the key existed). Saved configs are read through ``with_added_keys``
# and a resumed run adopts these values (``core.workdir.adopt_added_keys``), so a new key
# neither changes an old run's results nor stops it from resuming.
ADDED_KEYS: dict[str, object] = {
    "model.conv1x1": "xla",
    "model.stem_conv": "xla",
    "model.conv_backend": "xla",
}


def with_added_keys(saved: dict) -> dict:
    """``saved`` (a saved config as a dict) with each ``ADDED_KEYS`` key it lacks set to the
    value that reproduces it; keys whose block the config does not have are left out."""
    out = json.loads(json.dumps(saved))
    for dotted, value in ADDED_KEYS.items():
        *parents, leaf = dotted.split(".")
        block = out
        for name in parents:
            block = block.get(name) if isinstance(block, dict) else None
        if isinstance(block, dict) and leaf not in block:
            block[leaf] = value
    return out


def load_saved_config(workdir_or_file: str) -> ml_collections.ConfigDict:
    """Reads the ``config.json`` a run wrote (a workdir or the file itself), with
    ``with_added_keys``."""
    path = workdir_or_file
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    if not os.path.isfile(path):
        raise ConfigError(f"no config.json at {path!r}: is this a jaxproto workdir or export?")
    data = read_json(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object (a saved config)")
    return ml_collections.ConfigDict(with_added_keys(data))


def read_json(path: str, error: type[Exception] = ConfigError):
    """The parsed JSON file at ``path``; a file that is not valid JSON is ``error`` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not a text JSON file ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def leaf_names(config: ml_collections.ConfigDict) -> list[str]:
    """All dotted leaf names, for help texts."""
    return _leaf_paths(config)


# Blocks every method config starts from (``methods/<m>/config.py``).


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``key=value,flag`` into a ConfigDict typed like ``defaults``; unknown keys fail."""
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ConfigError(
                f"unknown config argument {key!r} in {arg!r}; valid: {', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ConfigError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ConfigError(f"config argument {key!r} expects true/false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, (int, float)):
            kind = type(default)
            try:
                out[key] = kind(value)
            except ValueError:
                article = "an int" if kind is int else "a float"
                raise ConfigError(
                    f"config argument {key!r} expects {article}, got {value!r}"
                ) from None
        else:
            out[key] = value
    return out


def train_block(**overrides) -> ml_collections.ConfigDict:
    """Loop settings shared by every method."""
    c = ml_collections.ConfigDict()
    c.seed = 42
    c.batch_size = 32  # global batch (all processes together)
    c.eval_batch_size = 64
    c.log_every_steps = 10
    c.eval_every_epochs = 1.0  # 0 disables periodic evaluation (end of each phase still evaluates)
    c.eval_split = ""  # "" = the split eval.protocol selects on (core.protocol)
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.best_metric = ""  # e.g. "mean_auc"; empty = keep only the latest
    c.best_mode = "max"
    c.worker_count = 0  # grain worker processes for decoding/augmentation
    c.max_steps = 0  # >0 stops the whole run after this many steps (debugging, tests)
    # Resume a workdir whose config differs in keys that do not change the state's structure.
    c.allow_config_change = False
    c.update(overrides)
    return c


def eval_block(protocol: str = "validation", **extra) -> ml_collections.ConfigDict:
    """``eval.protocol`` (``validation``: select the checkpoint and the F1 thresholds on a
    validation split; ``paper``: on the test split, as the papers; see ``core.protocol``) and a
    method's own evaluation settings."""
    return ml_collections.ConfigDict({"protocol": protocol, **extra})


def add_run_blocks(c: ml_collections.ConfigDict) -> None:
    """The ``eval`` (default protocol), ``mesh`` and ``distributed`` blocks every method has."""
    c.eval = eval_block()
    c.mesh = mesh_block()
    c.distributed = distributed_block()


def mesh_block() -> ml_collections.ConfigDict:
    """Device mesh (data axis -1 = all remaining devices) and param sharding rules."""
    c = ml_collections.ConfigDict()
    c.data = -1
    c.fsdp = 1
    # (regex over "/"-joined param paths, rule): rule is "replicate" or "fsdp".
    c.rules = [(".*", "replicate")]
    return c


def distributed_block() -> ml_collections.ConfigDict:
    """Multi-process runtime; empty coordinator = auto-detect (TPU VM, SLURM) or single process."""
    c = ml_collections.ConfigDict()
    c.coordinator = ""
    c.num_processes = 0
    c.process_id = -1
    c.local_device_ids = ""
    # Coordination-service timeouts (seconds): a process that stops answering is declared dead
    # after heartbeat_timeout_s and every other process then stops instead of hanging.
    c.initialization_timeout_s = 300
    c.heartbeat_timeout_s = 30
    c.shutdown_timeout_s = 60
    return c
