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
    for name in ("DESIGN.md", "FREEBSD.md", "TRANSPORT.md", "../kernel/vm/vm_glue.c"):
        assert f"]({name})" in index, name
        assert (helpers.REPO / "docs" / name).is_file()
    for name in ("DESIGN.md", "FREEBSD.md", "TRANSPORT.md"):
        first = (helpers.REPO / "docs" / name).read_text().splitlines()[0]
        assert first.startswith("<!-- A copy of the project's shared "), name


def _readme_block(after: str) -> list[str]:
    """The lines of the README's first code block after the line ``after``."""
    text = (helpers.REPO / "README.md").read_text().split(after, 1)[1]
    return text.split("```\n", 2)[1].splitlines()


def test_the_readme_sample_summary_is_as_wide_as_smp_prints_it() -> None:
    """smp run's summary is WIDTH columns: a longer line in the README's sample is one
    the tool wraps (its wait note was 83 characters, the tool's two lines)."""
    from smp.observe.summary import WIDTH
    sample = _readme_block("(`smp report RUN_DIR` prints this again):")
    assert sample[0].startswith("cpu pid user") and sample[-1].startswith("ok: ")
    assert [line for line in sample if len(line) > WIDTH] == []


@pytest.mark.parametrize("cmd", ["report", "flame"])
def test_the_synopses_name_every_option_of_report_and_flame(cmd: str) -> None:
    """The README's synopsis and smp/cli.py's docstring (the other commands' are
    abridged there, and say where the rest is)."""
    import smp.cli
    sub = smp.cli._parser()._subparsers._group_actions[0].choices[cmd]  # type: ignore
    opts = [o for a in sub._actions for o in a.option_strings if o not in ("-h", "--help")]
    readme = (helpers.REPO / "README.md").read_text().split("## Running machines", 1)[1]
    for where, text in (("README.md", readme), ("smp/cli.py", smp.cli.__doc__ or "")):
        line = re.search(rf"^    smp {cmd} RUN_DIR.*(?:\n {{8,}}\S.*)*", text, re.M)
        assert line, f"{where}: no synopsis of smp {cmd}"
        assert [o for o in opts if o not in line.group(0)] == [], f"{where}: {line.group(0)}"
