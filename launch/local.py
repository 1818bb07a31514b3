"""Start N JAX processes on this machine, each running the same command (CPU debugging, tests).

  python launch/local.py --num-processes 2 --devices-per-process 2 -- \
      python -m jaxproto.train --config configs/cipl_odir.py:synthetic --workdir runs/mp

Each process gets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID (read by
jaxproto's distributed initialisation) and XLA_FLAGS with its fake CPU device count. Output of
process i is prefixed with [i]. When a process fails, the launcher names it on one line, gives
the others time to stop on their own (the coordination service's heartbeat timeout,
``--config.distributed.heartbeat_timeout_s``), kills what is left, and exits with the failed
process's code.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time


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
    grace: float = 45.0,
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
    return _supervise(procs, pumps, timeout, grace)


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _supervise(procs, pumps, timeout: float | None, grace: float = 45.0) -> int:
    """Waits for every process; the first failure is named on one line, the others get
    ``grace`` seconds to stop on their own (JAX's coordination service stops them once it sees
    the failed process's heartbeats stop) and are then killed. Returns the first failure's code
    (124 on timeout), else 0."""
    start = time.monotonic()
    first: tuple[int, int] | None = None
    failed_at = 0.0
    while any(p.poll() is None for p in procs):
        now = time.monotonic()
        if first is None:
            for i, p in enumerate(procs):
                if p.poll() not in (None, 0):
                    first, failed_at = (i, p.returncode), now
                    sys.stderr.write(
                        f"[launch] process {i} failed ({_describe(p.returncode)}); "
                        f"stopping the other processes\n"
                    )
                    break
        if timeout is not None and now - start > timeout and first is None:
            sys.stderr.write(f"[launch] timed out after {timeout:.0f} s; killing every process\n")
            first, failed_at = (-1, 124), now - grace
        if first is not None and now - failed_at > grace:
            break
        time.sleep(0.2)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()
    for t in pumps:
        t.join(timeout=5)
    if first is None:
        return 0
    summary = ", ".join(f"process {i}: {_describe(p.returncode)}" for i, p in enumerate(procs))
    sys.stderr.write(f"[launch] {summary}\n")
    return first[1] if first[1] > 0 else 128 - first[1]


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
    parser.add_argument(
        "--grace",
        type=float,
        default=45.0,
        help="seconds the other processes get to stop on their own after one fails",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    sys.exit(
        launch(
            command,
            args.num_processes,
            args.devices_per_process,
            args.timeout,
            grace=args.grace,
        )
    )


if __name__ == "__main__":
    main()
