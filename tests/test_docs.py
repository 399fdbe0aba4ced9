"""The documentation site: it builds strictly, its internal links resolve, and the
generated reference pages cover every command and every config key.

The site is built once per session into a temporary folder with the project's
``mkdocs.yml`` (``make docs`` builds the same into build/site)."""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from unetpipe import __version__
from unetpipe.cli import build_parser
from unetpipe.core.config import load_schema

ROOT = Path(__file__).resolve().parents[1]
DOC_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_doc_packages() -> list[str]:
    missing = []
    for name in DOC_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    missing = _missing_doc_packages()
    if missing:
        pytest.skip(f"the docs extra is not installed (missing {', '.join(missing)}); "
                    f"pip install -e '.[docs]' or make docs")
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
         str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


class _Page(HTMLParser):
    """The ids a page defines and the addresses it links to (href, src)."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name") and tag != "meta":
                self.ids.add(value)
            elif name in ("href", "src"):
                self.links.append(value)


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def _text(path: Path) -> str:
    """A page's text without tags (entities left as they are)."""
    return re.sub(r"<[^>]+>", "", path.read_text(encoding="utf-8"))


def _target(page: Path, path: str, site: Path) -> Path:
    if path.startswith("/"):
        # root-relative (only 404.html, which servers show at any address, uses them)
        target = (site / unquote(path).lstrip("/")).resolve()
    else:
        target = (page.parent / unquote(path)).resolve() if path else page
    if target.is_dir():
        target = target / "index.html"
    assert target.is_relative_to(site.resolve()), f"{page}: {path} leaves the site"
    return target


@pytest.mark.slow
def test_internal_links_resolve(site):
    pages = {p.resolve(): _parse(p) for p in site.rglob("*.html")}
    assert len(pages) > 10
    broken = []
    for page, parsed in pages.items():
        for link in parsed.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue  # outside the site (https:, mailto:, data:)
            target = _target(page, parts.path, site)
            where = f"{page.relative_to(site.resolve())}: {link}"
            if not target.exists():
                broken.append(f"{where} (no file {target.relative_to(site.resolve())})")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{where} (no anchor #{parts.fragment})")
    assert not broken, "broken links in the built site:\n" + "\n".join(broken)


def _commands(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + name, sub
                yield from _commands(sub, f"{prefix}{name} ")


@pytest.mark.slow
def test_cli_page_names_every_command_and_option(site):
    page = site / "cli" / "index.html"
    ids, text = _parse(page).ids, _text(page)
    commands = list(_commands(build_parser()))
    assert len(commands) >= 14
    for name, sub in commands:
        assert "unetpipe-" + name.replace(" ", "-") in ids, f"no section for unetpipe {name}"
        assert f"unetpipe {name}" in text
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            for option in action.option_strings:
                assert option in text, f"unetpipe {name}: {option} is not on the page"


def _schema_keys(schema, prefix=""):
    for name, sub in schema.get("properties", {}).items():
        yield prefix + name, sub
        yield from _schema_keys(sub, f"{prefix}{name}.")


@pytest.mark.slow
def test_config_page_names_every_schema_key(site):
    page = site / "configuration" / "index.html"
    ids, text = _parse(page).ids, _text(page)
    keys = [key for key, _ in _schema_keys(load_schema())]
    assert len(keys) > 100
    for key in keys:
        assert key in ids, f"no entry for config key {key}"
        assert key in text
    # a leaf key shows its default and the options that set it
    html = page.read_text(encoding="utf-8")
    entry = html[html.index('id="predict.block"'):html.index('id="predict.halo"')]
    assert "Default" in entry and "--block" in entry and "unetpipe predict" in entry


@pytest.mark.slow
def test_api_page_renders_every_object(site):
    wanted = re.findall(r"^::: (\S+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert "unetpipe.weights.separation_weight_map" in wanted
    ids = _parse(site / "api" / "index.html").ids
    missing = [name for name in wanted if name not in ids]
    assert not missing, f"not rendered on the API page: {missing}"


def test_version_has_one_source():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    attr = project["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "unetpipe.__version__"
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert citation["cff-version"] == "1.2.0"
    if "version" in citation:
        assert str(citation["version"]) == __version__
