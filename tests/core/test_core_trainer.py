"""Trainer: sharding equivalence, NaN stop, interrupted-and-resumed equals uninterrupted."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxproto import inference
from jaxproto.common import config as config_lib
from jaxproto.common import trees
from jaxproto.core import parallel
from jaxproto.core.trainer import TrainingDiverged
from jaxproto.methods import build_trainer

TINY = [
    ("model.image_size", "32"),
    ("data.num_train", "48"),
    ("data.num_test", "16"),
    ("train.batch_size", "8"),
    ("train.eval_batch_size", "16"),
    ("train.epochs", "2.0"),
    ("train.log_every_steps", "1"),
    ("train.eval_every_epochs", "0.0"),
]


def _config(repo_root, extra=()):
    spec = os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"
    return config_lib.build_config(spec, [*TINY, *extra])


def _one_step(config, workdir, devices):
    trainer = build_trainer(config, str(workdir), devices=devices)
    state = trainer.create_state()
    stream = trainer.train_stream(0)
    batch = parallel.global_batch(next(stream), trainer.mesh)
    state, metrics = trainer.step_fn(0)(state, batch)
    return jax.device_get(state), jax.device_get(metrics)


def _assert_trees_close(a, b, tol):
    flat_a, tree_a = jax.tree.flatten(a)
    flat_b, tree_b = jax.tree.flatten(b)
    assert tree_a == tree_b
    for x, y in zip(flat_a, flat_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


@pytest.mark.parametrize(
    "mesh", [("8", "1"), ("4", "2"), ("1", "8")], ids=["dp8", "dp4_fsdp2", "fsdp8"]
)
def test_sharded_step_matches_single_device(repo_root, tmp_path, mesh):
    assert jax.device_count() == 8, "conftest must provide 8 CPU devices"
    # SGD: Adam's first step is ~lr*sign(g), ill-conditioned for gradients near zero.
    sgd = [("optim.optimizer", "sgd"), ("optim.lr", "0.1")]
    base = _config(repo_root, sgd)
    ref_state, ref_metrics = _one_step(base, tmp_path / "one", jax.devices()[:1])
    rules = "[('.*', 'fsdp')]" if mesh[1] != "1" else "[('.*', 'replicate')]"
    config = _config(
        repo_root, [*sgd, ("mesh.data", mesh[0]), ("mesh.fsdp", mesh[1]), ("mesh.rules", rules)]
    )
    state, metrics = _one_step(config, tmp_path / "many", jax.devices())
    np.testing.assert_allclose(metrics["loss"], ref_metrics["loss"], rtol=1e-5, atol=1e-5)
    _assert_trees_close(state["params"], ref_state["params"], 1e-5)
    _assert_trees_close(state["batch_stats"], ref_state["batch_stats"], 1e-5)


def test_fsdp_rule_shards_params(repo_root, tmp_path):
    config = _config(
        repo_root,
        [("mesh.data", "4"), ("mesh.fsdp", "2"), ("mesh.rules", "[('params/.*kernel', 'fsdp')]")],
    )
    trainer = build_trainer(config, str(tmp_path), devices=jax.devices())
    specs = {
        trees.path_str(p): s.spec
        for p, s in jax.tree_util.tree_flatten_with_path(trainer.state_shardings)[0]
    }
    kernels = [k for k in specs if k.startswith("params/") and k.endswith("kernel")]
    assert kernels and any("fsdp" in tuple(specs[k]) for k in kernels)
    assert all(tuple(specs[k]) == () for k in specs if k.startswith("batch_stats/"))


def test_nan_loss_stops_with_step_and_terms(repo_root, tmp_path):
    config = _config(repo_root, [("optim.lr", "1e30"), ("train.checkpoint_every_steps", "1")])
    trainer = build_trainer(config, str(tmp_path), devices=jax.devices()[:1])
    with pytest.raises(TrainingDiverged, match=r"non-finite values at step \d+: .*loss=") as err:
        trainer.train()
    bad_step = int(str(err.value).split("at step ")[1].split(":")[0])
    saved = sorted(int(d) for d in os.listdir(tmp_path / "ckpt") if d.isdigit())
    assert saved and max(saved) < bad_step, (saved, bad_step)
    _, _, state = inference.load_for_inference(str(tmp_path), which="latest")
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def _train_cmd(repo_root, workdir, extra=()):
    args = [f"--config.{k}={v}" for k, v in [*TINY, ("train.epochs", "3.0"), *extra]]
    return [
        sys.executable,
        "-m",
        "jaxproto.train",
        "--config",
        os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic",
        *args,
        "--workdir",
        str(workdir),
    ]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _losses(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if rec["kind"] == "train":
                out[rec["step"]] = rec["loss"]
    return out


def _wait_for_step(workdir, step, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"training exited early: {proc.stderr.read()[-2000:]}")
        path = os.path.join(workdir, "metrics.jsonl")
        if os.path.exists(path) and _losses(workdir) and max(_losses(workdir)) >= step:
            return
        time.sleep(0.2)
    raise AssertionError("training did not reach the step in time")


@pytest.fixture(scope="module")
def uninterrupted(repo_root, tmp_path_factory):
    full = tmp_path_factory.mktemp("full")
    subprocess.run(
        _train_cmd(repo_root, full),
        check=True,
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        timeout=600,
    )
    return full


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_interrupted_run_resumes_exactly(repo_root, tmp_path, sig, uninterrupted):
    full = uninterrupted
    cut = tmp_path / "cut"
    extra = [("train.checkpoint_every_steps", "2")]
    proc = subprocess.Popen(
        _train_cmd(repo_root, cut, extra),
        cwd=repo_root,
        env=_env(),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    _wait_for_step(cut, 5, proc)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, proc.stderr.read()[-2000:]
    interrupted_at = max(_losses(cut))
    subprocess.run(
        _train_cmd(repo_root, cut, extra),
        check=True,
        cwd=repo_root,
        env=_env(),
        capture_output=True,
        timeout=600,
    )
    full_losses, cut_losses = _losses(full), _losses(cut)
    assert max(cut_losses) == max(full_losses) > interrupted_at
    # Same batches: every step's loss after the restart equals the uninterrupted run's.
    for step, loss in cut_losses.items():
        np.testing.assert_allclose(loss, full_losses[step], rtol=1e-6, err_msg=f"step {step}")
    _, _, a = inference.load_for_inference(str(full), which="latest")
    _, _, b = inference.load_for_inference(str(cut), which="latest")
    _assert_trees_close(a["params"], b["params"], 1e-6)
