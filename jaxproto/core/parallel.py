"""Devices, processes and shardings.

One code path for a laptop, one accelerator and a multi-host pod: a mesh with a ``data`` axis
and an ``fsdp`` axis (the batch is split over both), params placed by regex rules over their
"/"-joined paths, host batches turned into global arrays.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxproto.common import trees

log = logging.getLogger(__name__)

BATCH_AXES = ("data", "fsdp")


def initialize_distributed(cfg: ml_collections.ConfigDict | None) -> None:
    """Starts JAX's distributed runtime when launched as several processes.

    Explicit settings (``distributed.coordinator`` etc., or JAX_COORDINATOR_ADDRESS) win;
    otherwise TPU VM pods and SLURM jobs with more than one task are auto-detected.
    """
    cfg = cfg or ml_collections.ConfigDict()
    coordinator = cfg.get("coordinator", "") or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    if coordinator:
        num = cfg.get("num_processes", 0) or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
        pid = cfg.get("process_id", -1)
        if pid < 0:
            pid = int(os.environ.get("JAX_PROCESS_ID", "-1"))
        if num <= 0 or pid < 0:
            raise ValueError(
                "distributed.coordinator is set, so distributed.num_processes (>0) and "
                "distributed.process_id (>=0) are needed too"
            )
        local = cfg.get("local_device_ids", "")
        local_ids = [int(i) for i in local.split(",")] if local else None
        log.info("jax.distributed.initialize(%s, %d processes, id %d)", coordinator, num, pid)
        jax.distributed.initialize(
            coordinator_address=coordinator,
            num_processes=num,
            process_id=pid,
            local_device_ids=local_ids,
            **_timeouts(cfg),
        )
    elif _auto_detectable():
        log.info("jax.distributed.initialize() with auto-detection")
        jax.distributed.initialize(**_timeouts(cfg))


def _timeouts(cfg: ml_collections.ConfigDict) -> dict[str, int]:
    return {
        "initialization_timeout": int(cfg.get("initialization_timeout_s", 300)),
        "heartbeat_timeout_seconds": int(cfg.get("heartbeat_timeout_s", 30)),
        "shutdown_timeout_seconds": int(cfg.get("shutdown_timeout_s", 60)),
    }


def _auto_detectable() -> bool:
    if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
        return True
    hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    return "," in hosts


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None):
    """Mesh ("data", "fsdp") from config; -1 takes the remaining devices."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    data, fsdp = int(cfg.get("data", -1)), int(cfg.get("fsdp", 1))
    if data == -1 and fsdp == -1:
        raise ValueError("mesh: at most one of mesh.data / mesh.fsdp may be -1")
    if data == -1:
        data = n // max(fsdp, 1)
    if fsdp == -1:
        fsdp = n // max(data, 1)
    if data * fsdp != n:
        raise ValueError(f"mesh: data={data} x fsdp={fsdp} must equal the {n} available devices")
    grid = np.asarray(devices).reshape(data, fsdp)
    return jax.sharding.Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def _fsdp_spec(shape: tuple[int, ...], size: int) -> P:
    """Shards the largest dimension divisible by the fsdp axis size; replicates otherwise."""
    if size <= 1 or not shape:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        if shape[i] % size == 0 and shape[i] >= size:
            spec = [None] * len(shape)
            spec[i] = "fsdp"
            return P(*spec)
    return P()


def tree_shardings(tree, mesh, rules: Sequence[Sequence[str]]):
    """NamedSharding per leaf: the first matching (regex, rule) wins; rule replicate|fsdp.

    Names come from ``trees.state_leaf_names``: optimizer moments are matched under the name
    of the parameter they mirror, so one rule places a parameter and its optimizer state."""
    for _, rule in rules:
        if rule not in ("replicate", "fsdp"):
            raise ValueError(f"mesh.rules: unknown rule {rule!r}; use 'replicate' or 'fsdp'")
    fsdp_size = mesh.shape["fsdp"]
    rule_list = [(pattern, rule) for pattern, rule in rules]
    names = (
        trees.state_leaf_names(tree)
        if isinstance(tree, dict)
        else trees.map_with_names(lambda name, _: name, tree)
    )

    def one(name, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        rule = trees.first_match(name, rule_list)
        spec = _fsdp_spec(shape, fsdp_size) if rule == "fsdp" else P()
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, names, tree)


def device_multiple(batch_size: int, mesh) -> int:
    """``batch_size`` rounded up to a multiple of the mesh's device count (at least one each)."""
    n = mesh.size
    return max(n, -(-int(batch_size) // n) * n)


def replicated(mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(local: dict, mesh) -> dict:
    """Host-local numpy batch -> global arrays sharded over the batch axes."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), local)


def to_host(tree):
    """Fully addressable (e.g. replicated) arrays -> numpy on every process."""
    return jax.tree.map(np.asarray, tree)


def compile_in_step(fn, *args, name: str, timeout_s: int = 3600):
    """``fn`` (a jitted function) compiled for ``args``; with several processes, returned only
    once every process has compiled it (a coordination-service barrier). jaxlib's CPU
    collectives give up after 30 s when one process reaches a collective while another is
    still compiling, which happens on a busy CPU host."""
    compiled = fn.lower(*args).compile()
    if jax.process_count() > 1:
        from jax._src import distributed  # the coordination client: no public barrier API

        distributed.global_state.client.wait_at_barrier(f"compiled/{name}", timeout_s * 1000)
    return compiled


def is_main_process() -> bool:
    return jax.process_index() == 0
