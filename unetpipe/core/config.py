"""The configuration: one JSON Schema, used by the workflow and the command line.

The schema (``unetpipe/schemas/config.schema.yaml``, which
``workflow/schemas/config.schema.yaml`` links to) gives every key a type, a
description and a default. :func:`validate_config` fills the defaults and
reports every problem by its dotted key, for example ``data.spacing``.

The command line exposes config keys as options (``preprocess.percentiles``
becomes ``--percentiles``); :func:`add_config_options` builds them from the
schema, :func:`config_from_args` turns them back into a validated config, and
:func:`cli_args` writes a config's values as options, which is how the
Snakemake rules call the command line.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import functools
import json
import os
import shlex
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

SCHEMA_PATH = Path(__file__).parents[1] / "schemas" / "config.schema.yaml"


@functools.cache
def _load_schema(path: str) -> dict:
    with open(path) as f:
        return yaml.safe_load(f)


def load_schema() -> dict:
    """Return the config schema (a fresh copy, safe to modify)."""
    return copy.deepcopy(_load_schema(str(SCHEMA_PATH)))


def _is_object(schema: Mapping) -> bool:
    return schema.get("type") == "object" and "properties" in schema


def key_schema(key: str, schema: Mapping | None = None) -> dict:
    """Return the sub-schema of a dotted key such as ``"data.spacing"``."""
    node = schema if schema is not None else _load_schema(str(SCHEMA_PATH))
    for part in key.split("."):
        try:
            node = node["properties"][part]
        except KeyError:
            raise KeyError(f"no config key {key!r} in the schema") from None
    return node


def leaf_keys(schema: Mapping | None = None, prefix: str = "") -> list[str]:
    """Dotted names of all keys that hold values (not sections), in schema order."""
    node = schema if schema is not None else _load_schema(str(SCHEMA_PATH))
    out = []
    for name, sub in node.get("properties", {}).items():
        dotted = f"{prefix}{name}"
        if _is_object(sub):
            out.extend(leaf_keys(sub, dotted + "."))
        else:
            out.append(dotted)
    return out


def defaults(schema: Mapping | None = None) -> dict:
    """The default config: every key at its schema default."""
    return fill_defaults({}, schema)


def fill_defaults(config: Mapping, schema: Mapping | None = None) -> dict:
    """Return a deep copy of ``config`` with missing keys set to their defaults."""
    schema = schema if schema is not None else _load_schema(str(SCHEMA_PATH))
    out = copy.deepcopy(dict(config))
    _fill(out, schema)
    return out


def _fill(node: dict, schema: Mapping) -> None:
    for name, sub in schema.get("properties", {}).items():
        if name not in node and "default" in sub:
            node[name] = copy.deepcopy(sub["default"])
        if _is_object(sub) and isinstance(node.get(name), dict):
            _fill(node[name], sub)


def get(config: Mapping, key: str) -> Any:
    """Value of a dotted key, e.g. ``get(cfg, "data.train.images")``."""
    node: Any = config
    for part in key.split("."):
        node = node[part]
    return node


def set_key(config: dict, key: str, value: Any) -> None:
    """Set a dotted key, creating sections on the way."""
    *parents, last = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def merge(base: Mapping, update: Mapping) -> dict:
    """Recursively merge ``update`` into a copy of ``base`` (``update`` wins)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _dotted(path: Iterable) -> str:
    return ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in path).replace(
        ".[", "["
    )


def _describe_error(error) -> str:
    """One line for a jsonschema error, naming the dotted key."""
    where = _dotted(error.absolute_path)
    if error.validator == "additionalProperties":
        known = list(error.schema.get("properties", {}))
        extra = [k for k in error.instance if k not in known]
        lines = []
        for k in extra:
            full = f"{where}.{k}" if where else k
            hint = difflib.get_close_matches(k, known, n=1)
            if hint:
                suggestion = f"{where}.{hint[0]}" if where else hint[0]
                lines.append(f"config key {full!r} is not known (did you mean {suggestion!r}?)")
            else:
                lines.append(f"config key {full!r} is not known; known keys here: {', '.join(known)}")
        return "\n".join(lines)
    if error.validator == "type":
        types = error.validator_value
        types = [types] if isinstance(types, str) else types
        wanted = " or ".join("null" if t == "null" else t for t in types)
        return f"config key {where!r}: {error.instance!r} is not of type {wanted}"
    if error.validator == "enum":
        return f"config key {where!r}: {error.instance!r} is not one of {error.validator_value}"
    if error.validator == "pattern":
        desc = error.schema.get("description", "")
        return f"config key {where!r}: {error.instance!r} is not allowed here. {desc}".strip()
    return f"config key {where!r}: {error.message}"


def _semantic_errors(config: Mapping) -> list[str]:
    """Checks that relate several values, which JSON Schema cannot express well."""
    errors = []

    def at(key):
        try:
            return get(config, key)
        except (KeyError, TypeError):
            return None

    pct = at("preprocess.percentiles")
    if isinstance(pct, list) and len(pct) == 2 and all(isinstance(p, int | float) for p in pct):
        if not pct[0] < pct[1]:
            errors.append(
                f"config key 'preprocess.percentiles': the low percentile ({pct[0]}) "
                f"must be below the high one ({pct[1]})"
            )
    axes = at("data.axes")
    if isinstance(axes, str):
        low = axes.lower()
        if len(set(low)) != len(low):
            errors.append(f"config key 'data.axes': {axes!r} repeats an axis")
        elif not {"y", "x"} <= set(low):
            errors.append(f"config key 'data.axes': {axes!r} must contain y and x")
    ndim = at("demo.ndim")
    for key in ("demo.train_shape", "demo.predict_shape", "demo.spacing"):
        value = at(key)
        if isinstance(value, list) and ndim in (2, 3) and len(value) != ndim:
            errors.append(
                f"config key {key!r}: {value} has {len(value)} values but demo.ndim is {ndim}"
            )
    for section in ("train", "val"):
        images, labels = at(f"data.{section}.images"), at(f"data.{section}.labels")
        if images not in (None, [], "") and labels in (None, [], ""):
            errors.append(
                f"config key 'data.{section}.labels': {section} images need instance labels"
            )
    return errors


def validate_config(config: Mapping | None, *, schema: Mapping | None = None) -> dict:
    """Validate a config and return it with every default filled in.

    Parameters
    ----------
    config : mapping or None
        A (possibly partial) config, as loaded from YAML. None means empty.
    schema : mapping, optional
        The JSON Schema; the package's schema by default.

    Returns
    -------
    dict
        A new, complete config.

    Raises
    ------
    ConfigError
        Naming each bad key, one per line: unknown keys (with a suggestion),
        wrong types, values out of range.
    """
    import jsonschema

    schema = schema if schema is not None else _load_schema(str(SCHEMA_PATH))
    if config is None:
        config = {}
    if not isinstance(config, Mapping):
        raise ConfigError(f"the config must be a mapping of keys to values, not {type(config).__name__}")
    filled = fill_defaults(config, schema)
    validator = jsonschema.Draft202012Validator(schema)
    problems = sorted(validator.iter_errors(filled), key=lambda e: list(map(str, e.absolute_path)))
    messages = [_describe_error(e) for e in problems]
    if not messages:
        messages = _semantic_errors(filled)
    if messages:
        raise ConfigError("\n".join(messages))
    return filled


def coerce_strings(config: Mapping, schema: Mapping | None = None) -> dict:
    """Turn strings into the numbers, booleans, nulls or lists the schema expects.

    Snakemake reads ``--config key='{a: [1, 2]}'`` with YAML's base loader,
    which leaves every nested value a string; this restores their types
    wherever the schema does not expect a string. Values of other types, and
    strings that do not parse, are left for validation to report.
    """
    schema = schema if schema is not None else _load_schema(str(SCHEMA_PATH))
    return _coerce(copy.deepcopy(dict(config)), schema)


def _coerce(value: Any, schema: Mapping) -> Any:
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return {k: _coerce(v, props[k]) if k in props else v for k, v in value.items()}
    if isinstance(value, list):
        items = schema.get("items", {})
        return [_coerce(v, items) for v in value]
    if isinstance(value, str):
        types = _types(schema)
        null_literal = value.strip() in ("", "~", "null", "Null", "NULL")
        if "null" in types and null_literal:
            return None
        if "string" in types:
            return value
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError:
            return value
        return _coerce(parsed, schema) if isinstance(parsed, list | dict) else parsed
    return value


def load_config(path: str | os.PathLike | None = None, overrides: Mapping | None = None) -> dict:
    """Read a YAML config file, apply overrides, validate and fill defaults."""
    raw: Any = {}
    if path is not None:
        try:
            with open(path) as f:
                raw = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"{os.fspath(path)}: config file not found") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise ConfigError(f"{os.fspath(path)}: not valid YAML{where}") from None
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{os.fspath(path)}: the config must be a mapping of keys to values")
    if overrides:
        raw = merge(raw, overrides)
    return validate_config(raw)


# --- command-line options from config keys ---------------------------------


def option_name(key: str, *, qualified: bool = False) -> str:
    """The command-line option of a config key: ``demo.n_train`` -> ``--n-train``;
    qualified by its section, ``segment.threshold`` -> ``--segment-threshold``
    (for a command that takes keys of two sections with the same name)."""
    name = key.replace(".", "_") if qualified else key.rsplit(".", 1)[-1]
    return "--" + name.replace("_", "-")


def _types(sub: Mapping) -> list[str]:
    t = sub.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _parse_token(token: str, sub: Mapping) -> Any:
    types = _types(sub)
    if token.lower() in ("null", "none") and "null" in types:
        return None
    if types and set(types) <= {"string", "null"}:
        return token
    try:
        return yaml.safe_load(token)
    except yaml.YAMLError:
        return token


def _parse_option(tokens: list[str], sub: Mapping) -> Any:
    types = _types(sub)
    if "array" not in types:
        return _parse_token(tokens[0], sub)
    if len(tokens) == 1:
        value = _parse_token(tokens[0], sub)
        if value is None or isinstance(value, list):
            return value
        if "string" in types:
            return tokens[0]
    return [_parse_token(t, sub.get("items", {})) for t in tokens]


def _metavar(sub: Mapping) -> str:
    """What an option takes, from its schema: ``{a,b}``, ``INT``, ``NUM``, ``TEXT``."""
    if "enum" in sub:
        return "{" + ",".join("null" if v is None else str(v) for v in sub["enum"]) + "}"
    types = [t for t in _types(sub) if t != "null"]
    names = {"boolean": "{true,false}", "integer": "INT", "number": "NUM", "string": "TEXT"}
    return names.get(types[0], "VALUE") if len(types) == 1 else "VALUE"


def add_config_options(parser: argparse.ArgumentParser, keys: Iterable[str], *,
                       qualified: Iterable[str] = ()) -> None:
    """Add one option per config key, with the schema's description as help;
    the ``qualified`` keys get their section in the option's name."""
    group = parser.add_argument_group("configuration (each option is a config key)")
    seen = {}
    qualified = set(qualified)
    for key in keys:
        sub = key_schema(key)
        opt = option_name(key, qualified=key in qualified)
        if opt in seen:
            raise ValueError(f"options for {seen[opt]!r} and {key!r} collide: {opt}")
        seen[opt] = key
        is_array = "array" in _types(sub)
        default = sub.get("default")
        shown = default if isinstance(default, str) else json.dumps(default)
        group.add_argument(
            opt,
            dest=f"cfg:{key}",
            metavar=_metavar(sub.get("items", {}) if is_array else sub),
            nargs="+" if is_array else None,
            default=argparse.SUPPRESS,
            # argparse formats help with %: a literal percent sign must be doubled
            help=f"{sub.get('description', '')} Config key {key}; "
                 f"default: {shown}.".replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace, base: Mapping | None = None) -> dict:
    """A validated config from a config file (``args.configfile``) and the options.

    Options given on the command line win over the config file, which wins over
    the schema defaults.
    """
    config = load_config(getattr(args, "configfile", None)) if base is None else dict(base)
    updates: dict = {}
    for dest, tokens in vars(args).items():
        if not dest.startswith("cfg:"):
            continue
        key = dest[4:]
        tokens = tokens if isinstance(tokens, list) else [tokens]
        set_key(updates, key, _parse_option(tokens, key_schema(key)))
    return validate_config(merge(config, updates))


def _format_value(value: Any, schema: Mapping) -> list[str]:
    if value is None:
        return ["null"]
    if isinstance(value, bool):
        return ["true" if value else "false"]
    if isinstance(value, list):
        if any(isinstance(v, str) and v.startswith("-") for v in value):
            # items that look like options (sbatch's --gres=...): one YAML list
            return [json.dumps(value)]
        items = schema.get("items", {})
        return [t for v in value for t in _format_value(v, items)] if value else ["[]"]
    if isinstance(value, int | float) and _types(schema) == ["number"]:
        # 1 and 1.0 are the same value: one spelling, so Snakemake sees no change
        return [repr(float(value))]
    return [str(value)]


def cli_args(config: Mapping, keys: Iterable[str], *, qualified: Iterable[str] = ()) -> str:
    """Shell-quoted command-line options that pass these config values on."""
    tokens = []
    qualified = set(qualified)
    for key in keys:
        tokens.append(option_name(key, qualified=key in qualified))
        tokens.extend(_format_value(get(config, key), key_schema(key)))
    return " ".join(shlex.quote(t) for t in tokens)
