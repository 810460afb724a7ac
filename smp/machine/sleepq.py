"""Sleep channels: who sleeps on what, and who a wakeup takes off it.

DESIGN.md decision 3, after FreeBSD 5.0's ``kern/kern_synch.c`` (``slpque``, a hash of
queues by wait channel; ``msleep``, ``wakeup``, ``wakeup_one``, ``unsleep``). A channel
is any value the kernel names one by: in C an address, here a field's address or a tuple.

* ``SLEEP`` queues a thread on a channel *and* drops its interlock in one step, so that a
  wakeup between the two cannot be lost. Both that and ``WAKEUP`` must be done holding the
  scheduler lock, as in ``kern_synch.c``; the kernel names that lock at boot (``POLICY
  scheduler_lock``), and with no name registered the rule is not checked.
* ``WAKEUP`` takes every sleeper (or the first: ``wakeup_one``) off the channel and
  returns their thread ids to the waker, whose kernel code makes them runnable: the
  server does not schedule threads, the kernel does.
* ``UNSLEEP`` takes one thread off its channel (a sleep that timed out); it fails when a
  wakeup got there first, and the thread then knows it was woken.

Checked here, each an error that panics the machine: a sleep or wakeup without the
scheduler lock, sleeping with a spin mutex other than the scheduler lock held, a thread
that sleeps while asleep. Sleeping with a sleep lock held (other than the interlock) is a
WITNESS finding, not a panic (``witness.sleeping``).

The queues are kept apart from the lock table (``smp.machine.locks``), which they use:
the interlock is released through it, and it knows which locks a thread holds.
"""

from __future__ import annotations

import collections
from typing import Hashable

from smp.hw.protocol import EXCL
from smp.machine.locks import Grant, LockError, LockTable, ThreadLocks


class SleepQueues:
    """Every sleep channel of one machine."""

    def __init__(self, locks: LockTable) -> None:
        self.locks = locks
        # the lock that sleep and wakeup require (the kernel registers its name at boot)
        self.sched_lock_name: str | None = None
        self.channels: dict[Hashable, collections.deque[tuple[int, int]]] = {}
        self.sleeping: dict[int, Hashable] = {}     # tid -> its channel (td_wchan)
        self.sleeps = self.wakeups = self.woken = 0

    def _require_sched_lock(self, what: str, t: ThreadLocks, site: str) -> None:
        name = self.sched_lock_name
        if name is None:                  # the kernel named no scheduler lock: no rule
            return
        locks = self.locks.locks
        for h, _, _ in t.held:
            if h in locks and locks[h].name == name:
                return
        raise LockError(f"{what} @ {site} without the {name} held")

    def sleep(self, tid: int, cpu: int, site: str, chan: Hashable,
              interlock: int, caller: str = "") -> list[Grant]:
        """msleep: queue ``tid`` on ``chan`` and release ``interlock`` (0: none); returns
        the grants that release makes. ``caller``: the site that called msleep, for
        reports."""
        lt = self.locks
        t = lt.thread(tid, cpu)
        self._require_sched_lock("msleep", t, site)
        for lk in lt.held_spin(t):
            if lk.name != self.sched_lock_name:
                raise LockError(f"sleeping with spin mutex {lk.name} held @ {site}")
        asleep = self.sleeping.get(tid)
        if asleep is not None:
            raise LockError(f"thread {tid} sleeps on {chan!r} while asleep on {asleep!r}")
        grants: list[Grant] = []
        if interlock:
            grants = lt.release(tid, cpu, site, interlock, EXCL)
        if lt.witness is not None:
            lt.witness.sleeping([(lt.locks[a], s) for a, _, s in t.held
                                 if a in lt.locks
                                 and lt.locks[a].name != self.sched_lock_name],
                                site, tid, caller)
        self.channels.setdefault(chan, collections.deque()).append((tid, cpu))
        self.sleeping[tid] = chan
        self.sleeps += 1
        return grants

    def wakeup(self, tid: int, cpu: int, site: str, chan: Hashable, one: bool) -> list[int]:
        """wakeup (``one``: wakeup_one): the threads taken off ``chan``."""
        self._require_sched_lock("wakeup", self.locks.thread(tid, cpu), site)
        q = self.channels.get(chan)
        self.wakeups += 1
        if not q:
            return []
        taken = [q.popleft()] if one else list(q)
        if not one or not q:
            del self.channels[chan]
        for sleeper, _ in taken:
            self.sleeping.pop(sleeper, None)
        self.woken += len(taken)
        return [s for s, _ in taken]

    def unsleep(self, tid: int, chan: Hashable) -> bool:
        """Take ``tid`` off ``chan`` (a timed-out sleep); False if a wakeup got there first."""
        q = self.channels.get(chan)
        if not q:
            return False
        for i, (sleeper, _) in enumerate(q):
            if sleeper == tid:
                del q[i]
                if not q:
                    del self.channels[chan]
                self.sleeping.pop(tid, None)
                return True
        return False

    def dumpstate(self) -> str:
        head = (f"sleep queues: {self.sleeps} sleeps, {self.wakeups} wakeups "
                f"({self.woken} threads woken)")
        lines = [head]
        for chan, q in self.channels.items():
            lines.append(f"  channel {chan!r}: sleepers {[tid for tid, _ in q]}")
        return "\n".join(lines)


__all__ = ["SleepQueues"]
