"""The server's side of virtual time: where each CPU's clock is, and the horizon.

``hw/clock.py`` states the model. Each CPU stamps every request with its simulated time;
when it must wait (its clock would pass the horizon, it is idle until its next tick, it
spins for a lock) it says so with a ``SYNC``. From that the server knows, for each CPU,
the earliest simulated time at which it can still act:

* a CPU that is running: the time of its last request;
* one that waits for the horizon or idles: the time it waits for (it does nothing before
  it, unless an event comes, and an event carries a time no earlier than its sender's);
* one that spins for a lock: never (the release that ends its spin carries the time).

The *horizon* is the smallest of these plus the quantum: no CPU may act beyond it, so no
CPU runs more than a quantum ahead of the slowest. It never passes the *cap*, the run's
end: when every CPU waits beyond the cap, the machine has reached its end (``ended``),
and the launcher runs the end-of-run check with the cap lifted a little
(:meth:`extend`), then halts it.

Dead or departed CPUs no longer count. With ``enabled`` False (wall time, or a replay,
which follows a record instead) the horizon is infinite.
"""

from __future__ import annotations

from smp.hw.clock import NEVER
from smp.hw.protocol import SYNC_SPIN


class TimeKeeper:
    def __init__(self, ncpus: int, quantum_ns: int, end_ns: int, enabled: bool) -> None:
        self.enabled = enabled
        self.quantum = quantum_ns
        self.cap = end_ns if enabled else NEVER
        self.vt = [0] * ncpus                       # each CPU's time at its last request
        self.need: list[int | None] = [None] * ncpus  # what a waiting CPU waits for
        self.gone: set[int] = set()
        self.alive = list(range(ncpus))             # the CPUs not gone, in order
        self.horizon = min(quantum_ns, self.cap) if enabled else NEVER
        self.min_cpu = 0
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
        if t > self.vt[cpu]:
            self.vt[cpu] = t
        if was_waiting or cpu == self.min_cpu:
            return self._recompute()
        return []

    def sync(self, cpu: int, need: int, state: int) -> list[int]:
        """``cpu`` waits: for the horizon to reach ``need`` (``state``: hw.protocol's SYNC_*)."""
        if not self.enabled or cpu in self.gone:
            return []
        self.syncs += 1
        self.need[cpu] = NEVER if state == SYNC_SPIN else max(int(need), self.vt[cpu])
        out = self._recompute()
        if cpu not in out and self.need[cpu] <= self.horizon:   # type: ignore[operator]
            out.append(cpu)                      # it asked for what it may have already
        return out

    def wake(self, cpu: int, t: int) -> list[int]:
        """An event (a grant, an IPI) goes to ``cpu`` at ``t``: if it was waiting, it now
        runs at that time (a spinner granted its lock, an idle CPU interrupted)."""
        if not self.enabled or cpu in self.gone or self.need[cpu] is None:
            return []
        self.need[cpu] = None
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
        m, low = alive[0], NEVER + 1
        for c in alive:          # the earliest time a CPU can still act (module docstring)
            e = vt[c] if need[c] is None else need[c]
            if e < low:                              # type: ignore[operator]
                m, low = c, e                        # type: ignore[assignment]
        self.min_cpu = m
        h = min(low + self.quantum, self.cap) if low < NEVER else self.cap
        if h == self.horizon:
            self._check_end(alive, low)
            return []
        self.horizon = h
        self.raised += 1
        self._check_end(alive, low)
        return [c for c in alive
                if self.need[c] is not None and self.need[c] != NEVER
                and self.need[c] <= h]                       # type: ignore[operator]

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
