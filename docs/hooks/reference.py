"""mkdocs hook: the command-line and configuration reference pages, generated at build time.

``docs/cli.md`` holds the marker ``<!-- unetpipe:cli -->`` and
``docs/configuration.md`` the marker ``<!-- unetpipe:config -->``; this hook
replaces them with Markdown made from the argparse parser
(:func:`unetpipe.cli.build_parser`) and from the config schema
(:func:`unetpipe.core.config.load_schema`), so the pages cannot drift from the
code. ``python docs/hooks/reference.py cli|config`` prints what it generates.
The footer names the version, ``unetpipe.__version__``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

# the checkout's package, as the workflow does (common.smk), not another installed copy
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from unetpipe import __version__
from unetpipe.cli import build_parser
from unetpipe.core.config import load_schema

CLI_MARKER = "<!-- unetpipe:cli -->"
CONFIG_MARKER = "<!-- unetpipe:config -->"
CONFIG_PAGE = "configuration.md"
# the usage lines wrap at this width whatever the terminal's (a code block's width)
WIDTH = 78


def on_config(config, **kwargs):
    # the version from its one source, not repeated in mkdocs.yml
    config["copyright"] = f"unetpipe {__version__}. {config['copyright'] or ''}".strip()
    return config


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown(build_parser()))
    if CONFIG_MARKER in markdown:
        markdown = markdown.replace(CONFIG_MARKER,
                                    config_markdown(load_schema(), build_parser()))
    return markdown


def text(value: str) -> str:
    """Plain text (a help string, a schema description) as Markdown that shows it as
    is, except that text between a pair of backticks shows as code, as it is meant."""
    parts = value.split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: all of it is plain text
        parts = [value]
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append(code(part))
            continue
        part = part.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        for char in "\\`*_[]":
            part = part.replace(char, "\\" + char)
        out.append(part)
    return "".join(out)


def code(value: str) -> str:
    """A code span holding ``value`` (which may hold backticks)."""
    fence = "``" if "`" in value else "`"
    pad = " " if value.startswith("`") or value.endswith("`") else ""
    return f"{fence}{pad}{value}{pad}{fence}"


# ---------------------------------------------------------------- command line


def commands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """``(name, help, parser)`` of every subcommand, nested ones included
    (``report overlay``), in the order ``unetpipe --help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub
                for child, child_help, grandchild in commands(sub):
                    yield f"{name} {child}", child_help, grandchild


def _formatter(parser: argparse.ArgumentParser) -> argparse.HelpFormatter:
    return parser.formatter_class(prog=parser.prog, width=WIDTH)


def _usage(parser: argparse.ArgumentParser) -> str:
    fmt = _formatter(parser)
    fmt.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups)
    return fmt.format_help().strip()


def _arguments(parser: argparse.ArgumentParser) -> list[str]:
    """One Markdown list per argument group of ``parser``, under the group's title."""
    fmt = _formatter(parser)
    out = []
    for group in parser._action_groups:
        actions = [a for a in group._group_actions
                   if a.help is not argparse.SUPPRESS
                   and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)]
        if not actions:
            continue
        title = (group.title or "arguments")
        out.append(f"**{text(title[0].upper() + title[1:])}**\n")
        for action in actions:
            invocation = fmt._format_action_invocation(action)
            line = f"- {code(invocation)}"
            if action.help:
                line += f": {text(fmt._expand_help(action))}"
            if action.dest.startswith("cfg:"):
                key = action.dest[4:]
                line += f" See [{code(key)}]({CONFIG_PAGE}#{key})."
            out.append(line)
        out.append("")
    return out


def cli_markdown(parser: argparse.ArgumentParser) -> str:
    """The reference of every command of ``parser`` as Markdown (level-2 headings)."""
    lines = ["## `unetpipe`", "", text(parser.description or ""), "",
             "```text", _usage(parser), "```", ""]
    lines += _arguments(parser)
    lines += [text(parser.epilog or ""), ""]
    lines += ["| command | what it does |", "| --- | --- |"]
    for name, helptext, _ in commands(parser):
        anchor = "unetpipe-" + name.replace(" ", "-")
        lines.append(f"| [{code('unetpipe ' + name)}](#{anchor}) | {text(helptext)} |")
    lines.append("")
    for name, helptext, sub in commands(parser):
        anchor = "unetpipe-" + name.replace(" ", "-")
        lines += [f"## `unetpipe {name}` {{#{anchor}}}", "",
                  text(sub.description or helptext), "",
                  "```text", _usage(sub), "```", ""]
        lines += _arguments(sub)
        if sub.epilog:
            lines += [text(sub.epilog), ""]
    return "\n".join(lines)


# --------------------------------------------------------------- configuration


def _is_section(sub: Mapping) -> bool:
    return sub.get("type") == "object" and "properties" in sub


def schema_keys(schema: Mapping, prefix: str = "") -> Iterator[tuple[str, Mapping]]:
    """``(dotted key, sub-schema)`` of every key, sections included, in schema order."""
    for name, sub in schema.get("properties", {}).items():
        key = f"{prefix}{name}"
        yield key, sub
        if _is_section(sub):
            yield from schema_keys(sub, key + ".")


def _types(sub: Mapping) -> list[str]:
    t = sub.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def _type_text(sub: Mapping) -> str:
    names = []
    for t in _types(sub):
        if t == "array" and "items" in sub:
            items = _types(sub["items"])
            names.append("array of " + " or ".join(items) if items else "array")
        else:
            names.append(t)
    return " or ".join(names) or "any"


def _value(value) -> str:
    return code(json.dumps(value))


def _limits(sub: Mapping) -> list[str]:
    words = []
    if "enum" in sub:
        words.append("one of " + ", ".join(_value(v) for v in sub["enum"]))
    if "const" in sub:
        words.append("exactly " + _value(sub["const"]))
    for name, sign in (("minimum", ">="), ("exclusiveMinimum", ">"),
                       ("maximum", "<="), ("exclusiveMaximum", "<")):
        if name in sub:
            words.append(f"{text(sign)} {sub[name]}")
    if "minItems" in sub or "maxItems" in sub:
        low, high = sub.get("minItems"), sub.get("maxItems")
        if low == high:
            words.append(f"{low} items")
        elif high is None:
            words.append(f"at least {low} items")
        elif low is None:
            words.append(f"at most {high} items")
        else:
            words.append(f"{low} to {high} items")
    if sub.get("uniqueItems"):
        words.append("no repeats")
    if "minLength" in sub:
        words.append(f"at least {sub['minLength']} characters")
    if "pattern" in sub:
        words.append(f"matches {code(sub['pattern'])}")
    items = sub.get("items")
    if isinstance(items, Mapping):
        inner = _limits(items)
        if inner:
            words.append("each item " + ", ".join(inner))
    return words


def config_options(parser: argparse.ArgumentParser) -> dict[str, list[tuple[str, str]]]:
    """For every config key, ``(option, command)`` of each command that takes it."""
    out: dict[str, list[tuple[str, str]]] = {}
    for name, _, sub in commands(parser):
        for action in sub._actions:
            if action.dest.startswith("cfg:"):
                out.setdefault(action.dest[4:], []).append((action.option_strings[0], name))
    return out


def config_markdown(schema: Mapping, parser: argparse.ArgumentParser) -> str:
    """Every key of ``schema`` as Markdown: one level-2 heading per top-level
    section, one level-3 heading per key with its type, default, limits,
    description and command-line options."""
    options = config_options(parser)
    lines = []
    for key, sub in schema_keys(schema):
        depth = key.count(".")
        section = _is_section(sub)
        level = "##" if depth == 0 else "###"
        lines += [f"{level} `{key}` {{#{key}}}", ""]
        facts = [f"**Type** {text(_type_text(sub))}"]
        if not section:
            facts.append(f"**Default** {_value(sub.get('default'))}")
        limits = _limits(sub)
        if limits:
            facts.append("**Allowed** " + ", ".join(limits))
        lines += [" · ".join(facts), ""]
        lines += [text(sub.get("description", "")), ""]
        if section:
            children = [k for k, _ in schema_keys(sub, key + ".") if k.count(".") == depth + 1]
            lines += ["Keys: " + ", ".join(f"[{code(k)}](#{k})" for k in children) + ".", ""]
        elif key in options:
            by_option: dict[str, list[str]] = {}
            for option, command in options[key]:
                by_option.setdefault(option, []).append(command)
            uses = "; ".join(
                f"{code(option)} of " + ", ".join(
                    f"[{code('unetpipe ' + c)}](cli.md#unetpipe-{c.replace(' ', '-')})"
                    for c in cmds)
                for option, cmds in by_option.items())
            lines += [f"**Command line** {uses}.", ""]
        else:
            lines += ["**Command line** none: only the workflow uses this key.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "cli"
    if what == "cli":
        print(cli_markdown(build_parser()))
    else:
        print(config_markdown(load_schema(), build_parser()))
