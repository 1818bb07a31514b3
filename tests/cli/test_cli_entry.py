"""Every CLI goes through the one entry helper: --help exits 0, usage mistakes are one line and
exit 2, every CLI with a config takes --config.a.b=v overrides, dashed flags still work."""

import importlib
import json
import os
import subprocess
import sys

import pytest

from jaxproto.common import cli

CLIS = [
    "train",
    "evaluate",
    "explain",
    "predict",
    "export",
    "convert",
    "retrieve",
    "data.prepare",
    "data.synthetic",
]
# A sub-command to put before a flag, for the CLIs that have sub-commands.
SUBCOMMAND = {"convert": ["torchvision"], "retrieve": ["index"]}


def _module(name):
    return importlib.import_module(f"jaxproto.{name}")


def _exit(capsys, fn):
    with pytest.raises(SystemExit) as e:
        fn()
    return e.value.code, capsys.readouterr()


@pytest.mark.parametrize("name", CLIS)
def test_help_exits_0_with_the_docstring_and_flags(capsys, name):
    module = _module(name)
    code, out = _exit(capsys, lambda: module.main(["--help"]))
    assert code == 0
    assert module.__doc__.strip().splitlines()[0] in out.out
    assert "--" in out.out and out.err == ""


@pytest.mark.parametrize("name", CLIS)
def test_unknown_flag_is_one_line_and_exit_2(capsys, name):
    argv = SUBCOMMAND.get(name, []) + ["--no_such_flag", "1"]
    code, out = _exit(capsys, lambda: _module(name).main(argv))
    assert code == 2
    assert out.err.count("\n") == 1 and "unrecognized arguments: --no_such_flag" in out.err


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("export", ["--workdir", "w"], "the following arguments are required: --out"),
        ("explain", ["--workdir", "w"], "required: --image"),
        ("predict", ["--images", "a.png"], "one of the arguments --workdir --export is required"),
        ("evaluate", ["--workdir", "w", "--export", "e"], "not allowed with argument --workdir"),
        ("evaluate", ["--workdir", "w", "--checkpoint", "newest"], "invalid choice: 'newest'"),
        ("predict", ["--export", "e", "--images", "a", "--batch_size", "x"], "invalid int"),
        ("train", ["--workdir", "w"], "--config is required"),
        ("data.synthetic", ["--like", "odir", "--num", "0", "--out", "o"], "--num: must be > 0"),
        ("data.prepare", ["--out", "o"], "give --config or --dataset"),
    ],
)
def test_usage_mistakes_are_one_line_and_exit_2(capsys, name, argv, message):
    code, out = _exit(capsys, lambda: _module(name).main(argv))
    assert code == 2
    assert out.err.count("\n") == 1 and message in out.err, out.err


def test_flags_given_to_a_cli_without_config_are_rejected(capsys):
    code, out = _exit(capsys, lambda: _module("predict").main(["--config.data.root=/x"]))
    assert code == 2 and "this command has no config" in out.err


def _spec(repo_root):
    return os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"


@pytest.mark.parametrize(
    "name, argv",
    [
        ("train", ["--config", "SPEC", "--workdir", "w"]),
        ("data.prepare", ["--config", "SPEC", "--out", "o"]),
        ("evaluate", ["--workdir", "w"]),
        ("retrieve", ["saliency-eval", "--workdir", "w", "--out", "o"]),
        ("convert", ["cipl", "--input", "x.pth", "--config", "SPEC", "--out", "o"]),
    ],
)
def test_every_cli_with_a_config_takes_overrides(repo_root, name, argv):
    argv = [_spec(repo_root) if a == "SPEC" else a for a in argv]
    overrides = ["--config.data.root=/data/odir", "--config.train.batch_size", "4"]
    args = cli.parse(_module(name).build_parser(), argv + overrides)
    assert args.overrides == [("data.root", "/data/odir"), ("train.batch_size", "4")]


def test_prepare_applies_overrides(repo_root, tmp_path, capsys):
    """data.prepare used to reject --config.data.root=...; now every override applies."""
    pytest.importorskip("array_record")
    out = tmp_path / "prepared"
    argv = ["--config", _spec(repo_root), "--config.data.num_train=4", "--config.data.num_test=2"]
    argv += ["--image_size", "16", "--out", str(out)]
    assert cli.run(_module("data.prepare").main, argv) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert len(manifest["splits"]["train"]["records"]) == 4
    assert len(manifest["splits"]["test"]["records"]) == 2


def test_prepare_of_a_real_dataset_without_root_says_how_to_set_it(repo_root, tmp_path, capsys):
    spec = os.path.join(repo_root, "configs", "cipl_odir.py")
    argv = ["--config", spec, "--out", str(tmp_path / "p")]
    assert cli.run(_module("data.prepare").main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--config.data.root=DIR" in err
    assert not (tmp_path / "p").exists()


def test_dashed_spelling_still_works_with_a_warning(tmp_path, capsys):
    argv = ["--like", "odir", "--num", "4", "--num-test", "2", "--image-size", "32"]
    assert cli.run(_module("data.synthetic").main, [*argv, "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err
    assert "--num-test is deprecated, use --num_test" in err
    assert "--image-size is deprecated, use --image_size" in err
    images = [f for _, _, fs in os.walk(tmp_path) for f in fs if f.endswith(".jpg")]
    assert len(images) == 6
    args = cli.parse(
        _module("predict").build_parser(), ["--export", "e", "--images", "a", "--skip-bad"]
    )
    assert args.skip_bad is True


def test_user_errors_while_running_are_one_line(tmp_path, capsys):
    argv = ["--workdir", str(tmp_path / "nope"), "--image", str(tmp_path / "x.png")]
    assert cli.run(_module("explain").main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "x.png: no such file" in err


def test_python_m_reports_an_unknown_key_without_traceback(repo_root, tmp_path):
    cmd = [sys.executable, "-m", "jaxproto.train", "--config", _spec(repo_root)]
    cmd += ["--config.train.bach_size=3", "--workdir", str(tmp_path)]
    out = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.startswith("python -m jaxproto.train: error: unknown config key ")
    assert "--config.train.bach_size" in out.stderr and "batch_size" in out.stderr
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
