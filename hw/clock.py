"""The clock: how simulated time relates to host time, and the tick schedule of one CPU.

Two notions of time, as in System/161's ``clock.c``:

* **Host time** is ``time.monotonic()``, shared by every process on the host (Linux's
  CLOCK_MONOTONIC is system-wide), so all CPUs of a machine read the same host clock.
* **Simulated time** starts at 0 when the server starts the machine at host time ``t0`` and
  advances at ``speed`` simulated seconds per host second::

      sim(t) = (t - t0) * speed

  It is *not* advanced by events: a CPU that is busy in Python, stalled on the bus or
  descheduled by the host simply sees more simulated time pass, exactly as a real CPU
  stalled on memory sees the wall clock move. That is what makes interleavings between
  CPU processes real rather than scripted (DESIGN.md decision 7).

Each CPU takes ``hardclock`` ``hz`` times per simulated second: tick ``n`` is due at
simulated time ``n / hz``. A CPU notices due ticks whenever it looks at the clock (every
wait and every return from the bus); ticks that came due while it could not look are
charged to what it was doing then and run late, in order (``ticks_lost`` counts the ones
that were more than one tick late). A host that is oversubscribed (32 CPU processes on 2
cores) therefore keeps simulated time honest and pays in late interrupts, not in drift.

Timed events of the kernel (callouts) are kept by the kernel in tick units with a
``(tick, priority, seq, desc)`` queue, so ties break the same way every run.
"""

from __future__ import annotations

import dataclasses
import time


@dataclasses.dataclass(frozen=True)
class ClockStatistics:
    hz: int
    speed: float
    ticks: int
    ticks_lost: int
    sim_time: float


class Clock:
    """One CPU's view of simulated time."""

    def __init__(self, hz: int, speed: float) -> None:
        self.hz = hz
        self.speed = speed
        self.t0: float | None = None
        self.ticks = 0              # ticks taken so far
        self.ticks_lost = 0

    def start(self, t0: float) -> None:
        self.t0 = t0

    @property
    def started(self) -> bool:
        return self.t0 is not None

    def now(self) -> float:
        """Simulated seconds since the machine started (0 before it starts)."""
        if self.t0 is None:
            return 0.0
        return (time.monotonic() - self.t0) * self.speed

    def due(self) -> int:
        """How many ticks are due and not yet taken; the caller takes them."""
        if self.t0 is None:
            return 0
        n = int(self.now() * self.hz) - self.ticks
        if n > 1:
            self.ticks_lost += n - 1
        return max(n, 0)

    def take(self, n: int) -> None:
        self.ticks += n

    def host_deadline(self, sim_delay: float) -> float:
        """Host time at which ``sim_delay`` simulated seconds from now will have passed."""
        return time.monotonic() + sim_delay / self.speed

    def next_tick_host(self) -> float:
        """Host time at which the next tick is due."""
        assert self.t0 is not None
        return self.t0 + (self.ticks + 1) / self.hz / self.speed

    def host_of(self, sim_t: float) -> float:
        assert self.t0 is not None
        return self.t0 + sim_t / self.speed

    def statistics(self) -> ClockStatistics:
        return ClockStatistics(self.hz, self.speed, self.ticks, self.ticks_lost, self.now())

    def dumpstate(self) -> str:
        s = self.statistics()
        return (f"clock: {s.hz} Hz at {s.speed}x, sim time {s.sim_time:.3f} s, "
                f"{s.ticks} ticks ({s.ticks_lost} late)")
