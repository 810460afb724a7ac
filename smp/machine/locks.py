"""The lock table: who owns each lock, and when a waiter is granted it.

docs/DESIGN.md decision 3. The server applies every lock operation of every CPU in one order,
so the table below is the truth about who holds what. The kernel's lock code
(``kernel/kern/kern_mutex.py`` and friends) decides what a *thread* does while it waits
(spin with interrupts off, or block and let the CPU run something else); this module only
decides who owns a lock and when a waiter is granted it.

Semantics, after FreeBSD 5.0:

* ``spin mutex``: one exclusive owner, a thread; recursion only with ``LF_RECURSE``. A
  release with spinners hands the lock to the first of them (FIFO) and sends its CPU a
  ``GRANT`` event: a spinner is running, so the hand-off costs nothing.
* ``sleep mutex``: as a spin mutex, but a release with sleepers *frees* the lock and wakes
  the first sleeper (a ``WAKE`` event), which then tries again, and may find that a
  running thread took the lock first. This is 5.0's ``MTX_CONTESTED`` protocol; handing the
  lock to a thread that is not running would build convoys the real kernel did not have.
* ``sx``: shared or exclusive; a thread may take it shared again (5.0's sx was
  ``LO_RECURSABLE``: kernel/kern/kern_sx.py), not exclusive again (``LF_NOSHREC`` forbids
  the shared recursion too: lockmgr). Readers wait only while a writer holds the
  lock (no writer preference, as the 2002 sx built from two condition variables). A
  release that leaves the lock free wakes every waiting reader, or if there are none the
  first writer, as the condition variables did; they try again.
* ``lockmgr``: as sx, with try-acquire used by ``vm_map_trylock``.
* Lines (``smp.hw.bus``): a CPU that takes a mutex LINE_STREAK times running, with nobody
  waiting, keeps the lock word's line and takes the lock again by posting an ``AF_LINE``
  acquire. While it has the line no other CPU gets the lock: their acquires queue (a
  try-lock fails), the line is recalled, and the grant or wake-up waits for the CPU's
  ``RELINQUISH``.

Checked here, each an error that panics the machine: an unknown or uninitialised lock,
unlock by a non-owner, recursion on a non-recursive lock, a blocking sleep lock taken with
a spin mutex held ("blockable sleep lock"), a hand-off of a recursed spin lock; and, with
``deadlock_check``, a cycle in the wait-for graph (``smp.machine.witness.find_deadlock``).

Beside it, and apart: the sleep channels (``smp.machine.sleepq``), which use the table to
drop a sleeper's interlock, and lock profiling (``smp.machine.profile``), which the table
tells of every change of owner and which only counts.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable

from smp.hw.protocol import (AF_LINE, AF_PICKUP, AF_TRY, BUSY, EXCL, GRANTED, GRANTED_LINE,
                             LF_NOSHREC, LF_RECURSE, LK_RW, LK_SLEEP, LK_SPIN, LOCK_KINDS, QUEUED,
                             SHARED)
from smp.machine.profile import LockProfile

LINE_STREAK = 3       # a CPU that takes a mutex this many times running gets its line
LINE_KINDS = (LK_SPIN, LK_SLEEP)       # the mutexes: lock words of their own


class LockError(Exception):
    """A lock operation that would be a kernel panic on real hardware."""


class Deadlock(LockError):
    """A cycle in the wait-for graph: the machine panics, naming every edge."""

    def __init__(self, message: str, cycle: list[Any]) -> None:
        super().__init__(message)
        self.cycle = cycle


def _need_thread(tid: int, lk: "Lock", site: str) -> None:
    """Lock holders are threads (DESIGN.md decision 3), and tid 0 is no thread: an owner
    of 0 means a free lock, so a release by "tid 0" of a free lock looked like its
    owner's."""
    if not isinstance(tid, int) or tid <= 0:
        raise LockError(f"{lk.cls} {lk.name}: lock operation by tid {tid!r}, which is no "
                        f"thread @ {site}")


def _now_us() -> float:
    return time.monotonic_ns() / 1000.0


@dataclasses.dataclass
class Waiter:
    tid: int
    cpu: int
    mode: int
    since_us: float
    site: str


@dataclasses.dataclass
class Lock:
    handle: int
    kind: str                        # the machine's semantics: LK_SPIN, LK_SLEEP, LK_RW
    cls: str                         # the kernel's name for the class ("sleep mutex")
    name: str
    flags: int
    owner: int = 0                   # exclusive owner tid
    recurse: int = 0
    shared: dict[int, int] = dataclasses.field(default_factory=dict)
    # each shared holder's first acquire of its hold: when (us) and where (the liveness
    # detector's "held all along", which since_us, the latest acquire, cannot say)
    shared_since: dict[int, tuple[float, str]] = dataclasses.field(default_factory=dict)
    waiters: collections.deque[Waiter] = dataclasses.field(default_factory=collections.deque)
    since_us: float = 0.0
    site: str = ""
    # who took it from free (at since_us, @ site): a spin lock is handed on at a context
    # switch (mi_switch) and keeps when and where it was taken, so its owner may be
    # another thread
    taker: int = 0
    handoffs: int = 0
    free_us: float = 0.0             # when it was last left free (for the acquirer's clock)
    last_cpu: int = -1               # who took it last, and how many times running
    streak: int = 0
    # the last exclusive release: (site, tid, the machine's operation), for the refusal
    # of an unlock of a lock not owned (a second PROC_UNLOCK names the first)
    released: tuple[str, int, int] | None = None


@dataclasses.dataclass
class ThreadLocks:
    """What the lock table knows of one simulated thread."""
    cpu: int
    held: list[tuple[int, int, str]] = dataclasses.field(default_factory=list)  # (lock, mode, site)
    waiting: tuple[int, int, str] | None = None
    wait_since: dict[int, float] = dataclasses.field(default_factory=dict)  # lock -> us
    taken: dict[tuple[int, int], int] = dataclasses.field(default_factory=dict)  # (lock,
    #   mode) -> the machine's operation it was first taken at, while held (--until)


Grant = tuple[int, int, int, bool]    # (cpu, tid, lock, owned): owned = GRANT, else WAKE


class LockTable:
    """Every lock of one machine."""

    def __init__(self, witness: Any = None, deadlock_check: bool = False,
                 lines: bool = True) -> None:
        self.witness = witness
        self.deadlock_check = deadlock_check
        # what "now" is, in us: host time, or in virtual time the simulated time of the
        # request being handled (the server sets it: hw/clock.py)
        self.clock: Callable[[], float] = _now_us
        self.thread_name: Callable[[int], str] = lambda tid: ""     # for reports
        self.ops: Callable[[], int] = lambda: 0     # the machine's operation count
        self.locks: dict[int, Lock] = {}
        self.spins: dict[int, Lock] = {}           # the spin mutexes among them (a few)
        self.names: dict[int, str] = {}            # every lock ever initialised: its name
        self.threads: dict[int, ThreadLocks] = {}
        self.profile = LockProfile()               # LOCK_PROFILING: told, never asks
        # Lines (hw.bus): the CPU that keeps taking a mutex keeps the lock word's line and
        # takes the lock again without waiting for a reply (it posts an AF_LINE acquire).
        # While a CPU has a lock's line no other CPU gets the lock: its acquire queues and
        # the line is recalled; the grant waits for the RELINQUISH. Lines are per address
        # and outlive a lock destroyed and made again at the same address.
        self.line_kinds = LINE_KINDS if lines else ()
        self.lines: dict[int, int] = {}            # lock -> cpu holding its line
        self.recalling: set[int] = set()
        self.recalls: list[tuple[int, int]] = []   # (cpu, lock): RECALL events to send
        self.line_grants = self.line_acquires = self.line_recalls = 0

    # -- bookkeeping -----------------------------------------------------------------
    def thread(self, tid: int, cpu: int) -> ThreadLocks:
        t = self.threads.get(tid)
        if t is None:
            t = self.threads[tid] = ThreadLocks(cpu)
        return t

    def lock(self, h: int) -> Lock:
        lk = self.locks.get(h)
        if lk is None:
            raise LockError(f"lock {h} is not initialized (no mtx_init/sx_init/lockinit)")
        return lk

    def init(self, h: int, kind: str, cls: str, name: str, flags: int) -> None:
        if kind not in LOCK_KINDS:
            raise LockError(f"lock_init: unknown lock kind {kind!r} (one of "
                            f"{', '.join(LOCK_KINDS)})")
        old = self.locks.get(h)
        if old is not None and (old.owner or old.shared or old.waiters):
            raise LockError(f"lock_init: {old.cls} {old.name} re-initialized while in use")
        lk = self.locks[h] = Lock(h, kind, cls, name, flags)
        if kind == LK_SPIN:
            self.spins[h] = lk
        else:
            self.spins.pop(h, None)
        if len(self.names) < 1 << 20:
            self.names[h] = name

    def destroy(self, h: int) -> None:
        lk = self.lock(h)
        if lk.owner or lk.shared or lk.waiters:
            raise LockError(f"lock_destroy: {lk.cls} {lk.name} destroyed while in use")
        del self.locks[h]
        self.spins.pop(h, None)

    def held_spin(self, t: ThreadLocks) -> list[Lock]:
        """The spin mutexes thread ``t`` holds."""
        return [self.locks[h] for h, _, _ in t.held
                if h in self.locks and self.locks[h].kind == LK_SPIN]

    def _take(self, lk: Lock, tid: int, t: ThreadLocks, mode: int, site: str,
              waited_us: float) -> None:
        # a lock left free later in simulated time than it is asked for (its releaser's
        # clock was ahead) is taken then: the acquirer's clock moves there with the reply
        # (ops.acquire's reply_t), and the hold starts there, not at the request
        now = max(self.clock(), lk.free_us)
        if mode == EXCL:
            lk.owner = lk.taker = tid
            lk.recurse = 0
            lk.handoffs = 0
        else:
            if tid not in lk.shared:
                lk.shared_since[tid] = (now, site)
            lk.shared[tid] = lk.shared.get(tid, 0) + 1
        lk.since_us = now
        lk.site = site
        t.held.append((lk.handle, mode, site))
        t.taken.setdefault((lk.handle, mode), self.ops())
        self.profile.obtained(lk.name, lk.cls, t.cpu, site, waited_us)

    def _drop(self, lk: Lock, tid: int, t: ThreadLocks, mode: int) -> None:
        for i in range(len(t.held) - 1, -1, -1):
            if t.held[i][0] == lk.handle and t.held[i][1] == mode:
                site = t.held.pop(i)[2]
                break
        else:
            site = lk.site
        if not any(a == lk.handle and m == mode for a, m, _ in t.held):
            t.taken.pop((lk.handle, mode), None)
        self.profile.released(lk.name, site, self.clock() - lk.since_us, bool(lk.waiters))

    # -- acquire, release, hand-off --------------------------------------------------
    def acquire(self, tid: int, cpu: int, site: str, h: int, mode: int,
                flags: int) -> int:
        """GRANTED, QUEUED (a GRANT or WAKE event follows later) or BUSY (trylock failed)."""
        trylock = bool(flags & AF_TRY)
        lk = self.lock(h)
        _need_thread(tid, lk, site)
        t = self.thread(tid, cpu)
        line = self.lines.get(h)
        if flags & AF_LINE:
            if line != cpu or lk.owner or lk.shared or mode != EXCL:
                raise LockError(f"{lk.name}: an acquire on the strength of a line cpu {cpu} "
                                f"does not have, or of a lock held (@ {site})")
            self.line_acquires += 1

        if mode not in (EXCL, SHARED) or (mode == SHARED and lk.kind != LK_RW):
            raise LockError(f"acquire: bad mode {mode} for {lk.cls} {lk.name}")
        if t.held and lk.kind != LK_SPIN and not trylock:
            spins = self.held_spin(t)
            if spins:
                raise LockError(f"blockable sleep lock ({lk.cls}) {lk.name} @ {site} "
                                f"with spin mutex {spins[0].name} held")
        if mode == EXCL and lk.owner == tid:
            if lk.flags & LF_RECURSE:
                lk.recurse += 1
                self.profile.recursed(lk.name)
                return GRANTED
            if trylock and lk.kind != LK_RW:
                return BUSY
            raise LockError(f"{lk.name}: recursed on non-recursive {lk.cls} @ {site} "
                            f"(first acquired @ {lk.site})")
        if tid in lk.shared:
            if mode == EXCL:
                raise LockError(f"{lk.name}: {lk.cls} exclusive acquire by a thread that "
                                f"holds it shared (share->excl) @ {site}")
            if lk.flags & LF_NOSHREC:
                raise LockError(f"{lk.name}: {lk.cls} shared recursion @ {site}")
        if mode == SHARED and lk.owner == tid:
            raise LockError(f"{lk.name}: {lk.cls} shared acquire by its exclusive owner "
                            f"(excl->share) @ {site}")
        if line is not None and line != cpu and not flags & AF_LINE:
            # Another CPU has the line: it may have taken the lock already (its acquire
            # is on the way), so nobody else gets it until the line is back. A try-lock
            # fails as if the lock were taken; either way the line is recalled.
            if h not in self.recalling:
                self.recalling.add(h)
                self.recalls.append((line, h))
                self.line_recalls += 1
            if trylock:
                return BUSY
            # waiting for the line of a free lock is a cache miss, not contention: it
            # is not counted as a contested acquisition (LOCK_PROFILING)
            return self._queue(lk, tid, cpu, t, h, mode, site, bool(flags & AF_PICKUP),
                               contended=bool(lk.owner or lk.shared))
        if mode == EXCL:
            free = lk.owner == 0 and not lk.shared      # a sleep lock may be barged
        else:
            free = lk.owner == 0            # readers wait only while a writer holds it
        if free:
            since = t.wait_since.pop(h, None)
            if self.witness is not None:
                self.witness.checkorder(lk, site, self._held(t), trylock,
                                        bool(flags & AF_PICKUP))
            # a lock left free later in simulated time than asked for was still held when
            # asked for: the acquirer's clock moves to the release, a wait like any other
            now = self.clock()
            waited = max(now, lk.free_us) - (now if since is None else since)
            self._take(lk, tid, t, mode, site,
                       max(waited, 0.001) if since is not None else waited)
            return self._maybe_line(lk, cpu, trylock, line)
        if trylock:
            return BUSY
        return self._queue(lk, tid, cpu, t, h, mode, site, bool(flags & AF_PICKUP))

    def _maybe_line(self, lk: Lock, cpu: int, trylock: bool, line: int | None) -> int:
        """GRANTED, or GRANTED_LINE when this CPU has now taken the mutex LINE_STREAK
        times running and nobody waits for it."""
        if lk.last_cpu == cpu:
            lk.streak += 1
        else:
            lk.last_cpu, lk.streak = cpu, 1
        if (line is None and lk.streak >= LINE_STREAK and not trylock and not lk.waiters
                and lk.kind in self.line_kinds):            # mutexes: always exclusive
            self.lines[lk.handle] = cpu
            self.line_grants += 1
            return GRANTED_LINE
        return GRANTED

    def _held(self, t: ThreadLocks) -> list[tuple[Lock, str]]:
        return [(self.locks[a], s) for a, _, s in t.held if a in self.locks]

    def _queue(self, lk: Lock, tid: int, cpu: int, t: ThreadLocks, h: int, mode: int,
               site: str, pickup: bool, contended: bool = True) -> int:
        if self.witness is not None:        # before it blocks: a deadlock may follow
            self.witness.checkorder(lk, site, self._held(t), False, pickup)
        now = self.clock()
        if contended:
            t.wait_since.setdefault(h, now)
        lk.waiters.append(Waiter(tid, cpu, mode, now, site))
        t.waiting = (h, mode, site)
        if self.deadlock_check:
            self._check_deadlock(tid)
        return QUEUED

    def release(self, tid: int, cpu: int, site: str, h: int, mode: int) -> list[Grant]:
        lk = self.lock(h)
        _need_thread(tid, lk, site)
        t = self.thread(tid, cpu)
        if mode == EXCL:
            if not lk.owner or lk.owner != tid:     # owner 0: nobody holds it
                who = f"thread {lk.owner}" if lk.owner else "nobody"
                last = ""
                if lk.released is not None:
                    r_site, r_tid, r_op = lk.released
                    name = self.thread_name(r_tid)
                    last = (f"; last released @ {r_site} by thread {r_tid}"
                            f"{f' ({name})' if name else ''}, operation {r_op}")
                raise LockError(f"{lk.cls} {lk.name}: unlock of a lock not owned "
                                f"@ {site} (owned by {who}{last})")
            if lk.recurse:
                lk.recurse -= 1
                return []
            self._drop(lk, tid, t, EXCL)
            lk.owner = 0
            lk.released = (site, tid, self.ops())
        else:
            n = lk.shared.get(tid, 0)
            if n == 0:
                raise LockError(f"{lk.cls} {lk.name}: shared unlock of a lock not held "
                                f"shared @ {site}")
            self._drop(lk, tid, t, SHARED)
            if n == 1:
                del lk.shared[tid]
                lk.shared_since.pop(tid, None)
            else:
                lk.shared[tid] = n - 1
        if not lk.owner:
            lk.free_us = self.clock()
        return self._grant_waiters(lk)

    def relinquish(self, cpu: int, h: int, hand_on: bool = True) -> list[Grant]:
        """The CPU gives ``h``'s line back: the waiters get their turn (unless not
        ``hand_on``)."""
        if self.lines.get(h) != cpu:
            raise LockError(f"RELINQUISH of lock {h} by cpu {cpu}, which has not its line")
        del self.lines[h]
        self.recalling.discard(h)
        lk = self.locks.get(h)
        if lk is None:
            return []
        lk.last_cpu, lk.streak = -1, 0
        return self._grant_waiters(lk) if hand_on else []

    def drop_lines(self, cpu: int, hand_on: bool = True) -> list[Grant]:
        """A CPU leaves: the lines it keeps on locks none of its threads holds come back.
        Without ``hand_on`` (the machine has halted) no waiter gets the lock: a CPU that
        waited for it as the machine stopped would otherwise take it after the run's
        end, in an order no record has (a replay of a panicked run counted one sched
        lock acquisition fewer than the recorded run, every operation the same)."""
        grants: list[Grant] = []
        for h in [h for h, c in self.lines.items() if c == cpu]:
            lk = self.locks.get(h)
            owner = self.threads.get(lk.owner) if lk is not None and lk.owner else None
            if owner is None or owner.cpu != cpu:
                grants += self.relinquish(cpu, h, hand_on)
        return grants

    def line_report(self) -> dict[str, int]:
        return {"granted": self.line_grants, "acquires": self.line_acquires,
                "recalled": self.line_recalls, "held": len(self.lines)}

    def take_recalls(self) -> list[tuple[int, int]]:
        out, self.recalls = self.recalls, []
        return out

    def _grant_waiters(self, lk: Lock) -> list[Grant]:
        if lk.owner or not lk.waiters:
            return []
        if lk.handle in self.recalling:
            return []                   # the line is on its way back: RELINQUISH grants
        grants: list[Grant] = []
        if lk.kind == LK_SPIN:
            w = lk.waiters.popleft()
            t = self.thread(w.tid, w.cpu)
            t.waiting = None
            since = t.wait_since.pop(lk.handle, None)
            self._take(lk, w.tid, t, w.mode, w.site,
                       max(self.clock() - since, 0.001) if since is not None else 0.0)
            grants.append((w.cpu, w.tid, lk.handle, True))
            return grants
        if lk.shared:
            return []                                   # readers still in; writers wait
        if lk.kind == LK_SLEEP or not any(w.mode == SHARED for w in lk.waiters):
            woken = [lk.waiters.popleft()]
        else:
            woken = [w for w in lk.waiters if w.mode == SHARED]
            lk.waiters = collections.deque(w for w in lk.waiters if w.mode != SHARED)
        for w in woken:
            self.thread(w.tid, w.cpu).waiting = None
            grants.append((w.cpu, w.tid, lk.handle, False))
        return grants

    def handoff(self, tid: int, cpu: int, h: int, to_tid: int) -> None:
        """A context switch passes a held spin lock to the next thread (mi_switch)."""
        lk = self.lock(h)
        if lk.kind != LK_SPIN or lk.owner != tid:
            raise LockError(f"handoff of {lk.cls} {lk.name} by thread {tid}, "
                            f"which does not own it")
        if lk.recurse:
            raise LockError(f"mi_switch: {lk.name} recursed ({lk.recurse}) at switch")
        t = self.thread(tid, cpu)
        for i in range(len(t.held) - 1, -1, -1):
            if t.held[i][0] == h:
                entry = t.held.pop(i)
                break
        else:
            raise LockError(f"handoff: {lk.name} not on thread {tid}'s held list")
        lk.owner = to_tid
        lk.handoffs += 1
        to = self.thread(to_tid, cpu)
        to.held.append(entry)
        op = t.taken.pop((h, entry[1]), 0)             # when it was taken goes with it
        if op:
            to.taken.setdefault((h, entry[1]), op)

    # -- deadlock ----------------------------------------------------------------------
    def _check_deadlock(self, tid: int) -> None:
        from smp.machine.witness import find_deadlock

        def waiting_for(t: int) -> tuple[Any, str] | None:
            tl = self.threads.get(t)
            if tl is None or tl.waiting is None or tl.waiting[0] not in self.locks:
                return None
            return self.locks[tl.waiting[0]], tl.waiting[2]

        def owners(lk: Lock) -> list[tuple[int, str]]:
            out = [(lk.owner, lk.site)] if lk.owner else []
            for o in lk.shared:
                site = next((s for a, _, s in self.threads[o].held if a == lk.handle), "?")
                out.append((o, site))
            return out

        cycle = find_deadlock(tid, waiting_for, owners)
        if cycle:
            def who(t: int) -> str:
                name = self.thread_name(t)
                return f"thread {t}" + (f" ({name})" if name else "")
            lines = [f"{who(t)} waits for {lk.cls} \"{lk.name}\" (asked @ {ws}), held by "
                     f"{who(cycle[(i + 1) % len(cycle)][0])} (taken @ {os_})"
                     for i, (t, lk, ws, os_) in enumerate(cycle)]
            raise Deadlock("deadlock: " + "; ".join(lines), cycle)

    def spin_held_too_long(self, bound_us: float, cpu: int | None = None,
                           now_us: float | None = None) -> tuple[Lock, float] | None:
        """A spin lock held longer than ``bound_us``, and for how long: by any thread at
        host time (wall time), or by a thread of ``cpu`` at that CPU's ``now_us``."""
        now = self.clock() if now_us is None else now_us
        for lk in self.spins.values():             # checked at every request: only these
            if lk.owner and now - lk.since_us > bound_us:
                if cpu is not None:
                    owner = self.threads.get(lk.owner)
                    if owner is None or owner.cpu != cpu:
                        continue
                return lk, now - lk.since_us
        return None

    def free_at(self, h: int) -> int:
        """When (ns) the lock ``h`` was last left free; 0 if unknown."""
        lk = self.locks.get(h)
        return int(lk.free_us * 1000) if lk is not None else 0

    # -- reports -----------------------------------------------------------------------
    def _lock_ref(self, tid: int, h: int, m: int, s: str) -> dict[str, Any]:
        """A held or awaited lock as reports show it (``show alllocks``: mode, class,
        name, recursion, address, site)."""
        lk = self.locks.get(h)
        return {"lock": lk.name if lk is not None else f"#{h}",
                "mode": "shared" if m == SHARED else "excl", "site": s,
                "class": lk.cls if lk is not None else "",
                "recurse": lk.recurse if lk is not None and lk.owner == tid else 0,
                "addr": h}

    def held_by(self, tid: int) -> list[dict[str, Any]]:
        t = self.threads.get(tid)
        if t is None:
            return []
        return [dict(self._lock_ref(tid, h, m, s), op=t.taken.get((h, m), 0))
                for h, m, s in t.held]

    def waiting_for(self, tid: int) -> dict[str, Any] | None:
        t = self.threads.get(tid)
        if t is None or t.waiting is None:
            return None
        h, m, s = t.waiting
        return self._lock_ref(tid, h, m, s)

    def dumpstate(self) -> str:
        lines = [f"locks: {len(self.locks)} initialized"]
        for lk in self.locks.values():
            if lk.owner or lk.shared or lk.waiters:
                owner = f"owner thread {lk.owner} @ {lk.site}" if lk.owner else \
                    f"shared by {sorted(lk.shared)}"
                waiters = ", ".join(f"{w.tid}@{w.site}" for w in lk.waiters)
                lines.append(f"  {lk.cls} {lk.name}: {owner}; waiters [{waiters}]")
        return "\n".join(lines)
