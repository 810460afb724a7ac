"""The server's side of virtual time: where each CPU's clock is, and how far each may go.

``hw/clock.py`` states the model. Each CPU stamps every request with its simulated time;
when it must wait (its clock would pass the horizon, it is idle until its next tick, it
spins for a lock) it says so with a ``SYNC``. From that the server knows, for each CPU,
the earliest simulated time at which it can still act:

* a CPU that is running: the time of its last request;
* one that waits for the horizon or idles: the time it waits for (it does nothing before
  it, unless an event comes, and an event carries a time no earlier than its sender's);
* one that spins for a lock: never (the release that ends its spin carries the time).

Two limits follow from these times:

* the *horizon*, the smallest of them plus the quantum: no running CPU acts beyond it, so
  none runs more than a quantum ahead of the slowest;
* an idle CPU's *idle limit*, the smallest of the *other* CPUs' times: an idle CPU jumps
  to its next timer event only once no other CPU can still act before it, so that an
  event sent to it (a wakeup, an IPI) never finds its clock already past the event's time.
  Were idle CPUs let jump to the horizon, every thread woken on an idle CPU would start up
  to a quantum late, and the machine would do half the work per simulated second at the
  default quantum (``benchmarks/determinism.py``, ``quantum``), a tenth less at a tenth
  of it: what the machine did would depend on the quantum. With the idle limit it barely
  does, and the quantum only bounds how far CPUs that both run drift apart.

Neither passes the *cap*, the run's end: when every CPU waits beyond the cap, the machine
has reached its end (``ended``), and the launcher runs the end-of-run check with the cap
lifted a quantum at a time (:meth:`extend`) until every CPU has checked, then halts it.

Dead or departed CPUs no longer count. With ``enabled`` False (wall time, or a replay,
which follows a record instead) there are no limits.
"""

from __future__ import annotations

from smp.hw.clock import NEVER
from smp.hw.protocol import SYNC_IDLE, SYNC_SPIN


class TimeKeeper:
    def __init__(self, ncpus: int, quantum_ns: int, end_ns: int, enabled: bool) -> None:
        self.enabled = enabled
        self.quantum = quantum_ns
        self.cap = end_ns if enabled else NEVER
        self.vt = [0] * ncpus                       # each CPU's time at its last request
        self.need: list[int | None] = [None] * ncpus  # what a waiting CPU waits for
        self.idle = [False] * ncpus                 # ... and whether it waits idle
        self.gone: set[int] = set()
        self.alive = list(range(ncpus))             # the CPUs not gone, in order
        self.horizon = min(quantum_ns, self.cap) if enabled else NEVER
        self.min_cpu = 0                            # the CPU with the earliest time
        self.low = 0                                # its time, and the next CPU's:
        self.low2 = 0                               # the idle limits (module docstring)
        self.ended_at: int | None = None            # the cap the machine reached, once
        self.syncs = 0
        self.raised = 0                             # how often the horizon moved

    def request(self, cpu: int, t: int) -> list[int]:
        """A request from ``cpu`` made at ``t``: it runs. Returns the CPUs to tell the
        new horizon (those that wait for no more than it)."""
        if not self.enabled or cpu in self.gone:
            return []
        was_waiting = self.need[cpu] is not None
        self.need[cpu] = None
        self.idle[cpu] = False
        if t > self.vt[cpu]:
            self.vt[cpu] = t
        if was_waiting or cpu == self.min_cpu:
            return self._recompute()
        return []

    def sync(self, cpu: int, need: int, state: int) -> list[int]:
        """``cpu`` waits: for its limit to reach ``need`` (``state``: hw.protocol's
        SYNC_*; an idle CPU's limit is its idle limit, any other's the horizon)."""
        if not self.enabled or cpu in self.gone:
            return []
        self.syncs += 1
        self.need[cpu] = NEVER if state == SYNC_SPIN else max(int(need), self.vt[cpu])
        self.idle[cpu] = state == SYNC_IDLE
        out = self._recompute()
        if cpu not in out and self.need[cpu] <= self.limit(cpu):   # type: ignore[operator]
            out.append(cpu)                      # it asked for what it may have already
        return out

    def wake(self, cpu: int, t: int) -> list[int]:
        """An event (a grant, an IPI) goes to ``cpu`` at ``t``: if it was waiting, it now
        runs at that time (a spinner granted its lock, an idle CPU interrupted)."""
        if not self.enabled or cpu in self.gone or self.need[cpu] is None:
            return []
        self.need[cpu] = None
        self.idle[cpu] = False
        if t > self.vt[cpu]:
            self.vt[cpu] = t
        return self._recompute()

    def leave(self, cpu: int) -> list[int]:
        """``cpu`` is dead or has gone: it no longer holds the others back."""
        if not self.enabled or cpu in self.gone:
            return []
        self.gone.add(cpu)
        self.alive.remove(cpu)
        return self._recompute()

    def extend(self, ns: int) -> list[int]:
        """Lift the cap by ``ns`` (the end-of-run check runs in that time)."""
        if not self.enabled:
            return []
        self.cap = (self.ended_at if self.ended_at is not None else self.cap) + ns
        self.ended_at = None
        return self._recompute()

    def _recompute(self) -> list[int]:
        alive = self.alive                           # (at every request: kept lean)
        if not alive:
            return []
        vt, need = self.vt, self.need
        m, low, low2 = alive[0], NEVER + 1, NEVER + 1
        for c in alive:          # the earliest time a CPU can still act (module docstring)
            e = vt[c] if need[c] is None else need[c]
            if e < low:                              # type: ignore[operator]
                m, low, low2 = c, e, low             # type: ignore[assignment]
            elif e < low2:                           # type: ignore[operator]
                low2 = e                             # type: ignore[assignment]
        self.min_cpu = m
        h = min(low + self.quantum, self.cap) if low < NEVER else self.cap
        self._check_end(alive, low)
        if h == self.horizon and low == self.low and low2 == self.low2:
            return []
        if h != self.horizon:
            self.horizon = h
            self.raised += 1
        self.low, self.low2 = low, low2
        return [c for c in alive
                if need[c] is not None and need[c] != NEVER
                and need[c] <= self.limit(c)]        # type: ignore[operator]

    def limit(self, cpu: int) -> int:
        """How far ``cpu`` may go now: the horizon, or if it waits idle its idle limit."""
        return self.idle_limit(cpu) if self.idle[cpu] else self.horizon

    def idle_limit(self, cpu: int) -> int:
        """How far ``cpu`` may jump while idle: the earliest time of the other CPUs
        (never beyond the horizon). It holds until ``cpu`` itself makes another request
        (which may wake another CPU at an earlier time): the bus forgets it then."""
        if not self.enabled:
            return NEVER
        return min(self.low2 if cpu == self.min_cpu else self.low, self.horizon)

    def _check_end(self, alive: list[int], low: int) -> None:
        if self.ended_at is None and low > self.cap and all(
                self.need[c] is not None for c in alive):
            self.ended_at = self.cap

    @property
    def ended(self) -> bool:
        return self.ended_at is not None

    def statistics(self) -> dict[str, int]:
        return {"syncs": self.syncs, "horizon_moves": self.raised, "horizon": self.horizon,
                "slowest_cpu": self.min_cpu,
                "skew_ns": max(self.vt) - min(self.vt) if self.vt else 0}
