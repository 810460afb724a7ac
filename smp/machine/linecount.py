"""The CPU side of ``debug.coverage``: how often each statement of the kernel ran on a CPU.

``LineCounter`` follows, with ``sys.settrace``, every frame of a file under the kernel's
directory, in the thread that starts it and in all its greenlets (every thread of the
simulated CPU), and counts each statement as it starts, at its first line: as ``gcov``
counts a line, once each time control reaches it. Python reports a line each time the
line number changes, so a statement that spans lines would be reported again for each of
its lines and again on coming back to the first (a call whose arguments fill two lines:
three reports); what counts is a line that begins another statement than the frame's last
one. Comprehensions, generator expressions and lambdas run in frames of their own that
belong to the statement around them: not followed. Frames of other files cost one call of
the global trace function each. What the counts become is smp/observe/coverage.py.
"""

from __future__ import annotations

import ast
import os
import sys
import types
from typing import Any, Callable

Counts = dict[str, dict[int, int]]          # kernel file (relative) -> line -> count


def statements(source: str) -> dict[int, int]:
    """Each line of ``source`` that belongs to a statement -> the statement's first line
    (the innermost statement's; a compound statement owns only its header's lines)."""
    out: dict[int, int] = {}
    for node in ast.walk(ast.parse(source)):          # outer statements before inner ones
        if not isinstance(node, ast.stmt):
            continue
        end = node.end_lineno or node.lineno
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            end = max(node.lineno, body[0].lineno - 1)  # the header: up to its body
        for n in range(node.lineno, end + 1):
            out[n] = node.lineno
    return out


class LineCounter:
    """Counts the statements run of the files under ``root`` in this thread (and its
    greenlets) from ``start()`` to ``stop()``: file -> first line -> count."""

    def __init__(self, root: str) -> None:
        self.root = os.path.join(root, "")
        self._paused = [False]
        # per file: its counts and its lines' statements' first lines, both by line
        # number (lists: the trace functions run at every line); None: not the kernel's
        self._files: dict[str, tuple[list[int], list[int]] | None] = {}

    def start(self) -> None:
        sys.settrace(self._trace_function())

    def stop(self) -> Counts:
        """Stop counting; the counts so far."""
        sys.settrace(None)
        return {os.path.relpath(fn, self.root): {n: c for n, c in enumerate(found[0]) if c}
                for fn, found in sorted(self._files.items()) if found is not None}

    def uncounted(self, func: Callable[[], Any]) -> Callable[[], Any]:
        """``func``, its calls into the kernel not counted (what runs at the host's pace,
        not the machine's: a replay would count them differently)."""
        paused = self._paused

        def call() -> Any:
            paused[0] = True
            try:
                return func()
            finally:
                paused[0] = False
        return call

    def _trace_function(self) -> Callable[..., Any]:
        """The global trace function: each frame of a kernel function gets a counter of
        its own (it remembers the statement it is in). Locals, not attributes: it runs
        at every call of the process."""
        files, load, paused, unseen = self._files, self._file, self._paused, object()

        def call(frame: types.FrameType, event: str, arg: Any) -> Any:
            code = frame.f_code
            found = files.get(code.co_filename, unseen)
            if found is unseen:
                found = load(code.co_filename)
            if found is None or paused[0] or code.co_name[0] == "<":
                return None
            counts, starts = found          # type: ignore[misc]
            last = 0

            def line(frame: types.FrameType, event: str, arg: Any) -> Any:
                nonlocal last
                if event == "line":
                    first = starts[frame.f_lineno]
                    if first != last:
                        last = first
                        counts[first] += 1
                return line
            return line
        return call

    def _file(self, fn: str) -> tuple[list[int], list[int]] | None:
        found = None
        if fn.startswith(self.root):
            with open(fn, encoding="utf-8") as f:
                source = f.read()
            size = source.count("\n") + 2
            first = statements(source)
            found = ([0] * size, [first.get(n, n) for n in range(size)])
        self._files[fn] = found
        return found


def packed(counts: Counts) -> dict[str, list[list[int]]]:
    """``counts`` as report.json and the wire keep it: file -> sorted [line, count] pairs."""
    return {f: sorted([n, c] for n, c in lines.items()) for f, lines in sorted(counts.items())}


def kernel_root() -> str:
    """The directory of the kernel's files, as their code objects name them."""
    from smp import kernel
    return os.path.dirname(kernel.__file__)


__all__ = ["Counts", "LineCounter", "kernel_root", "packed", "statements"]
