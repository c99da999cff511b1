"""Dependency floors: no installed package below a version with a published advisory.

``FLOORS`` is a copy of the table in the project's ``ADVISORIES.md`` (kept here so the test
does not depend on a file outside the repository); when the advisories change, change it
too, and the higher of two floors wins. The tests read the installed versions with
``importlib.metadata`` and ``pyproject.toml`` with ``tomllib``.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"

FLOORS_TABLE = """
| package | floor | advisories below the floor |
| --- | --- | --- |
| starlette | 0.49.1 | CVE-2024-47874; CVE-2025-54121; CVE-2025-62727 |
| fastapi | 0.109.1 | CVE-2024-24762 |
| python-multipart | 0.0.31 | CVE-2024-53981; CVE-2026-42561; CVE-2026-53540 |
| authlib | 1.6.5 | CVE-2024-37568; CVE-2025-59420; CVE-2025-61920; CVE-2025-62706 |
| pyjwt | 2.12.0 | CVE-2022-29217; CVE-2024-53861; CVE-2026-32597 |
| aiohttp | 3.14.1 | CVE-2025-53643; CVE-2025-69223..69230; CVE-2026-34513..34525; GHSAs |
| h11 | 0.16.0 | CVE-2025-43859 |
| httpx | 0.28.1 | seed floor (older httpx pins old anyio/h11) |
| pydantic | 2.11.7 | CVE-2024-3772 |
| uvicorn | 0.35.0 | CVE-2020-7694; CVE-2020-7695 |
| anyio | 4.5.0 | seed floor |
| jinja2 | 3.1.6 | CVE-2024-22195; CVE-2024-34064; CVE-2024-56201; CVE-2024-56326; CVE-2025-27516 |
| black | 24.3.0 | CVE-2024-21503 |
| torch | 2.6.0 | CVE-2025-32434 |
"""


def parse_floors(table: str) -> dict[str, Version]:
    """``{canonical name: floor}`` from a Markdown table whose first two columns they are."""
    floors = {}
    for line in table.strip().splitlines()[2:]:
        name, floor = (cell.strip() for cell in line.strip("|").split("|")[:2])
        floors[canonicalize_name(name)] = Version(floor)
    return floors


FLOORS = parse_floors(FLOORS_TABLE)

#: Installed with the all and dev extras (``make install``), so always checked; the core
#: alone lacks authlib (the oauth extra), as tests/test_extras.py checks.
REQUIRED = [
    "starlette",
    "aiohttp",
    "authlib",
    "h11",
    "httpx",
    "pydantic",
    "uvicorn",
    "anyio",
    "jinja2",
]
REQUIRED += ["fastapi", "python-multipart"]
#: Checked when something pulled them in.
OPTIONAL = ["pyjwt", "black"]
#: Never installed: python-jose is unmaintained (use joserfc); nothing here needs torch.
FORBIDDEN = ["python-jose", "jose", "torch"]


def installed(name: str) -> Version | None:
    try:
        return Version(importlib.metadata.version(name))
    except importlib.metadata.PackageNotFoundError:
        return None


def test_the_copied_table_has_every_floor() -> None:
    assert set(FLOORS) == {canonicalize_name(n) for n in [*REQUIRED, *OPTIONAL, "torch"]}


@pytest.mark.parametrize("name", REQUIRED)
def test_installed_version_is_at_or_above_its_floor(name: str) -> None:
    version = installed(name)
    assert version is not None, f"{name} is not installed"
    floor = FLOORS[canonicalize_name(name)]
    assert version >= floor, f"{name} {version} is below its advisory floor {floor}"


@pytest.mark.parametrize("name", OPTIONAL)
def test_optional_package_if_installed_is_at_or_above_its_floor(name: str) -> None:
    version = installed(name)
    if version is not None:
        floor = FLOORS[canonicalize_name(name)]
        assert version >= floor, f"{name} {version} is below its advisory floor {floor}"


@pytest.mark.parametrize("name", FORBIDDEN)
def test_forbidden_package_is_never_installed(name: str) -> None:
    assert installed(name) is None, f"{name} must not be installed"


def test_no_installed_distribution_requires_a_forbidden_package() -> None:
    forbidden = {canonicalize_name(n) for n in FORBIDDEN}
    offenders = []
    for dist in importlib.metadata.distributions():
        for text in dist.requires or []:
            requirement = Requirement(text)
            # Extras that are not installed do not pull anything in.
            if requirement.marker is not None and "extra" in str(requirement.marker):
                continue
            if canonicalize_name(requirement.name) in forbidden:
                offenders.append(f"{dist.metadata['Name']} -> {text}")
    assert offenders == []


def declared_requirements() -> list[Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts += extra
    return [Requirement(text) for text in texts]


def lower_bound(requirement: Requirement) -> Version | None:
    """The highest lower bound its specifiers set (``>=``, ``>``, ``==``, ``~=``)."""
    bounds = [
        Version(spec.version)
        for spec in requirement.specifier
        if spec.operator in (">=", ">", "==", "~=", "===")
    ]
    return max(bounds, default=None)


def test_pyproject_lower_bounds_are_at_or_above_every_floor() -> None:
    checked = []
    for requirement in declared_requirements():
        name = canonicalize_name(requirement.name)
        assert name not in {canonicalize_name(n) for n in FORBIDDEN}, requirement
        floor = FLOORS.get(name)
        if floor is None:
            continue
        bound = lower_bound(requirement)
        assert bound is not None, f"{requirement}: no lower bound, the floor is {floor}"
        assert bound >= floor, f"{requirement}: lower bound {bound} is below the floor {floor}"
        checked.append(name)
    # The ones the project uses directly are declared (with their bounds) at all.
    assert {
        "starlette",
        "aiohttp",
        "httpx",
        "h11",
        "anyio",
        "pydantic",
        "authlib",
        "uvicorn",
    } <= set(checked)
