"""Shared config pieces: the `arg` parser and the blocks every method config starts from.

``get_config(arg)`` receives the text after ``:`` in ``--config configs/x.py:arg``; ``arg`` is a
comma-separated list of ``key=value`` pairs and bare flags (``synthetic,backbone=resnet18``).
"""

from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
    """Parses ``key=value,flag`` into a ConfigDict typed like ``defaults``; unknown keys fail."""
    out = ml_collections.ConfigDict(dict(defaults))
    for item in filter(None, (s.strip() for s in (arg or "").split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in defaults:
            raise ValueError(
                f"unknown config argument {key!r} in {arg!r}; valid: {', '.join(sorted(defaults))}"
            )
        default = defaults[key]
        if not sep:
            if not isinstance(default, bool):
                raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
            out[key] = True
        elif isinstance(default, bool):
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"config argument {key!r} expects true/false, got {value!r}")
            out[key] = value.lower() in ("true", "1")
        elif isinstance(default, int):
            try:
                out[key] = int(value)
            except ValueError:
                raise ValueError(f"config argument {key!r} expects an int, got {value!r}") from None
        elif isinstance(default, float):
            try:
                out[key] = float(value)
            except ValueError:
                raise ValueError(
                    f"config argument {key!r} expects a float, got {value!r}"
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
    c.eval_split = "test"
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 2
    c.best_metric = ""  # e.g. "mean_auc"; empty = keep only the latest
    c.best_mode = "max"
    c.worker_count = 0  # grain worker processes for decoding/augmentation
    c.max_steps = 0  # >0 stops the whole run after this many steps (debugging, tests)
    c.update(overrides)
    return c


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
    return c
