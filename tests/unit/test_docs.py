"""The documentation cannot go stale on what the code holds: the Layout section of
docs/development.md names every module of the project's packages, and the README stays a page a
person reads in five minutes (issue 31)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("commandline", "contract", "trainer", "serving", "tools")


def layout() -> str:
    text = (REPO / "docs" / "development.md").read_text()
    return text[text.index("## Layout"):]


def test_the_layout_names_every_module():
    named = set(re.findall(r"[\w/]*?([a-z_0-9]+\.py)\b", layout()))
    missing = sorted(str(p.relative_to(REPO)) for package in PACKAGES
                     for p in (REPO / package).rglob("*.py")
                     if p.name not in ("__init__.py", "__main__.py") and p.name not in named
                     and "__pycache__" not in p.parts)
    assert not missing, f"docs/development.md, Layout, does not name: {missing}"


def test_the_readme_is_short_and_links_every_page():
    readme = (REPO / "README.md").read_text()
    assert readme.count("\n") <= 200
    pages = {p.name for p in (REPO / "docs").glob("*.md")}
    linked = set(re.findall(r"\(docs/([\w-]+\.md)", readme))
    assert pages <= linked, sorted(pages - linked)
