"""Callouts: functions to run a number of ticks from now, after FreeBSD ``kern/kern_timeout.c``.

PORT: FreeBSD 5.0 had one callout wheel, run by softclock under Giant. Here each CPU keeps
its own queue in its per-CPU data, and ``softclock`` runs the due entries from
``hardclock``, in interrupt context on that CPU; only non-blocking work may be scheduled
this way (``endtsleep``), anything that sleeps runs in a kernel thread instead. A thread is
pinned to its CPU, so the timeout of its sleep always fires where it sleeps.

Entries are ``(tick, priority, seq, desc)``-ordered (STYLE.md practice 8), so two callouts
due on the same tick run in the same order every time.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any, Callable


class Callout:
    __slots__ = ("when", "fn", "arg", "desc", "active")

    def __init__(self) -> None:
        self.when = 0
        self.fn: Callable[[Any], None] | None = None
        self.arg: Any = None
        self.desc = ""
        self.active = False


class CalloutWheel:
    def __init__(self) -> None:
        self.queue: list[tuple[int, int, int, Callout]] = []
        self.seq = itertools.count()
        self.fired = 0

    def reset(self, c: Callout, now: int, ticks: int, fn: Callable[[Any], None], arg: Any,
              desc: str, priority: int = 0) -> None:
        """callout_reset(): (re)arm ``c`` to run ``fn(arg)`` ``ticks`` ticks from ``now``."""
        c.when, c.fn, c.arg, c.desc, c.active = now + max(ticks, 1), fn, arg, desc, True
        heapq.heappush(self.queue, (c.when, priority, next(self.seq), c))

    def stop(self, c: Callout) -> bool:
        """callout_stop(): True if it was pending."""
        was = c.active
        c.active = False
        return was

    def softclock(self, now: int) -> None:
        q = self.queue
        while q and q[0][0] <= now:
            when, _, _, c = heapq.heappop(q)
            if not c.active or c.when != when:
                continue                         # stopped or re-armed since
            c.active = False
            self.fired += 1
            assert c.fn is not None
            c.fn(c.arg)

    def dumpstate(self) -> str:
        pending = sorted((w, c.desc) for w, _, _, c in self.queue if c.active and c.when == w)
        return "callouts: " + (", ".join(f"{d}@{w}" for w, d in pending) or "none")
