"""A timeline of a run, for people: the Chrome trace event format, which ui.perfetto.dev and
chrome://tracing open (``smp trace RUN_DIR``).

The server sees every operation of every CPU, in order and with the simulated time each
was made at, so a tracer attached to it can draw the run (``smp trace`` attaches one to a
replay of the recorded run: the timeline is that of the run itself):

* one process per CPU (``cpu K``), with a track ``threads`` whose slices are the threads
  that CPU ran, by name (``napper (tid 354)``: a thread runs from its first operation
  after another thread's until the next thread's), and a track ``sleeping`` with each
  sleep on a channel, named as the kernel would print it (``&proc#349.p_sflag``);
* lock holds and lock waits as asynchronous slices (``hold <lock>``, ``wait <lock>``), so
  that holds that overlap without nesting still show;
* each wakeup as a flow arrow from the waker's CPU to the sleeper's;
* the failing operation (a panic, a divergence, a replay's stop) as a global instant.

Times are simulated microseconds from the machine's start. The file is written as it
goes; events past ``limit`` are counted and left out.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from smp.hw.protocol import AF_LINE, GRANTED, GRANTED_LINE, Op
from smp.machine.files import RunFile

THREADS, LOCKS, SLEEPING = 1, 2, 3          # the track ids within a CPU's process


class Tracer:
    def __init__(self, path: str, ncpus: int, lock_names: dict[int, str],
                 limit: int = 2_000_000,
                 failed: Callable[[str], None] = lambda error: None,
                 thread_name: Callable[[int], str] = lambda tid: "",
                 channel: Callable[[Any], str] = str) -> None:
        self.thread_name = thread_name       # a thread's name now ("" if not known yet)
        self.channel = channel               # a sleep channel as the kernel prints it
        self.who: dict[int, str] = {}        # tid -> "name (tid N)", once it has a name
        # given up, once a write fails (a full disk): ``failed`` is told, once
        self.out = RunFile(path, failed)
        try:
            self.out.f.write('{"displayTimeUnit": "ms", "traceEvents": [\n')
        except OSError:
            self.out.f.close()
            raise
        self.first = True
        self.events = 0
        self.dropped = 0
        self.limit = limit
        self.names = lock_names              # the lock table's: address -> name, live
        self.running: dict[int, tuple[int, float]] = {}     # cpu -> (tid, since us)
        self.holds: dict[tuple[int, int], float] = {}       # (lock, tid) -> since us
        self.waits: dict[tuple[int, int], tuple[int, float]] = {}  # -> (cpu, since us)
        self.asleep: dict[int, tuple[int, float, Any]] = {}  # tid -> (cpu, since, chan)
        self.thread_cpu: dict[int, int] = {}
        self.flows = 0
        self.last_us = 0.0
        for cpu in range(ncpus):
            self._meta("process_name", cpu, 0, {"name": f"cpu {cpu}"})
            self._meta("process_sort_index", cpu, 0, {"sort_index": cpu})
            for tid, name in ((THREADS, "threads"), (LOCKS, "locks"), (SLEEPING, "sleeping")):
                self._meta("thread_name", cpu, tid, {"name": name})

    # -- output ------------------------------------------------------------------------
    def _emit(self, ev: dict[str, Any]) -> None:
        if self.events >= self.limit:
            self.dropped += 1
            return
        if self.out.error is not None:       # given up: nothing more is counted either
            return
        self._write(("" if self.first else ",\n") + json.dumps(ev, separators=(",", ":")))
        self.first = False
        self.events += 1

    @property
    def error(self) -> str | None:
        """Why the timeline was given up (a write failed), if it was."""
        return self.out.error

    def flush(self) -> None:
        """Write out what is buffered (the server's report)."""
        self.out.flush()

    def _write(self, text: str) -> None:
        self.out.write(text)

    def _meta(self, name: str, pid: int, tid: int, args: dict[str, Any]) -> None:
        self._emit({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": args})

    def _name(self, lock: int) -> str:
        return self.names.get(lock, f"lock {lock:#x}")

    def _thread(self, tid: int) -> str:
        who = self.who.get(tid)
        if who is None:
            name = self.thread_name(tid)
            if not name:
                return f"thread {tid}"
            who = self.who[tid] = f"{name} (tid {tid})"
        return who

    # -- what the server tells it ------------------------------------------------------
    def request(self, cpu: int, tid: int, op: int, site: str, t: int, args: list[Any],
                value: Any) -> None:
        """An operation was handled (``value``: its reply, if any)."""
        us = t / 1000
        self.last_us = max(self.last_us, us)
        if tid:
            self.thread_cpu[tid] = cpu
            self._runs(cpu, tid, us)
        if op == Op.ACQUIRE and args:
            lock = args[0]
            line = len(args) > 2 and isinstance(args[2], int) and args[2] & AF_LINE
            if value in (GRANTED, GRANTED_LINE) or line:
                self._granted(cpu, tid, lock, us)
            elif value == 1:                                    # QUEUED
                self.waits.setdefault((lock, tid), (cpu, us))
        elif op == Op.RELEASE and args:
            self._released(cpu, tid, args[0], us)
        elif op == Op.HANDOFF and len(args) >= 2:
            self._released(cpu, tid, args[0], us)
            self._granted(cpu, args[1], args[0], us)
        elif op == Op.SLEEP and args:
            self.asleep[tid] = (cpu, us, args[0])
            if len(args) > 1 and args[1]:              # msleep's interlock, released
                self._released(cpu, tid, args[1], us)
        elif op == Op.WAKEUP and isinstance(value, list):
            for woken in value:          # args[2]: the site that called wakeup
                self._woken(cpu, tid, woken, us,
                            by=str(args[2]) if len(args) > 2 and args[2] else site)
        elif op == Op.UNSLEEP and value:
            self._woken(cpu, tid, args[1] if len(args) > 1 else tid, us, flow=False)

    def granted(self, cpu: int, tid: int, lock: int, t: int) -> None:
        """A queued spin acquire was handed the lock (its GRANT event)."""
        self._granted(cpu, tid, lock, t / 1000)

    def instant(self, cpu: int, name: str, t: int | None = None) -> None:
        """A mark across the whole timeline: a panic, a divergence, a stop."""
        us = self.last_us if t is None else t / 1000
        self._emit({"ph": "i", "s": "g", "name": name[:200], "pid": max(cpu, 0),
                    "tid": THREADS, "ts": us})

    def mark(self, cpu: int, name: str, t: int) -> None:
        """A mark on one CPU's threads track (``smp trace --watch``: a watched access)."""
        self._emit({"ph": "i", "s": "t", "name": name[:200], "pid": max(cpu, 0),
                    "tid": THREADS, "ts": t / 1000})

    def close(self) -> None:
        """The end: what is still going on ends with the timeline (a thread asleep or
        waiting for ever is what a hang looks like: its slice must be there)."""
        end = self.last_us
        for cpu, (tid, since) in sorted(self.running.items()):
            self._slice(cpu, THREADS, self._thread(tid), since, end)
        for tid, (cpu, since, chan) in sorted(self.asleep.items()):
            self._slice(cpu, SLEEPING, f"{self._thread(tid)} asleep on {self.channel(chan)} "
                        f"(still at the end)", since, end)
        for (lock, tid), (cpu, since) in sorted(self.waits.items()):
            self._slice(cpu, LOCKS, f"wait {self._name(lock)} (still at the end)", since,
                        end)
        for (lock, tid) in sorted(self.holds):
            self._async("e", self.thread_cpu.get(tid, 0), f"hold {self._name(lock)}", lock,
                        tid, end)
        self._write("\n]}\n")
        self.out.close()

    # -- helpers ----------------------------------------------------------------------
    def _runs(self, cpu: int, tid: int, us: float) -> None:
        cur = self.running.get(cpu)
        if cur is not None and cur[0] == tid:
            return
        if cur is not None:
            self._slice(cpu, THREADS, self._thread(cur[0]), cur[1], us)
        self.running[cpu] = (tid, us)

    def _released(self, cpu: int, tid: int, lock: int, us: float) -> None:
        if self.holds.pop((lock, tid), None) is not None:
            self._async("e", cpu, f"hold {self._name(lock)}", lock, tid, us)

    def _granted(self, cpu: int, tid: int, lock: int, us: float) -> None:
        w = self.waits.pop((lock, tid), None)
        if w is not None:
            self._slice(w[0], LOCKS, f"wait {self._name(lock)}", w[1], us)
        if (lock, tid) not in self.holds:
            self.holds[(lock, tid)] = us
            self._async("b", self.thread_cpu.get(tid, cpu), f"hold {self._name(lock)}",
                        lock, tid, us)

    def _woken(self, cpu: int, waker: int, woken: int, us: float, flow: bool = True,
               by: str = "") -> None:
        s = self.asleep.pop(woken, None)
        if s is None:
            return
        scpu, since, chan = s
        self._slice(scpu, SLEEPING, f"{self._thread(woken)} asleep on {self.channel(chan)}",
                    since, us)
        if flow:
            self.flows += 1
            common = {"name": "wakeup", "cat": "wakeup", "id": self.flows}
            self._emit({"ph": "s", "pid": cpu, "tid": THREADS, "ts": us, **common,
                        "args": {"channel": self.channel(chan), "woken": self._thread(woken),
                                 "by": self._thread(waker), "site": by}})
            self._emit({"ph": "f", "bp": "e", "pid": scpu, "tid": SLEEPING, "ts": us,
                        **common})

    def _slice(self, pid: int, tid: int, name: str, since: float, until: float) -> None:
        self._emit({"ph": "X", "name": name, "pid": pid, "tid": tid, "ts": since,
                    "dur": max(until - since, 0.0)})

    def _async(self, ph: str, cpu: int, name: str, lock: int, tid: int, us: float) -> None:
        self._emit({"ph": ph, "cat": "lock", "name": name, "pid": cpu, "tid": LOCKS,
                    "id": f"{lock:#x}:{tid}", "ts": us})

    def statistics(self) -> dict[str, int]:
        return {"events": self.events, "dropped": self.dropped}


def count_events(path: str) -> int:
    """The events in a trace a Tracer wrote and closed (one a line, after the first)."""
    with open(path) as f:
        next(f, None)
        return sum(1 for line in f if line.startswith("{"))


__all__ = ["Tracer", "count_events"]
