"""The documentation stays navigable and complete: every relative link in README.md and docs/*.md
(CONTRIBUTING.md and CHANGELOG.md too) points to an existing file, and to an existing heading
when it names one; every setting is in the settings table of docs/configuration.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted([ROOT / "README.md", ROOT / "CONTRIBUTING.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])
# [text](target) outside code; images too. Targets with a scheme (http:, mailto:) are not files.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _prose(text: str) -> str:
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading slugs: lower case, punctuation dropped, spaces to hyphens."""
    slugs = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", markdown), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        slugs.add(slug)
    return slugs


def _broken_links(doc: Path) -> list[str]:
    broken = []
    for target in LINK.findall(_prose(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):
            continue
        path_part, _, fragment = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{target}: no file {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
        elif fragment and path.suffix == ".md" and fragment not in _anchors(path.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{fragment} in {path.name}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(doc):
    assert _broken_links(doc) == [], f"{doc.relative_to(ROOT)} has broken links"


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "there.md").write_text("# Here it is\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](there.md#here-it-is) [gone](missing.md) [bad](there.md#nowhere) "
                   "[web](https://example.org/x.md) `[code](nope.md)`\n```\n[fenced](nope.md)\n```\n")
    assert [b.split(":")[0] for b in _broken_links(doc)] == ["missing.md", "there.md#nowhere"]


def test_every_setting_is_documented():
    from tasks.settings import Region, Settings

    table = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    missing = [f"XCO2_{name.upper()}" for name in Settings.model_fields
               if name != "region" and f"XCO2_{name.upper()}" not in table]
    missing += [f"XCO2_REGION__{name.upper()}" for name in Region.model_fields
                if f"__{name.upper()}" not in table]
    assert missing == [], "settings missing from docs/configuration.md"
