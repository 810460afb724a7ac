"""Fail points, after FreeBSD's fail(9): named places where a guard of the code can be
switched off, to prove that the tests catch what the guard prevents.

Each race guard of vm_glue.c is declared here once, by the code that holds it, with a
one-line description; ``smp failpoints`` lists them. A run switches guards off with
``debug.fail_points = ["NAME", ...]`` in its config or ``--fail-point NAME``. Ported code
asks ``guard(NAME)``, which is true while the guard is in force::

    if p.p_state == PRS_NEW and guard("swapout_procs_prs_new"):
        ...skip the process in creation...

Switching one off changes only that guard.
"""

from __future__ import annotations

import dataclasses

from smp.kernel.machine import cpu as md


@dataclasses.dataclass(frozen=True)
class FailPoint:
    name: str
    description: str


_declared: dict[str, FailPoint] = {}
_off: frozenset[str] = frozenset()


def FAIL_POINT_DEFINE(name: str, description: str) -> str:
    _declared[name] = FailPoint(name, description)
    return name


def fail_points() -> list[FailPoint]:
    """Every declared fail point, by name: those of the modules imported so far (import
    ``smp.kernel.conf`` for all of them)."""
    return sorted(_declared.values(), key=lambda f: f.name)


def configure(names: tuple[str, ...] | list[str]) -> None:
    """Switch the named guards off (after checking the names exist)."""
    global _off
    known = {f.name for f in fail_points()}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown fail point {unknown[0]!r} (known: {', '.join(sorted(known))})")
    _off = frozenset(names)


def guard(name: str) -> bool:
    """True while the guard ``name`` is in force; False when a fail point switched it off
    (and then the case it let by is counted: ``failpoint_<name>`` in report.json)."""
    if name in _off:
        md.pcpu.count(f"failpoint_{name}")
        return False
    return True
