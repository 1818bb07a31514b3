"""Multi-process runtime: 2 processes x 2 CPU devices train exactly like 1 process x 4 devices,
and checkpoints written by one layout restore in the other."""

import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxproto import inference

pytestmark = pytest.mark.multiprocess

CONFIG = "configs/cipl_odir.py:synthetic"
OVERRIDES = [
    "--config.model.image_size=32",
    "--config.data.num_train=64",
    "--config.data.num_test=16",
    "--config.train.batch_size=8",
    "--config.train.eval_batch_size=8",
    "--config.train.eval_every_epochs=0.0",
    "--config.train.log_every_steps=1",
    "--config.train.pretrain_epochs=0",  # the CIPL phases, not the demo's backbone pretraining
    # Adam's early steps are ~lr*sign(g): with eps=1e-8 a gradient that is zero up to float
    # rounding flips sign between reduction orders. A larger eps keeps the comparison
    # well-conditioned without changing what is compared.
    "--config.optim.eps=1e-3",
]


def _train(repo_root, workdir, processes, devices, max_steps, extra=()):
    cmd = [
        sys.executable,
        "-m",
        "jaxproto.train",
        "--config",
        CONFIG,
        *OVERRIDES,
        f"--config.train.max_steps={max_steps}",
        *extra,
        "--workdir",
        str(workdir),
    ]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if processes == 1:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
        out = subprocess.run(
            cmd, cwd=repo_root, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return
    launcher = [
        sys.executable,
        "launch/local.py",
        "--num-processes",
        str(processes),
        "--devices-per-process",
        str(devices),
        "--timeout",
        "600",
        "--",
        *cmd,
    ]
    out = subprocess.run(
        launcher, cwd=repo_root, env=env, capture_output=True, text=True, timeout=660
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]


def _params(workdir):
    _, _, state = inference.load_for_inference(str(workdir), which="latest")
    return state


def _assert_close(a, b, tol=1e-5):
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    assert ta == tb
    for x, y in zip(la, lb, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_two_processes_match_one_and_checkpoints_cross_restore(repo_root, tmp_path):
    multi, single = tmp_path / "multi", tmp_path / "single"
    _train(repo_root, multi, processes=2, devices=2, max_steps=3)
    _train(repo_root, single, processes=1, devices=4, max_steps=3)
    a, b = _params(multi), _params(single)
    _assert_close(a["params"], b["params"])
    _assert_close(a["batch_stats"], b["batch_stats"])
    # Resume each checkpoint in the other layout: 2-process ckpt in 1 process and the reverse.
    _train(repo_root, multi, processes=1, devices=4, max_steps=5)
    _train(repo_root, single, processes=2, devices=2, max_steps=5)
    _assert_close(_params(multi)["params"], _params(single)["params"])


def test_two_processes_cross_a_phase_boundary_with_best_and_latest_checkpoints(repo_root, tmp_path):
    """The end of a phase saves the same step as "best" and "latest"; with two processes their
    orbax barriers used to collide (issue: the demo died at step 180, the end of pretraining)."""
    workdir = tmp_path / "boundary"
    _train(
        repo_root,
        workdir,
        processes=2,
        devices=2,
        max_steps=10,
        extra=["--config.train.pretrain_epochs=1", "--config.train.best_metric=mean_auc"],
    )
    steps = sorted(int(s) for s in os.listdir(workdir / "ckpt") if s.isdigit())
    assert 8 in steps or 10 in steps  # 64 images / batch 8: the pretrain phase ends at step 8
    assert any(s.isdigit() for s in os.listdir(workdir / "best"))


def test_killed_process_stops_the_others_within_a_minute(repo_root, tmp_path):
    port = _free_port()
    workdir = tmp_path / "killed"
    cmd = [
        sys.executable,
        "-m",
        "jaxproto.train",
        "--config",
        CONFIG,
        *OVERRIDES,
        "--config.distributed.heartbeat_timeout_s=10",
        "--workdir",
        str(workdir),
    ]
    procs = []
    for i in range(2):
        env = dict(
            os.environ,
            JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
            JAX_NUM_PROCESSES="2",
            JAX_PROCESS_ID=str(i),
            XLA_FLAGS="--xla_force_host_platform_device_count=2",
            JAX_PLATFORMS="cpu",
            PYTHONUNBUFFERED="1",
        )
        log = open(tmp_path / f"out{i}.txt", "w")  # noqa: SIM115 (closed below)
        procs.append((subprocess.Popen(cmd, cwd=repo_root, env=env, stdout=log, stderr=log), log))
    try:
        deadline = time.monotonic() + 600
        metrics = workdir / "metrics.jsonl"
        while time.monotonic() < deadline:
            if metrics.exists() and sum('"train"' in line for line in open(metrics)) >= 2:
                break
            assert all(p.poll() is None for p, _ in procs), "a process exited before the kill"
            time.sleep(0.5)
        procs[1][0].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        code = procs[0][0].wait(timeout=90)
        assert time.monotonic() - killed < 60
        assert code != 0
    finally:
        for p, log in procs:
            if p.poll() is None:
                p.kill()
            log.close()
    text = (tmp_path / "out0.txt").read_text()
    assert "stopped sending heartbeats" in text and "\n1\n" in text


def test_launcher_names_the_failed_process_and_stops_the_others(repo_root):
    script = (
        "import os, sys, time\n"
        "if os.environ['JAX_PROCESS_ID'] == '1':\n"
        "    sys.exit(3)\n"
        "time.sleep(120)\n"
    )
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "launch/local.py", "--num-processes", "2", "--grace", "1", "--"]
        + [sys.executable, "-c", script],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - start < 30
    assert out.returncode == 3
    assert "[launch] process 1 failed (exit code 3); stopping the other processes" in out.stderr
    assert "process 0: killed by SIGKILL, process 1: exit code 3" in out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]
