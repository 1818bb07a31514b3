"""Start N JAX processes on this machine, each running the same command (CPU debugging, tests).

  python launch/local.py --num-processes 2 --devices-per-process 2 -- \
      python -m jaxproto.train --config configs/cipl_odir.py:synthetic --workdir runs/mp

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
jaxproto's distributed initialisation) and XLA_FLAGS with its fake CPU device count. Output of
process i is prefixed with [i]. The launcher exits non-zero if any process fails, and stops the
others when one fails.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _pump(prefix: str, stream, sink) -> None:
    for line in iter(stream.readline, ""):
        sink.write(f"[{prefix}] {line}")
        sink.flush()


def launch(
    command: list[str],
    num_processes: int,
    devices_per_process: int = 1,
    timeout: float | None = None,
    env: dict | None = None,
) -> int:
    """Runs ``command`` as ``num_processes`` coordinated JAX processes; returns the exit code."""
    port = free_port()
    procs, pumps = [], []
    for i in range(num_processes):
        penv = dict(os.environ if env is None else env)
        penv.update(
            {
                "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
                "JAX_NUM_PROCESSES": str(num_processes),
                "JAX_PROCESS_ID": str(i),
                "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}",
                "JAX_PLATFORMS": penv.get("JAX_PLATFORMS", "cpu"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            penv.pop(proxy, None)  # proxies can hang jax.distributed.initialize
        p = subprocess.Popen(
            command, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        t = threading.Thread(target=_pump, args=(str(i), p.stdout, sys.stdout), daemon=True)
        t.start()
        procs.append(p)
        pumps.append(t)
    codes = []
    try:
        for p in procs:
            codes.append(p.wait(timeout=timeout))
            if codes[-1] != 0:
                break
    except subprocess.TimeoutExpired:
        codes.append(124)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for t in pumps:
            t.join(timeout=5)
    return next((c for c in codes if c != 0), 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--num-processes", type=int, required=True)
    parser.add_argument(
        "--devices-per-process",
        type=int,
        default=1,
        help="fake CPU devices per process (XLA host platform device count)",
    )
    parser.add_argument("--timeout", type=float, default=None, help="seconds, then kill all")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    sys.exit(launch(command, args.num_processes, args.devices_per_process, args.timeout))


if __name__ == "__main__":
    main()
