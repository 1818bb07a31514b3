"""The CLI entry helper: one-line errors, exit codes, flag spelling, overrides, safe outputs."""

import os

import pytest

from jaxproto.common import cli
from jaxproto.common.errors import ConfigError, DataError, UserError


def _parser(config=None):
    parser = cli.make_parser("Toy tool.\n\n  python -m toy --out X", "python -m toy", config=config)
    parser.add_argument("--out", required=True)
    parser.add_argument("--skip-bad", action="store_true", help="declared with a dash")
    parser.add_argument("--batch_size", type=int, default=1)
    return parser


def _exit(capsys, fn):
    with pytest.raises(SystemExit) as e:
        fn()
    return e.value.code, capsys.readouterr()


def test_help_shows_the_docstring_and_underscored_flags(capsys):
    code, out = _exit(capsys, lambda: cli.parse(_parser(), ["--help"]))
    assert code == 0
    assert "python -m toy --out X" in out.out and "--skip_bad" in out.out
    assert "--skip-bad" not in out.out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--out", "x", "--bogus"], "unrecognized arguments: --bogus"),
        (["--bogus"], "unrecognized arguments: --bogus"),  # named before the missing --out
        ([], "the following arguments are required: --out"),
        (["--out", "x", "--batch_size", "many"], "argument --batch_size: invalid int value"),
        (["--out", "x", "--config.train.lr=1"], "unrecognized arguments: --config.train.lr"),
        (["--outt", "x"], "unrecognized arguments: --outt"),  # no prefix guessing
    ],
)
def test_usage_errors_are_one_line_and_exit_2(capsys, argv, message):
    code, out = _exit(capsys, lambda: cli.parse(_parser(), argv))
    assert code == 2
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], out.err
    assert lines[0].startswith("python -m toy: error: ")


def test_dashed_spelling_is_accepted_with_a_deprecation_warning(capsys):
    args = cli.parse(_parser(), ["--out", "x", "--skip-bad", "--batch-size=3"])
    assert args.skip_bad is True and args.batch_size == 3
    err = capsys.readouterr().err
    assert "--skip-bad is deprecated, use --skip_bad" in err
    assert "--batch-size is deprecated, use --batch_size" in err
    args = cli.parse(_parser(), ["--out", "x", "--skip_bad"])
    assert args.skip_bad is True and capsys.readouterr().err == ""


def test_subcommands_inherit_the_conventions(capsys):
    parser = cli.make_parser("Toy.", "python -m toy")
    sub = parser.add_subparsers(dest="command", required=True)
    sp = sub.add_parser("index")
    sp.add_argument("--batch-size", type=int, default=64)
    args = cli.parse(parser, ["index", "--batch-size", "8"])
    assert args.batch_size == 8
    assert "deprecated, use --batch_size" in capsys.readouterr().err
    code, out = _exit(capsys, lambda: cli.parse(parser, ["index", "--nope"]))
    assert code == 2 and out.err.count("\n") == 1 and "--nope" in out.err


def test_config_and_overrides(repo_root):
    spec = os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"
    argv = ["--config", spec, "--config.train.batch_size=5", "--out", "x"]
    argv += ["--config.data.num_train", "7"]
    args = cli.parse(_parser("required"), argv)
    assert args.overrides == [("train.batch_size", "5"), ("data.num_train", "7")]
    config = cli.load_config(args)
    assert config.train.batch_size == 5 and config.data.num_train == 7


def test_required_config_is_one_line(capsys):
    code, out = _exit(capsys, lambda: cli.parse(_parser("required"), ["--out", "x"]))
    assert code == 2 and "--config is required" in out.err and out.err.count("\n") == 1


def test_overrides_only_mode_applies_to_a_loaded_config():
    import ml_collections

    args = cli.parse(_parser("overrides"), ["--out", "x", "--config.data.root=/data/odir"])
    config = ml_collections.ConfigDict({"data": {"root": ""}})
    cli.apply_overrides(config, args)
    assert config.data.root == "/data/odir"
    args = cli.parse(_parser("overrides"), ["--out", "x", "--config.data.nosuch=1"])
    with pytest.raises(ConfigError, match="unknown config key --config.data.nosuch"):
        cli.apply_overrides(config, args)


def _main_raising(exc):
    def main(argv):
        raise exc

    return main


@pytest.mark.parametrize(
    "exc, line",
    [
        (ConfigError("--config.train.x: unknown"), "--config.train.x: unknown"),
        (DataError("labels.csv line 3: bad label"), "labels.csv line 3: bad label"),
        (FileNotFoundError(2, "No such file or directory", "w.pth"), "w.pth: No such file"),
        (IsADirectoryError(21, "Is a directory", "out"), "out: Is a directory"),
    ],
)
def test_run_turns_user_errors_into_one_line_and_status_2(capsys, exc, line):
    assert cli.run(_main_raising(exc), []) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and line in err and "Traceback" not in err


def test_run_keeps_multi_line_messages_whole(capsys):
    exc = ConfigError("checkpoint does not match:\n  missing: a/b\n  unexpected: c")
    assert cli.run(_main_raising(exc), []) == 2
    assert capsys.readouterr().err.splitlines()[1:] == ["  missing: a/b", "  unexpected: c"]


def test_run_passes_success_and_interrupts(capsys):
    assert cli.run(lambda argv: None, []) == 0
    assert cli.run(lambda argv: 3, []) == 3
    assert cli.run(_main_raising(KeyboardInterrupt()), []) == cli.EXIT_INTERRUPTED


def test_run_lets_programming_errors_through():
    with pytest.raises(ZeroDivisionError):
        cli.run(lambda argv: 1 / 0, [])


def test_output_checks_happen_before_work(tmp_path):
    assert cli.output_file(str(tmp_path / "new" / "p.csv")) and (tmp_path / "new").is_dir()
    with pytest.raises(UserError, match="is a folder"):
        cli.output_file(str(tmp_path))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli.output_file(str(tmp_path / "file" / "p.csv"))
    with pytest.raises(UserError, match="is a file, not a folder"):
        cli.output_dir(str(tmp_path / "file"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_detected(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(UserError, match="cannot write"):
            cli.output_file(str(ro / "p.csv"))
    finally:
        ro.chmod(0o700)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.csv"
    path.write_text("previous result")
    with pytest.raises(RuntimeError):
        with cli.atomic_write(str(path)) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "previous result"
    assert os.listdir(tmp_path) == ["out.csv"]
    with cli.atomic_write(str(path)) as f:
        f.write("new")
    assert path.read_text() == "new" and os.listdir(tmp_path) == ["out.csv"]
