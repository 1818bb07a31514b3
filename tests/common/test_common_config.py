"""Config files, `arg` variants and command-line overrides, with their error messages."""

import json
import os

import ml_collections
import pytest

from jaxproto.common import config as config_lib


def test_parse_arg_types_and_flags():
    arg = config_lib.parse_arg(
        "synthetic,image_size=96,backbone=resnet18",
        synthetic=False,
        image_size=0,
        backbone="",
        lr=0.1,
    )
    assert arg.synthetic is True and arg.image_size == 96 and arg.backbone == "resnet18"
    assert arg.lr == 0.1


@pytest.mark.parametrize(
    "text, message",
    [
        ("nosuch=1", "unknown config argument 'nosuch'"),
        ("image_size=big", "expects an int"),
        ("backbone", "needs a value"),
        ("synthetic=maybe", "expects true/false"),
    ],
)
def test_parse_arg_errors(text, message):
    with pytest.raises(ValueError, match=message):
        config_lib.parse_arg(text, synthetic=False, image_size=0, backbone="")


def test_overrides_are_typed(repo_root):
    spec = os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"
    config = config_lib.build_config(
        spec,
        [
            ("train.batch_size", "8"),
            ("optim.lr", "0.5"),
            ("mesh.rules", "[('.*', 'fsdp')]"),
            ("data.clever_hans", "true"),
        ],
    )
    assert config.train.batch_size == 8 and config.optim.lr == 0.5
    assert config.data.clever_hans is True
    assert list(config.mesh.rules[0]) == [".*", "fsdp"]
    # FieldReference: data.image_size follows model.image_size.
    config2 = config_lib.build_config(spec, [("model.image_size", "48")])
    assert config2.data.image_size == 48


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "train.nosuch",
            "1",
            "unknown config key --config.train.nosuch; valid keys here: .*batch_size",
        ),
        ("nosuch.x", "1", "unknown config key --config.nosuch; valid keys here: .*train"),
        ("train.batch_size", "eight", "--config.train.batch_size expects an int, got 'eight'"),
        ("optim.lr", "fast", "expects a float"),
        ("train", "3", "is a group, not a value"),
    ],
)
def test_override_errors_list_valid_keys(repo_root, key, value, message):
    spec = os.path.join(repo_root, "configs", "baseline_odir.py") + ":synthetic"
    with pytest.raises(config_lib.ConfigError, match=message):
        config_lib.build_config(spec, [(key, value)])


def test_split_config_args():
    spec, overrides, rest = config_lib.split_config_args(
        ["--config", "c.py:synthetic", "--config.a.b=1", "--config.c", "2", "--workdir", "w"]
    )
    assert spec == "c.py:synthetic"
    assert overrides == [("a.b", "1"), ("c", "2")]
    assert rest == ["--workdir", "w"]


def test_missing_config_file_is_clear():
    with pytest.raises(config_lib.ConfigError, match="config file not found"):
        config_lib.load_config_file("nope/does_not_exist.py")


def test_saved_config_round_trips(tmp_path):
    c = ml_collections.ConfigDict({"a": 1, "b": {"c": [("x", "y")]}})
    config_lib.save_config(c, str(tmp_path))
    back = config_lib.load_saved_config(str(tmp_path))
    assert back.a == 1 and json.loads((tmp_path / "config.json").read_text())["b"]["c"]


def test_read_json_names_the_file_and_position_of_broken_json(tmp_path):
    from jaxproto.common import config as config_lib
    from jaxproto.common.errors import CheckpointError, ConfigError

    bad = tmp_path / "config.json"
    bad.write_text('{"method": "cipl",\n "model": }')
    with pytest.raises(ConfigError, match=r"config.json: invalid JSON at line 2, column 11"):
        config_lib.load_saved_config(str(tmp_path))
    with pytest.raises(CheckpointError, match="manifest.json: not a text JSON file"):
        (tmp_path / "manifest.json").write_bytes(b"\xff\xfe\x00garbage")
        config_lib.read_json(str(tmp_path / "manifest.json"), CheckpointError)
