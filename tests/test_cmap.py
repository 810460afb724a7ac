"""The port's line table (smp.hunt.cmap): up to date with the port, and right where the
two files can be checked by eye."""

from __future__ import annotations

import pathlib
import re

import pytest

from smp.hunt import cmap

pytestmark = pytest.mark.quick

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_generated_table_is_up_to_date() -> None:
    """A change of kernel/vm/vm_glue.py that moves lines needs ``python -m smp.hunt.cmap``."""
    # this tree's files: pytest in a clone runs against an installed smp, if there is one,
    # and may be of another version
    for path, text in cmap.generate(ROOT).items():
        assert (ROOT / path).read_text() == text, (
            f"{path} is stale: run python -m smp.hunt.cmap")


def test_a_statement_names_its_own_line_of_the_c() -> None:
    """Lines that are the same statement in both files map onto each other: every
    ``panic("...")`` of the port maps to the C line with the same message."""
    from smp.kernel.vm import vm_glue_lines
    py = (ROOT / "kernel/vm/vm_glue.py").read_text().splitlines()
    c = (ROOT / "kernel/vm/vm_glue.c").read_text().splitlines()
    checked = 0
    for n, line in enumerate(py, 1):
        m = re.search(r'panic\("([^"%{]+)', line)
        if not m:
            continue
        cline = c[vm_glue_lines.LINES[n - 1] - 1]
        assert m.group(1)[:20] in cline, (n, line, cline)
        checked += 1
    assert checked >= 3


def test_a_reordered_loop_and_a_branch_not_compiled_are_named_right() -> None:
    """``for p in FOREACH_PROC_IN_SYSTEM()`` ports the C's ``FOREACH_PROC_IN_SYSTEM(p) {``
    (not the ``sx_slock`` before it), and no line of the port names a line of the
    ``#ifdef NO_SWAPPING`` branch: faultin's ``if`` is the one of the ``#else``."""
    from smp.kernel.vm import vm_glue_lines
    py = (ROOT / "kernel/vm/vm_glue.py").read_text().splitlines()
    c = (ROOT / "kernel/vm/vm_glue.c").read_text().splitlines()
    loops = [n for n, line in enumerate(py, 1) if "in FOREACH_PROC_IN_SYSTEM()" in line]
    assert len(loops) >= 2
    for n in loops:
        assert c[vm_glue_lines.LINES[n - 1] - 1].strip() == "FOREACH_PROC_IN_SYSTEM(p) {", n
    ifdef = c.index("#ifdef NO_SWAPPING") + 1
    branch = set(range(ifdef, c.index("#else", ifdef) + 2))
    assert not branch & set(vm_glue_lines.LINES)
    [n] = [n for n, line in enumerate(py, 1)
           if line.strip() == "if (p.p_sflag & PS.PS_INMEM) == 0:"]
    assert c[vm_glue_lines.LINES[n - 1] - 1].strip() == "if ((p->p_sflag & PS_INMEM) == 0) {"


def test_the_table_knows_whether_the_port_changed_since(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel registers the table only for the file it was made from: a port edited
    since (a developer's experiment) would have its C lines named wrong."""
    from smp.kernel.vm import vm_glue_lines
    assert vm_glue_lines.fresh()
    monkeypatch.setattr(vm_glue_lines, "DIGEST", "0" * 64)
    assert not vm_glue_lines.fresh()
