"""``smp witness RUN_DIR``: the lock order a run learned, as WITNESS shows it, and as a graph.

The machine's WITNESS (smp/machine/witness.py) learns an order between lock *names*,
seeded with 2002's static order; the run's report keeps it (``witness_order``: each lock
and the locks seen taken while it was held), with each lock's class and where it was
last acquired (``locks``) and the reversals it reported (``findings``, detector
``witness``).

Text, as ddb's ``show witness`` (``witness_display()`` of 2002's subr_witness.c):
``Sleep locks:`` then ``Spin locks:``, each a tree printed from its roots, one lock per
line: its level (``%-2d``: the longest chain of locks above it), one space per level, its
name and `` -- last acquired @ file:line``; then ``Locks which were never acquired:``. As in
WITNESS the tree is the order's transitive reduction (an edge a -> c is dropped when a ->
b -> c says it already: ``itismychild()`` prunes it), sleep and spin locks are separate
trees (every sleep lock comes before every spin lock, so edges between the two are not
drawn), and a subtree met a second time is not printed again (`` -- (already
displayed)``, as later FreeBSD does). Reversals are marked on both locks' lines
(`` <- LOR with X``) and listed after the trees with WITNESS's own message.

``--dot``: the same graph in Graphviz DOT: a cluster per class, the reduced order as black
edges, each reversal as a red dashed edge labelled "reversal". If Graphviz's ``dot`` is
installed, an SVG and a PNG are drawn beside the DOT file.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from typing import Any

SLEEP_CLASSES = ("sleep mutex", "sx", "lockmgr")
# smp/machine/witness.py's reversal message (its Witness.acquired writes it)
LOR = re.compile(r"^lock order reversal: (?P<first>.+) -> (?P<second>.+) \(established: ")


class WitnessError(Exception):
    """The report has no lock order to show (the message says why)."""


@dataclasses.dataclass
class LockOrder:
    """The learned order of one run: nodes by class, the reduced edges, reversals."""
    classes: dict[str, str]                       # lock name -> class
    last: dict[str, str]                          # lock name -> last acquired @ site
    acquired: set[str]                            # names acquired at least once
    edges: dict[str, set[str]]                    # the full order, a -> {b taken after a}
    reversals: list[tuple[str, str, str]]         # (first, second, WITNESS's message)

    def is_spin(self, name: str) -> bool:
        return self.classes.get(name, "sleep mutex") not in SLEEP_CLASSES

    def names(self) -> list[str]:
        """Every lock WITNESS knows: lockmgr locks (the vm_map lock) were not checked
        in 2002 and are left out."""
        return sorted(n for n in set(self.classes) | set(self.edges)
                      | {b for bs in self.edges.values() for b in bs}
                      if self.classes.get(n) != "lockmgr")

    def reduced(self) -> dict[str, list[str]]:
        """The transitive reduction within each class (WITNESS's tree), sorted."""
        same = {a: {b for b in bs if self.is_spin(a) == self.is_spin(b) and b != a}
                for a, bs in self.edges.items()}
        out: dict[str, list[str]] = {}
        for a, bs in same.items():
            keep = []
            for b in sorted(bs):
                if not any(_reaches(same, c, b) for c in bs if c != b):
                    keep.append(b)
            out[a] = keep
        return out

    def levels(self, reduced: dict[str, list[str]]) -> dict[str, int]:
        """Each lock's level: the longest chain of locks above it (witness_levelall)."""
        level = dict.fromkeys(self.names(), 0)
        order = _topo(self.names(), reduced)
        for a in order:
            for b in reduced.get(a, []):
                level[b] = max(level[b], level[a] + 1)
        return level

    def lor_partners(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for a, b, _ in self.reversals:
            out.setdefault(a, []).append(b)
            out.setdefault(b, []).append(a)
        return out


def _reaches(g: dict[str, set[str]], a: str, b: str) -> bool:
    seen, stack = {a}, [a]
    while stack:
        x = stack.pop()
        if x == b:
            return True
        for y in g.get(x, ()):
            if y not in seen:
                seen.add(y)
                stack.append(y)
    return False


def _size(g: dict[str, list[str]], a: str) -> int:
    """How many locks are at or below ``a``."""
    seen, stack = {a}, [a]
    while stack:
        for y in g.get(stack.pop(), ()):
            if y not in seen:
                seen.add(y)
                stack.append(y)
    return len(seen)


def _topo(names: list[str], g: dict[str, list[str]]) -> list[str]:
    """A topological order (a cycle, which WITNESS never lets in, is cut where met)."""
    out: list[str] = []
    state: dict[str, int] = {}

    def visit(n: str) -> None:
        if state.get(n):
            return
        state[n] = 1
        for m in g.get(n, []):
            visit(m)
        state[n] = 2
        out.append(n)
    for n in names:
        visit(n)
    return out[::-1]


def lock_order(report: dict[str, Any]) -> LockOrder:
    order = report.get("witness_order")
    if not isinstance(order, dict):
        raise WitnessError("the report has no witness_order (an old report, or not a "
                           "run's report.json)")
    registered = ((report.get("policy") or {}).get("lock_order") or {}).get("classes") or {}
    classes: dict[str, str] = {}
    last: dict[str, str] = {}
    acquired: set[str] = set()
    for row in report.get("locks") or []:
        name = str(row.get("name"))
        if row.get("class"):
            classes[name] = str(row["class"])
        if row.get("last_acquired"):
            last[name] = str(row["last_acquired"])
        if row.get("acquires"):
            acquired.add(name)
    edges = {str(a): {str(b) for b in bs} for a, bs in order.items()}
    for name in {*edges, *(b for bs in edges.values() for b in bs)}:
        if name not in classes:         # never taken: the class the kernel registered
            classes[name] = str(registered.get(name, "sleep mutex"))
    reversals = []
    for f in report.get("findings") or []:
        if f.get("detector") != "witness":
            continue
        m = LOR.match(str(f.get("summary", "")))
        if m:
            reversals.append((m.group("first"), m.group("second"),
                              str(f.get("detail") or f.get("summary"))))
    return LockOrder(classes, last, acquired, edges, reversals)


def show_witness(lo: LockOrder) -> str:
    """The order as ddb's ``show witness`` prints it (see the module docstring)."""
    red = lo.reduced()
    level = lo.levels(red)
    lors = lo.lor_partners()
    has_parent = {b for bs in red.values() for b in bs}
    lines: list[str] = []
    shown: set[str] = set()

    def display(name: str, indent: int) -> None:
        line = f"{level[name]:<2d}{' ' * indent}{name}"
        if name in shown:
            lines.append(line + " -- (already displayed)")
            return
        shown.add(name)
        if name in lo.acquired and name in lo.last:
            line += f" -- last acquired @ {lo.last[name]}"
        elif name not in lo.acquired:
            line += " -- never acquired (static order)"
        if name in lors:
            line += f"  <- LOR with {', '.join(sorted(set(lors[name])))}"
        lines.append(line)
        for child in red.get(name, []):
            display(child, indent + 1)

    for title, spin in (("Sleep locks:", False), ("Spin locks:", True)):
        if lines:
            lines.append("")
        lines.append(title)
        roots = [n for n in lo.names() if lo.is_spin(n) == spin
                 and n not in has_parent and (red.get(n) or n in lo.acquired)]
        roots.sort(key=lambda n: (-_size(red, n), n))      # the biggest tree first
        for root in roots:
            display(root, 0)
    never = [n for n in lo.names() if n not in lo.acquired]
    lines += ["", "Locks which were never acquired:", *never]
    if lo.reversals:
        lines += ["", f"Lock order reversals ({len(lo.reversals)}):"]
        for _, _, msg in lo.reversals:
            lines += msg.splitlines()
    return "\n".join(lines) + "\n"


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_dot(lo: LockOrder, title: str = "lock order") -> str:
    """Graphviz DOT: a cluster per class, the reduced order, reversals in red."""
    red = lo.reduced()
    lines = ["digraph witness {", f"  label={_q(title)};", "  labelloc=t;",
             "  rankdir=TB;", '  node [shape=box, fontname="Helvetica", fontsize=10];',
             '  edge [color="#333333"];']
    for i, (label, spin) in enumerate((("sleep locks", False), ("spin locks", True))):
        names = [n for n in lo.names() if lo.is_spin(n) == spin]
        if not names:
            continue
        lines += [f"  subgraph cluster_{i} {{", f"    label={_q(label)};",
                  '    style=rounded; color="#999999";']
        for n in names:
            extra = ', style=dashed, fontcolor="#777777"' if n not in lo.acquired else ""
            tip = f"{lo.classes.get(n, '?')}; last acquired @ {lo.last[n]}" \
                if n in lo.last else lo.classes.get(n, "?")
            lines.append(f"    {_q(n)} [tooltip={_q(tip)}{extra}];")
        lines.append("  }")
    for a in sorted(red):
        for b in red[a]:
            lines.append(f"  {_q(a)} -> {_q(b)};")
    for a, b, _ in lo.reversals:
        lines.append(f'  {_q(a)} -> {_q(b)} [color="#d62728", fontcolor="#d62728", '
                     f'style=dashed, label="reversal", constraint=false];')
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_dot(dot_path: str, formats: tuple[str, ...] = ("svg", "png"),
               dot: str | None = None) -> list[str]:
    """Draw ``dot_path`` with Graphviz's ``dot`` into files beside it; returns their
    paths (none if ``dot`` is not installed)."""
    exe = dot or shutil.which("dot")
    if exe is None:
        return []
    out = []
    base = dot_path[:-4] if dot_path.endswith(".dot") else dot_path
    for fmt in formats:
        path = f"{base}.{fmt}"
        subprocess.run([exe, f"-T{fmt}", dot_path, "-o", path], check=True, timeout=60,
                       capture_output=True)
        out.append(path)
    return out


__all__ = ["LockOrder", "WitnessError", "lock_order", "show_witness", "to_dot", "render_dot"]
