"""The order of the machine's operations: recorded in every run, enforced in a replay.

The server is the machine's one linearisation point (DESIGN.md decision 11), so the order
in which it handles the CPUs' requests is the whole schedule of a run: ``hw/record.py``
says what else a CPU takes from outside and how it is recorded, and holds the file format.

* :class:`Recording` writes every request the server handles, and every action it takes of
  its own accord (the end-of-run check, a halt), as it goes.
* :class:`Replay` holds a record and lets the server handle a CPU's request only when the
  record says that CPU's request comes next: requests that arrive early wait in a queue
  per CPU. Each request is compared with the recorded one (operation, site, thread); the
  first that differs is a *divergence*, reported with its number, CPU and site. So is a
  replay that cannot go on: the CPU whose request comes next waits for events that only
  later requests would bring, or a CPU makes a request the record does not have.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any, Callable

from smp.hw import record
from smp.machine.files import write_error
from smp.machine.peers import opname


@dataclasses.dataclass
class Divergence:
    op: int                       # 1-based number of the operation that differs
    cpu: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"op": self.op, "cpu": self.cpu, "message": self.message}


class Recording:
    """A run's schedule, written as the server handles it. A write that fails (a full
    disk) gives the record up: ``error`` says why, nothing more is written, and
    ``failed`` is told (the sequencer stops the run: a record with a hole is no record)."""

    def __init__(self, path: str, header: dict[str, Any],
                 failed: Callable[[str], None] = lambda error: None) -> None:
        self.path = path
        self.failed = failed
        self.error: str | None = None
        self.w = record.Writer(path, header)

    @property
    def requests(self) -> int:
        return self.w.n

    def _write(self, write: Callable[..., Any], *args: Any) -> None:
        if self.error is not None:
            return
        try:
            write(*args)
        except OSError as e:
            self.error = write_error(self.path, e)
            self.failed(self.error)

    def request(self, cpu: int, op: int, site: str, tid: int) -> None:
        self._write(self.w.request, cpu, op, site, tid)

    def action(self, kind: str, payload: Any) -> None:
        self._write(self.w.action, kind, payload)

    def reads(self, cpu: int, entries: list[int], last: int, upto: int) -> None:
        self._write(self.w.reads, cpu, entries, last, upto)

    def flush(self) -> None:
        self._write(self.w.flush)

    def close(self, totals: dict[str, Any]) -> None:
        self._write(self.w.close, totals)
        if self.error is not None:           # given up: closed all the same
            self.w.abandon()


class Replay:
    """A record being replayed: which request may go next, and what the record says."""

    def __init__(self, rec: record.Record, until: int = 0) -> None:
        self.rec = rec
        self.total = rec.requests
        self.until = until                  # stop after this request (0: run to the end)
        self.i = 0                          # requests handled so far
        self.queues: dict[int, collections.deque[tuple[bytes, list[Any]]]] = \
            collections.defaultdict(collections.deque)
        self.acted: set[int] = set()
        self.stuck: dict[int, tuple[int, int, int]] = {}   # cpu -> (point, want, got)
        self.divergence: Divergence | None = None
        self.stopped = False                # --until reached, or a divergence
        self.after_stop = 0                 # requests not handled because of the stop

    def expected(self) -> tuple[int, int, str, int] | None:
        return self.rec.entry(self.i) if self.i < self.total else None

    def actions_due(self) -> list[tuple[str, Any]]:
        """The actions the record has after the requests handled so far, once each."""
        if self.i in self.acted:
            return []
        self.acted.add(self.i)
        return self.rec.actions.get(self.i, [])

    def describe(self, i: int) -> str:
        cpu, op, site, tid = self.rec.entry(i)
        return f"cpu {cpu}'s {opname(op)} @ {site or '?'} (thread {tid})"

    def check(self, cpu: int, msg: list[Any]) -> Divergence | None:
        """Compare the request about to be handled with the record's next one."""
        exp = self.expected()
        got = f"{opname(msg[0])} @ {msg[3] or '?'} (thread {msg[2]})"
        if exp is None:
            return Divergence(self.i + 1, cpu, f"replay diverged at operation {self.i + 1}: "
                              f"the record ends after {self.total} operations, but cpu "
                              f"{cpu} went on with {got}" + self._damage()
                              + (self._until() if self.rec.damage else ""))
        ecpu, eop, esite, etid = exp
        if (ecpu, eop, esite, etid) != (cpu, msg[0], msg[3], msg[2]):
            return Divergence(self.i + 1, cpu, f"replay diverged at operation {self.i + 1}: "
                              f"cpu {cpu} made {got}; the record has "
                              f"{self.describe(self.i)}")
        return None

    def stalled(self, sent: Callable[[int], str]) -> Divergence | None:
        """A divergence if the CPU whose request comes next waits for events (STUCK) and
        cannot send it: only later requests could bring what it waits for. ``sent(cpu)``
        says what the server sent that CPU."""
        exp = self.expected()
        if exp is None:
            return None
        cpu = exp[0]
        if cpu in self.stuck and not self.queues[cpu]:
            point, want, got = self.stuck[cpu]
            return Divergence(self.i + 1, cpu, f"replay diverged at operation {self.i + 1}: "
                              f"the record has {self.describe(self.i)} next, but cpu {cpu} "
                              f"waits at its read point {point} for {want - got} more "
                              f"event(s) that would come only later" + sent(cpu)
                              + self._damage())
        return None

    def reads_end(self, cpu: int, point: int) -> Divergence:
        """``cpu`` reached a read point past the last one a record cut short knows."""
        return Divergence(self.i + 1, cpu, f"replay diverged at operation {self.i + 1}: the "
                          f"record ends for cpu {cpu}, whose reads it has only up to read "
                          f"point {point - 1}" + self._damage() + self._until())

    def _damage(self) -> str:
        return f"; {self.rec.damage}" if self.rec.damage else ""

    def _until(self) -> str:
        """Where a record cut short ends: how to look at the machine just before."""
        return (f"; --until {self.i} stops the machine before it and dumps it"
                if self.i else "")
