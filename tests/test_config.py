import argparse
import re
from pathlib import Path

import pytest
import yaml

from unetpipe.cli import PREPROCESS_KEYS, SYNTH_KEYS, build_parser
from unetpipe.core.config import (
    SCHEMA_PATH,
    add_config_options,
    cli_args,
    coerce_strings,
    config_from_args,
    defaults,
    get,
    key_schema,
    leaf_keys,
    load_config,
    load_schema,
    validate_config,
)
from unetpipe.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _walk(schema, prefix=""):
    for name, sub in schema.get("properties", {}).items():
        yield f"{prefix}{name}", sub
        yield from _walk(sub, f"{prefix}{name}.")


def test_every_key_has_description_default_and_closed_sections():
    schema = load_schema()
    keys = list(_walk(schema))
    assert len(keys) > 20
    for key, sub in keys:
        assert sub.get("description"), f"{key} has no description"
        assert "default" in sub, f"{key} has no default"
        if sub.get("type") == "object":
            assert sub.get("additionalProperties") is False, f"{key} accepts unknown keys"


def test_workflow_schema_is_the_package_schema():
    # one schema: the workflow's path resolves to the package's file
    assert (ROOT / "workflow/schemas/config.schema.yaml").resolve() == SCHEMA_PATH.resolve()


def test_config_yaml_is_the_default_config_and_every_key_is_commented():
    text = (ROOT / "config.yaml").read_text()
    assert yaml.safe_load(text) == defaults()
    validate_config(yaml.safe_load(text))
    lines = text.splitlines()
    for key in leaf_keys():
        name = key.rsplit(".", 1)[-1]
        idx = [i for i, line in enumerate(lines) if re.match(rf"\s*{name}:", line)]
        assert idx, f"{key} missing from config.yaml"
        # the key, or the key of the group it belongs to, has a comment right above it
        i = idx[0]
        while i > 0 and not lines[i - 1].strip().startswith("#"):
            assert re.match(r"\s*\w+:", lines[i - 1]), f"{key} has no comment in config.yaml"
            i -= 1
        assert i > 0, f"{key} has no comment in config.yaml"


def test_defaults_fill_nested_sections():
    cfg = validate_config({"data": {"train": {"images": "a/*.tif", "labels": "b/*.tif"}}})
    assert cfg["data"]["train"] == {"images": "a/*.tif", "labels": "b/*.tif"}
    assert cfg["data"]["val"]["images"] == "resources/demo/val/images/*.tif"
    assert cfg["preprocess"]["percentiles"] == [1.0, 99.8]
    assert cfg["results"] == "results"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"data": {"spacng": [1, 2]}}, "config key 'data.spacng' is not known (did you mean 'data.spacing'?)"),
        ({"data": {"train": {"imgs": "x"}}}, "'data.train.imgs' is not known (did you mean 'data.train.images'?)"),
        ({"bogus": 1}, "config key 'bogus' is not known"),
        ({"data": {"spacing": "abc"}}, "config key 'data.spacing': 'abc' is not of type array or null"),
        ({"data": {"spacing": [1, -2]}}, "config key 'data.spacing[1]'"),
        ({"demo": {"n_train": "8"}}, "config key 'demo.n_train': '8' is not of type integer"),
        ({"demo": {"ndim": 4}}, "config key 'demo.ndim': 4 is not one of [2, 3]"),
        ({"preprocess": {"percentiles": [99.8, 1]}}, "'preprocess.percentiles': the low percentile (99.8) must be below"),
        ({"preprocess": {"percentiles": [1, 101]}}, "config key 'preprocess.percentiles[1]'"),
        ({"data": {"axes": "zzx"}}, "config key 'data.axes': 'zzx' repeats an axis"),
        ({"data": {"axes": "qyx"}}, "config key 'data.axes': 'qyx' is not allowed here"),
        ({"demo": {"ndim": 3}}, "config key 'demo.train_shape': [256, 256] has 2 values but demo.ndim is 3"),
        ({"data": {"val": {"labels": None}}}, "config key 'data.val.labels': val images need instance labels"),
        ([1, 2], "must be a mapping"),
    ],
)
def test_bad_values_name_the_key(config, message):
    with pytest.raises(ConfigError) as info:
        validate_config(config)
    assert message in str(info.value)


def test_all_problems_are_reported_one_per_line():
    with pytest.raises(ConfigError) as info:
        validate_config({"data": {"spacing": "x", "axes": 3}, "results": 5})
    lines = str(info.value).splitlines()
    assert len(lines) == 3
    assert [line.split("'")[1] for line in lines] == ["data.axes", "data.spacing", "results"]


def test_load_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  train: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(line"):
        load_config(bad)
    listy = tmp_path / "list.yaml"
    listy.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(listy)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_config(empty) == defaults()


def test_load_config_overrides_win(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preprocess: {clip: true}\nresults: out\n")
    cfg = load_config(f, overrides={"results": "elsewhere"})
    assert cfg["preprocess"]["clip"] is True
    assert cfg["results"] == "elsewhere"


def _parser(keys):
    p = argparse.ArgumentParser()
    p.add_argument("--configfile")
    add_config_options(p, keys)
    return p


def test_cli_options_round_trip_through_cli_args():
    cfg = validate_config({
        "data": {"spacing": [2.0, 0.5, 0.5], "axes": "zyx", "channels": [0, 2]},
        "preprocess": {"percentiles": [2, 99.5], "clip": True, "chunks": [32, 128, 128],
                       "pyramid_levels": 0, "sample_size": 12345},
    })
    args = _parser(PREPROCESS_KEYS).parse_args(re.findall(r"\S+", cli_args(cfg, PREPROCESS_KEYS)))
    back = config_from_args(args)
    for key in PREPROCESS_KEYS:
        assert get(back, key) == get(cfg, key), key


def test_cli_nulls_and_defaults_round_trip():
    cfg = defaults()
    text = cli_args(cfg, SYNTH_KEYS + PREPROCESS_KEYS[:3])
    assert "--spacing null" in text and "--axes null" in text
    args = _parser(SYNTH_KEYS).parse_args(re.findall(r"\S+", cli_args(cfg, SYNTH_KEYS)))
    assert config_from_args(args) == cfg


def test_cli_option_values_are_validated_and_name_the_key():
    p = _parser(PREPROCESS_KEYS)
    with pytest.raises(ConfigError, match=r"config key 'preprocess\.percentiles': the low"):
        config_from_args(p.parse_args(["--percentiles", "99", "1"]))
    with pytest.raises(ConfigError, match=r"config key 'preprocess\.pyramid_levels': 'two' is not of type integer"):
        config_from_args(p.parse_args(["--pyramid-levels", "two"]))
    with pytest.raises(ConfigError, match=r"config key 'data.spacing'"):
        config_from_args(p.parse_args(["--spacing", "1", "2", "3", "4"]))


def test_cli_options_override_configfile(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preprocess: {percentiles: [5, 95], clip: true}\n")
    args = _parser(PREPROCESS_KEYS).parse_args(["--configfile", str(f), "--percentiles", "0", "100"])
    cfg = config_from_args(args)
    assert cfg["preprocess"]["percentiles"] == [0, 100]
    assert cfg["preprocess"]["clip"] is True


def test_help_text_comes_from_the_schema():
    text = build_parser()._subparsers._group_actions[0].choices["preprocess"].format_help()
    for key in PREPROCESS_KEYS:
        assert f"Config key {key}" in " ".join(text.split())
    desc = " ".join(key_schema("preprocess.percentiles")["description"].split())
    assert desc[:40] in " ".join(text.split())


def test_coerce_strings_from_snakemake_config_option():
    # Snakemake's --config hands nested values over as strings
    raw = {"preprocess": {"percentiles": ["2", "99.5"], "clip": "true", "chunks": "null",
                          "pyramid_levels": "3"},
           "data": {"spacing": "[2, 0.5, 0.5]", "axes": "zyx",
                    "train": {"images": "null", "labels": "~"}},
           "results": "123"}
    cfg = coerce_strings(raw)
    assert cfg["preprocess"] == {"percentiles": [2, 99.5], "clip": True, "chunks": None,
                                 "pyramid_levels": 3}
    assert cfg["data"]["spacing"] == [2, 0.5, 0.5]
    assert cfg["data"]["axes"] == "zyx" and cfg["results"] == "123"  # strings stay strings
    assert cfg["data"]["train"] == {"images": None, "labels": None}
    # what does not parse is left for validation to report, by key
    with pytest.raises(ConfigError, match=r"config key 'demo\.ndim': 'three' is not of type integer"):
        validate_config(coerce_strings({"demo": {"ndim": "three"}}))


def test_cli_args_spell_numbers_one_way():
    a = cli_args(validate_config({"preprocess": {"percentiles": [1, 99]}}), ["preprocess.percentiles"])
    b = cli_args(validate_config({"preprocess": {"percentiles": [1.0, 99.0]}}), ["preprocess.percentiles"])
    assert a == b == "--percentiles 1.0 99.0"
