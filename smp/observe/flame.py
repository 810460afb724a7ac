"""Lock contention as a flame graph: where threads waited for each lock.

The input is report.json's ``lock_wait_stacks``: one record per (lock, stack) with the
stack of the waiting thread at a contested acquisition (outermost frame first, as the
kernel's CPU side captures it), how many waits came from there (``count``) and the time
they waited (``wait_s``, simulated seconds by the waiting CPU's clock, summed over the
waits):

    {"lock": "Giant", "stack": ["fork_exit", "prog_hog", "mtx_lock"], "count": 3,
     "wait_s": 0.25}

Two outputs:

* **folded stacks**, Brendan Gregg's format (``flamegraph.pl``, speedscope, inferno read
  it): one line per distinct stack, frames joined by ``;``, root first, a space and the
  value. The root frame is the lock, so a flame graph has one tower per lock and, above
  it, the code paths that waited for it. The value is the wait in whole microseconds
  (``--weight count``: the number of waits). ``smp report RUN_DIR --format folded``.
* **an SVG** drawn with matplotlib (already a dependency; its plotting extra when that is
  split off): the same tree as a flame graph, width the value, frames labelled where they
  fit, text kept as text so a browser can search it. ``smp flame RUN_DIR`` writes both
  files into the run directory (``lock_waits.folded``, ``lock_waits.svg``).
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

WEIGHTS = ("wait", "count")


class FlameError(Exception):
    """The report has no lock-wait stacks to draw (the message says why)."""


def _frame(s: Any) -> str:
    """A frame as the folded format allows it: no ``;`` (the separator), no newline."""
    return " ".join(str(s).replace(";", ",").split()) or "?"


def stacks(report: dict[str, Any]) -> list[dict[str, Any]]:
    recs = report.get("lock_wait_stacks")
    if recs is None:
        raise FlameError("the report has no lock_wait_stacks (the kernel of this version "
                         "does not record the stacks of lock waits)")
    if not isinstance(recs, list):
        raise FlameError("lock_wait_stacks is not a list")
    return recs


def folded(records: Iterable[dict[str, Any]], weight: str = "wait") -> list[str]:
    """Folded-stack lines, ``lock;outer;...;inner value``, identical stacks summed, sorted;
    the value is microseconds waited (``weight="wait"``) or waits (``"count"``)."""
    if weight not in WEIGHTS:
        raise ValueError(f"weight must be one of {WEIGHTS}, not {weight!r}")
    sums: dict[str, float] = {}
    for r in records:
        key = ";".join([_frame(r.get("lock")), *(_frame(f) for f in r.get("stack") or [])])
        v = float(r.get("wait_s") or 0) * 1e6 if weight == "wait" else float(r.get("count")
                                                                               or 0)
        sums[key] = sums.get(key, 0.0) + v
    return [f"{k} {round(v)}" for k, v in sorted(sums.items()) if round(v) > 0]


class _Node:
    __slots__ = ("name", "value", "children")

    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0
        self.children: dict[str, _Node] = {}


def tree(lines: Iterable[str]) -> _Node:
    """The call tree of folded lines (root: all)."""
    root = _Node("all")
    for line in lines:
        path, _, value = line.rpartition(" ")
        v = int(value)
        root.value += v
        node = root
        for f in path.split(";"):
            node = node.children.setdefault(f, _Node(f))
            node.value += v
    return root


def _colour(name: str) -> tuple[float, float, float]:
    """flamegraph.pl's warm palette, the same colour for the same frame every time."""
    h = hashlib.blake2b(name.encode(), digest_size=3).digest()
    return (0.8 + 0.2 * h[0] / 255, 0.25 + 0.55 * h[1] / 255, 0.1 * h[2] / 255)


def svg(lines: list[str], path: str, title: str, unit: str = "us waited") -> None:
    """Draw the flame graph of ``lines`` (folded) into the SVG file ``path``."""
    if not lines:
        raise FlameError("no lock waits with a stack to draw")
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    root = tree(lines)
    depth = 0
    boxes: list[tuple[float, int, float, str, int]] = []   # x, level, width, name, value

    def walk(node: _Node, x: float, level: int) -> None:
        nonlocal depth
        depth = max(depth, level)
        for child in sorted(node.children.values(), key=lambda n: n.name):
            boxes.append((x, level, child.value, child.name, child.value))
            walk(child, x, level + 1)
            x += child.value
    walk(root, 0.0, 0)
    total = float(root.value)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig = Figure(figsize=(12, 0.32 * (depth + 2) + 1.0))
        ax = fig.add_axes((0.01, 0.02, 0.98, 0.9))
        ax.set_xlim(0, total)
        ax.set_ylim(0, depth + 1)
        ax.axis("off")
        for x, level, w, name, v in boxes:
            ax.add_patch(Rectangle((x, level), w, 0.95, facecolor=_colour(name),
                                   edgecolor="white", linewidth=0.3))
            chars = int(w / total * 12 * 72 / 6.2)          # ~6 pt per char at 9 pt
            if chars >= 4:
                label = name if len(name) <= chars else name[:chars - 2] + ".."
                ax.text(x + total * 0.002, level + 0.45, label, fontsize=8,
                        va="center", ha="left", clip_on=True)
        fig.suptitle(f"{title} (width: {unit}; {total:,.0f} in all)", fontsize=10)
        fig.savefig(path, format="svg", metadata={"Title": title})


__all__ = ["FlameError", "folded", "stacks", "svg", "tree", "WEIGHTS"]
