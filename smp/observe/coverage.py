"""Which lines of the kernel a run ran, and how often: gcov for the simulated machine.

With ``debug.coverage`` each CPU process counts the lines of the kernel it runs
(``smp.machine.linecount``: ``sys.settrace``, frames of the kernel's own files only, in
every greenlet of the CPU, so every thread on it) and sends the counts with its final
report. The launcher sums them over the CPUs into ``report.json``'s ``coverage`` (file of
the kernel -> [line, count] pairs), and the run directory gets them as people and tools
read them:

* ``<C file>.gcov`` for each line-by-line port the kernel registered with its C
  (``POLICY sources``: ``vm_glue.c.gcov``): the C itself, each line with how often it ran,
  ``#####`` for a line of code that never ran and ``-`` for one that holds no code, as
  ``gcov`` writes it. A C line counts as often as the most-run line of the port that
  ports it; the C file is read from beside its port (``kernel/vm/vm_glue.c``);
* ``coverage.info``: every file of the kernel, in lcov's tracefile format (``genhtml
  coverage.info -o html`` draws it).

A line of code is the first line of a statement that some function runs (not the
module's top level, which ran at import, before any counting); it counts each time the
statement starts, as gcov counts a line. ``smp stress`` sums
the coverage of its runs into the campaign's folder the same way (``merge``). Counting
costs wall time (a Python call per line the kernel runs), not simulated time: a run with
coverage does what it does without (and replays the same).
"""

from __future__ import annotations

import dis
import inspect
import os
import re
import types
from typing import Any, Iterable, Mapping

from smp.machine.linecount import Counts, kernel_root, packed, statements
from smp.machine.sites import c_functions

_RESUME = dis.opmap["RESUME"]
GCOV_SUFFIX = ".gcov"
LCOV_FILE = "coverage.info"


def unpacked(doc: Any) -> Counts:
    """The inverse of ``packed`` (what is not [line, count] pairs is left out)."""
    out: Counts = {}
    for f, pairs in (doc or {}).items() if isinstance(doc, dict) else ():
        lines = out.setdefault(str(f), {})
        for p in pairs if isinstance(pairs, list) else ():
            if isinstance(p, (list, tuple)) and len(p) == 2:
                lines[int(p[0])] = lines.get(int(p[0]), 0) + int(p[1])
    return out


def merge(many: Iterable[Counts]) -> Counts:
    """The counts of several CPUs (or runs) summed."""
    out: Counts = {}
    for counts in many:
        for f, lines in counts.items():
            into = out.setdefault(f, {})
            for n, c in lines.items():
                into[n] = into.get(n, 0) + c
    return out


def code_lines(path: str) -> set[int]:
    """The first lines of the statements of ``path`` that some function runs: the lines
    a run can count (smp.machine.linecount). Not the module's or a class's top level,
    which ran at import; not a comprehension's or a lambda's, which count as the
    statement around them."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    starts = statements(source)
    lines: set[int] = set()
    todo = [c for c in compile(source, path, "exec").co_consts if isinstance(c, types.CodeType)]
    while todo:
        code = todo.pop()
        todo.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
        if code.co_flags & inspect.CO_OPTIMIZED and not code.co_name.startswith("<"):
            # from after the prologue that ends at RESUME (a function whose body is a
            # docstring runs its ``return None`` at the def's line)
            body = code.co_code[::2].index(_RESUME) * 2 + 2
            lines.update(starts.get(n, n) for start, _, n in code.co_lines()
                         if n is not None and start >= body)
    return lines


# a declaration without an initialiser: no code (``struct thread *td;``, ``int i, j;``)
_DECL = re.compile(r"(register\s+)?(struct\s+\w+|unsigned\s+\w+|\w+)(\s*\*|\s)\s*"
                   r"\**\w+(\[\w*\])?(\s*,\s*\**\w+(\[\w*\])?)*;")
_STATEMENTS = {"return", "goto", "break", "continue"}


def c_statements(text: list[str]) -> set[int]:
    """The lines of a C file that can hold a statement: inside a function body, not
    blank, a comment, a preprocessor line, a brace or a declaration without an
    initialiser (a line of the port that ports one of those ports no code of the C)."""
    out: set[int] = set()
    in_comment = False
    in_body = False
    for n, line in enumerate(text, 1):
        code, in_comment = _uncommented(line, in_comment)
        if line.startswith("{"):
            in_body = True
        elif line.startswith("}"):
            in_body = False
        code = code.strip()
        if (not in_body or not code or code.startswith("#") or not code.strip("{}; ")
                or (_DECL.fullmatch(code) and code.split()[0] not in _STATEMENTS)):
            continue
        out.add(n)
    return out


def _uncommented(line: str, in_comment: bool) -> tuple[str, bool]:
    """``line`` without its ``/* */`` comments; whether a comment is still open after it."""
    out = []
    i = 0
    while i < len(line):
        if in_comment:
            j = line.find("*/", i)
            if j < 0:
                return "".join(out), True
            i, in_comment = j + 2, False
        else:
            j = line.find("/*", i)
            if j < 0:
                out.append(line[i:])
                break
            out.append(line[i:j])
            i, in_comment = j + 2, True
    return "".join(out), in_comment


def ported(counts: Mapping[int, int], code: set[int], table: list[int],
           c_text: list[str]) -> tuple[set[int], dict[int, int]]:
    """A port's counts as its C's: the C lines of code that a line of code of the port
    ports, and how often each ran (as often as its most-run line of the port)."""
    statements = c_statements(c_text)
    c_code = {table[n - 1] for n in code if 1 <= n <= len(table)} & statements
    c_counts: dict[int, int] = {}
    for n, c in counts.items():
        if 1 <= n <= len(table) and table[n - 1] in c_code:
            c_counts[table[n - 1]] = max(c_counts.get(table[n - 1], 0), c)
    return c_code, c_counts


def gcov(source: list[str], name: str, code: set[int], counts: Mapping[int, int],
         runs: int) -> str:
    """``source`` annotated as ``gcov`` writes it: count, line number, line."""
    out = [f"{'-':>9}:{0:>5}:Source:{name}", f"{'-':>9}:{0:>5}:Runs:{runs}"]
    for n, text in enumerate(source, 1):
        mark = str(counts[n]) if counts.get(n) else "#####" if n in code else "-"
        out.append(f"{mark:>9}:{n:>5}:{text}")
    return "\n".join(out) + "\n"


def lcov(files: Mapping[str, tuple[set[int], Mapping[int, int]]], test: str) -> str:
    """An lcov tracefile: per file (its path), its lines of code and their counts."""
    out = [f"TN:{test}"]
    for path, (code, counts) in sorted(files.items()):
        out.append(f"SF:{path}")
        out += [f"DA:{n},{counts.get(n, 0)}" for n in sorted(code)]
        out += [f"LH:{sum(1 for n in code if counts.get(n))}", f"LF:{len(code)}",
                "end_of_record"]
    return "\n".join(out) + "\n"


class Coverage:
    """The coverage of a run (or a campaign): its counts against the kernel's lines of
    code, per kernel file and per registered port's C."""

    def __init__(self, counts: Counts, sources: Mapping[str, Any] | None, runs: int = 1,
                 root: str | None = None) -> None:
        self.root = root or kernel_root()
        self.runs = runs
        self.files: dict[str, tuple[set[int], dict[int, int]]] = {}
        for f in sorted(set(counts) | _kernel_files(self.root)):
            path = os.path.join(self.root, f)
            if os.path.isfile(path):
                self.files[f] = (code_lines(path), dict(counts.get(f, {})))
        # the C of each registered port: name, its text, its lines of code, their counts
        self.ports: dict[str, tuple[str, list[str], set[int], dict[int, int]]] = {}
        for port, (c_file, table) in (sources or {}).items():
            c_path = os.path.join(self.root, os.path.dirname(port), c_file)
            if port in self.files and os.path.isfile(c_path):
                with open(c_path, encoding="utf-8", errors="replace") as fh:
                    text = fh.read().splitlines()
                self.ports[port] = (c_file, text, *ported(
                    self.files[port][1], self.files[port][0], list(table), text))

    def write(self, out_dir: str) -> list[str]:
        """Write ``<C file>.gcov`` per port and ``coverage.info``; the paths written."""
        written = []
        for c_file, text, code, counts in self.ports.values():
            path = os.path.join(out_dir, c_file + GCOV_SUFFIX)
            _write(path, gcov(text, c_file, code, counts, self.runs))
            written.append(path)
        path = os.path.join(out_dir, LCOV_FILE)
        _write(path, lcov({os.path.join(self.root, f): v for f, v in self.files.items()},
                          "smp"))
        written.append(path)
        return written

    def lines(self) -> list[str]:
        """What the summary says: per port's C, the share of its lines that ran and the
        functions with lines that never did; the kernel's share; where the files are."""
        out = []
        for c_file, text, code, counts in self.ports.values():
            ran = sum(1 for n in code if counts.get(n))
            out.append(f"coverage: {c_file}: {ran} of {len(code)} lines of code ran "
                       f"({_pct(ran, len(code))}): {c_file}{GCOV_SUFFIX}")
            never = [f"{name} {lost} of {of}" for name, lost, of in _never(text, code, counts)]
            if never:
                out.append(f"coverage: {c_file}: lines that never ran: " + ", ".join(never))
        ran = sum(1 for code, counts in self.files.values() for n in code if counts.get(n))
        total = sum(len(code) for code, _ in self.files.values())
        out.append(f"coverage: the kernel ({len(self.files)} files): {ran} of {total} lines "
                   f"of code ran ({_pct(ran, total)}): {LCOV_FILE}")
        return out


def _kernel_files(root: str) -> set[str]:
    return {os.path.relpath(os.path.join(d, f), root)
            for d, _, names in os.walk(root) for f in names if f.endswith(".py")}


def _never(text: list[str], code: set[int], counts: Mapping[int, int]) -> list[
        tuple[str, int, int]]:
    """Per C function with lines of code that never ran (in the file's order): its name,
    how many never ran, of how many."""
    out = []
    for name, (first, last) in c_functions(text).items():
        mine = [n for n in range(first, last + 1) if n in code]
        lost = sum(1 for n in mine if not counts.get(n))
        if lost:
            out.append((name, lost, len(mine)))
    return out


def _pct(a: int, b: int) -> str:
    return f"{100 * a / b:.0f}%" if b else "-"


def _write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


__all__ = ["Coverage", "c_statements", "code_lines", "gcov", "lcov", "merge", "packed",
           "ported", "unpacked"]
