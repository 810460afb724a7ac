"""The server's detectors on their own: lock order (WITNESS), deadlock, lock keys.

Pure logic, in process: a LockTable and an ObjectStore driven directly, as the server
drives them. Each detector is made to fire, and shown silent on correct use. The machine
tests (test_vm_glue.py, test_stress.py) show them at work on the real kernel.
"""

from __future__ import annotations

import pytest

from smp.hw.protocol import (AF_PICKUP, AF_TRY, EXCL, GRANTED, LF_DUPOK, LF_NOSHREC, LF_NOWITNESS,
                             LF_RECURSE, LK_RW, LK_SLEEP, LK_SPIN, QUEUED, SHARED)
from smp.kernel.kern import subr_witness
from smp.machine.liveness import spin_held_text
from smp.machine.lockcheck import LockKeyChecker
from smp.machine.locks import Deadlock, LockError, LockTable
from smp.machine.objects import ObjectStore, field_addr
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Finding, Witness

pytestmark = pytest.mark.quick


# the kernel's lock classes, as it initialises them: (kind, class name, flags)
LC_SLEEP = (LK_SLEEP, "sleep mutex", 0)
LC_SPIN = (LK_SPIN, "spin mutex", 0)
LC_SX = (LK_RW, "sx", 0)
LC_LOCKMGR = (LK_RW, "lockmgr", LF_NOWITNESS | LF_NOSHREC)


class Machine:
    """A lock table with WITNESS and deadlock checks, its sleep queues, and named locks;
    the kernel's static order and sched lock registered as the kernel registers them at
    boot."""

    def __init__(self) -> None:
        self.findings: list[Finding] = []
        self.witness = Witness(self.findings.append)
        self.witness.register_order(subr_witness.ORDER_LISTS, subr_witness.EXEMPT)
        self.locks = LockTable(self.witness, deadlock_check=True)
        self.sleepq = SleepQueues(self.locks)
        self.sleepq.sched_lock_name = subr_witness.SCHED_LOCK
        self.addr: dict[str, int] = {}

    def lock(self, name: str, cls: tuple[str, str, int] = LC_SLEEP, flags: int = 0) -> int:
        a = 0x1000 + len(self.addr)
        self.locks.init(a, cls[0], cls[1], name, flags | cls[2])
        self.addr[f"{name}#{a}"] = a
        return a

    def take(self, tid: int, a: int, site: str, mode: int = EXCL, flags: int = 0) -> int:
        return self.locks.acquire(tid, 0, site, a, mode, flags)

    def summaries(self) -> list[str]:
        return [f.summary for f in self.findings]


@pytest.fixture()
def m() -> Machine:
    return Machine()


# -- WITNESS ---------------------------------------------------------------------------------
def test_a_reversed_order_is_reported_once_with_both_sites(m: Machine) -> None:
    a, b = m.lock("lock A"), m.lock("lock B")
    assert m.take(1, a, "x.py:1") == GRANTED
    assert m.take(1, b, "x.py:2") == GRANTED          # learns A -> B
    m.locks.release(1, 0, "x.py:3", b, EXCL)
    m.locks.release(1, 0, "x.py:4", a, EXCL)
    assert m.findings == []
    m.take(2, b, "y.py:10")
    m.take(2, a, "y.py:11")                           # B -> A: a reversal
    m.locks.release(2, 0, "y.py:12", a, EXCL)
    m.take(2, a, "y.py:13")                           # the same reversal again: once only
    assert len(m.findings) == 1
    f = m.findings[0]
    assert f.detector == "witness" and "lock order reversal" in f.summary
    assert "1st lock B" in f.detail and "y.py:10" in f.detail and "2nd lock A" in f.detail
    assert "x.py:1" in f.sites and "x.py:2" in f.sites       # where the order was learned


def test_a_three_lock_cycle_with_no_pairwise_reversal_is_reported_naming_every_edge(
        m: Machine) -> None:
    """A -> B (thread 1), B -> C (thread 2), then C -> A (thread 3): no two threads take
    the same two locks, but the order is transitive (subr_witness.c's isitmydescendant
    walks the tree), so the third is a reversal of A -> B -> C, named with the site that
    established each step."""
    a, b, c = m.lock("lock A"), m.lock("lock B"), m.lock("lock C")
    for tid, (x, y), site in ((1, (a, b), "t1.py"), (2, (b, c), "t2.py")):
        m.take(tid, x, f"{site}:1")
        m.take(tid, y, f"{site}:2")
        m.locks.release(tid, 0, f"{site}:3", y, EXCL)
        m.locks.release(tid, 0, f"{site}:4", x, EXCL)
    assert m.findings == []
    m.take(3, c, "t3.py:1")
    m.take(3, a, "t3.py:2")                           # C -> A closes A -> B -> C -> A
    assert m.summaries() == ["lock order reversal: lock C -> lock A (established: lock A -> "
                             "lock B -> lock C): 1st @ t3.py:1, 2nd @ t3.py:2"]
    f = m.findings[0]
    assert f.detail == ("lock order reversal\n"
                        " 1st lock C (sleep mutex) @ t3.py:1\n"
                        " 2nd lock A (sleep mutex) @ t3.py:2\n"
                        "established order: lock A -> lock B -> lock C, each step first seen\n"
                        " lock A -> lock B: 1st lock A @ t1.py:1, 2nd lock B @ t1.py:2\n"
                        " lock B -> lock C: 1st lock B @ t2.py:1, 2nd lock C @ t2.py:2"), f.detail
    assert f.sites == ["t3.py:1", "t3.py:2", "t1.py:1", "t1.py:2", "t2.py:1", "t2.py:2"]
    m.locks.release(3, 0, "t3.py:3", a, EXCL)
    m.take(3, a, "t3.py:4")                           # the same reversal: once only
    assert len(m.findings) == 1


def test_the_static_order_of_2002_is_known_from_the_start(m: Machine) -> None:
    giant, allproc = m.lock("Giant", flags=LF_RECURSE), m.lock("allproc", LC_SX)
    m.take(1, allproc, "a.py:1", SHARED)
    m.take(1, giant, "a.py:2")                        # allproc -> Giant: reversed at once
    assert any("Giant" in s and "allproc" in s for s in m.summaries())


def test_trylocks_and_giant_pickup_are_not_order_checked(m: Machine) -> None:
    a, b = m.lock("lock A"), m.lock("lock B")
    m.take(1, a, "x.py:1")
    m.take(1, b, "x.py:2")
    m.locks.release(1, 0, "x.py:3", b, EXCL)
    m.locks.release(1, 0, "x.py:4", a, EXCL)
    m.take(2, b, "y.py:1")
    assert m.take(2, a, "y.py:2", flags=AF_TRY) == GRANTED    # rule 2: not checked
    m.locks.release(2, 0, "y.py:3", a, EXCL)
    m.take(2, a, "y.py:4", flags=AF_PICKUP)                  # rule 7: no edge, no check
    assert m.findings == []


def test_duplicate_locks_warn_unless_dupok(m: Machine) -> None:
    p1, p2 = m.lock("process lock", flags=LF_DUPOK), m.lock("process lock", flags=LF_DUPOK)
    m.take(1, p1, "p.py:1")
    m.take(1, p2, "p.py:2")
    assert m.findings == []
    o1, o2 = m.lock("lockobj"), m.lock("lockobj")
    m.take(3, o1, "o.py:1")
    m.take(3, o2, "o.py:2")
    assert m.summaries() == ['acquiring duplicate lock of same type: "lockobj"']


def test_an_sx_taken_while_holding_a_mutex_other_than_giant_is_a_reversal(m: Machine) -> None:
    mtx, sx = m.lock("some mutex"), m.lock("proctree", LC_SX)
    giant = m.lock("Giant", flags=LF_RECURSE)
    m.take(1, giant, "g.py:1")
    m.take(1, sx, "g.py:2")                          # Giant -> sx: fine
    m.locks.release(1, 0, "g.py:3", sx, EXCL)
    assert m.findings == []
    m.take(1, mtx, "g.py:4")
    m.take(1, sx, "g.py:5")
    assert any("sleepable proctree" in s for s in m.summaries())


def test_an_sx_taken_shared_twice_by_one_thread_is_allowed_silently_as_in_5_0(
        m: Machine) -> None:
    """FreeBSD 5.0's sx_init gave every sx LO_RECURSABLE, and witness_lock() only counts a
    recursion of a recursable lock (``lock1->li_flags++``); _sx_slock checked only that the
    thread was not the exclusive holder. Readers wait only while a writer holds the lock,
    so a writer queued between the two shared acquires does not deadlock the reader.
    Exclusive recursion and mixing modes still panic (_sx_xlock's KASSERT "xlock already
    held", "slock while xlock is held")."""
    sx = m.lock("allproc", LC_SX)
    assert m.take(1, sx, "r.py:1", SHARED) == GRANTED
    assert m.take(2, sx, "w.py:1", EXCL) == QUEUED           # a writer waits ...
    assert m.take(1, sx, "r.py:2", SHARED) == GRANTED        # ... and the reader recurses
    assert m.findings == []
    assert [h["site"] for h in m.locks.held_by(1)] == ["r.py:1", "r.py:2"]
    assert m.locks.release(1, 0, "r.py:3", sx, SHARED) == []     # still held once
    assert m.locks.release(1, 0, "r.py:4", sx, SHARED) == [(0, 2, sx, False)]
    assert m.locks.held_by(1) == [] and m.findings == []
    x = m.lock("proctree", LC_SX)
    m.take(3, x, "x.py:1", EXCL)
    with pytest.raises(LockError, match="recursed on non-recursive sx"):
        m.take(3, x, "x.py:2", EXCL)
    with pytest.raises(LockError, match="excl->share"):
        m.take(3, x, "x.py:3", SHARED)


def test_lockmgr_locks_are_not_tracked(m: Machine) -> None:
    a, mapl = m.lock("lock A"), m.lock("user map", LC_LOCKMGR)
    m.take(1, mapl, "m.py:1")
    m.take(1, a, "m.py:2")
    m.locks.release(1, 0, "m.py:3", a, EXCL)
    m.locks.release(1, 0, "m.py:4", mapl, EXCL)
    m.take(2, a, "m.py:5")
    m.take(2, mapl, "m.py:6")
    assert m.findings == []


def test_sleeping_with_a_mutex_held_warns_and_with_sched_lock_alone_does_not(m: Machine) -> None:
    sched = m.lock("sched lock", LC_SPIN, LF_RECURSE)
    inter, other = m.lock("interlock"), m.lock("held mutex")
    m.take(1, inter, "s.py:1")
    m.take(1, sched, "s.py:2")
    m.sleepq.sleep(1, 0, "s.py:3", "chan", inter)     # the interlock is dropped: silent
    assert m.findings == []
    m.locks.release(1, 0, "s.py:4", sched, EXCL)    # (the switch would hand it on)
    m.take(4, other, "s.py:5")
    m.take(4, sched, "s.py:6")
    m.sleepq.sleep(4, 0, "s.py:7", "chan2", 0, "libc.py:77")   # msleep called there
    assert m.summaries() == ['sleeping with "held mutex" locked @ libc.py:77']
    f = m.findings[0]
    assert f.sites == ["s.py:5", "s.py:7", "libc.py:77"]
    assert f.detail.endswith("sleep @ s.py:7 (thread 4, msleep called @ libc.py:77)")


def test_sleeping_with_a_spin_mutex_other_than_sched_lock_panics(m: Machine) -> None:
    sched, spin = m.lock("sched lock", LC_SPIN, LF_RECURSE), m.lock("a spin", LC_SPIN)
    m.take(1, spin, "s.py:1")
    m.take(1, sched, "s.py:2")
    with pytest.raises(LockError, match="sleeping with spin mutex a spin held"):
        m.sleepq.sleep(1, 0, "s.py:3", "chan", 0)


def test_a_blocking_sleep_lock_under_a_spin_mutex_panics(m: Machine) -> None:
    spin, mtx = m.lock("a spin", LC_SPIN), m.lock("a mutex")
    m.take(1, spin, "b.py:1")
    with pytest.raises(LockError, match="blockable sleep lock"):
        m.take(1, mtx, "b.py:2")
    assert m.take(1, mtx, "b.py:3", flags=AF_TRY) == GRANTED   # a try-lock is allowed


# -- deadlock --------------------------------------------------------------------------------
def test_a_two_thread_deadlock_panics_naming_every_edge(m: Machine) -> None:
    a, b = m.lock("lock A"), m.lock("lock B")
    m.take(1, a, "t1.py:1")
    m.take(2, b, "t2.py:1")
    assert m.take(1, b, "t1.py:2") == QUEUED          # 1 waits for 2: no cycle yet
    with pytest.raises(Deadlock) as e:
        m.take(2, a, "t2.py:2")                       # 2 waits for 1: the cycle closes
    msg = str(e.value)
    assert "thread 2 waits for sleep mutex \"lock A\" (asked @ t2.py:2)" in msg
    assert "thread 1 waits for sleep mutex \"lock B\" (asked @ t1.py:2)" in msg
    assert "taken @ t1.py:1" in msg and "taken @ t2.py:1" in msg
    assert len(e.value.cycle) == 2


def test_each_held_lock_says_the_operation_it_was_taken_at(m: Machine) -> None:
    """``show alllocks`` says when each lock was taken (smp replay --until goes there):
    a recursed lock's first acquire, forgotten once let go."""
    op = iter(range(100, 200))
    m.locks.ops = lambda: next(op)
    giant, sx = m.lock("Giant", flags=LF_RECURSE), m.lock("allproc", LC_SX)
    m.take(1, giant, "a.py:1")                        # operation 100
    m.take(1, giant, "a.py:2")                        # recursed: still taken at 100
    m.take(1, sx, "a.py:3", SHARED)                   # 101
    assert [(h["lock"], h["op"]) for h in m.locks.held_by(1)] == [
        ("Giant", 100), ("allproc", 101)]
    m.locks.release(1, 0, "a.py:4", sx, SHARED)
    m.locks.release(1, 0, "a.py:5", giant, EXCL)      # the recursion let go: still held
    assert [(h["lock"], h["op"]) for h in m.locks.held_by(1)] == [("Giant", 100)]
    m.locks.release(1, 0, "a.py:6", giant, EXCL)      # 102 (where it was let go)
    m.take(1, giant, "a.py:7")                        # 103
    assert [(h["lock"], h["op"]) for h in m.locks.held_by(1)] == [("Giant", 103)]
    # sched_lock handed over at a context switch: when it was taken goes with it
    sched = m.lock("sched lock", LC_SPIN)
    m.take(1, sched, "s.py:1")                        # 104
    m.locks.handoff(1, 0, sched, 3)
    assert [h["op"] for h in m.locks.held_by(3)] == [104]
    assert [h["lock"] for h in m.locks.held_by(1)] == ["Giant"]
    m.locks.release(3, 0, "s.py:2", sched, EXCL)      # 105
    m.take(3, sched, "s.py:3")                        # 106
    m.locks.handoff(3, 0, sched, 1)
    assert [(h["lock"], h["op"]) for h in m.locks.held_by(1)] == [("Giant", 103),
                                                                  ("sched lock", 106)]


def test_a_spin_lock_held_too_long_names_its_holder_and_who_took_it(m: Machine) -> None:
    """A spin lock held past the bound, in its holder's CPU's time; sched_lock handed on
    at context switches is one hold from the acquire that took it free, and says so."""
    now = [0.0]
    m.locks.clock = lambda: now[0]
    spin, sched = m.lock("a spin", LC_SPIN), m.lock("sched lock", LC_SPIN, LF_RECURSE)
    m.take(1, spin, "a.py:1")                         # at 0 us, by thread 1 of cpu 0
    assert m.locks.spin_held_too_long(1e6, cpu=0, now_us=1e6) is None     # at the bound
    lk, us = m.locks.spin_held_too_long(1e6, cpu=0, now_us=2.5e6)
    assert (lk.name, us) == ("a spin", 2.5e6)
    assert m.locks.spin_held_too_long(1e6, cpu=1, now_us=2.5e6) is None   # not cpu 1's
    assert spin_held_text(lk, us) == ("spin lock a spin held too long: 2.5 s by thread 1 "
                                      "(taken @ a.py:1)")
    m.locks.release(1, 0, "a.py:2", spin, EXCL)
    now[0] = 3e6
    m.take(1, sched, "kern/kern_synch.py:100")        # msleep's, at 3 s
    m.locks.handoff(1, 0, sched, 2)                   # mi_switch to thread 2 ...
    m.locks.handoff(2, 0, sched, 5)                   # ... which switched to thread 5
    lk, us = m.locks.spin_held_too_long(1e6, cpu=0, now_us=5.5e6)
    assert spin_held_text(lk, us) == (
        "spin lock sched lock held too long: 2.5 s by thread 5 (taken @ "
        "kern/kern_synch.py:100 by thread 1, handed on at 2 context switches since)")
    m.locks.release(5, 0, "kern/kern_synch.py:127", sched, EXCL)
    now[0] = 6e6
    m.take(5, sched, "b.py:1")                        # taken anew: no handoff since
    lk, us = m.locks.spin_held_too_long(1e6, cpu=0, now_us=8e6)
    assert spin_held_text(lk, us).endswith("by thread 5 (taken @ b.py:1)")


def test_a_lock_left_free_later_than_asked_is_waited_for_and_held_from_then(m: Machine) -> None:
    """In virtual time an acquire may come from a CPU whose clock is behind the release
    that left the lock free: the acquirer's clock moves to the release (the reply's time),
    the lock profile counts the move as a wait, and the hold starts there. (Counted from the request, a spin lock taken by a CPU far
    behind was "held too long" from its first request after the reply.)"""
    now = [9e6]
    m.locks.clock = lambda: now[0]
    spin = m.lock("a spin", LC_SPIN)
    m.take(1, spin, "a.py:1")
    m.locks.release(1, 0, "a.py:2", spin, EXCL)       # left free at 9 s
    now[0] = 2e6                                      # a CPU at 2 s asks for it
    assert m.locks.acquire(2, 1, "b.py:1", spin, EXCL, 0) == GRANTED
    assert m.locks.free_at(spin) == 9e9               # (the reply's time, ns)
    assert m.locks.spin_held_too_long(1e6, cpu=1, now_us=9.5e6) is None
    lk, us = m.locks.spin_held_too_long(1e6, cpu=1, now_us=10.5e6)
    assert us == 1.5e6
    # ... and the 7 s its clock moved to get the lock are a wait, as a spin on a lock
    # still held would be (LOCK_PROFILING: contested, wait_total)
    row, = [r for r in m.locks.profile.lock_report() if r["name"] == "a spin"]
    assert (row["acquires"], row["contested"], row["wait_us_total"]) == (2, 1, 7e6)
    site, = [r for r in m.locks.profile.profile_report() if r["site"] == "b.py:1"]
    assert (site["cnt_lock"], site["wait_max"]) == (1, 7e6)
    now[0] = 10.5e6
    m.locks.release(2, 1, "b.py:2", spin, EXCL)       # cpu 1 leaves it free at 10.5 s
    now[0] = 11e6                                     # asked for after that: no wait
    assert m.locks.acquire(3, 0, "c.py:1", spin, EXCL, 0) == GRANTED
    row, = [r for r in m.locks.profile.lock_report() if r["name"] == "a spin"]
    assert (row["acquires"], row["contested"]) == (3, 1)


def test_a_deadlock_names_each_holder() -> None:
    m = Machine()
    m.locks.thread_name = {1: "debugger", 2: "syscaller"}.get      # the server's names
    a, b = m.lock("lock A"), m.lock("lock B")
    m.take(1, a, "t1.py:1")
    m.take(2, b, "t2.py:1")
    m.take(1, b, "t1.py:2")
    with pytest.raises(Deadlock) as e:
        m.take(2, a, "t2.py:2")
    assert str(e.value) == (
        'deadlock: thread 2 (syscaller) waits for sleep mutex "lock A" (asked @ t2.py:2), '
        'held by thread 1 (debugger) (taken @ t1.py:1); thread 1 (debugger) waits for '
        'sleep mutex "lock B" (asked @ t1.py:2), held by thread 2 (syscaller) (taken @ '
        't2.py:1)'), str(e.value)


def test_a_reversal_that_deadlocks_at_once_is_reported_before_the_deadlock(m: Machine) -> None:
    """The order is checked when a thread must wait, not only at the grant: the first
    reversal of the static order Giant -> process lock deadlocks before anyone is granted
    anything, and the reversal is still named, with both sites."""
    giant, proc = m.lock("Giant", flags=LF_RECURSE), m.lock("process lock")
    m.take(1, giant, "debugger.py:1")
    m.take(2, proc, "exit.py:1")
    assert m.take(2, giant, "exit.py:2") == QUEUED    # process lock -> Giant: reversed
    assert m.summaries() == ["lock order reversal: process lock -> Giant "
                             "(established: Giant -> proctree -> allproc -> process lock): "
                             "1st @ exit.py:1, 2nd @ exit.py:2"]
    assert m.findings[0].sites[:2] == ["exit.py:1", "exit.py:2"]
    with pytest.raises(Deadlock):
        m.take(1, proc, "debugger.py:2")              # the cycle closes
    assert len(m.findings) == 1                       # the right order is no second one


def test_an_order_is_learned_by_a_thread_that_waits(m: Machine) -> None:
    a, b = m.lock("lock A"), m.lock("lock B")
    m.take(1, a, "t1.py:1")
    m.take(2, b, "t2.py:1")
    assert m.take(1, b, "t1.py:2") == QUEUED          # A -> B, learned while it waits
    with pytest.raises(Deadlock):
        m.take(2, a, "t2.py:2")                       # B -> A: a reversal, and a cycle
    assert m.summaries() == ["lock order reversal: lock B -> lock A "
                             "(established: lock A -> lock B): 1st @ t2.py:1, 2nd @ t2.py:2"]


def test_waiting_without_a_cycle_is_no_deadlock(m: Machine) -> None:
    a, b, c = m.lock("A"), m.lock("B"), m.lock("C")
    m.take(1, a, "1")
    m.take(2, b, "2")
    m.take(3, c, "3")
    assert m.take(1, b, "4") == QUEUED
    assert m.take(2, c, "5") == QUEUED                # a chain 1 -> 2 -> 3, no cycle


def test_a_spin_owner_on_its_way_to_sleep_closes_no_cycle(m: Machine) -> None:
    sched, giant = m.lock("sched lock", LC_SPIN, LF_RECURSE), m.lock("Giant", flags=LF_RECURSE)
    m.take(2, giant, "exit.py:1")
    assert m.take(1, giant, "fault.py:1") == QUEUED   # 1 is queued on Giant ...
    m.take(1, sched, "block.py:1")                    # ... and takes sched_lock to sleep
    assert m.take(2, sched, "exit.py:2") == QUEUED    # 2 spins: not a deadlock


# -- lock keys -------------------------------------------------------------------------------
def _keyed() -> tuple[ObjectStore, LockTable, LockKeyChecker, list[Finding], int]:
    kmem = ObjectStore()
    kmem.deftype("thing", [["t_mtx", "lock", "", None], ["t_own", "int", "c", 0],
                           ["t_sched", "int", "j", 0], ["t_free", "int", "n", 0],
                           ["t_count", "int", "F", 0], ["t_list", "int", "d", 0]])
    locks = LockTable()
    found: list[Finding] = []
    chk = LockKeyChecker(kmem, locks, found.append)
    chk.define_keys({"c": ["self", ""], "j": ["name", "sched lock"]})
    h = kmem.new("thing", {})
    chk.created(h, 1)
    locks.init(field_addr(h, 0), LK_SLEEP, "sleep mutex", "thing lock", 0)
    locks.init(0x99, LK_SPIN, "spin mutex", "sched lock", LF_RECURSE)
    return kmem, locks, chk, found, h


def test_an_unlocked_store_to_a_keyed_field_is_reported_once() -> None:
    kmem, locks, chk, found, h = _keyed()
    chk.access(1, "ctor.py:1", h, ["t_own", "t_sched"], "store")   # the creator: private
    assert found == []
    chk.access(2, "use.py:7", h, ["t_own"], "store")                # another thread
    chk.access(2, "use.py:7", h, ["t_own"], "store")                # once per field+site
    assert len(found) == 1
    f = found[0]
    assert f.detector == "lockkey" and "thing.t_own" in f.summary and "use.py:7" in f.summary
    assert "its own t_mtx" in f.summary


def test_a_lost_update_is_reported_with_the_three_accesses() -> None:
    """Thread 2 loads t_own without its lock, thread 3 stores it (locked), thread 2
    stores back what it computed: thread 3's store is lost. The race happened: reported
    with the three sites and operations. A read-modify-write nobody came between is only
    the unlocked access (reported as such)."""
    kmem, locks, chk, found, h = _keyed()
    op = iter(range(10, 100))
    chk.ops = lambda: next(op)
    chk.access(3, "x.py:0", h, ["t_own"], "load")         # (now shared; op 10)
    chk.access(2, "prele.py:1", h, ["t_own"], "load")     # unlocked load     (op 11)
    locks.acquire(3, 0, "a.py:1", field_addr(h, 0), EXCL, 0)
    chk.access(3, "phold.py:5", h, ["t_own"], "store")    # a locked store    (op 12)
    locks.release(3, 0, "a.py:2", field_addr(h, 0), EXCL)
    chk.access(2, "prele.py:1", h, ["t_own"], "store")    # the stale store   (op 13)
    lost = [f for f in found if f.summary.startswith("lost update")]
    assert [f.summary for f in lost] == [
        "lost update of thing.t_own (loaded unlocked @ prele.py:1, stored @ prele.py:1; "
        "thread 3's store @ phold.py:5 between them is lost)"]
    assert lost[0].sites == ["prele.py:1", "prele.py:1", "phold.py:5"]
    assert ("prele.py:1 (operation 11), thread 3 stored it @ phold.py:5 (operation 12), "
            "then thread 2 stored it @ prele.py:1 (operation 13)") in lost[0].detail
    # handed over for the hold ledger (the server takes it after the store): what thread
    # 2 loaded and where, and the store it lost
    assert chk.stale == {(2, h): {"t_own": (kmem.load(h, "t_own"), "prele.py:1", 3,
                                            "phold.py:5", 12)}}
    chk.stale.clear()
    found.clear()
    chk.access(2, "prele.py:1", h, ["t_own"], "load")     # nobody in between: no loss
    chk.access(2, "prele.py:1", h, ["t_own"], "store")
    assert [f for f in found if f.summary.startswith("lost update")] == []
    assert chk.stale == {}


def test_a_counter_read_lazily_is_checked_at_its_stores() -> None:
    """A statistic read without locks everywhere (vm_page_count_min) but changed under a
    lock (cnt.v_free_count under the free queue's mutex): a key that names the lock for
    stores only. Its loads are silent; a store or a posted add without the lock is
    reported (a planted ``cnt.v_free_count = f - 1`` after the unlock passed unseen)."""
    kmem, locks, chk, found, h = _keyed()
    chk.define_keys({"c": ["self", ""], "j": ["name", "sched lock"],
                     "F": ["store", "sched lock"]})
    chk.access(2, "count_min.py:1", h, ["t_count"], "load")      # lazy: fine
    locks.acquire(2, 0, "a.py:1", 0x99, EXCL, 0)
    chk.access(2, "alloc.py:2", h, ["t_count"], "store")         # under its lock: fine
    locks.release(2, 0, "a.py:3", 0x99, EXCL)
    assert found == []
    chk.access(2, "alloc.py:4", h, ["t_count"], "store")         # after the unlock
    assert [f.summary for f in found] == \
        ["unlocked store of thing.t_count (F: needs sched lock) @ alloc.py:4"]


def test_a_store_under_an_sx_held_shared_is_reported() -> None:
    """A field an sx lock protects is read under the lock held shared and changed under it
    held exclusive: a LIST_REMOVE from allproc under sx_slock (a planted exit1 that took
    allproc_lock shared) passed unseen, since any hold of the named lock did."""
    kmem, locks, chk, found, h = _keyed()
    chk.define_keys({"c": ["self", ""], "j": ["name", "sched lock"],
                     "d": ["name", "allproc"]})
    locks.init(0x77, LK_RW, "sx", "allproc", 0)
    locks.acquire(2, 0, "a.py:1", 0x77, SHARED, 0)
    chk.access(2, "walk.py:1", h, ["t_list"], "load")            # a reader: fine
    assert found == []
    chk.access(2, "exit.py:2", h, ["t_list"], "store")           # a writer, shared
    assert [f.summary for f in found] == \
        ["unlocked store of thing.t_list (d: needs allproc exclusive, held shared) @ exit.py:2"]
    locks.release(2, 0, "a.py:3", 0x77, SHARED)
    locks.acquire(2, 0, "a.py:4", 0x77, EXCL, 0)
    chk.access(2, "exit.py:5", h, ["t_list"], "store")           # exclusive: fine
    assert len(found) == 1


def test_accesses_with_the_right_lock_or_to_unkeyed_fields_are_silent() -> None:
    kmem, locks, chk, found, h = _keyed()
    chk.access(2, "a.py:1", h, ["t_free"], "load")
    locks.acquire(2, 0, "a.py:2", field_addr(h, 0), EXCL, 0)
    chk.access(2, "a.py:3", h, ["t_own"], "store")
    locks.acquire(2, 0, "a.py:4", 0x99, EXCL, 0)
    chk.access(2, "a.py:5", h, ["t_sched"], "load")
    assert found == []
    locks.release(2, 0, "a.py:6", 0x99, EXCL)
    chk.access(2, "a.py:7", h, ["t_sched"], "load")
    assert [f.summary.split(" @ ")[0] for f in found] == \
        ["unlocked load of thing.t_sched (j: needs sched lock)"]

