"""``python -m jaxproto.convert``: a mismatched checkpoint lists every key (several lines, no
traceback), garbage or missing inputs are one line, outputs are checked first and atomic."""

import numpy as np
import pytest

from jaxproto import convert
from jaxproto.common import cli

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def test_mismatch_keeps_the_full_key_list_without_traceback(tmp_path, capsys):
    src = tmp_path / "w.safetensors"
    safetensors_numpy.save_file({"foo.weight": np.zeros((2, 2), np.float32)}, str(src))
    out = tmp_path / "o.msgpack"
    argv = ["torchvision", "--arch", "resnet_tiny", "--input", str(src), "--out", str(out)]
    assert cli.run(convert.main, argv) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("python -m jaxproto.convert: error: ") and "problem(s)" in lines[0]
    missing = [line for line in lines if line.strip().startswith("missing: ")]
    assert any(line.startswith("  missing: params/conv1/kernel") for line in lines)
    assert len(missing) > 10 and any("unexpected: foo.weight" in line for line in lines)
    assert "Traceback" not in "\n".join(lines)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


def test_missing_input_is_one_line(tmp_path, capsys):
    argv = ["chexnet", "--input", str(tmp_path / "none.pth"), "--out", str(tmp_path / "o")]
    assert cli.run(convert.main, argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.pth" in err


def test_output_folder_is_refused_before_reading(tmp_path, capsys):
    argv = ["chexnet", "--input", str(tmp_path / "none.pth"), "--out", str(tmp_path)]
    assert cli.run(convert.main, argv) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_method_converters_are_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        convert.main(["--help"])
    assert e.value.code == 0 and "cipl" in capsys.readouterr().out
