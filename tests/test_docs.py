"""What a reader needs is in the repository: the README, FINDINGS.md and docs/ link to
nothing outside it (issue 16: the README sent readers to ../shared/DESIGN.md), and every
relative link resolves to a file of the repository."""

from __future__ import annotations

import re

import pytest

import helpers

pytestmark = pytest.mark.quick

DOCS = ["README.md", "FINDINGS.md", *sorted(str(p.relative_to(helpers.REPO))
                                         for p in (helpers.REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("doc", DOCS)
def test_links_stay_in_the_repository_and_resolve(doc: str) -> None:
    path = helpers.REPO / doc
    text = path.read_text()
    assert "../shared" not in text, doc
    for target in LINK.findall(text):
        if re.match(r"[a-z]+://", target):
            continue
        resolved = (path.parent / target).resolve()
        assert helpers.REPO.resolve() in resolved.parents, f"{doc}: {target} leaves the repo"
        assert resolved.exists(), f"{doc}: {target} does not exist"


def test_the_docs_index_lists_every_copy_with_where_it_came_from() -> None:
    index = (helpers.REPO / "docs" / "README.md").read_text()
    for name in ("DESIGN.md", "FREEBSD.md", "TRANSPORT.md", "seed/vm_glue.c"):
        assert f"]({name})" in index, name
        assert (helpers.REPO / "docs" / name).is_file()
    for name in ("DESIGN.md", "FREEBSD.md", "TRANSPORT.md"):
        first = (helpers.REPO / "docs" / name).read_text().splitlines()[0]
        assert first.startswith("<!-- A copy of the project's shared "), name
