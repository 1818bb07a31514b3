"""What a workdir holds besides checkpoints: the dataset description needed for inference,
the config history (``config.json`` is never overwritten) and the lock of the run writing it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator

import ml_collections

from jaxproto.common import config as config_lib
from jaxproto.common.errors import CheckpointError, ConfigError, UserError
from jaxproto.data.records import DatasetIndex

log = logging.getLogger(__name__)

DATASET_FILE = "dataset.json"


def dataset_meta(index: DatasetIndex) -> dict:
    """Class and concept names etc. -- enough to rebuild a model without the data."""
    return {
        "name": index.name,
        "class_names": list(index.class_names),
        "concept_names": list(index.concept_names),
        "multilabel": bool(index.multilabel),
        "background_class": index.background_class,
    }


def write_dataset_meta(workdir: str, meta: dict) -> str:
    path = os.path.join(workdir, DATASET_FILE)
    with open(path, "w") as f:
        json.dump(meta, f, indent=1)
    return path


def read_dataset_meta(workdir: str) -> dict:
    path = os.path.join(workdir, DATASET_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: {workdir} is not a complete jaxproto workdir")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable ({e}); the workdir is damaged") from None


def index_from_meta(meta: dict) -> DatasetIndex:
    """A DatasetIndex with the dataset's names but no records (for inference)."""
    return DatasetIndex(
        name=meta["name"],
        class_names=list(meta["class_names"]),
        splits={},
        multilabel=bool(meta["multilabel"]),
        background_class=meta["background_class"],
        concept_names=list(meta.get("concept_names", [])),
    )


# ----------------------------------------------------------------------- config history


CONFIG_FILE = "config.json"
# Keys whose change alters the train state's structure: never resumed across.
STATE_KEYS = ("method", "model", "data.name", "data.like")
# Keys a resumed run may change freely: the flag itself, and where to stop (extending a run).
_IGNORED_KEYS = ("train.allow_config_change", "train.max_steps")


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _config_history(workdir: str) -> list[str]:
    """config.json, config.1.json, ... in the order they were written."""
    paths = [os.path.join(workdir, CONFIG_FILE)]
    n = 1
    while os.path.isfile(os.path.join(workdir, f"config.{n}.json")):
        paths.append(os.path.join(workdir, f"config.{n}.json"))
        n += 1
    return paths if os.path.isfile(paths[0]) else []


def _read_json(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path}: unreadable ({e}); is this a jaxproto workdir?") from None


def _saved_config(path: str) -> dict:
    return config_lib.with_added_keys(_read_json(path))


def latest_config(workdir: str) -> ml_collections.ConfigDict:
    """The config the run in ``workdir`` was last trained with: the newest ``config.<n>.json``
    of a run resumed with changes, else ``config.json`` (with ``ADDED_KEYS`` filled in)."""
    history = _config_history(workdir)
    if not history:
        raise ConfigError(f"no config.json in {workdir!r}: is this a jaxproto workdir?")
    saved = _saved_config(history[-1])
    if not isinstance(saved, dict):
        raise ConfigError(f"{history[-1]}: expected a JSON object (a saved config)")
    return ml_collections.ConfigDict(saved)


def adopt_added_keys(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """Sets in ``config`` each ``config_lib.ADDED_KEYS`` key that the run in ``workdir``
    was saved without to the value that reproduces that run, so resuming it continues it
    unchanged. Returns the adopted keys (none for a new workdir or a run saved with them)."""
    history = _config_history(workdir)
    if not history:
        return []
    saved = _flat(_read_json(history[-1]))
    adopted = []
    for key, value in config_lib.ADDED_KEYS.items():
        *parents, leaf = key.split(".")
        block = config
        for name in parents:
            block = block.get(name) if block is not None else None
        if block is not None and leaf in block and key not in saved:
            block[leaf] = value
            adopted.append(key)
            log.info("%s was saved before %s existed: resuming it with %r", workdir, key, value)
    return adopted


def _changes(old: dict, new: dict) -> list[str]:
    a, b = _flat(old), _flat(new)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _IGNORED_KEYS)


def check_config_change(workdir: str, config: ml_collections.ConfigDict) -> list[str]:
    """The keys in which ``config`` differs from the run already in ``workdir`` (none for a
    new workdir). Raises ConfigError with a one-line diff when they cannot be resumed across:
    a key of ``STATE_KEYS`` always, any other key unless ``train.allow_config_change``."""
    history = _config_history(workdir)
    if not history:
        return []
    new = json.loads(config_lib.to_json(config))
    original, latest = _saved_config(history[0]), _saved_config(history[-1])
    changed = _changes(latest, new)
    if not changed:
        return []
    a, b = _flat(latest), _flat(new)
    diff = "; ".join(f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in changed[:6])
    diff += f" (+{len(changed) - 6} more)" if len(changed) > 6 else ""
    structural = [
        k
        for k in _changes(original, new)
        if any(k == s or k.startswith(s + ".") for s in STATE_KEYS)
    ]
    if structural:
        raise ConfigError(
            f"{workdir} holds a run of another model ({diff}); {', '.join(structural)} change "
            "the train state, so it cannot resume: use a new --workdir"
        )
    if not config.train.get("allow_config_change", False):
        raise ConfigError(
            f"{workdir} holds a run of another config ({diff}); use a new --workdir, or "
            "--config.train.allow_config_change=true to resume it with these changes"
        )
    return changed


def record_config(workdir: str, config: ml_collections.ConfigDict) -> str:
    """Writes ``config.json`` of a new run; an allowed change of a resumed run goes to the
    next ``config.<n>.json`` (``config.json`` is never overwritten). Returns the file."""
    changed = check_config_change(workdir, config)
    history = _config_history(workdir)
    if history and not changed:
        return history[-1]
    path = os.path.join(workdir, CONFIG_FILE if not history else f"config.{len(history)}.json")
    with open(path, "w") as f:
        f.write(config_lib.to_json(config))
    if history:
        log.warning("resuming %s with changed %s (recorded in %s)", workdir, changed, path)
    return path


# ----------------------------------------------------------------------- lock


LOCK_FILE = "lock.json"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def lock(workdir: str, enabled: bool = True) -> Iterator[None]:
    """Holds ``<workdir>/lock.json`` (host, pid, start time) while a run writes the workdir
    (creating the folder). A second run fails at once naming the holder; a lock left by a dead
    process on this host is taken over with a warning."""
    if not enabled:
        yield
        return
    os.makedirs(workdir, exist_ok=True)
    path = os.path.join(workdir, LOCK_FILE)
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            break
        except FileExistsError:
            try:
                holder = _read_json(path)
            except ConfigError:
                holder = {}
            host, pid = holder.get("host"), holder.get("pid")
            alive_here = host == me["host"] and isinstance(pid, int) and _pid_alive(pid)
            if alive_here or host not in (None, me["host"]):  # another host: cannot tell
                raise UserError(
                    f"{workdir} is in use by another run (host {host}, pid {pid}, started "
                    f"{holder.get('started')}); wait for it, or delete {path} if it is gone"
                ) from None
            log.warning("taking over the stale lock of %s (%s)", workdir, holder or "unreadable")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, UserError):
            if _read_json(path).get("pid") == me["pid"]:
                os.remove(path)


def remove_if_empty(workdir: str) -> None:
    """Removes a workdir a failed start created and left empty."""
    with contextlib.suppress(OSError):
        os.rmdir(workdir)
