"""Run queues and thread selection, after FreeBSD ``kern/kern_switch.c`` (4BSD scheduler).

Each CPU has its own run queue in its per-CPU data: a thread never leaves the CPU that
created it (DESIGN.md decision 4), so only that CPU ever dequeues it. Making a thread of
*another* CPU runnable is an IPI to that CPU, which queues it on arrival.

The queue is ordered by priority (lower number first), FIFO within a priority, as 4BSD's
``runq_choose`` picks the first thread of the best non-empty queue.

``td_state`` (a sched_lock field in server memory) says ``TDS_RUNQ`` from the moment
``setrunqueue`` is called, whether the thread is already in the local queue or its IPI is
still on the way; the local queue itself is this CPU's private business.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any

from smp.kernel.machine import cpu as md
from smp.kernel.sys.proc import TDS


class RunQueue:
    def __init__(self) -> None:
        self.heap: list[tuple[int, int, Any]] = []
        self.seq = itertools.count()

    def add(self, lt: Any, pri: int) -> None:
        if lt.on_runq:
            return
        lt.on_runq = True
        lt.runq_since = md.pcpu.ticks
        heapq.heappush(self.heap, (pri, next(self.seq), lt))

    def choose(self) -> Any:
        while self.heap:
            _, _, lt = heapq.heappop(self.heap)
            if lt.on_runq:
                lt.on_runq = False
                return lt
        return None

    def remove(self, lt: Any) -> None:
        lt.on_runq = False                       # lazily dropped by choose()

    def __len__(self) -> int:
        return sum(1 for _, _, lt in self.heap if lt.on_runq)

    def tids(self) -> list[int]:
        return [lt.tid for _, _, lt in sorted(self.heap) if lt.on_runq]


def runq_add(lt: Any, pri: int | None = None) -> None:
    """Queue a local thread (its shared ``td_state`` is the caller's business)."""
    md.pcpu.runq.add(lt, lt.pri if pri is None else pri)


def setrunqueue(td: Any) -> None:
    """Make ``td`` runnable on its CPU. Called with sched_lock held."""
    cpu, pri = td.load("td_oncpu", "td_priority")
    td.td_state = int(TDS.TDS_RUNQ)
    if cpu == md.pcpu.cpuid:
        lt = md.pcpu.threads[td.handle]
        lt.pri = pri
        runq_add(lt, pri)
    else:
        md.ipi(cpu, "setrunqueue", [td.handle, pri])


def ipi_setrunqueue(args: list[int]) -> None:
    """The receiving end of a remote setrunqueue (interrupt context)."""
    tid, pri = args
    lt = md.pcpu.threads.get(tid)
    if lt is None:
        md.panic(f"setrunqueue IPI for thread {tid}, not on cpu {md.pcpu.cpuid}")
    lt.pri = pri
    runq_add(lt, pri)


def remrunqueue(lt: Any) -> None:
    md.pcpu.runq.remove(lt)


def choosethread() -> Any:
    """The next local thread to run, or this CPU's idle thread."""
    lt = md.pcpu.runq.choose()
    return lt if lt is not None else md.pcpu.idlethread
