"""The liveness detector (``detector = "liveness"``): a hang is a finding.

A lost wakeup hangs a process without a sound: nothing panics, nothing is held too long,
the thread is simply never run again. FreeBSD's DEADLKRES looks for the same thing (a
thread asleep or blocked for too long); here the server can look further, because it
keeps the sleep queues and the lock table and holds kernel memory. What it looks at is
what the kernel registered at boot (``POLICY liveness``: which list holds the processes,
which fields hold a thread's inhibitors and wait channel, which bits mean asleep, swapped
in, swap-in requested, and the swapper's pid): the server names nothing of the kernel.

Every ``CHECK_S`` of simulated time (the time of the request being handled; host time in
a wall-time run) it looks for these, each a finding once it has lasted
``debug.liveness_s``. A sleep or a wakeup changes the sleep queue and the thread's
inhibitors in two steps, both under the scheduler lock, and between them the thread looks
lost. So a look made while someone holds that lock leaves out the threads that may be
half way: the holder itself (going to sleep: asleep by its inhibitors, not yet queued)
and every thread taken off a sleep queue since the holder took the lock (woken or timed
out: queued no more, its sleeping bit not yet cleared); what it cannot judge keeps the
age it had. (The first version looked only when nobody held the lock, and a busy small
machine seldom gave it such a moment: three looks in two simulated seconds.)

* **lost**: a thread inhibited as sleeping that is on no sleep queue (nor on a lock's
  queue: an sx or lockmgr waiter sleeps there), or whose wait channel is empty. No
  wakeup can find it: it will never run again. Which of two ways it got there decides
  what the report names: if its inhibitors were stored after it was taken off its sleep
  queue, that store put the sleeping bit back (a stale read-modify-write: F2), and the
  report names it; if nothing stored them since, whoever took it off the queue (a
  wakeup, a timeout) left it inhibited, and the report names that site and thread.
  Either way, also where it went to sleep.
* **done**: a thread asleep on its queue, with no timeout, longer than the bound, for a
  thing that has happened: the kernel registers, by wait message, what such a sleep
  waits for (``waits``: a test over the object whose field the channel is the address
  of: bits of a field clear (faultin's sleep on ``&p->p_sflag`` until ``PS_SWAPPINGIN``
  goes), a field equal to a value, a sum of fields at least another (vm_wait's free
  pages back above ``v_free_min``), a member of a list with a field equal to a value (a
  parent's wait: a child become a zombie)), and a sleeper whose test holds was never
  woken: the wakeup was skipped. One report for a channel, however many sleep on it;
  it names the last store of the fields the kernel registered as telling (``name``:
  the flag a waker checks, ``vm_pages_needed``) or of those tested, and where it went to
  sleep.
* **unwoken**: a thread asleep on its queue, with no timeout, longer than the bound, on a
  wait the kernel registered nothing for (no test, and not ``idle``: a daemon that sleeps
  for work): nothing has woken it, and no test says it waits for something not yet
  there. Wakeups that woke nobody on another field of the same object, where nobody
  ever sleeps, are named: the wrong channel? (A wakeup of ``&cnt.vm_pageout_req_swapout``
  for a sleeper on ``&cnt.v_swapout``.) An idle sleep is a hang only with such wakeups.
* **never**: a thread that polls (sleeps with a timeout, again and again at one place)
  for a registered test (``poll``: exit1's wait for its holds to go, ``p_lock`` back to
  0) that has not held for the bound: whatever it waits for is never given back (a
  PHOLD without its PRELE; init's wait for every AP to finish its boot, an AP whose boot
  never ends), one report for the threads that poll on one channel at one place. For a
  field the kernel registered as a count of holds (``count``), the report names every
  raise not undone since (each PHOLD without its PRELE: site and thread); else the
  tested field's last store. A store that lockkey
  found to lose another thread's store (two PRELEs without the proc lock, both from
  ``p_lock`` 2 to 1) undoes, in the ledger, what its thread meant (its own PHOLD), and the
  count is then higher than its raises not undone: the report says a decrement was lost,
  and names the lost update, instead of blaming a raise whose PRELE ran.
* **kept**: a hold (a raise of a count the kernel registered: ``p_lock``) older than the
  bound whose holder has exited, sleeps for work (an idle wait), or has taken and
  released holds of other objects since: it forgot this one (a PHOLD without its PRELE
  on one branch), whether or not the held process ever exits to poll for it.
* **orphan**: an object whose count of references (``refs``: ``vm_refcnt``, each
  reference held by a process's pointer to it, ``p_vmspace``) stays above 0 for the bound
  while no process on the process list points to it, no process still on it holds one
  of its references while pointing elsewhere (vmspace_unshare, between its copy and its
  vmspace_free), and no thread holding a transient reference of it is still at work:
  nobody will drop what is left, it is never freed (a ``vm_refcnt += 1`` without its
  ``vmspace_free``). The ledger gives each raise of such a count to the process whose
  pointer its thread stores next to it (vmspace_fork's
  ``vm_refcnt = 1`` then ``p2->p_vmspace = vm2``; the RFMEM share's ``p2->p_vmspace =
  vm`` then ``vm_refcnt++``), or keeps it as the thread's own transient hold (the vm
  daemon's); a drop undoes the raise its thread's process holds (exit1's,
  vmspace_unshare's), else the thread's own transient one, else the latest transient
  one. So the report names the raises nobody undid (site, thread, operation), not those
  the exits undid, in whatever order they came; a transient hold counts as forgotten
  as for **kept** (its thread has exited, sleeps for work, or has since dropped a
  reference of another object).
* **swapin**: a process that asked to be swapped in (the swap-in request bit) and is
  still out, while the swapper has been asleep since before the request: the thing it
  waits for has happened and its wakeup was lost. The report names where the swapper
  sleeps. A swap-in slower than the bound while the swapper is busy (swapping others in,
  waiting for memory or a lock) is not a hang: the longest is in the report
  (``liveness.slow_swapin_s``, and whose: ``slow_swapin_of``).
* **starved**: a thread waiting for a lock longer than the bound with no cycle (a cycle
  is the deadlock detector's panic) while one thread held it all along (its owner, or a
  shared holder that never let go: an sx_slock without its sx_sunlock), naming it and
  where it took the lock. A wait past the bound during which the lock changed hands
  is contention (a sleep mutex wakes one waiter, who must win it again, as in 5.0): not a
  finding; the longest such wait of each lock is in the report (``liveness.contended``).

A runnable thread not run for the bound is the kernel's own check (``check_runq``, the
``watchdog`` finding). At the end of a run (:meth:`Hangs.at_end`) a lost thread is a
finding whatever the bound, and every thread still asleep with no timeout is listed in
the report (``liveness.asleep``) with the site where it went to sleep and how often its
channel was woken in the run.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Any, NamedTuple, Protocol

from smp.machine.locks import LockTable
from smp.hw.protocol import FIELD_BITS
from smp.machine.objects import ObjectError, ObjectStore, field_addr
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Finding

CHECK_S = 0.1           # simulated seconds between two looks
PRUNE_EVERY = 100       # looks between two prunings of what freed objects left behind


class _Server(Protocol):
    kmem: ObjectStore
    locks: LockTable
    sleepq: SleepQueues
    virtual: bool
    cur_t: int
    started_at: float | None
    panic: dict[str, Any] | None

    def finding(self, f: Finding) -> None: ...


_TESTS = ({"field", "clear"}, {"field", "equals"}, {"sum", "at_least"},
          {"list", "field", "equals"}, {"idle"})


class _Raise(NamedTuple):
    """One raise of a registered count not yet undone: where, by which thread (and its
    name), when (simulated s), at which operation of the machine, and for a count of
    references (``refs``) the process that holds it (0: nobody yet; a transient hold)
    and its pid (a reaped proc's record is used again)."""
    site: str
    by: int
    name: str
    when: float
    op: int
    holder: int = 0
    holder_pid: int = -1


def _test_ok(w: Any) -> bool:
    """A registered wait's test is one of the four shapes, with names where names go
    (``chan``, if given: the field its channel must be the address of)."""
    if not isinstance(w, dict) or not any(t <= w.keys() for t in _TESTS):
        return False
    if not all(isinstance(w.get(k, []), list) for k in ("sum", "name")):
        return False
    names = [w[k] for k in ("field", "at_least", "list", "chan") if k in w] + list(
        w.get("sum", [])) + list(w.get("name", []))
    return (all(isinstance(n, str) for n in names)
            and isinstance(w.get("clear", 0), int) and isinstance(w.get("what", ""), str))


def _tested(w: dict[str, Any]) -> list[str]:
    """The fields whose stores a wait's report may name."""
    return [str(f) for f in ([w["field"]] if "field" in w else []) + list(w.get("sum", []))
            + list(w.get("name", []))]


def _more(others: list[int]) -> str:
    """The words for the others a report stands for too: " (and 2 more threads)", or
    nothing."""
    n = len(others)
    return f" (and {n} more thread{'s' if n > 1 else ''})" if n else ""


class Hangs:
    """The liveness detector of one machine."""

    def __init__(self, srv: _Server, bound_s: float) -> None:
        self.srv = srv
        self.bound_s = bound_s
        self.reg: dict[str, Any] | None = None
        self.waits: dict[str, dict[str, Any]] = {}   # wait message -> what it waits for
        self.wait_fields: set[str] = set()
        self.next_check = 0.0
        self.checks = 0
        self.slept: dict[int, tuple[str, float, int, int]] = {}   # tid -> (site, when,
                                                              # timo, operation)
        self.woken: dict[Hashable, int] = {}                  # chan -> wakeups that took some
        self.stored: dict[int, tuple[str, int, int]] = {}     # thread -> last inhibitors
                                                              # store: site, by, when (n)
        self.dequeued: dict[int, tuple[str, int, int, int, str, str]] = {}  # thread ->
                # taken off its sleep queue: site, by, when (n), operation, how, caller
        self.n = 0                                            # the two's order
        self.field_stored: dict[tuple[int, str], tuple[str, int, int]] = {}  # a registered
                                          # wait's (object, field): last store's site, thread
                                          # and operation
        self.unheard: dict[Hashable, tuple[int, str, int]] = {}   # channel -> wakeups that
                                          # woke nobody, the last's site and operation
        self.slept_on: set[Hashable] = set()                  # every channel slept on
        self.sleeps_by: dict[str, int] = {}                   # wait message -> sleeps
        self.polling: dict[int, float] = {}                   # thread -> sleeping with a
                                                              # timeout at one site since
        self.poll_chan: dict[int, Hashable] = {}              # ... on which channel
        self.counts: set[str] = set()                         # fields that count holds:
        self.wait_counts: set[str] = set()                    # a wait's (p_lock), and
        self.refs: dict[str, dict[str, str]] = {}             # counts of references
                                                  # (vm_refcnt) -> {holder, what}
        self.holders: dict[str, str] = {}                     # a pointer field that holds
                                                              # a reference -> its count
        self.raised: dict[tuple[int, str], list[_Raise]] = {}  # the raises not yet undone
        self.lowered: dict[tuple[int, str], tuple[float, int]] = {}  # (thread, count) ->
                                                  # its last lowering: when, of which object
        self.pending: dict[int, tuple[int, int]] = {}         # thread -> (holder, object):
                                                  # a holder's pointer stored before its raise
        self.read: dict[tuple[int, int, str], int] = {}       # (thread, object, count) ->
                                                  # the value its latest load of it read
        self.lost: dict[tuple[int, str], tuple[int, str, str]] = {}  # a count's (object,
                # field) -> how much higher it is than its raises not undone (a decrement
                # lost; below 0: an increment), the last lost update's site and words
        self.off: dict[int, float] = {}                       # thread -> off its queue at (us),
                                                              # in the current hold of sched_lock
        self.first: dict[tuple[str, int], float] = {}         # (kind, tid|pid) -> first seen
        self.reported: set[tuple[Any, ...]] = set()
        self._sched: int = 0                                  # the scheduler lock's handle
        self.latest = 0.0                                     # the latest simulated time seen
        self.contended: dict[str, tuple[float, str]] = {}     # lock -> longest wait, site
        self.slow_swapin = 0.0                                # longest swap-in, swapper busy
        self.slow_swapin_of = ""                              # ... of which process

    # -- what the kernel registers, and what the server tells -------------------------
    def policy(self, payload: Any) -> None:
        if not isinstance(payload, dict):
            raise TypeError("POLICY liveness: a map")
        self.reg = payload
        self.add_waits(payload.get("waits") or {})

    def add_waits(self, waits: Any) -> None:
        """What sleeps wait for, by wait message (``POLICY waits``, or the liveness
        registration's ``waits``): each subsystem registers its own."""
        if not isinstance(waits, dict) or not all(_test_ok(w) for w in waits.values()):
            raise TypeError("POLICY waits: a map of wait message to a test: {field, "
                            "clear}, {field, equals}, {sum, at_least}, {list, field, "
                            "equals} or {idle}, with chan (the channel's field), what (the "
                            "words for it), poll, count and name (fields whose last store "
                            "tells) optional")
        self.waits = {**self.waits, **waits}
        self.wait_fields = {f for w in self.waits.values() for f in _tested(w)}
        if self.reg is not None:            # (a swap-in request's store, for its report)
            self.wait_fields.add(str(self.reg["sflag"]))
        self.wait_counts = {str(w["field"]) for w in self.waits.values() if w.get("count")}
        self.counts = self.wait_counts | set(self.refs)

    def add_refs(self, refs: Any) -> None:
        """Counts of references (``POLICY refs``: vm_refcnt), each with the pointer field
        by which a process holds one (``holder``: p_vmspace) and the words for a
        reference never dropped (``what``): the hold ledger keeps their raises, each
        given to the holder whose pointer the raiser stores next to it (or a transient
        hold of the raiser's own), and an object whose count stays above 0 while no live
        process points to it is reported (the module's **orphan**)."""
        if not isinstance(refs, dict) or not all(
                isinstance(f, str) and isinstance(r, dict) and isinstance(r.get("holder"), str)
                and isinstance(r.get("what", ""), str) for f, r in refs.items()):
            raise TypeError("POLICY refs: a map of count field to {holder (the pointer "
                            "field that holds a reference), what (optional)}")
        self.refs = {**self.refs, **{str(f): {"holder": str(r["holder"]),
                                              "what": str(r.get("what", ""))}
                                     for f, r in refs.items()}}
        self.holders = {r["holder"]: f for f, r in self.refs.items()}
        self.counts = self.wait_counts | set(self.refs)

    def _op(self) -> int:
        """The machine's operation being handled (0 where there is no sequencer)."""
        seq = getattr(self.srv, "seq", None)
        return int(seq.ops) if seq is not None else 0

    def now(self) -> float:
        srv = self.srv
        if srv.virtual:         # between requests (the end-of-run report) cur_t is 0
            self.latest = max(self.latest, srv.cur_t / 1e9)
            return self.latest
        return time.monotonic() - (srv.started_at or time.monotonic())

    def store(self, tid: int, site: str, h: int, fields: list[str]) -> None:
        if not self.refs.keys().isdisjoint(fields):   # (before the store: what it replaces)
            for f in self.refs.keys() & set(fields):
                self._begin(h, f)
        self.stored_by(tid, site, h, fields)

    def stored_by(self, tid: int, site: str, h: int, fields: list[str]) -> None:
        """Who stored ``fields`` of ``h`` last (a plain store, or an atomic one: an AP's
        ``atomic_add`` of ``booted_cpus``), as the reports name it."""
        reg = self.reg
        if reg is None:
            return
        if reg["inhibitors"] in fields:
            self.n += 1
            self.stored[h] = (site, tid, self.n)
        for f in self.wait_fields.intersection(fields):
            self.field_stored[(h, f)] = (site, tid, self._op())

    def loaded(self, tid: int, h: int, fields: list[str]) -> None:
        """Before a load of ``fields`` of ``h`` that counts holds: what ``tid`` reads,
        which its store of it (a read-modify-write) is made from."""
        obj = self.srv.kmem.objs.get(h) or {}
        for f in self.counts.intersection(fields):
            value = obj.get(f)
            if isinstance(value, int):
                self.read[(tid, h, f)] = value

    def _begin(self, h: int, f: str) -> None:
        """A count of references the ledger has not seen yet (an object made before the
        kernel registered it: vmspace0): what it holds, raised before the ledger began."""
        if (h, f) in self.raised:
            return
        value = self.srv.kmem.objs.get(h, {}).get(f)
        if isinstance(value, int) and value > 0:
            self.raised[(h, f)] = [_Raise("", 0, "?", self.now(), 0)] * value

    def created(self, tid: int, site: str, h: int, init: dict[str, Any]) -> None:
        """A new object whose count of references starts above 0 (vmspace_alloc's
        ``vm_refcnt = 1``): raises by its maker @ ``site``, for the holder it points to
        it next."""
        for f in self.refs.keys() & set(init):
            value = init[f]
            if isinstance(value, int) and value > 0:
                self.raised[(h, f)] = [_Raise(site, tid, self._tname(tid), self.now(),
                                              self._op())] * value

    def counted(self, tid: int, site: str, h: int, fields: list[str],
                stale: dict[str, tuple[int, str, int, str, int]] | None = None) -> None:
        """After a store of ``fields`` of ``h``: a field the kernel registered as a count
        of holds (``count``: PHOLD's p_lock; ``refs``: vm_refcnt) keeps who raised it and
        has not lowered it since (a lowering undoes the same thread's latest raise, or
        else the latest; for a count of references, :meth:`_undone`); the raises not
        undone are the count as this ledger last saw it, but for what lost updates made
        of it. ``stale``: the lost update this store makes, by field, as lockkey saw it
        (where this thread loaded it, and the other thread's store it loses): from what
        the thread's latest load read (:meth:`loaded`), the ledger does what it meant (a
        PRELE undoes its own raise, not nothing) and keeps the difference (``lost``: the
        count higher than its raises, a decrement lost). A store of a holder's pointer
        (p_vmspace) gives it its maker's raise, or the raise its thread makes next."""
        objs = self.srv.kmem.objs
        for f in self.counts.intersection(fields):
            new = objs.get(h, {}).get(f)
            if not isinstance(new, int):
                continue
            ref = f in self.refs
            raised = self.raised.setdefault((h, f), [])
            gap = self.lost.get((h, f), (0, "", ""))[0]
            change = new - (len(raised) + gap)
            st = (stale or {}).get(f)
            rd = self.read.pop((tid, h, f), None)           # (its latest load: a locked
            if st is not None and rd is not None and new - rd != change:  # one is fresh)
                meant = new - rd                            # from a stale load: what it
                gap += change - meant                       # meant, and what it lost
                change = meant
                words = (f"thread {tid} ({self._tname(tid)}) stored {f} {new} @ {site} "
                         f"from its load of {rd} @ {st[1]}, losing thread {st[2]}'s "
                         f"store @ {st[3]} (operation {st[4]}): lockkey's lost update")
                self.lost[(h, f)] = (gap, site, words)
            if new <= 0 or gap == 0:            # (a count at 0 or below: all undone)
                self.lost.pop((h, f), None)
            if change > 0:
                holder = 0
                if ref and self.pending.get(tid, (0, 0))[1] == h:
                    holder = self.pending.pop(tid)[0]
                r = _Raise(site, tid, self._tname(tid), self.now(), self._op())
                raised.append(r._replace(holder=holder, holder_pid=self._pid(holder)))
                raised.extend([r] * (change - 1))
            for _ in range(min(-change, len(raised))):
                raised.pop(self._undone(raised, tid, ref))
                self.lowered[(tid, f)] = (self.now(), h)
            if new <= 0:
                raised.clear()
            if not raised:
                del self.raised[(h, f)]
        if self.holders.keys().isdisjoint(fields):
            return
        for pf in self.holders.keys() & set(fields):
            obj = objs.get(h, {}).get(pf)
            if not isinstance(obj, int) or isinstance(obj, bool) or not obj:
                continue
            raised = self.raised.get((obj, self.holders[pf]), [])
            mine = [i for i, r in enumerate(raised) if r.by == tid and not r.holder]
            if mine:                            # vmspace_fork's, then p2->p_vmspace = vm2
                raised[mine[-1]] = raised[mine[-1]]._replace(holder=h, holder_pid=self._pid(h))
            else:                               # p2->p_vmspace = vm, then vm_refcnt++
                self.pending[tid] = (h, obj)

    def _undone(self, raised: list[_Raise], tid: int, ref: bool) -> int:
        """Which raise a lowering by ``tid`` undoes. A count of holds (p_lock): the
        thread's own latest, else the latest. A count of references: the one its process
        holds (exit1's drop, vmspace_unshare's), else its own transient hold (the vm
        daemon's), else the latest transient one, else as for holds."""
        if ref:
            p = self._proc_of(tid)
            pid = self._pid(p)
            for pick in (lambda r: bool(p) and r.holder == p and r.holder_pid == pid,
                         lambda r: r.by == tid and not r.holder,
                         lambda r: not r.holder):
                hits = [i for i, r in enumerate(raised) if pick(r)]
                if hits:
                    return hits[-1]
        mine = [i for i, r in enumerate(raised) if r.by == tid]
        return mine[-1] if mine else -1

    def _pid(self, p: int) -> int:
        """The pid of process ``p`` (-1: none)."""
        pid = (self.srv.kmem.objs.get(p) or {}).get((self.reg or {}).get("pid", ""))
        return pid if isinstance(pid, int) else -1

    def _proc_of(self, tid: int) -> int:
        """The process of thread ``tid`` (0: unknown)."""
        field = (self.reg or {}).get("proc")
        p = (self.srv.kmem.objs.get(tid) or {}).get(field) if field else None
        return p if isinstance(p, int) else 0

    def sleep(self, tid: int, site: str, timo: int) -> None:
        now = self.now()
        before = self.slept.get(tid)
        if not (timo and before is not None and before[2] and before[0] == site):
            self.polling[tid] = now             # not the same poll as before
        self.slept[tid] = (site, now, timo, self._op())
        chan = self.srv.sleepq.sleeping.get(tid)
        if timo and chan is not None:
            self.poll_chan[tid] = chan
        else:
            self.poll_chan.pop(tid, None)
        if chan is not None:
            self.slept_on.add(chan)
        if self.reg is not None:                # how often each wait was slept: coverage
            td = self.srv.kmem.objs.get(tid) or {}
            wmesg = str(td.get(self.reg["wmesg"]) or "?")
            self.sleeps_by[wmesg] = self.sleeps_by.get(wmesg, 0) + 1
            if (timo and chan is not None and now - self.polling.get(tid, now) >= self.bound_s
                    and self.srv.panic is None):
                self._poll_again(tid, td, chan, now)

    def _poll_again(self, tid: int, td: dict[str, Any], chan: Hashable, now: float) -> None:
        """A poll past the bound is judged each time it sleeps again, not only when a look
        finds it asleep: looks come with requests, and on a quiet machine those are the
        very clock ticks that wake a poller of a tick, so a look may never find it asleep
        (exit1's poll for holds went unreported in some runs of a test that planted
        one)."""
        assert self.reg is not None
        wait = self.waits.get(td.get(self.reg["wmesg"]))
        if wait is None or not wait.get("poll") or ("never", tid) in self.reported:
            return
        p = self.srv.kmem.objs.get(self._proc_of(tid)) or {}
        self._registered_wait(tid, td, p, chan, wait, now, set())

    def wakeup(self, chan: Hashable, tids: list[int], site: str = "", by: int = 0,
               caller: str = "") -> None:
        """Thread ``by`` woke ``tids`` (taken off their sleep queue on ``chan``) @ ``site``,
        in a wakeup called @ ``caller``."""
        if not tids:                            # nobody asleep there (the wrong channel?)
            n = self.unheard.get(chan, (0, "", 0))[0]
            self.unheard[chan] = (n + 1, caller or site, self._op())
        else:
            self.woken[chan] = self.woken.get(chan, 0) + 1
            now_us = self.srv.locks.clock()         # the lock table's time: see _halfway
            for tid in tids:
                self.off[tid] = now_us
                self.n += 1
                self.dequeued[tid] = (site, by, self.n, self._op(), "woken", caller)

    def unslept(self, tid: int, site: str = "", by: int = 0,
                chan: Hashable | None = None) -> None:
        """``tid`` was taken off its sleep queue ``chan`` without a wakeup (a timeout), by
        thread ``by`` @ ``site``. A sleep that had no timeout cannot time out: a callout
        of an earlier, timed sleep was left armed (not stopped when a wakeup ended that
        sleep) and has fired into this one, a spurious wakeup: reported."""
        self.off[tid] = self.srv.locks.clock()
        self.n += 1
        self.dequeued[tid] = (site, by, self.n, self._op(), "timed out", "")
        slept = self.slept.get(tid)
        if slept is None or slept[2]:
            return
        key = ("notimo", slept[0], site)
        if key in self.reported:
            return
        self.reported.add(key)
        on = f" on {self.chan(chan)}" if chan is not None else ""
        self.srv.finding(Finding(
            "liveness",
            f"timeout of a sleep with none: thread {tid} ({self._tname(tid)}) asleep{on} "
            f"@ {slept[0]} with no timeout was timed out"
            + (f" @ {site}" if site else "")
            + ": the timer of an earlier sleep left armed?",
            [s for s in (slept[0], site) if s],
            f"thread {tid} ({self._tname(tid)}) went to sleep{on} @ {slept[0]} with no "
            f"timeout; thread {by} took it off its sleep queue as a timeout"
            + (f" @ {site}" if site else "") + f" (operation {self._op()}): only an armed "
            "timer does that, so that of an earlier timed sleep was never stopped, and "
            "this sleep ended in a wakeup nobody made",
            f"liveness|notimo|{slept[0]}|{site}"))

    # -- the looks -----------------------------------------------------------------------
    def _halfway(self) -> set[int] | None:
        """The threads a sleep or wakeup may have left half done (the module's
        docstring): empty when nobody holds the scheduler lock; None before the kernel
        made it."""
        lt, name = self.srv.locks, self.srv.sleepq.sched_lock_name
        lk = lt.locks.get(self._sched)
        if lk is None or lk.name != name:
            lk = next((x for x in lt.locks.values() if x.name == name), None)
            if lk is None:
                return None
            self._sched = lk.handle
        if not lk.owner:
            self.off.clear()            # every sleep and wakeup so far is done
            return set()
        return {lk.owner} | {t for t, when in self.off.items() if when >= lk.since_us}

    def tick(self) -> None:
        """With each request (virtual time) or the loop's clock (wall time)."""
        now = self.now()
        if now < self.next_check or self.reg is None or self.srv.panic is not None:
            return
        skip = self._halfway()
        if skip is None:
            return
        self.next_check = now + CHECK_S
        self.checks += 1
        self.look(now, final=False, skip=skip)
        if self.checks % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        """Forget the threads and objects the kernel has freed (handles are never used
        again): what the detector keeps stays the size of the live machine."""
        live = self.srv.kmem.objs
        for d in (self.slept, self.stored, self.dequeued, self.polling, self.poll_chan,
                  self.off, self.pending):
            for tid in [t for t in d if t not in live]:
                del d[tid]
        for pairs in (self.field_stored, self.raised, self.lowered, self.lost):
            for key in [k for k in pairs if k[0] not in live]:
                del pairs[key]
        for key in [k for k in self.read if k[0] not in live or k[1] not in live]:
            del self.read[key]
        for chans in (self.unheard, self.woken):
            for c in [c for c in chans if isinstance(c, int) and c >> FIELD_BITS not in live]:
                del chans[c]
        self.slept_on = {c for c in self.slept_on
                         if not isinstance(c, int) or c >> FIELD_BITS in live}

    def _procs(self) -> list[tuple[int, dict[str, Any], list[tuple[int, dict[str, Any]]]]]:
        kmem, reg = self.srv.kmem, self.reg
        assert reg is not None
        out = []
        try:
            handles = kmem.listhead(int(reg["list"])).items()
        except (ObjectError, KeyError, TypeError, ValueError):
            return []
        for h in handles:
            obj = kmem.objs.get(h)
            if obj is None:
                continue
            decl = kmem.types.get(kmem.otype[h])
            idx = decl.order.index(reg["threads"]) if decl else -1
            tl = kmem.lists.get(field_addr(h, idx)) if idx >= 0 else None
            tds = [(t, kmem.objs[t]) for t in (tl.items() if tl is not None else [])
                   if t in kmem.objs]
            out.append((h, obj, tds))
        return out

    def chan(self, chan: Hashable) -> str:
        """A channel as the kernel would print it: the field it is the address of."""
        return self.srv.kmem.channel(chan)

    def _who(self, tid: int, td: dict[str, Any], p: dict[str, Any]) -> str:
        reg = self.reg
        assert reg is not None
        return (f"thread {tid} ({td.get(reg['name'], '')}) of pid {p.get(reg['pid'])} "
                f"({p.get(reg['comm'], '')})")

    def _tname(self, tid: int) -> str:
        reg = self.reg or {}
        return str((self.srv.kmem.objs.get(tid) or {}).get(reg.get("name", ""), "") or "?")

    def _inhib(self, v: int) -> str:
        names = [n for n, b in (self.reg or {}).get("inhibitor_bits", {}).items() if v & b]
        return f"{v:#x}" + (f" ({'|'.join(names)})" if names else "")

    def _went_to_sleep(self, tid: int, now: float) -> tuple[str, str]:
        s = self.slept.get(tid)
        if s is None:
            return "", "it never slept on a sleep queue"
        return s[0], f"it went to sleep @ {s[0]} {now - s[1]:.1f} s ago"

    def _where_is(self, tid: int, now: float) -> tuple[list[str], str]:
        """Where a thread is now (the swapper): asleep on a channel, waiting for a lock,
        or neither; its sites."""
        srv = self.srv
        chan = srv.sleepq.sleeping.get(tid)
        if chan is not None:
            site, txt = self._went_to_sleep(tid, now)
            timo = self.slept.get(tid, ("", 0.0, 0, 0))[2]
            return [site] if site else [], (
                f"asleep on {self.chan(chan)} "
                f"({'timeout ' + str(timo) + ' ticks' if timo else 'no timeout'}, "
                f"channel woken {self.woken.get(chan, 0)} times in the run): {txt}")
        w = srv.locks.waiting_for(tid)
        if w is not None:
            return [str(w.get("site", ""))], f"waiting for lock {w.get('name')} @ {w.get('site')}"
        return [], "neither asleep nor waiting for a lock (running or runnable)"

    def _test(self, wait: dict[str, Any], h: int) -> tuple[bool, str, list[tuple[int, str]]]:
        """A registered wait's test over object ``h`` (the channel's): whether it holds,
        the values it read (as a report shows them), and the (object, field) pairs whose
        last store a report names."""
        objs = self.srv.kmem.objs
        obj = objs.get(h) or {}
        named = [(h, str(f)) for f in wait.get("name", [])]
        if "sum" in wait:
            fields = [str(f) for f in wait["sum"]]
            total = sum(int(obj.get(f) or 0) for f in fields)
            floor = int(obj.get(wait["at_least"]) or 0)
            return (total >= floor, f"{' + '.join(fields)} = {total}, {wait['at_least']} "
                    f"{floor}", named or [(h, f) for f in fields])
        field = str(wait["field"])
        if "list" in wait:
            decl = self.srv.kmem.types.get(self.srv.kmem.otype.get(h, ""))
            idx = decl.order.index(wait["list"]) if decl and wait["list"] in decl.order else -1
            lst = self.srv.kmem.lists.get(field_addr(h, idx)) if idx >= 0 else None
            members = [m for m in (lst.items() if lst is not None else []) if m in objs]
            hits = [m for m in members if objs[m].get(field) == wait["equals"]]
            return (bool(hits), f"{len(hits)} of {len(members)} on {wait['list']} with "
                    f"{field} {wait['equals']}", named or [(m, field) for m in hits[:1]])
        value = obj.get(field)
        if "clear" in wait:
            met = isinstance(value, int) and not value & int(wait["clear"])
            shown = f"{field} {value:#x}" if isinstance(value, int) else f"{field} {value}"
        else:
            met = value == wait["equals"]
            shown = f"{field} {value}"
        return met, shown, named or [(h, field)]

    def _last_store(self, pairs: list[tuple[int, str]]) -> tuple[str, str, int] | None:
        """The first of ``pairs`` with a store seen: (field, site, thread)."""
        for h, f in pairs:
            st = self.field_stored.get((h, f))
            if st is not None:
                return f, st[0], st[1]
        return None

    def _unwatched(self, tid: int, td: dict[str, Any], p: dict[str, Any], chan: Hashable,
                   now: float, idle: bool) -> None:
        """A sleep with no timeout, on its queue, that the kernel registered no test for
        (the module's **unwoken**): past the bound it is a hang. Wakeups that woke nobody
        on another field of the same object, where nobody ever sleeps, are named (the
        wrong channel?); an idle sleep (a daemon's, for work) is a hang only with them."""
        slept = self.slept.get(tid)
        if slept is None or slept[2] or now - slept[1] < self.bound_s:
            return                              # a timeout ends it; not yet the bound
        near = self._wrong_channels(chan)
        if idle and not near:
            return
        key = ("unwoken", tid)
        if key in self.reported:
            return
        self.reported.add(key)
        reg = self.reg
        assert reg is not None
        wmesg = td.get(reg["wmesg"], "")
        woken = self.woken.get(chan, 0)
        hint = ""
        if near:
            other, (n, site, _) = near[0]
            hint = (f"; {n} wakeups went to {self.chan(other)} instead, where nobody "
                    f"ever sleeps (last @ {site}): the wrong channel?")
        self.srv.finding(Finding(
            "liveness",
            f"never woken: {self._who(tid, td, p)} asleep on {self.chan(chan)} ({wmesg!r}) "
            f"for {now - slept[1]:.1f} s with no timeout (channel woken {woken} times in "
            f"the run){hint}",
            [s for s in [slept[0], near[0][1][1] if near else ""] if s],
            f"{self._who(tid, td, p)} went to sleep @ {slept[0]} {now - slept[1]:.1f} s ago "
            f"with no timeout, on {self.chan(chan)} ({wmesg!r}), which the kernel registered "
            + ("as idle (a sleep for work)" if idle else "no test for (kernel/kern/"
               "kern_proc.py's LIVENESS_WAITS says how)")
            + f"; nothing has woken it since: the wakeup is missing or goes elsewhere{hint}",
            f"liveness|unwoken|{slept[0]}"))

    def _wrong_channels(self, chan: Hashable) -> list[tuple[int, tuple[int, str]]]:
        """Channels of the same object as ``chan`` that were woken with nobody asleep
        there, and that nobody ever slept on: (channel, (wakeups, last site)), most
        first."""
        if not isinstance(chan, int):
            return []
        h = chan >> FIELD_BITS
        near = [(c, v) for c, v in self.unheard.items() if isinstance(c, int)
                and c >> FIELD_BITS == h and c != chan and c not in self.slept_on]
        return sorted(near, key=lambda cv: -cv[1][0])

    def _registered_wait(self, tid: int, td: dict[str, Any], p: dict[str, Any],
                         chan: Hashable, wait: dict[str, Any], now: float,
                         seen: set[tuple[str, int]]) -> None:
        """A registered wait: asleep with no timeout for a test that holds (the module's
        **done**), or polling for one that never does (**never**)."""
        slept = self.slept.get(tid)
        if not isinstance(chan, int) or slept is None or wait.get("idle"):
            return                              # (idle: a daemon waiting for work)
        try:
            h, field, _ = self.srv.kmem.resolve(chan)
        except ObjectError:
            return
        if "chan" in wait and field != wait["chan"]:
            return                          # the message used on another channel
        try:
            met, shown, pairs = self._test(wait, h)
        except (TypeError, ValueError):
            return                          # fields that hold no numbers: no judgement
        reg = self.reg
        assert reg is not None
        what = str(wait.get("what") or "its test")
        wmesg = td.get(reg["wmesg"], "")
        if slept[2]:                            # a timeout: only a poll is judged
            since = self.polling.get(tid, now)
            if met or not wait.get("poll") or now - since < self.bound_s:
                return
            key = ("never", tid)
            if key in self.reported or ("never", chan, slept[0]) in self.reported:
                return
            self.reported.add(key)
            self.reported.add(("never", chan, slept[0]))   # one report for a channel's
            others = [t for t, c in self.poll_chan.items()  # pollers of it, there, now
                      if t != tid and c == chan and self.slept[t][0] == slept[0]
                      and now - self.slept[t][1] <= CHECK_S]
            also = _more(others)
            last = self._last_store(pairs)
            held = [x for pair in pairs for x in self.raised.get(pair, [])]
            lost = [(pair[1], *self.lost[pair]) for pair in pairs
                    if self.lost.get(pair, (0, "", ""))[0] > 0]
            if held or lost:                    # a count: who holds, not the last store
                cause = held[0].site if held else lost[0][2]
                parts = [f"held @ {', '.join(sorted({r.site for r in held}))}"] if held \
                    else []
                parts += [f"a decrement lost @ {lsite}: {gap} more than its raises not "
                          f"undone" for _, gap, lsite, _ in lost]
                why = f" ({'; '.join(parts)})"
                how = "; ".join(
                    ([("; ".join(f"raised @ {r.site} by thread {r.by} ({r.name})"
                                 for r in held) + ", never lowered: never released")]
                     if held else [])
                    + [f"{f} is {gap} higher than its raises not undone ({len(held)}): a "
                       f"decrement lost, not a hold never released: {words}"
                       for f, gap, _, words in lost])
            else:
                cause = last[1] if last else ""
                why = f" ({last[0]} last stored @ {last[1]})" if last else ""
                how = (f"{last[0]} was last stored @ {last[1]} by thread {last[2]}: what "
                       f"that took is never given back" if last else "no store of it seen")
            self.srv.finding(Finding(
                "liveness",
                f"never given: {self._who(tid, td, p)}{also} polls on {self.chan(chan)} "
                f"({wmesg!r}) for {what} for {now - since:.1f} s; {shown}{why}",
                [s for s in [cause, slept[0]] if s],
                f"{self._who(tid, td, p)} has slept again and again @ {slept[0]} (timeout "
                f"{slept[2]} ticks) for {now - since:.1f} s, waiting for {what}; it has "
                f"not come: {shown}; {how}",
                f"liveness|never|{cause or slept[0]}"))
            return
        if not met:
            return
        key = ("done", tid)
        seen.add(key)
        since = self.first.setdefault(key, now)
        if now - since < self.bound_s or key in self.reported or ("chan", chan) in self.reported:
            return
        self.reported.add(key)
        self.reported.add(("chan", chan))       # one report for a channel
        others = [t for t, c in self.srv.sleepq.sleeping.items() if c == chan and t != tid]
        last = self._last_store(pairs)
        sites = [s for s in [last[1] if last else "", slept[0]] if s]
        also = _more(others)
        self.srv.finding(Finding(
            "liveness",
            f"lost wakeup: {self._who(tid, td, p)}{also} asleep on {self.chan(chan)} "
            f"({wmesg!r}) waits for {what}, which it is"
            + (f" ({last[0]} last stored @ {last[1]})" if last else "") + ": never woken",
            sites,
            f"{self._who(tid, td, p)} went to sleep @ {slept[0]} {now - slept[1]:.1f} s ago "
            f"with no timeout, waiting for {what}; it is so ({shown}) and has been for "
            f"{now - since:.1f} s; "
            + (f"{len(others)} more thread{'s' if len(others) > 1 else ''} sleep"
               f"{'' if len(others) > 1 else 's'} on the channel; " if others else "")
            + (f"{last[0]} was last stored @ {last[1]} by thread {last[2]}; " if last
               else "")
            + f"the channel was woken {self.woken.get(chan, 0)} times in the run: the "
            f"wakeup that should follow is missing" + self._woken_before(tid, chan, pairs),
            f"liveness|done|{last[1] if last else slept[0]}"))

    def _woken_before(self, tid: int, chan: Hashable, pairs: list[tuple[int, str]]) -> str:
        """A wakeup of ``chan`` that found nobody, made after the last store of the fields
        the wait tests and before ``tid`` slept there: the wakeup it missed, fallen in a
        window between its test and its sleep (an interlock dropped by hand before a
        tsleep)."""
        unheard, slept = self.unheard.get(chan), self.slept.get(tid)
        stores = [self.field_stored[pr][2] for pr in pairs if pr in self.field_stored]
        if unheard is None or slept is None or not stores:
            return ""
        (_, w_site, w_op), s_op = unheard, slept[3]
        if not max(stores) <= w_op <= s_op:
            return ""
        return (f"; a wakeup of the channel @ {w_site} (operation {w_op}) "
                f"found nobody asleep {s_op - w_op} operations before this thread slept "
                f"(operation {s_op}): it fell between the sleeper's test and its sleep")

    @staticmethod
    def _held_all_along(lk: Any, since_us: float) -> tuple[int, str, str] | None:
        """Who has held ``lk`` since before ``since_us`` without letting it go: (thread,
        "owner" or "shared holder", where it took it), or None when it changed hands
        (shared holders relaying each other count as changing hands)."""
        if lk.owner:
            return (lk.owner, "owner", lk.site) if lk.since_us <= since_us else None
        held = [(t0, o, s) for o, (t0, s) in lk.shared_since.items() if t0 <= since_us]
        if not held:
            return None
        _, owner, site = min(held)
        return owner, "shared holder", site

    def look(self, now: float, final: bool, skip: set[int] | frozenset[int] = frozenset()
             ) -> None:
        reg = self.reg
        assert reg is not None
        srv = self.srv
        bound = self.bound_s
        seen: set[tuple[str, int]] = set()
        swapper_tid = 0
        procs = self._procs()
        for _, p, tds in procs:
            if p.get(reg["pid"]) == reg.get("swapper_pid", 0) and tds:
                swapper_tid = tds[0][0]
        for ph, p, tds in procs:
            if p.get(reg["state"]) == reg.get("zombie"):
                continue
            for tid, td in tds:
                inhib = int(td.get(reg["inhibitors"]) or 0)
                if not inhib & int(reg["sleeping"]):
                    continue
                chan = srv.sleepq.sleeping.get(tid)
                wchan = td.get(reg["wchan"])
                if chan is not None and wchan:
                    wait = self.waits.get(td.get(reg["wmesg"]))
                    if wait is None or wait.get("idle"):
                        self._unwatched(tid, td, p, chan, now, bool(wait))
                        continue
                    if tid in skip:     # perhaps half way: it keeps its age, undecided
                        if ("done", tid) in self.first:
                            seen.add(("done", tid))
                        continue
                    self._registered_wait(tid, td, p, chan, wait, now, seen)
                    continue
                lkt = srv.locks.threads.get(tid)
                if (lkt is not None and lkt.waiting is not None) or td.get(reg.get("blocked", "")):
                    continue            # asleep on a lock's queue (an sx or lockmgr wait)
                key = ("lost", tid)
                if tid in skip:         # perhaps half way through a sleep or a wakeup
                    if key in self.first:
                        seen.add(key)   # it keeps its age, undecided
                    continue
                seen.add(key)
                since = self.first.setdefault(key, now)
                if key in self.reported or (now - since < (CHECK_S if final else bound)):
                    continue            # (at the end: lost at an earlier look too)
                self.reported.add(key)
                why = ("on no sleep queue" if chan is None else
                       f"on {self.chan(chan)} with an empty wait channel")
                sleep_site, slept = self._went_to_sleep(tid, now)
                last = self.stored.get(tid)
                deq = self.dequeued.get(tid) if chan is None else None
                stored = (f"its inhibitors were last stored @ {last[0]} by thread {last[1]}"
                          if last else "no store of its inhibitors seen")
                if deq is not None and (last is None or last[2] < deq[2]):
                    # nothing stored them since it left its queue: the bit was never
                    # cleared, by whoever took it off (not put back by a stale store)
                    cause, head = deq[0], (f"; taken off its sleep queue @ {deq[0]} and "
                                           f"left so")
                    how = (f"it was taken off its sleep queue @ {deq[0]}"
                           + (f" (wakeup called @ {deq[5]})" if deq[5] else "")
                           + f" by thread {deq[1]}"
                           + (f" (operation {deq[3]})" if deq[3] else "")
                           + f", which left it inhibited as sleeping ({stored}, before "
                           f"that)")
                else:
                    cause = last[0] if last else ""
                    head = f"; inhibitors last stored @ {last[0]}" if last else ""
                    how = stored + (" after it was taken off its sleep queue"
                                    if last and deq is not None else "")
                sites = [s for s in [cause, sleep_site] if s]
                srv.finding(Finding(
                    "liveness",
                    f"lost wakeup: {self._who(tid, td, p)} inhibited as sleeping "
                    f"({reg['inhibitors']} {self._inhib(inhib)}) {why}{head}",
                    sites,
                    f"{self._who(tid, td, p)}: inhibitors {self._inhib(inhib)}, wait channel "
                    f"{wchan or 0:#x} ({td.get(reg['wmesg'], '')!r}), {why}, for "
                    f"{now - since:.1f} s{' (at the end of the run)' if final else ''}: no "
                    f"wakeup can reach it, it will never run again; {slept}; {how}",
                    f"liveness|lost|{cause or sleep_site}"))
            flags = int(p.get(reg["sflag"]) or 0)
            pid = int(p.get(reg["pid"]) or 0)
            if flags & int(reg["swapinreq"]) and not flags & int(reg["inmem"]) and not final:
                key = ("swapin", pid)
                seen.add(key)
                since = self.first.setdefault(key, now)
                slept = self.slept.get(swapper_tid)
                asleep = (swapper_tid in srv.sleepq.sleeping and slept is not None
                          and slept[1] <= since)
                if key not in self.reported and now - since >= bound and not asleep:
                    # the swapper busy (swapping others in, waiting for memory or a lock):
                    # a slow swap-in, not a hang; the longest is in the report
                    if now - since > self.slow_swapin:
                        self.slow_swapin = now - since
                        self.slow_swapin_of = f"pid {pid} ({p.get(reg['comm'], '')})"
                elif key not in self.reported and now - since >= bound:
                    self.reported.add(key)
                    sites, where = self._where_is(swapper_tid, now)
                    asked = self.field_stored.get((ph, reg["sflag"]))
                    srv.finding(Finding(
                        "liveness",
                        f"swap-in request of pid {pid} ({p.get(reg['comm'], '')}) not served "
                        f"for {now - since:.1f} s; the swapper is {where.split(':')[0]}",
                        sites + ([asked[0]] if asked else []),
                        f"pid {pid} asked to be swapped in and is still out after "
                        f"{now - since:.1f} s"
                        + (f" ({reg['sflag']} last stored @ {asked[0]} by thread {asked[1]})"
                           if asked else "")
                        + f"; the swapper (thread {swapper_tid}) is {where}",
                        f"liveness|swapin|{sites[0] if sites else ''}"))
        if not final:
            now_us = srv.locks.clock()
            for tid, t in srv.locks.threads.items():
                if t.waiting is None:
                    continue
                h = t.waiting[0]
                since_us = t.wait_since.get(h)
                lk = srv.locks.locks.get(h)
                if since_us is None or lk is None:
                    continue
                key = ("starved", tid)
                seen.add(key)
                if key in self.reported or now_us - since_us < bound * 1e6:
                    continue
                holder = self._held_all_along(lk, since_us)
                if holder is None:
                    # the lock changed hands while this thread waited: contention, not a
                    # hang (a sleep mutex wakes one waiter, who must win it again, as in
                    # 5.0); the longest such waits are listed in the report, not findings
                    w = (now_us - since_us) / 1e6
                    if w > self.contended.get(lk.name, (0.0, ""))[0]:
                        self.contended[lk.name] = (w, t.waiting[2])
                    continue
                self.reported.add(key)
                owner, how, site = holder
                srv.finding(Finding(
                    "liveness",
                    f"lock starvation: thread {tid} waiting for {lk.name} for "
                    f"{(now_us - since_us) / 1e6:.1f} s @ {t.waiting[2]} (no wait-for cycle)",
                    [t.waiting[2], site],
                    f"thread {tid} waits for {lk.cls} {lk.name} @ {t.waiting[2]} since "
                    f"{(now_us - since_us) / 1e6:.1f} s; {how} thread {owner} took it @ "
                    f"{site or '?'} before that and holds it still; {len(lk.waiters)} "
                    f"waiters",
                    f"liveness|starved|{lk.name}|{t.waiting[2]}"))
        self._held_for_nothing(now)
        self._orphans(now, final, seen)
        for key in list(self.first):
            if key not in seen:
                del self.first[key]

    def _held_for_nothing(self, now: float) -> None:
        """A hold (a raise of a registered count) older than the bound whose holder has
        exited, sleeps for work, or has since taken and released holds of its own: it
        forgot this one (a PHOLD without its PRELE on one branch), whether or not the
        held process ever exits (the module's **kept**)."""
        reg = self.reg
        assert reg is not None
        objs = self.srv.kmem.objs
        for (h, f), raised in list(self.raised.items()):
            if f in self.refs:                  # held by processes: see _orphans
                continue
            for site, by, name, when, *_ in raised:
                if now - when < self.bound_s or ("kept", h) in self.reported:
                    continue
                td = objs.get(by)
                wait = self.waits.get(str((td or {}).get(reg["wmesg"]))) \
                    if by in self.srv.sleepq.sleeping else None
                if td is None:
                    why = "which has exited"
                elif wait is not None and wait.get("idle"):
                    why = "which sleeps for work since"
                elif ((lw := self.lowered.get((by, f))) is not None and lw[0] > when
                      and lw[1] != h):
                    # (of another object: not a nested one, faultin's inside a PHOLD)
                    why = "which has taken and released other holds since"
                else:
                    continue
                self.reported.add(("kept", h))
                obj = objs.get(h) or {}
                pid = obj.get(reg["pid"])
                self.srv.finding(Finding(
                    "liveness",
                    f"hold never released: {self.srv.kmem.name(h)}"
                    + (f" (pid {pid})" if pid is not None else "")
                    + f" {f} {obj.get(f)}: raised @ {site} by thread {by} ({name}) "
                    f"{now - when:.1f} s ago, {why}",
                    [site],
                    f"thread {by} ({name}) raised {f} of {self.srv.kmem.name(h)} @ {site} "
                    f"{now - when:.1f} s ago and has not lowered it, {why}: the hold is "
                    f"never released (a PHOLD without its PRELE on one branch); "
                    f"{len(raised)} raise(s) of it outstanding",
                    f"liveness|kept|{site}"))
                break

    def _pointing(self, field: str, lst: Any) -> dict[int, list[int]]:
        """Object -> the processes on the list at ``lst`` whose ``field`` points to it."""
        kmem = self.srv.kmem
        out: dict[int, list[int]] = {}
        try:
            handles = kmem.listhead(int(lst)).items()
        except (ObjectError, KeyError, TypeError, ValueError):
            return out
        for p in handles:
            v = (kmem.objs.get(p) or {}).get(field)
            if isinstance(v, int) and v:
                out.setdefault(v, []).append(p)
        return out

    def _gone(self, r: _Raise, h: int, f: str) -> str:
        """Why a transient hold (a raise no process holds) is forgotten, as
        :meth:`_held_for_nothing` says it: its thread has exited, sleeps for work, or has
        since dropped a reference of another object; "" while it is still at work."""
        reg = self.reg
        assert reg is not None
        objs = self.srv.kmem.objs
        td = objs.get(r.by)
        p = objs.get(self._proc_of(r.by)) or {}
        if td is None or (p and p.get(reg["state"]) == reg.get("zombie")):
            return "which has exited"
        if r.by in self.srv.sleepq.sleeping and (self.waits.get(
                str(td.get(reg["wmesg"]))) or {}).get("idle"):
            return "which sleeps for work since"
        lw = self.lowered.get((r.by, f))
        if lw is not None and lw[0] > r.when and lw[1] != h:
            return "which has dropped references of others since"
        return ""

    def _orphans(self, now: float, final: bool, seen: set[tuple[str, int]]) -> None:
        """An object whose count of references (``refs``: vm_refcnt) stays above 0 while
        no process on the process list points to it (p_vmspace), for the bound, and no
        thread holding one of its transient references is still at work: nobody will
        drop what is left, it is never freed (the module's **orphan**). The report names
        every raise not undone (site, thread, operation)."""
        if not self.refs:
            return
        reg = self.reg
        assert reg is not None
        kmem = self.srv.kmem
        live: dict[str, dict[int, list[int]]] = {}
        alive: set[int] | None = None           # the processes on the list that point
        for h, f in list(self.raised.keys() | self.lost.keys()):
            raised = self.raised.get((h, f), [])
            ref = self.refs.get(f)
            value = (kmem.objs.get(h) or {}).get(f)
            if ref is None or not isinstance(value, int) or value <= 0:
                continue
            holder = ref["holder"]
            if holder not in live:
                live[holder] = self._pointing(holder, reg["list"])
            if h in live[holder]:
                continue
            if alive is None:
                alive = {(p, self._pid(p)) for ps in live[holder].values() for p in ps}
            if any((r.holder, r.holder_pid) in alive for r in raised):
                continue                        # its holder alive, pointing elsewhere
                                                # (vmspace_unshare, before its free)
            gone = [(r, self._gone(r, h, f) if not r.holder else "") for r in raised]
            if any(not r.holder and not why for r, why in gone):
                continue                        # a transient hold, its thread at work
            key = ("orphan", h)
            seen.add(key)
            since = self.first.setdefault(key, now)
            if key in self.reported or now - since < (CHECK_S if final else self.bound_s):
                continue
            self.reported.add(key)
            zombies = (self._pointing(holder, reg["zombies"]).get(h, [])
                       if reg.get("zombies") else [])
            name = kmem.name(h)

            def one(r: _Raise, why: str) -> str:
                if not r.site:
                    return "raised before the ledger began"
                held = ""
                if r.holder:
                    held = (f" for {kmem.name(r.holder)} (pid {r.holder_pid}), which "
                            f"has exited")
                return (f"raised @ {r.site} by thread {r.by} ({r.name}) at operation "
                        f"{r.op}, {now - r.when:.1f} s ago"
                        + (held or f", a hold of its own, {why}"))
            gap, lsite, words = self.lost.get((h, f), (0, "", ""))
            sites = list(dict.fromkeys([r.site for r in raised if r.site]
                                       + ([lsite] if gap > 0 else [])))
            what = ref.get("what") or "a raise without its drop"
            zs = [f"pid {(kmem.objs.get(z) or {}).get(reg['pid'])}" for z in zombies]
            first = raised[0] if raised else None
            self.srv.finding(Finding(
                "liveness",
                f"reference never dropped: {name} {f} {value}, and no live process holds "
                f"it ({holder}): "
                + ("" if first is None else
                   (f"raised @ {first.site} by thread {first.by} ({first.name})"
                    if first.site else "raised before the ledger began")
                   + (f" and {len(raised) - 1} more" if len(raised) > 1 else "")
                   + ", never dropped")
                + ("; " if first is not None and gap > 0 else "")
                + (f"a decrement lost @ {lsite}" if gap > 0 else ""),
                sites,
                f"{name} has {f} {value} but no process on the process list points to it "
                f"by {holder}"
                + (f" (only the exited {', '.join(zs)}, which hold"
                   f"{'s' if len(zs) == 1 else ''} no reference)" if zs else "")
                + f", for {now - since:.1f} s"
                + (" (at the end of the run)" if final else "")
                + f": nobody will drop what is left and it is never freed ({what}); the "
                f"raises not undone: " + ("; ".join(one(r, why) for r, why in gone) or "none")
                + (f"; {f} is {gap} higher than its raises not undone: a decrement lost, "
                   f"not a raise never dropped: {words}" if gap > 0 else ""),
                f"liveness|orphan|{sites[0] if sites else name}"))

    def at_end(self) -> dict[str, Any]:
        """The end of the run: a lost thread is a finding whatever the bound (but for
        those a CPU stopped inside a sleep or a wakeup may have left half way); every
        thread still asleep with no timeout is listed (with ``came_true_s``, how long
        its registered wait has held, when it does: a lost wakeup the run ended too soon
        to report); and, for each thread alive, who
        last took it off a sleep queue (``woken``: where, by whom, at which operation),
        for a dump's trace of it."""
        if self.reg is None:
            return {"checks": self.checks, "asleep": []}
        now = self.now()
        skip = self._halfway()
        if skip is not None and self.srv.panic is None:
            self.look(now, final=True, skip=skip)
        reg = self.reg
        who = {tid: (self._who(tid, td, p), td.get(reg["wmesg"], ""))
               for _, p, tds in self._procs() for tid, td in tds}
        asleep = []
        for tid, chan in sorted(self.srv.sleepq.sleeping.items()):
            site, when, timo, _ = self.slept.get(tid, ("", now, 0, 0))
            if timo:
                continue
            name, wmesg = who.get(tid, (f"thread {tid}", ""))
            entry = {"thread": name, "wmesg": wmesg, "channel": self.chan(chan),
                     "site": site, "asleep_s": round(now - when, 3),
                     "channel_woken": self.woken.get(chan, 0)}
            true_since = self.first.get(("done", tid))
            if true_since is not None:      # its registered wait holds: a lost wakeup
                entry["came_true_s"] = round(now - true_since, 3)   # under the bound
            asleep.append(entry)
        woken: dict[str, dict[str, Any]] = {
            str(tid): {"site": d[5] or d[0], "by": d[1], "op": d[3], "how": d[4]}
            for tid in sorted(who) if (d := self.dequeued.get(tid)) is not None}
        for tid in self.srv.sleepq.sleeping:        # asleep now: this sleep, first
            if tid in who and (sl := self.slept.get(tid)) is not None:
                woken.setdefault(str(tid), {})["asleep"] = {
                    "site": sl[0], "s": round(now - sl[1], 3), "timeout": sl[2]}
        return {"checks": self.checks, "bound_s": self.bound_s, "asleep": asleep,
                "woken": woken, "sleeps": dict(sorted(self.sleeps_by.items())),
                "slow_swapin_s": round(self.slow_swapin, 3),
                "slow_swapin_of": self.slow_swapin_of,
                "contended": {n: {"wait_s": round(w, 3), "site": site}
                              for n, (w, site) in sorted(self.contended.items())}}


__all__ = ["CHECK_S", "Hangs"]
