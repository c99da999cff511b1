"""The README and the documentation site, beyond what ``mkdocs build --strict`` checks.

``make docs`` fails on a broken link or anchor between pages, a page missing from the nav and a
docstring mkdocstrings cannot render. These tests hold the rest: the README stays a front
door whose links lead somewhere, every ``:::`` reference names a public object, the API
reference lists every root export, and nothing refers to a path outside the repository.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import llm_proxy_mw

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
API = DOCS / "api.md"

#: ``[text](target)``, for links that are not web addresses.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: ``::: dotted.name`` at the start of a line: mkdocstrings' reference to an object.
_REFERENCE = re.compile(r"^::: ([\w.]+)", re.MULTILINE)
#: ``  - Title: page.md`` in mkdocs.yml's nav.
_NAV_PAGE = re.compile(r"^\s+- [^:\n]+: (\S+\.md)$", re.MULTILINE)


def _references() -> list[str]:
    return [
        name
        for page in sorted(DOCS.rglob("*.md"))
        for name in _REFERENCE.findall(page.read_text(encoding="utf-8"))
    ]


def _resolve(dotted: str) -> object:
    """The object ``dotted`` names: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attribute in parts[cut:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(dotted)


def test_the_readme_is_a_front_door_of_at_most_400_lines() -> None:
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= 400, f"README.md has {lines} lines: move reference text to docs/"


def test_every_relative_link_of_the_readme_leads_to_a_file() -> None:
    targets = _LINK.findall(README.read_text(encoding="utf-8"))
    relative = [t for t in targets if not t.startswith(("http://", "https://", "mailto:"))]
    assert relative, "the README links to the docs"
    missing = [t for t in relative if not (ROOT / t.partition("#")[0]).is_file()]
    assert not missing, f"README.md links to missing files: {missing}"


def test_the_nav_lists_every_page_once() -> None:
    listed = _NAV_PAGE.findall(MKDOCS.read_text(encoding="utf-8"))
    pages = sorted(p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md"))
    assert sorted(listed) == pages
    assert len(set(listed)) == len(listed)


@pytest.mark.parametrize("name", _references())
def test_every_reference_names_a_public_object(name: str) -> None:
    assert not any(part.startswith("_") for part in name.split(".")), name
    _resolve(name)


def test_the_api_reference_lists_every_root_export() -> None:
    documented = set(_references())
    missing = [
        name
        for name in llm_proxy_mw.__all__
        if f"llm_proxy_mw.{name}" not in documented
        and getattr(llm_proxy_mw, name).__module__ + f".{name}" not in documented
    ]
    assert not missing, f"add `::: llm_proxy_mw.<name>` to docs/api.md for: {missing}"


#: Paths of the machine the project was built on; a user of the project has neither.
OUTSIDE = ("../" + "shared", "/work" + "/")
SCANNED = ["README.md", "mkdocs.yml", "Makefile", "pyproject.toml", ".ci/run"]
SCANNED_TREES = ["docs", "llm_proxy_mw", "examples", "benchmarks", "tests"]


def test_nothing_refers_to_a_path_outside_the_repository() -> None:
    files = [ROOT / name for name in SCANNED]
    files += [
        path
        for tree in SCANNED_TREES
        for path in sorted((ROOT / tree).rglob("*"))
        if path.is_file()
        and path.suffix in {".py", ".md", ".toml", ".yaml", ".lua", ".json"}
        and "node_modules" not in path.parts  # what npm installs is not ours
    ]
    found = [
        f"{path.relative_to(ROOT)}: {needle}"
        for path in files
        for needle in OUTSIDE
        if needle in path.read_text(encoding="utf-8")
    ]
    assert not found, found
