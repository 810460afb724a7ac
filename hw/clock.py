"""The clock: what a CPU's simulated time is, how it advances, and when ticks fall due.

Two notions of time, as in System/161's ``clock.c``: *host time* (``time.monotonic()``,
what the wall clock does) and *simulated time* (the machine's). The machine has two ways
of relating them (``machine.time``):

**Virtual time** (the default, DESIGN.md decision 6). Each CPU keeps its own simulated
clock, in integer nanoseconds from the machine's start, and nothing but the CPU's own
work and the messages it takes in moves it:

1. *Work.* Every request to the machine costs a fixed time by kind (``cost.call_ns`` for
   one that waits for a value, ``cost.post_ns`` for one that does not, ``cost.page_ns`` for
   one that moves a page of memory), as does each context switch (``cost.switch_ns``) and
   interrupt (``cost.intr_ns``); computing (``Cpu.work``: user time, kernel work, chaos
   stalls) costs what it says. The costs are declared in the config with their reasons.
2. *Causality.* A reply or event carries the simulated time at which it happened at its
   source (a lock grant: the time of the release that caused it; an IPI: the sender's
   time), and the receiver's clock moves to at least that time: a grant never arrives
   before the release that caused it (Lamport's rule for clocks).
3. *Idleness.* A CPU with nothing to run jumps to its next timer event (its next tick)
   instead of waiting for it; an event that comes first wakes it at the event's time. It
   jumps only once no other CPU can still act before that time (the server's *idle
   limit*), so that no event ever reaches an idle CPU whose clock has already passed the
   event's time: a thread woken on an idle CPU starts when it was woken, not later.
4. *The quantum.* CPUs run truly in parallel, each at the speed the host gives it, so their
   clocks drift apart. The server keeps them within a quantum (``machine.quantum``) of each
   other: it publishes a *horizon*, the earliest time any CPU may still act at plus the
   quantum, and a CPU whose clock would pass the horizon waits until the others catch up
   (gem5's quantum-synchronised parallel simulation; Graphite's lax synchronisation). A CPU
   that is idle counts at its next timer event, one that spins for a lock not at all (the
   release will tell it the time). Only CPUs that both run drift apart, by at most the
   quantum; an event between them may be up to that late. (Idle CPUs once jumped up to
   the horizon too: each thread woken on one then started up to a quantum late, and at
   the default quantum the machine did half the work per simulated second it does when
   the quantum is small; ``benchmarks/determinism.py --only quantum`` measures this.)
   Inside a quantum the CPUs' requests race at the server in whatever order the host
   makes: that concurrency is real and is not scripted away; it is recorded
   (``hw/record.py``) so that any run can be replayed exactly.

So a busy or slow host makes a run take longer in wall time; it does not change what the
machine does per simulated second. Idle time costs no wall time at all.

**Wall time** (``machine.time = "wall"``, the first version's model, kept as an option).
Simulated time is host time since the start, scaled: ``sim(t) = (t - t0) * speed``. A CPU
stalled on the bus or descheduled by the host sees more simulated time pass, as a real CPU
stalled on memory sees the wall clock move. Results then depend on the host's load, and a
run cannot be replayed.

In both models each CPU takes ``hardclock`` ``hz`` times per simulated second: tick ``n`` is
due at ``n / hz``. A CPU notices due ticks at its interrupt points; ticks that came due while
it could not look (interrupts masked, or a long request) are charged to what it was doing
then and run late, in order (``ticks_lost`` counts the ones more than one tick late).

Timed events of the kernel (callouts) are kept by the kernel in tick units with a
``(tick, priority, seq, desc)`` queue, so ties break the same way every run.
"""

from __future__ import annotations

import dataclasses
import time

NS = 1_000_000_000
NEVER = 1 << 62                  # a time no run reaches (ns): "no horizon", "no timer"


@dataclasses.dataclass(frozen=True)
class ClockStatistics:
    model: str
    hz: int
    speed: float
    ticks: int
    ticks_lost: int
    sim_time: float


class _Ticks:
    """What both models keep: the start, the ticks taken and those that came late."""

    model = ""
    virtual = False

    def __init__(self, hz: int, speed: float) -> None:
        self.hz = hz
        self.speed = speed
        self.t0: float | None = None  # host time of the start
        self.ticks = 0                # ticks taken so far
        self.ticks_lost = 0

    def start(self, t0: float) -> None:
        self.t0 = t0

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def now(self) -> float:
        raise NotImplementedError

    def _due(self, elapsed: int) -> int:
        """Of ``elapsed`` whole ticks since the start, how many are due and not yet taken
        (more than one: the ones before the last came late)."""
        n = elapsed - self.ticks
        if n > 1:
            self.ticks_lost += n - 1
        return max(n, 0)

    def take(self, n: int) -> None:
        self.ticks += n

    def statistics(self) -> ClockStatistics:
        return ClockStatistics(self.model, self.hz, self.speed, self.ticks, self.ticks_lost,
                               self.now())


class Clock(_Ticks):
    """One CPU's view of simulated time in the wall model."""

    model = "wall"

    def now(self) -> float:
        """Simulated seconds since the machine started (0 before it starts)."""
        if self.t0 is None:
            return 0.0
        return (time.monotonic() - self.t0) * self.speed

    def now_ns(self) -> int:
        return int(self.now() * NS)

    def due(self) -> int:
        """How many ticks are due and not yet taken; the caller takes them."""
        if self.t0 is None:
            return 0
        return self._due(int(self.now() * self.hz))

    def host_deadline(self, sim_delay: float) -> float:
        """Host time at which ``sim_delay`` simulated seconds from now will have passed."""
        return time.monotonic() + sim_delay / self.speed

    def next_tick_host(self) -> float:
        """Host time at which the next tick is due."""
        assert self.t0 is not None
        return self.t0 + (self.ticks + 1) / self.hz / self.speed

    def dumpstate(self) -> str:
        s = self.statistics()
        return (f"clock: {s.hz} Hz at {s.speed}x wall time, sim time {s.sim_time:.3f} s, "
                f"{s.ticks} ticks ({s.ticks_lost} late)")


class VirtualClock(_Ticks):
    """One CPU's simulated time in the virtual model: integer nanoseconds, ``t``, which
    only the CPU's run loop moves (hw/cpu.py, inline: it is the hot path): forward by the
    cost of each request and of local work, to a reply's or an event's time where that is
    later, and, idle, to its next tick (:meth:`next_tick_ns`) once the horizon allows."""

    model = "virtual"
    virtual = True

    def __init__(self, hz: int) -> None:
        super().__init__(hz, 0.0)
        self.tick_ns = NS // hz
        self.t = 0                   # simulated ns since the start (t0: host-side rates only)

    def now(self) -> float:
        return self.t / NS

    def now_ns(self) -> int:
        return self.t

    def next_tick_ns(self) -> int:
        return (self.ticks + 1) * self.tick_ns

    def due(self) -> int:
        return self._due(self.t // self.tick_ns)

    def dumpstate(self) -> str:
        s = self.statistics()
        return (f"clock: {s.hz} Hz, virtual, sim time {s.sim_time:.6f} s, "
                f"{s.ticks} ticks ({s.ticks_lost} late)")
