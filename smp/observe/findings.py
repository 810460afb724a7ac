"""What a run found, classified: new failures, and known findings of the 2002 code.

A run's ``report.json`` can show trouble in four places: a panic (a failed KASSERT or
mtx_assert, a fatal trap, or a detector in the server that panics: deadlock, spin), the
invariant checks, the detectors' findings (lock order, unprotected accesses, watchdog,
the kernel's own), and problems of the machine itself (a dead process). ``classify``
turns all of them into one list of :class:`Failure`, each marked known when it matches an
entry of the registry ``known_findings.toml`` (explained in FINDINGS.md): the same
detector, a summary the entry's pattern finds, and, for an entry pinned to its statements
(``where``), a site that is one of them: the function and the statement at the site's
line, read from the kernel's source (:func:`statement_at`), so that a line number that
moves does not unpin it and the same fields touched by another statement are new.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import re
import tomllib
from typing import Any

from smp.machine.sites import annotate


@dataclasses.dataclass(frozen=True)
class KnownFinding:
    id: str
    detector: str
    match: re.Pattern[str]
    # the statements it is about: (kernel file, function, statement); empty: any site
    where: tuple[tuple[str, str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Failure:
    detector: str
    summary: str
    sites: tuple[str, ...]
    known: str | None = None          # the id of the known finding it matches
    op: int | None = None             # the machine's operation it was found at (--until)
    panic: bool = False               # the run's panic (a detector's, or the kernel's)


def _where(text: str) -> tuple[str, str, str]:
    """``"vm/vm_glue.py swapout: TD_SET_SWAPPED(td)"`` -> (file, function, statement)."""
    head, sep, stmt = text.partition(": ")
    path, _, func = head.partition(" ")
    if not sep or not path or not func or not stmt:
        raise ValueError(f"known_findings.toml: where {text!r} is not "
                         f"'FILE FUNCTION: STATEMENT'")
    return path, func, _norm(stmt)


def load_known() -> list[KnownFinding]:
    text = importlib.resources.files("smp.observe").joinpath("known_findings.toml").read_text()
    out = []
    for e in tomllib.loads(text).get("finding", []):
        out.append(KnownFinding(str(e["id"]), str(e["detector"]), re.compile(str(e["match"])),
                                tuple(_where(str(w)) for w in e.get("where", []))))
    return out


# -- sites as statements -------------------------------------------------------------------
def _norm(stmt: str) -> str:
    """A statement's text as Python prints it back (comments out, spacing and line breaks
    its own), so that a reformatted statement is still the same one."""
    try:
        return ast.unparse(ast.parse(stmt.strip()))
    except SyntaxError:
        return " ".join(stmt.split())


Spans = tuple[list[tuple[int, int, str]], list[tuple[int, int, str]]]
_parsed: dict[str, Spans | None] = {}


def statements_of(src: str) -> Spans:
    """(functions, statements) of a kernel source, each as (first line, last line, name or
    text): every simple statement, and the condition of each ``if`` and ``while``."""
    funcs, stmts = [], []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            funcs.append((node.lineno, node.end_lineno or node.lineno, node.name))
        elif isinstance(node, (ast.If, ast.While)):          # the test of a compound
            t = node.test
            stmts.append((t.lineno, t.end_lineno or t.lineno, ast.unparse(t)))
        elif isinstance(node, ast.stmt) and not isinstance(
                node, (ast.ClassDef, ast.For, ast.With, ast.Try)):
            stmts.append((node.lineno, node.end_lineno or node.lineno, ast.unparse(node)))
    return funcs, stmts


def _kernel_file(path: str) -> Spans | None:
    """The spans of ``kernel/<path>``, parsed once; None if there is no such file."""
    if path not in _parsed:
        try:
            _parsed[path] = statements_of(
                importlib.resources.files("smp.kernel").joinpath(path).read_text())
        except (OSError, SyntaxError, ValueError):
            _parsed[path] = None
    return _parsed[path]


def statement_at(site: str) -> tuple[str, str, str] | None:
    """The (file, function, statement) of a kernel site ``file:line``: the innermost
    function and simple statement (or condition) that span the line. A known finding is
    pinned to these, not to the line number, which moves when a comment is added."""
    path, sep, line = site.split(" (", 1)[0].rpartition(":")   # "... (vm_glue.c:M)"
    if not sep or not line.isdigit():
        return None
    parsed = _kernel_file(path)
    if parsed is None:
        return None
    n = int(line)
    funcs, stmts = parsed
    inner = [f for f in funcs if f[0] <= n <= f[1]]
    func = max(inner, key=lambda f: f[0])[2] if inner else ""
    spans = [s for s in stmts if s[0] <= n <= s[1]]
    if not spans:
        return None
    stmt = min(spans, key=lambda s: (s[1] - s[0], -s[0]))[2]        # the innermost
    return path, func, stmt


def _match(known: list[KnownFinding], detector: str, summary: str,
           sites: tuple[str, ...] = ()) -> str | None:
    for k in known:
        if k.detector != detector or not k.match.search(summary):
            continue
        if k.where and not any(statement_at(s) in k.where for s in sites):
            continue
        return k.id
    return None


def grouped(lines: list[str]) -> list[str]:
    """Lines said again and again (by each CPU at each check: ``cpu1: U-area of pid 35
    reads pid 0``) once each, in the order first said, with who said them how often."""
    said: dict[str, list[str]] = {}
    for line in map(str, lines):
        m = re.match(r"(cpu\d+): (.*)", line, re.S)
        who, text = m.groups() if m else ("", line)
        said.setdefault(text, []).append(who)
    out = []
    for text, who in said.items():
        cpus = sorted({w for w in who if w}, key=lambda w: int(w[3:]))
        if len(who) == 1:
            out.append(f"{who[0]}: {text}" if who[0] else text)
        else:
            out.append(f"{text} ({', '.join(cpus) + '; ' if cpus else ''}{len(who)} times)")
    return out


def tag_known(findings: list[dict[str, Any]],
              known: list[KnownFinding] | None = None) -> None:
    """Each finding of a report that is a known finding gets its id (``known: "F2"``), so
    that whoever reads report.json can tell the known from the new."""
    known = load_known() if known is None else known
    for f in findings:
        kid = _match(known, str(f.get("detector", "?")), str(f.get("summary", "")),
                     tuple(f.get("sites") or ()))
        if kid is not None:
            f["known"] = kid


def classify(report: dict[str, Any], known: list[KnownFinding] | None = None) -> list[Failure]:
    """Everything wrong with a run, known findings marked."""
    known = load_known() if known is None else known
    out: list[Failure] = []
    panic = report.get("panic")
    said: set[tuple[str, str]] = set()    # a detector's panic: its finding is the same
    if panic:                             # report (whose sites name their C lines too)
        detector = panic.get("detector") or "panic"
        msg = str(panic.get("message", ""))
        sites = tuple(s for s in [panic.get("site")] if s)
        op = panic.get("op")
        out.append(Failure(detector, msg, sites, _match(known, detector, msg, sites),
                           op if isinstance(op, int) and op > 0 else None, panic=True))
        said = {(detector, msg),
                (detector, annotate(msg, (report.get("policy") or {}).get("sources")))}
    for line in grouped(report.get("invariants") or []):
        out.append(Failure("invariant", line, (), _match(known, "invariant", line)))
    for f in report.get("findings") or []:
        det = str(f.get("detector", "?"))
        summary = str(f.get("summary", ""))
        if (det, summary) in said:
            continue
        sites = tuple(f.get("sites") or ())
        op = f.get("op")
        out.append(Failure(det, summary, sites, _match(known, det, summary, sites),
                           op if isinstance(op, int) and op > 0 else None))
    for p in report.get("problems") or []:
        out.append(Failure("machine", str(p), ()))
    return out
