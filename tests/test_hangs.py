"""The liveness detector on its own (smp.machine.hangs): each kind of hang made to happen
in a small machine (an ObjectStore with processes and threads, the lock table and the
sleep queues, driven as the server drives them, in simulated time), and shown silent when
the kernel does what it should. Pure logic, in process; test_stress.py and the detection
benchmark show it at work on the real kernel."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest

from smp.hw.protocol import EXCL, LK_RW, LK_SLEEP, LK_SPIN, SHARED, field_addr
from smp.kernel.kern.kern_proc import LIVENESS_WAITS
from smp.kernel.vm.vm_map import VM_REFS
from smp.kernel.vm.vm_page import VM_WAITS
from smp.machine.hangs import CHECK_S, Hangs
from smp.machine.locks import LockTable
from smp.machine.objects import ObjectStore
from smp.machine.sleepq import SleepQueues
from smp.machine.witness import Finding

pytestmark = pytest.mark.quick

SLEEPING, SWAPPED = 0x2, 0x4
INMEM, SWAPINREQ, SWAPPINGIN = 0x1, 0x100, 0x4000
SCHED = "sched lock"


class Server:
    """What the detector reads of the server, with the kernel's registration."""

    def __init__(self, bound_s: float = 1.0) -> None:
        self.kmem = ObjectStore()
        self.locks = LockTable(None, deadlock_check=True)
        self.locks.clock = lambda: self.cur_t / 1000
        self.sleepq = SleepQueues(self.locks)
        self.sleepq.sched_lock_name = SCHED
        self.virtual = True
        self.cur_t = 0
        self.started_at = 0.0
        self.panic: dict[str, Any] | None = None
        self.findings: list[Finding] = []
        self.kmem.deftype("proc", [["p_pid", "int", "b", 0], ["p_comm", "str", "b", ""],
                                   ["p_state", "int", "j", 1], ["p_sflag", "int", "j", INMEM],
                                   ["p_threads", "list", "j", None], ["p_lock", "int", "c", 0],
                                   ["p_children", "list", "e", None],
                                   ["p_vmspace", "int", "b", 0]])
        self.kmem.deftype("vmspace", [["vm_refcnt", "int", "m", 0]])
        self.kmem.deftype("vmmeter", [["v_page_count", "int", "", 0],
                                      ["v_free_count", "int", "n", 0],
                                      ["v_cache_count", "int", "n", 0],
                                      ["v_free_min", "int", "", 0],
                                      ["vm_pages_needed", "int", "m", 0]])
        self.kmem.deftype("thread", [["td_inhibitors", "int", "j", 0],
                                     ["td_wchan", "int", "j", 0], ["td_wmesg", "str", "j", ""],
                                     ["td_name", "str", "b", ""], ["td_proc", "int", "b", 0]])
        self.kmem.deftype("globals", [["allproc", "list", "a", None], ["x", "int", "a", 0],
                                      ["zombproc", "list", "a", None]])
        g = self.kmem.new("globals", None)
        self.allproc = field_addr(g, 0)
        self.chan = field_addr(g, 1)
        self.zombproc = field_addr(g, 2)
        self.sched = 0x9000
        self.locks.init(self.sched, LK_SPIN, "spin mutex", SCHED, 0)
        self.hangs = Hangs(self, bound_s)
        self.hangs.policy({
            "list": self.allproc, "threads": "p_threads", "pid": "p_pid", "comm": "p_comm",
            "state": "p_state", "zombie": 3, "sflag": "p_sflag", "inmem": INMEM,
            "swapinreq": SWAPINREQ, "swapper_pid": 0, "inhibitors": "td_inhibitors",
            "sleeping": SLEEPING, "inhibitor_bits": {"SLEEPING": SLEEPING, "SWAPPED": SWAPPED},
            "wchan": "td_wchan", "wmesg": "td_wmesg", "name": "td_name", "proc": "td_proc",
            "zombies": self.zombproc, "waits": LIVENESS_WAITS})    # the kernel's own, and
        self.hangs.add_waits(VM_WAITS)                  # vm's
        self.hangs.add_refs(VM_REFS)

    def finding(self, f: Finding) -> None:
        self.findings.append(f)

    def proc(self, pid: int, comm: str) -> tuple[int, int]:
        p = self.kmem.new("proc", {"p_pid": pid, "p_comm": comm})
        self.kmem.listhead(self.allproc).insert_tail(p)
        td = self.kmem.new("thread", {"td_name": comm, "td_proc": p})
        self.kmem.listhead(field_addr(p, 4)).insert_tail(td)
        return p, td

    def msleep(self, td: int, site: str, timo: int = 0, chan: int = 0,
               wmesg: str = "nap") -> None:
        """msleep as the kernel does it: under sched_lock, the inhibitor and the queue."""
        chan = chan or self.chan
        self.locks.acquire(td, 0, "kern_synch.py:1", self.sched, EXCL, 0)
        self.kmem.storen(td, {"td_wchan": chan, "td_wmesg": wmesg})
        self.kmem.store(td, "td_inhibitors", self.kmem.load(td, "td_inhibitors") | SLEEPING)
        self.hangs.store(td, "kern_synch.py:2", td, ["td_inhibitors"])
        self.sleepq.sleep(td, 0, "kern_synch.py:3", chan, 0)
        self.hangs.sleep(td, site, timo)
        self.locks.release(td, 0, "kern_synch.py:4", self.sched, EXCL)

    def wakeup(self, waker: int, chan: int = 0) -> None:
        chan = chan or self.chan
        self.locks.acquire(waker, 0, "kern_synch.py:10", self.sched, EXCL, 0)
        tids = self.sleepq.wakeup(waker, 0, "kern_synch.py:11", chan, False)
        self.hangs.wakeup(chan, tids)
        for td in tids:
            self.kmem.store(td, "td_wchan", 0)
            self.kmem.store(td, "td_inhibitors",
                            self.kmem.load(td, "td_inhibitors") & ~SLEEPING)
            self.hangs.store(waker, "kern_synch.py:12", td, ["td_inhibitors"])
        self.locks.release(waker, 0, "kern_synch.py:13", self.sched, EXCL)

    def wakeup_timeout(self, td: int) -> None:
        """The sleep's timeout (endtsleep): off its queue, the sleeping bit cleared."""
        self.locks.acquire(td, 0, "kern_synch.py:20", self.sched, EXCL, 0)
        self.sleepq.unsleep(td, self.sleepq.sleeping[td])
        self.hangs.unslept(td)
        self.kmem.store(td, "td_inhibitors", self.kmem.load(td, "td_inhibitors") & ~SLEEPING)
        self.locks.release(td, 0, "kern_synch.py:21", self.sched, EXCL)

    def exit_polls(self, td: int, chan: int, n: int) -> None:
        """exit1's poll for p_lock 0: ``n`` sleeps of a tick that time out, then asleep
        again, and 0.2 s pass."""
        for _ in range(n):
            self.msleep(td, "kern/kern_exit.py:55", timo=1, chan=chan, wmesg="exithold")
            self.run_for(0.05)
            self.wakeup_timeout(td)
            self.run_for(0.05)
        self.msleep(td, "kern/kern_exit.py:55", timo=1, chan=chan, wmesg="exithold")
        self.run_for(0.2)

    def run_for(self, seconds: float) -> None:
        """Simulated time passes; the detector looks with each request, as in the server."""
        end = self.cur_t + int(seconds * 1e9)
        while self.cur_t < end:
            self.cur_t += int(CHECK_S * 1e9 / 2)
            self.hangs.tick()

    def liveness(self) -> list[Finding]:
        return [f for f in self.findings if f.detector == "liveness"]


def test_a_lost_wakeup_is_reported_with_the_store_that_made_it() -> None:
    """F2's race as it ends: swapout loaded td_inhibitors (SLEEPING), the wakeup cleared
    it and took the thread off its queue, swapout stored SLEEPING|SWAPPED back."""
    s = Server()
    _, td = s.proc(12, "napper")
    s.msleep(td, "userland/libc.py:40")
    stale = s.kmem.load(td, "td_inhibitors")                 # swapout's load ...
    s.wakeup(99)                                             # ... the wakeup ...
    s.kmem.store(td, "td_inhibitors", stale | SWAPPED)       # ... swapout's store
    s.hangs.store(3, "vm/vm_glue.py:812", td, ["td_inhibitors"])
    s.run_for(0.5)
    assert s.liveness() == []                                # not yet the bound
    s.run_for(1.0)
    [f] = s.liveness()
    assert f.summary.startswith(f"lost wakeup: thread {td} (napper) of pid 12 (napper) "
                                f"inhibited as sleeping")
    assert "SLEEPING|SWAPPED" in f.summary and "on no sleep queue" in f.summary
    assert f.sites == ["vm/vm_glue.py:812", "userland/libc.py:40"]
    assert "went to sleep @ userland/libc.py:40" in f.detail
    assert "last stored @ vm/vm_glue.py:812 by thread 3" in f.detail
    s.run_for(3.0)
    assert len(s.liveness()) == 1                            # once


def test_f2s_lost_wakeup_is_known_as_f2() -> None:
    """The same race with swapout's real statement: the finding is F2's (known), as a
    campaign must see it; the store came after the wakeup took the thread off."""
    from smp.observe.findings import classify
    lines = (pathlib.Path(__file__).parent.parent / "kernel/vm/vm_glue.py").read_text()
    line = next(n for n, text in enumerate(lines.splitlines(), 1)
                if text.strip() == "TD_SET_SWAPPED(td)")
    s = Server()
    _, td = s.proc(12, "napper")
    s.msleep(td, "userland/libc.py:40")
    stale = s.kmem.load(td, "td_inhibitors")
    s.wakeup(99)
    s.kmem.store(td, "td_inhibitors", stale | SWAPPED)
    s.hangs.store(3, f"vm/vm_glue.py:{line}", td, ["td_inhibitors"])
    s.run_for(1.5)
    [f] = s.liveness()
    assert "after it was taken off its sleep queue" in f.detail, f.detail
    [failure] = classify({"findings": [{"detector": f.detector, "summary": f.summary,
                                        "sites": f.sites}]})
    assert failure.known == "F2", f


def test_a_wakeup_that_leaves_the_sleeping_bit_is_named_not_the_store_before_it() -> None:
    """A wakeup takes a swapped-out sleeper off its queue and does not clear its sleeping
    bit (a planted bug): the last store of its inhibitors was swapout's TD_SET_SWAPPED,
    made while it still slept on its queue. That store was named as the cause, and the
    known F2 (whose stale store comes after the wakeup) matched it: a new bug passed as
    known. Now the wakeup's site and thread are named, the store is not a site."""
    s = Server()
    _, td = s.proc(12, "napper")
    s.msleep(td, "userland/libc.py:40")
    s.kmem.store(td, "td_inhibitors", SLEEPING | SWAPPED)    # swapout, under sched_lock
    s.hangs.store(3, "vm/vm_glue.py:812", td, ["td_inhibitors"])
    s.locks.acquire(99, 0, "kern_synch.py:10", s.sched, EXCL, 0)
    tids = s.sleepq.wakeup(99, 0, "kern_synch.py:11", s.chan, False)
    s.hangs.wakeup(s.chan, tids, "kern/kern_synch.py:140", 99,     # ... and no store
                   "vm/vm_glue.py:501")                          # (wakeup's caller)
    s.locks.release(99, 0, "kern_synch.py:13", s.sched, EXCL)
    s.run_for(1.5)
    [f] = s.liveness()
    assert f.summary.endswith("on no sleep queue; taken off its sleep queue @ "
                              "kern/kern_synch.py:140 and left so"), f.summary
    assert f.sites == ["kern/kern_synch.py:140", "userland/libc.py:40"]
    assert ("taken off its sleep queue @ kern/kern_synch.py:140 (wakeup called @ "
            "vm/vm_glue.py:501) by thread 99, which left it inhibited as sleeping (its "
            "inhibitors were last stored @ vm/vm_glue.py:812 by thread 3, before that)"
            ) in f.detail
    from smp.observe.findings import classify
    [failure] = classify({"findings": [{"detector": f.detector, "summary": f.summary,
                                        "sites": f.sites}]})
    assert failure.known is None                             # not F2: a new failure


def test_a_sleep_for_a_swapin_that_has_ended_is_a_lost_wakeup() -> None:
    """faultin waits on &p->p_sflag while another thread swaps the process in; the swap-in
    ends (PS_SWAPPINGIN cleared) and its wakeup is skipped (a planted bug): the sleeper is
    on its queue, with no timeout, for ever. It passed: it is on a queue. While the bit is
    set it waits as it should; once clear for the bound, it is a lost wakeup."""
    s = Server(bound_s=1.0)
    p, td = s.proc(40, "debugger")
    s.kmem.store(p, "p_sflag", SWAPPINGIN)
    s.msleep(td, "vm/vm_glue.py:434", chan=field_addr(p, 3), wmesg="faultin")  # &p_sflag
    s.run_for(3.0)
    assert s.liveness() == []                                 # the swap-in goes on
    s.kmem.store(p, "p_sflag", INMEM)                         # it ends; no wakeup
    s.hangs.store(7, "vm/vm_glue.py:451", p, ["p_sflag"])
    s.run_for(0.5)
    assert s.liveness() == []                                 # not yet the bound
    s.run_for(1.0)
    [f] = s.liveness()
    assert f.summary == (f"lost wakeup: thread {td} (debugger) of pid 40 (debugger) asleep "
                         f"on &proc#{p}.p_sflag ('faultin') waits for PS_SWAPPINGIN to "
                         f"clear, which it is (p_sflag last stored @ vm/vm_glue.py:451): "
                         f"never woken"), f.summary
    assert f.sites == ["vm/vm_glue.py:451", "vm/vm_glue.py:434"]
    assert "the channel was woken 0 times in the run" in f.detail


def test_a_wakeup_that_came_before_the_sleep_is_named() -> None:
    """faultin's waiter drops the proc lock by hand and then tsleeps (a planted
    PROC_UNLOCK-then-tsleep): the swap-in ends and wakes the channel in between, finding
    nobody; the waiter then sleeps for good. The report named the store and the sleep;
    now also that wakeup, which came before the sleep: the window it fell in."""
    s = Server(bound_s=1.0)
    s.seq = type("Seq", (), {"ops": 500})()                  # the server's sequencer
    p, td = s.proc(40, "debugger")
    _, swapper = s.proc(0, "swapper")
    s.kmem.store(p, "p_sflag", INMEM)                         # the swap-in has ended
    s.hangs.store(7, "vm/vm_glue.py:451", p, ["p_sflag"])     # (operation 500)
    s.locks.acquire(swapper, 0, "kern_synch.py:10", s.sched, EXCL, 0)
    s.hangs.wakeup(field_addr(p, 3), s.sleepq.wakeup(swapper, 0, "kern_synch.py:11",
                                                    field_addr(p, 3), False),
                   "kern/kern_synch.py:140", swapper, "vm/vm_glue.py:458")
    s.locks.release(swapper, 0, "kern_synch.py:13", s.sched, EXCL)
    s.seq.ops = 512
    s.msleep(td, "vm/vm_glue.py:436", chan=field_addr(p, 3), wmesg="faultin")
    s.run_for(1.5)
    [f] = s.liveness()
    assert ("a wakeup of the channel @ vm/vm_glue.py:458 (operation 500) found nobody "
            "asleep 12 operations before this thread slept (operation 512): it fell "
            "between the sleeper's test and its sleep") in f.detail, f.detail
    # the same sleep with that wakeup before the store that made the test true: it is
    # not the one the sleeper missed, and is not named
    s = Server(bound_s=1.0)
    s.seq = type("Seq", (), {"ops": 400})()
    p, td = s.proc(40, "debugger")
    s.hangs.wakeup(field_addr(p, 3), [], "kern/kern_synch.py:140", 9, "vm/vm_glue.py:458")
    s.seq.ops = 500
    s.kmem.store(p, "p_sflag", INMEM)
    s.hangs.store(7, "vm/vm_glue.py:451", p, ["p_sflag"])
    s.seq.ops = 512
    s.msleep(td, "vm/vm_glue.py:436", chan=field_addr(p, 3), wmesg="faultin")
    s.run_for(1.5)
    [f] = s.liveness()
    assert "found nobody asleep" not in f.detail, f.detail


def _reported_after_the_bound(s: Server, before: float, after: float) -> Finding:
    """Silent for ``before`` simulated seconds (not yet the bound), then one report."""
    s.run_for(before)
    assert s.liveness() == []                                 # not yet the bound
    s.run_for(after)
    [f] = s.liveness()
    return f


def _vm_wait(s: Server, n: int) -> tuple[int, list[int]]:
    """``n`` threads in vm_wait: memory short, the flag set, asleep on &cnt.v_free_count."""
    cnt = s.kmem.new("vmmeter", {"v_free_count": 10, "v_free_min": 40})
    tds = []
    for i in range(n):
        _, td = s.proc(20 + i, f"hog{i}")
        s.kmem.store(cnt, "vm_pages_needed", 1)
        s.hangs.store(td, "vm/vm_page.py:458", cnt, ["vm_pages_needed"])
        s.msleep(td, "vm/vm_page.py:461", chan=field_addr(cnt, 1), wmesg="vmwait")
        tds.append(td)
    return cnt, tds


def test_vm_wait_sleepers_never_woken_after_memory_came_back() -> None:
    """vm_page_free_wakeup clears vm_pages_needed and skips the wakeup (a planted bug):
    memory is back above v_free_min, the sleepers stay. One report for the channel,
    naming the flag's last store; while memory is short they wait as they should."""
    s = Server(bound_s=1.0)
    cnt, tds = _vm_wait(s, 3)
    s.run_for(3.0)
    assert s.liveness() == []                                 # memory still short
    s.kmem.storen(cnt, {"v_free_count": 30, "v_cache_count": 12, "vm_pages_needed": 0})
    s.hangs.store(9, "vm/vm_page.py:331", cnt, ["v_free_count", "vm_pages_needed"])
    f = _reported_after_the_bound(s, 0.5, 1.0)
    assert f.summary == (
        f"lost wakeup: thread {tds[0]} (hog0) of pid 20 (hog0) (and 2 more threads) "
        f"asleep on &vmmeter#{cnt}.v_free_count ('vmwait') waits for free pages above "
        f"v_free_min, which it is (vm_pages_needed last stored @ vm/vm_page.py:331): "
        f"never woken"), f.summary
    assert f.sites == ["vm/vm_page.py:331", "vm/vm_page.py:461"]
    assert "v_free_count + v_cache_count = 42, v_free_min 40" in f.detail, f.detail


def test_the_end_says_which_sleepers_wait_for_what_has_come_true() -> None:
    """A run that ends before the bound: two debuggers asleep on 'faultin' for 2.7 s
    after the swap-in they waited for had ended (a planted PROC_UNLOCK-then-tsleep lost
    their wakeup) were listed under liveness.asleep like any sleeper. Now each says how
    long its wait has been true: a lost wakeup under the bound, for a reader to see."""
    s = Server(bound_s=1.0)
    cnt, tds = _vm_wait(s, 2)
    s.run_for(0.3)
    s.kmem.storen(cnt, {"v_free_count": 30, "v_cache_count": 12, "vm_pages_needed": 0})
    s.run_for(0.5)
    assert s.liveness() == []                                 # under the bound
    asleep = s.hangs.at_end()["asleep"]
    assert [a["wmesg"] for a in asleep] == ["vmwait", "vmwait"]
    assert all(0.4 <= a["came_true_s"] <= 0.6 for a in asleep), asleep
    s2 = Server(bound_s=1.0)                                  # memory still short
    _vm_wait(s2, 1)
    s2.run_for(0.5)
    assert "came_true_s" not in s2.hangs.at_end()["asleep"][0]


def test_vm_wait_sleepers_woken_when_memory_comes_back_are_silent() -> None:
    s = Server(bound_s=1.0)
    cnt, tds = _vm_wait(s, 2)
    s.run_for(2.0)
    s.kmem.storen(cnt, {"v_free_count": 50, "vm_pages_needed": 0})
    s.run_for(0.5)                                            # within the bound
    s.wakeup(9, field_addr(cnt, 1))
    s.run_for(3.0)
    assert s.liveness() == []


def test_a_parent_never_woken_by_its_zombie_child() -> None:
    """exit1 makes the child a zombie and skips wakeup(pp) (a planted bug): the parent
    asleep in wait, with no timeout, has a zombie child for good."""
    s = Server(bound_s=1.0)
    parent, td = s.proc(3, "init0")
    child, _ = s.proc(17, "napper")
    s.kmem.listhead(field_addr(parent, 6)).insert_tail(child)          # p_children
    s.msleep(td, "kern/kern_exit.py:158", chan=field_addr(parent, 0), wmesg="wait")
    s.run_for(3.0)
    assert s.liveness() == []                                 # the child lives
    s.kmem.store(child, "p_state", 2)                         # PRS_ZOMBIE, no wakeup
    s.hangs.store(50, "kern/kern_exit.py:102", child, ["p_state"])
    s.run_for(1.5)
    [f] = s.liveness()
    assert f.summary.startswith(f"lost wakeup: thread {td} (init0) of pid 3 (init0) asleep "
                                f"on &proc#{parent} ('wait') waits for a child to "
                                f"become a zombie, which it is (p_state last stored @ "
                                f"kern/kern_exit.py:102)"), f.summary
    assert "1 of 1 on p_children with p_state 2" in f.detail


def test_an_exit_polling_for_a_hold_never_released() -> None:
    """A PHOLD without its PRELE: exit1 sleeps a tick at a time until p_lock is 0, for
    ever. Polls that end within the bound are silent."""
    s = Server(bound_s=1.0)
    p, td = s.proc(30, "napper")
    _, dbg = s.proc(41, "debugger")

    def hold(by: int, site: str, delta: int) -> None:        # PHOLD / PRELE's store
        s.hangs.store(by, site, p, ["p_lock"])
        s.kmem.store(p, "p_lock", s.kmem.load(p, "p_lock") + delta)
        s.hangs.counted(by, site, p, ["p_lock"])

    hold(dbg, "userland/libc.py:163", 1)                      # the debugger's PHOLD
    hold(7, "vm/vm_glue.py:436", 1)                           # faultin's hold ...
    hold(dbg, "userland/libc.py:163", 1)                      # a second PHOLD ...
    hold(dbg, "userland/libc.py:181", -1)                     # ... and its PRELE
    hold(7, "vm/vm_glue.py:455", -1)                          # ... given back
    lock = field_addr(p, 5)                                   # &p->p_lock
    for _ in range(5):                                        # 0.5 s of polling: fine
        s.msleep(td, "kern/kern_exit.py:55", timo=1, chan=lock, wmesg="exithold")
        s.run_for(0.05)
        s.wakeup_timeout(td)
        s.run_for(0.05)
    assert s.liveness() == []
    s.exit_polls(td, lock, 10)
    [f] = s.liveness()
    assert f.summary.startswith(f"never given: thread {td} (napper) of pid 30 (napper) "
                                f"polls on &proc#{p}.p_lock ('exithold') for its holds to "
                                f"go (p_lock 0) for "), f.summary
    assert f.summary.endswith("p_lock 1 (held @ userland/libc.py:163)"), f.summary
    assert f.sites == ["userland/libc.py:163", "kern/kern_exit.py:55"]
    assert (f"raised @ userland/libc.py:163 by thread {dbg} (debugger), never lowered"
            in f.detail), f.detail
    # the hold released: the next poll ends it; a new exit polls a new while
    s2 = Server(bound_s=1.0)
    p2, td2 = s2.proc(31, "napper")
    s2.kmem.store(p2, "p_lock", 1)
    for i in range(30):
        if i == 8:
            s2.kmem.store(p2, "p_lock", 0)
        s2.msleep(td2, "kern/kern_exit.py:55", timo=1, chan=field_addr(p2, 5),
                  wmesg="exithold")
        s2.run_for(0.05)
        s2.wakeup_timeout(td2)
        s2.run_for(0.05)
    assert s2.liveness() == []


def test_a_poller_no_look_finds_asleep_is_judged_as_it_sleeps_again() -> None:
    """On a quiet machine the detector looks with the requests of the clock tick that
    wakes a poller of one tick: every look finds it awake. Its poll is judged when it
    sleeps again."""
    s = Server(bound_s=1.0)
    p, td = s.proc(30, "napper")
    s.kmem.store(p, "p_lock", 1)                              # a hold never released
    lock = field_addr(p, 5)
    for _ in range(150):                                      # 1.5 s of polls of a tick
        s.msleep(td, "kern/kern_exit.py:55", timo=1, chan=lock, wmesg="exithold")
        s.cur_t += 10_000_000                                 # asleep: nobody looks
        s.wakeup_timeout(td)
        s.hangs.tick()                                        # awake: the look
    [f] = s.liveness()
    assert f.summary.startswith(f"never given: thread {td} (napper) of pid 30 (napper) "
                                f"polls on &proc#{p}.p_lock ('exithold')"), f.summary


def test_a_lost_wakeup_at_the_end_of_a_run_is_reported_whatever_the_bound() -> None:
    s = Server(bound_s=100.0)
    _, td = s.proc(5, "sleeper")
    s.msleep(td, "userland/libc.py:40")
    s.wakeup(99)
    s.kmem.store(td, "td_inhibitors", SLEEPING)
    s.run_for(0.3)
    assert s.liveness() == []
    end = s.hangs.at_end()
    [f] = s.liveness()
    assert "lost wakeup" in f.summary and "at the end of the run" in f.detail
    assert end["asleep"] == []                          # on no queue: not "asleep"


def test_sleeps_and_wakeups_done_right_are_silent() -> None:
    """Threads that sleep and are woken, over and over, and one asleep for ever on its
    queue: nothing is lost, and the sleeper without a timeout is listed at the end."""
    s = Server(bound_s=0.5)
    _, a = s.proc(7, "sleeper")
    _, b = s.proc(8, "daemon")
    for _ in range(20):
        s.msleep(a, "userland/libc.py:40", timo=10)
        s.run_for(0.3)
        s.wakeup(99)
        s.run_for(0.1)
    s.msleep(b, "vm/vm_pageout.py:185", wmesg="psleep")   # registered idle: for work
    s.run_for(3.0)
    end = s.hangs.at_end()
    assert s.liveness() == []
    [row] = end["asleep"]
    assert row["thread"].startswith(f"thread {b} (daemon) of pid 8")
    assert row["site"] == "vm/vm_pageout.py:185" and row["asleep_s"] >= 3.0
    assert row["wmesg"] == "psleep" and row["channel"].endswith(".x")


def test_a_half_done_sleep_under_the_sched_lock_is_not_judged() -> None:
    """Inhibitor set, not yet queued, the sched lock held by the sleeper: the detector
    looks, but leaves the holder out (it may be half way into msleep)."""
    s = Server(bound_s=0.5)
    _, td = s.proc(9, "p")
    s.locks.acquire(td, 0, "kern_synch.py:1", s.sched, EXCL, 0)
    s.kmem.store(td, "td_inhibitors", SLEEPING)
    s.run_for(2.0)
    assert s.liveness() == [] and s.hangs.checks > 10
    assert s.hangs.at_end()["checks"] > 10 and s.liveness() == []


def test_a_half_done_wakeup_under_the_sched_lock_is_not_judged() -> None:
    """A waker holds the sched lock and has taken the sleeper off its queue, not yet
    cleared its sleeping bit (a CPU stopped there at the end, too): not lost."""
    s = Server(bound_s=0.5)
    _, td = s.proc(9, "sleeper")
    s.msleep(td, "userland/libc.py:40")
    s.run_for(0.5)
    s.cur_t += 1000
    s.locks.acquire(77, 1, "kern_synch.py:10", s.sched, EXCL, 0)
    s.hangs.wakeup(s.chan, s.sleepq.wakeup(77, 1, "kern_synch.py:11", s.chan, False))
    s.run_for(2.0)
    s.hangs.at_end()
    assert s.liveness() == [] and s.hangs.checks > 10


def test_a_thread_lost_before_the_lock_was_taken_is_found_while_it_is_held() -> None:
    """The sched lock held at every look (a small busy machine), by a thread that took it
    after the wakeup was lost: the lost thread is judged all the same, and at the end."""
    for at_end in (False, True):
        s = Server(bound_s=100.0 if at_end else 0.5)
        _, td = s.proc(5, "sleeper")
        s.msleep(td, "userland/libc.py:40")
        stale = s.kmem.load(td, "td_inhibitors")
        s.wakeup(99)
        s.kmem.store(td, "td_inhibitors", stale)
        s.cur_t += 1000
        s.locks.acquire(88, 1, "kern_clock.py:1", s.sched, EXCL, 0)   # held from now on
        s.run_for(2.0)
        if at_end:
            assert s.liveness() == []
            s.hangs.at_end()
        [f] = s.liveness()
        assert f.summary.startswith(f"lost wakeup: thread {td} (sleeper)"), f.summary


def test_a_swapin_request_not_served_names_where_the_swapper_sleeps() -> None:
    s = Server(bound_s=1.0)
    _, swapper = s.proc(0, "swapper")
    p, _ = s.proc(21, "hog")
    s.msleep(swapper, "vm/vm_glue.py:545")
    s.kmem.store(p, "p_sflag", SWAPINREQ)                   # setrunnable's request, and
    s.hangs.store(3, "kern/kern_synch.py:206", p, ["p_sflag"])
    s.run_for(0.8)                                          # its wakeup(&proc0) lost
    assert s.liveness() == []
    s.run_for(0.5)
    [f] = [f for f in s.liveness() if f.summary.startswith("swap-in")]
    assert f.summary.startswith("swap-in request of pid 21 (hog) not served for 1.")
    assert "the swapper is asleep on" in f.summary and "no timeout" in f.detail
    assert f.sites == ["vm/vm_glue.py:545", "kern/kern_synch.py:206"]
    assert "channel woken 0 times" in f.detail
    assert "(p_sflag last stored @ kern/kern_synch.py:206 by thread 3)" in f.detail


def test_a_swapin_served_within_the_bound_is_silent() -> None:
    s = Server(bound_s=1.0)
    _, swapper = s.proc(0, "swapper")
    p, _ = s.proc(21, "hog")
    s.msleep(swapper, "vm/vm_glue.py:545")
    for _ in range(5):
        s.kmem.store(p, "p_sflag", SWAPINREQ)
        s.wakeup(99)                                        # the swapper runs ...
        s.run_for(0.6)
        s.kmem.store(p, "p_sflag", INMEM)                   # ... and brings it in
        s.msleep(swapper, "vm/vm_glue.py:545")
        s.run_for(0.6)
    assert s.liveness() == []


def test_a_lock_waited_for_longer_than_the_bound_is_starvation() -> None:
    s = Server(bound_s=1.0)
    giant = 0x8000
    s.locks.init(giant, LK_SLEEP, "sleep mutex", "Giant", 0)
    s.locks.acquire(1, 0, "vm/vm_glue.py:600", giant, EXCL, 0)
    s.locks.acquire(2, 1, "vm/vm_glue.py:700", giant, EXCL, 0)
    s.run_for(0.5)
    assert s.liveness() == []
    s.run_for(1.0)
    [f] = s.liveness()
    assert f.summary.startswith("lock starvation: thread 2 waiting for Giant for 1.")
    assert f.sites == ["vm/vm_glue.py:700", "vm/vm_glue.py:600"]
    assert "owner thread 1 took it @ vm/vm_glue.py:600" in f.detail


def test_a_lock_held_shared_all_along_starves_a_writer() -> None:
    """A walk of allproc that gives up without its sx_sunlock (a planted bug), then walks
    again, taking it shared once more: exits wait for allproc exclusive for ever. A lock
    held only shared has no owner, and this was taken for a lock changing hands
    (contention). Readers relaying each other (each lets go, but never all at once) are
    still contention."""
    s = Server(bound_s=1.0)
    sx = 0x8100
    s.locks.init(sx, LK_RW, "sx", "allproc", 0)
    s.locks.acquire(5, 0, "vm/vm_glue.py:590", sx, SHARED, 0)      # leaked
    s.locks.acquire(7, 1, "kern/kern_exit.py:120", sx, EXCL, 0)    # queued
    for _ in range(4):
        s.run_for(0.4)
        s.locks.acquire(5, 0, "vm/vm_glue.py:590", sx, SHARED, 0)  # the next walk
        s.locks.release(5, 0, "vm/vm_glue.py:700", sx, SHARED)
    [f] = s.liveness()
    assert f.summary.startswith("lock starvation: thread 7 waiting for allproc for 1.")
    assert f.sites == ["kern/kern_exit.py:120", "vm/vm_glue.py:590"]
    assert "shared holder thread 5 took it @ vm/vm_glue.py:590 before that" in f.detail

    s = Server(bound_s=1.0)
    s.locks.init(sx, LK_RW, "sx", "allproc", 0)
    s.locks.acquire(5, 0, "a.py:1", sx, SHARED, 0)
    s.locks.acquire(7, 1, "b.py:1", sx, EXCL, 0)
    reader = 5
    for nxt in (6, 5, 6, 5, 6, 5):                          # a relay of readers
        s.run_for(0.4)
        s.locks.acquire(nxt, 0, "a.py:1", sx, SHARED, 0)
        s.locks.release(reader, 0, "a.py:2", sx, SHARED)
        reader = nxt
    assert s.liveness() == []
    assert s.hangs.at_end()["contended"]["allproc"]["wait_s"] >= 2.0


def test_lock_waits_shorter_than_the_bound_are_silent() -> None:
    s = Server(bound_s=1.0)
    giant = 0x8000
    s.locks.init(giant, LK_SLEEP, "sleep mutex", "Giant", 0)
    for _ in range(10):
        s.locks.acquire(1, 0, "a.py:1", giant, EXCL, 0)
        s.locks.acquire(2, 1, "b.py:1", giant, EXCL, 0)
        s.run_for(0.5)
        s.locks.release(1, 0, "a.py:2", giant, EXCL)        # wakes thread 2, which
        s.locks.acquire(2, 1, "b.py:1", giant, EXCL, 0)     # tries again and gets it
        s.run_for(0.1)
        s.locks.release(2, 1, "b.py:2", giant, EXCL)
    assert s.liveness() == []


def test_a_long_wait_for_a_lock_that_keeps_changing_hands_is_contention() -> None:
    """Thread 2 waits 3 s for Giant while threads 1 and 3 pass it between them: listed
    under contended, not a finding."""
    s = Server(bound_s=1.0)
    giant = 0x8000
    s.locks.init(giant, LK_SLEEP, "sleep mutex", "Giant", 0)
    s.locks.acquire(1, 0, "a.py:1", giant, EXCL, 0)
    s.locks.acquire(2, 1, "b.py:1", giant, EXCL, 0)
    for _ in range(10):
        s.run_for(0.3)
        s.locks.release(1, 0, "a.py:2", giant, EXCL)      # wakes 2, but 1 takes it again
        s.locks.acquire(1, 0, "a.py:1", giant, EXCL, 0)
        s.locks.acquire(2, 1, "b.py:1", giant, EXCL, 0)   # 2 tries again: queued
    assert s.liveness() == []
    assert s.hangs.at_end()["contended"]["Giant"]["wait_s"] >= 2.0


def test_an_sx_waiter_asleep_on_the_lock_and_a_busy_swapper_are_silent() -> None:
    """An sx waiter is inhibited as sleeping on the lock's queue, not a sleep queue; a
    swap-in request while the swapper runs (busy with others) is slow, not lost."""
    s = Server(bound_s=1.0)
    sx = 0x8100
    s.locks.init(sx, LK_SLEEP, "sx", "allproc", 0)
    _, a = s.proc(30, "a")
    _, b = s.proc(31, "b")
    s.locks.acquire(a, 0, "kern/kern_exit.py:120", sx, EXCL, 0)
    s.locks.acquire(b, 1, "kern/kern_exit.py:130", sx, EXCL, 0)
    s.kmem.store(b, "td_inhibitors", SLEEPING)
    s.proc(0, "swapper")                                     # running: never slept
    p, _ = s.proc(21, "hog")
    s.kmem.store(p, "p_sflag", SWAPINREQ)
    s.run_for(3.0)
    end = s.hangs.at_end()
    # (thread b waited for a lock one owner held all along: that is starvation, apart)
    assert [f.summary for f in s.liveness() if not f.summary.startswith("lock starv")] == []
    assert end["slow_swapin_s"] >= 1.0 and end["slow_swapin_of"] == "pid 21 (hog)"


def test_a_timeout_of_a_sleep_with_no_timeout_is_reported() -> None:
    """A thread asleep with no timeout taken off its queue by a timeout: a callout of an
    earlier, timed sleep that was not stopped when a wakeup ended it (a planted msleep
    without its callout_stop passed unseen: the spurious wakeup was tolerated). A timed
    sleep that times out is silent."""
    s = Server(bound_s=5.0)
    _, td = s.proc(7, "napper")
    s.msleep(td, "userland/libc.py:77", timo=3)
    s.wakeup_timeout(td)                                   # its own timeout: fine
    assert s.liveness() == []
    s.msleep(td, "kern/kern_exit.py:158", timo=0, wmesg="wait")
    s.wakeup_timeout(td)                                   # the stale callout
    [f] = s.liveness()
    assert f.summary.startswith("timeout of a sleep with none: thread ")
    assert "(napper)" in f.summary and "@ kern/kern_exit.py:158" in f.summary, f.summary
    assert "timer" in f.summary and f.sites[0] == "kern/kern_exit.py:158"


def test_the_end_says_who_last_woke_each_live_thread() -> None:
    """For a dump: each thread alive at the end, who last took it off a sleep queue
    (where, by whom, at which operation of the machine)."""
    s = Server(bound_s=5.0)
    s.seq = type("Seq", (), {"ops": 4400})()                 # the server's sequencer
    _, td = s.proc(7, "sleeper")
    s.msleep(td, "userland/libc.py:40")
    s.locks.acquire(9, 0, "kern_synch.py:10", s.sched, EXCL, 0)
    s.hangs.wakeup(s.chan, s.sleepq.wakeup(9, 0, "kern_synch.py:11", s.chan, False),
                   "kern/kern_exit.py:103", 9)
    s.locks.release(9, 0, "kern_synch.py:13", s.sched, EXCL)
    assert s.hangs.at_end()["sleeps"] == {"nap": 1}           # each wait, how often slept
    assert s.hangs.at_end()["woken"] == {
        str(td): {"site": "kern/kern_exit.py:103", "by": 9, "op": 4400, "how": "woken"}}


def test_a_registered_wait_judges_only_its_own_channel_and_bad_tests_are_refused() -> None:
    """vmwait's test is about &cnt.v_free_count: the same wait message on another
    channel is not judged by it (a sum of missing fields would read 0 >= 0)."""
    s = Server(bound_s=1.0)
    cnt = s.kmem.new("vmmeter", {"v_free_count": 50, "v_free_min": 40})
    _, td = s.proc(20, "hog")
    s.msleep(td, "vm/vm_page.py:461", chan=field_addr(cnt, 3), wmesg="vmwait")  # not its
    s.run_for(3.0)
    assert s.liveness() == []
    for bad in [{"sum": "v_free_count", "at_least": "v_free_min"},     # not a list
                {"field": "p_lock"},                                   # no test
                {"field": "p_lock", "equals": 0, "name": "p_lock"},    # name not a list
                {"list": "p_children", "field": 3, "equals": 2}]:      # field not a name
        with pytest.raises(TypeError):
            s.hangs.add_waits({"x": bad})
    for refs in [["vm_refcnt"], {"vm_refcnt": {}},                      # no holder
                 {"vm_refcnt": {"holder": "p_vmspace", "what": 1}}]:      # what not words
        with pytest.raises(TypeError):
            s.hangs.add_refs(refs)


def test_what_freed_threads_and_objects_leave_behind_is_forgotten() -> None:
    """A long run forks and reaps without end: the detector keeps only the live ones."""
    s = Server(bound_s=5.0)
    for i in range(50):
        p, td = s.proc(100 + i, "short")
        s.msleep(td, "userland/libc.py:40", timo=1)
        s.wakeup(99)
        s.hangs.store(td, "x.py:1", p, ["p_lock"])
        s.kmem.listhead(s.allproc).remove(p)
        s.kmem.listhead(field_addr(p, 4)).remove(td)          # off p_threads, then freed
        s.kmem.free(td)
        s.kmem.free(p)
    _, alive = s.proc(7, "alive")
    s.msleep(alive, "userland/libc.py:40")
    assert len(s.hangs.slept) == 51 and len(s.hangs.field_stored) == 50
    s.hangs.prune()
    assert list(s.hangs.slept) == [alive] and list(s.hangs.dequeued) == []
    assert s.hangs.field_stored == {} and list(s.hangs.polling) == [alive]


def test_a_sleep_no_test_is_registered_for_never_woken_is_a_hang() -> None:
    """A swap transfer's waiter whose completion never wakes it (a planted bug): asleep
    with no timeout on a wait the kernel registered nothing for. Past the bound it is a
    hang; wakeups that woke nobody on another field of the same object are named."""
    s = Server(bound_s=1.0)
    cnt = s.kmem.new("vmmeter", {})
    _, td = s.proc(29, "vmdaemon")
    s.msleep(td, "vm/vm_pageout.py:185", chan=field_addr(cnt, 1), wmesg="swread")
    for _ in range(3):                      # the waker wakes the field next door
        s.hangs.wakeup(field_addr(cnt, 4), [], "kern_synch.py:11", 9, "vm/vm_pageout.py:63")
    f = _reported_after_the_bound(s, 0.8, 0.5)
    assert f.summary == (
        f"never woken: thread {td} (vmdaemon) of pid 29 (vmdaemon) asleep on "
        f"&vmmeter#{cnt}.v_free_count ('swread') for 1.1 s with no timeout (channel woken "
        f"0 times in the run); 3 wakeups went to &vmmeter#{cnt}.vm_pages_needed instead, "
        f"where nobody ever sleeps (last @ vm/vm_pageout.py:63): the wrong channel?"), \
        f.summary
    assert f.sites == ["vm/vm_pageout.py:185", "vm/vm_pageout.py:63"]


def test_an_idle_daemon_is_a_hang_only_when_its_wakeups_went_elsewhere() -> None:
    """vm_daemon sleeps for work for as long as nobody asks (idle: silent); its waker
    waking the field next door, where nobody ever sleeps (a planted typo), is a hang."""
    s = Server(bound_s=1.0)
    cnt = s.kmem.new("vmmeter", {})
    _, td = s.proc(24, "vmdaemon")
    s.msleep(td, "vm/vm_pageout.py:185", chan=field_addr(cnt, 2), wmesg="psleep")
    s.run_for(3.0)
    assert s.liveness() == []                                 # idle: no work, no hang
    s.hangs.wakeup(field_addr(cnt, 4), [], "kern_synch.py:11", 9, "vm/vm_pageout.py:63")
    s.run_for(0.2)
    [f] = s.liveness()
    assert f.summary.startswith(f"never woken: thread {td} (vmdaemon) of pid 24 (vmdaemon) "
                                f"asleep on &vmmeter#{cnt}.v_cache_count ('psleep')")
    assert "1 wakeups went to &vmmeter" in f.summary and "registered as idle" in f.detail


def test_a_hold_forgotten_by_a_holder_that_went_on_is_never_released() -> None:
    """A PHOLD without its PRELE on one branch, of a process that never exits (no
    exithold to poll): the holder took and released other holds since, so it forgot
    this one. A long hold by a holder that did nothing else since is left alone."""
    s = Server(bound_s=1.0)
    p, _ = s.proc(17, "sleeper")
    q, _ = s.proc(18, "napper")
    _, dbg = s.proc(41, "debugger")
    _, swapper = s.proc(0, "swapper")

    def hold(obj: int, by: int, site: str, delta: int) -> None:
        s.kmem.store(obj, "p_lock", s.kmem.load(obj, "p_lock") + delta)
        s.hangs.counted(by, site, obj, ["p_lock"])

    _, dbg2 = s.proc(42, "debugger")
    hold(q, swapper, "vm/vm_glue.py:436", 1)                  # faultin, long (swap-in)
    hold(p, dbg, "userland/libc.py:163", 1)                   # the forgotten PHOLD
    hold(q, dbg2, "userland/libc.py:163", 1)                  # a PHOLD whose faultin,
    hold(q, dbg2, "vm/vm_glue.py:436", 1)                     # nested, ends: the PHOLD
    hold(q, dbg2, "vm/vm_glue.py:455", -1)                    # is not forgotten
    s.run_for(0.5)
    hold(q, dbg, "userland/libc.py:163", 1)                   # later: another process,
    hold(q, dbg, "userland/libc.py:181", -1)                  # held and released
    s.run_for(0.4)
    assert s.liveness() == []                                 # not yet the bound
    s.run_for(0.3)
    [f] = s.liveness()
    assert f.summary.startswith(f"hold never released: proc#{p} (pid 17) p_lock 1: raised "
                                f"@ userland/libc.py:163 by thread {dbg} (debugger) 1."), \
        f.summary
    assert f.summary.endswith("which has taken and released other holds since")
    s.run_for(3.0)
    assert len(s.liveness()) == 1                             # the swapper's: left alone


class Vm:
    """A vmspace's life as the kernel lives it, store by store (each as the server
    handles it: the ledger told before and after), in ``s``."""

    def __init__(self, s: Server, maker: int, proc: int) -> None:
        self.s = s                                            # vmspace_fork's alloc,
        self.h = s.kmem.new("vmspace", {"vm_refcnt": 1})      # then p2->p_vmspace = vm2
        s.hangs.created(maker, "vm/vm_map.py:307", self.h, {"vm_refcnt": 1})
        self.point(maker, "vm/vm_glue.py:349", proc)

    def point(self, by: int, site: str, proc: int, to: int | None = None) -> None:
        self.s.kmem.store(proc, "p_vmspace", self.h if to is None else to)
        self.s.hangs.counted(by, site, proc, ["p_vmspace"])

    def ref(self, by: int, site: str, delta: int) -> None:
        s = self.s
        s.hangs.store(by, site, self.h, ["vm_refcnt"])
        s.kmem.store(self.h, "vm_refcnt", s.kmem.load(self.h, "vm_refcnt") + delta)
        s.hangs.counted(by, site, self.h, ["vm_refcnt"])

    def share(self, by: int, child: int) -> None:             # vm_forkproc's RFMEM
        self.point(by, "vm/vm_glue.py:342", child)
        self.ref(by, "vm/vm_glue.py:343", 1)

    def exit_and_reap(self, p: int, td: int, reaper: int) -> None:
        s = self.s
        self.ref(td, "kern/kern_exit.py:69", -1)              # exit1's drop
        s.kmem.listhead(s.allproc).remove(p)                  # allproc -> zombproc
        s.kmem.listhead(s.zombproc).insert_tail(p)
        s.run_for(0.3)                                        # a zombie for a while
        s.kmem.listhead(s.zombproc).remove(p)                 # wait1: vmspace_exitfree
        self.point(reaper, "vm/vm_map.py:351", p, 0)
        s.kmem.listhead(field_addr(p, 4)).remove(td)
        s.kmem.free(td)


def _vm_life(leak: bool) -> tuple[Server, Vm, int]:
    """init forks a sharer, whose RFMEM child shares its vmspace; the vm daemon holds it
    for a while, over the child's exit; both exit and init reaps them. ``leak``: the
    sharer raises vm_refcnt once more after its fork (a planted bug), never dropped."""
    s = Server(bound_s=1.0)
    _, init = s.proc(1, "init")
    _, vmd = s.proc(3, "vmdaemon")
    p1, t1 = s.proc(20, "sharer")
    vm = Vm(s, init, p1)
    p2, t2 = s.proc(21, "sharee")
    vm.share(t1, p2)
    if leak:
        vm.ref(t1, "kern/kern_fork.py:111", 1)                # the planted raise
    vm.ref(vmd, "vm/vm_glue.py:642", 1)                       # swapout_procs' hold ...
    vm.exit_and_reap(p2, t2, init)
    vm.exit_and_reap(p1, t1, init)
    s.run_for(1.5)                                            # (its thread at work)
    assert s.liveness() == []
    vm.ref(vmd, "vm/vm_map.py:339", -1)                       # ... and its vmspace_free
    return s, vm, t1


def test_a_vmspace_reference_never_dropped_is_reported_with_its_raise() -> None:
    """A vm_refcnt raise without its vmspace_free (a planted bug): once its processes
    have exited and been reaped, the vmspace keeps a count nobody holds. The report
    names it, its count, the raise not undone and that no live process holds it; not the
    raises the processes' exits undid, whatever their order; the vm daemon's hold, over
    the exit, is silent while its thread is at it."""
    s, vm, t1 = _vm_life(leak=True)
    f = _reported_after_the_bound(s, 0.8, 0.4)
    assert f.summary == (f"reference never dropped: vmspace#{vm.h} vm_refcnt 1, and no live "
                         f"process holds it (p_vmspace): raised @ kern/kern_fork.py:111 by "
                         f"thread {t1} (sharer), never dropped"), f.summary
    assert f.sites == ["kern/kern_fork.py:111"]
    assert (f"the raises not undone: raised @ kern/kern_fork.py:111 by thread {t1} "
            f"(sharer) at operation 0, " in f.detail), f.detail
    assert f.detail.endswith("a hold of its own, which has exited"), f.detail
    s.run_for(3.0)
    assert len(s.liveness()) == 1                             # once


def test_a_vmspace_hold_the_vm_daemon_forgot_is_reported_once_it_went_on() -> None:
    """swapout_procs holds the vmspace of each process it looks at and drops it at
    nextproc; a branch that skips the vmspace_free (a planted bug) leaves a hold no
    process holds once the process has exited, while the daemon has gone on (it dropped
    the next process's since)."""
    s = Server(bound_s=1.0)
    _, init = s.proc(1, "init")
    _, vmd = s.proc(3, "vmdaemon")
    p1, t1 = s.proc(20, "sleeper")
    p2, _ = s.proc(21, "sleeper")
    vm1, vm2 = Vm(s, init, p1), Vm(s, init, p2)
    vm1.ref(vmd, "vm/vm_glue.py:642", 1)                      # its free skipped
    s.run_for(0.1)
    vm2.ref(vmd, "vm/vm_glue.py:642", 1)                      # the next process's,
    vm2.ref(vmd, "vm/vm_map.py:339", -1)                      # dropped
    vm1.exit_and_reap(p1, t1, init)
    f = _reported_after_the_bound(s, 0.5, 0.4)
    assert f.summary == (f"reference never dropped: vmspace#{vm1.h} vm_refcnt 1, and no "
                         f"live process holds it (p_vmspace): raised @ vm/vm_glue.py:642 by "
                         f"thread {vmd} (vmdaemon), never dropped"), f.summary
    assert f.detail.endswith("a hold of its own, which has dropped references of others "
                             "since"), f.detail


def test_vmspace_references_all_dropped_are_silent() -> None:
    """The same life with no leak: every raise undone, the count 0 (vmspace_exitfree then
    frees it); and a vmspace_unshare (a private copy, the shared one dropped), whose
    process, between the two, points to the copy and holds the shared one, which nobody
    points to any more (the sharer has exited)."""
    s, vm, _ = _vm_life(leak=False)
    assert s.kmem.load(vm.h, "vm_refcnt") == 0 and (vm.h, "vm_refcnt") not in s.hangs.raised
    p3, t3 = s.proc(22, "sharer")
    _, init = s.proc(1, "init")
    old = Vm(s, init, p3)
    p4, t4 = s.proc(23, "sharee")
    old.share(t3, p4)
    old.exit_and_reap(p3, t3, init)                           # the sharer goes first
    new = Vm(s, t4, p4)                                       # rfork(RFFDG): unshare,
    s.run_for(3.0)                                            # a long while before
    old.ref(t4, "vm/vm_map.py:339", -1)                       # its vmspace_free
    new.exit_and_reap(p4, t4, init)
    s.run_for(3.0)
    assert s.liveness() == [] and s.hangs.raised.get((old.h, "vm_refcnt")) is None
    assert s.hangs.raised.get((new.h, "vm_refcnt")) is None


def test_a_decrement_lost_is_not_blamed_on_a_raise_whose_prele_ran() -> None:
    """Two PRELEs without the proc lock load p_lock 2 and both store 1 (a lost update,
    which lockkey reports and hands over with the stale store): each PRELE undid its own
    PHOLD, so no raise is left to blame, even once its holder went on; the count is one
    higher than its raises, and exit1's poll says a decrement was lost, and where."""
    s = Server(bound_s=1.0)
    p, td = s.proc(30, "napper")
    q, _ = s.proc(31, "other")
    _, a = s.proc(41, "debugger")
    _, b = s.proc(42, "top")

    def hold(obj: int, by: int, site: str, delta: int, stale: Any = None) -> None:
        s.kmem.store(obj, "p_lock", s.kmem.load(obj, "p_lock") + delta)
        s.hangs.counted(by, site, obj, ["p_lock"], stale)

    hold(p, a, "userland/libc.py:163", 1)                     # two PHOLDs: p_lock 2
    hold(p, b, "userland/libc.py:163", 1)
    s.hangs.loaded(a, p, ["p_lock"])                          # both PRELEs load 2,
    s.hangs.loaded(b, p, ["p_lock"])
    hold(p, a, "kern/kern_proc.py:106", -1)                   # a stores 1,
    hold(p, b, "kern/kern_proc.py:106", 0,                    # b's store of 1 loses a's
         {"p_lock": (2, "kern/kern_proc.py:106", a, "kern/kern_proc.py:106", 17)})
    assert s.kmem.load(p, "p_lock") == 1 and (p, "p_lock") not in s.hangs.raised
    s.run_for(0.2)
    s.hangs.loaded(b, q, ["p_lock"])                          # b goes on: not "kept";
    hold(q, b, "userland/libc.py:163", 1,                     # a stale load lockkey saw
         {"p_lock": (5, "x.py:1", a, "x.py:2", 3)})           # is not what its locked
    assert (q, "p_lock") not in s.hangs.lost                  # load, the latest, read
    assert len(s.hangs.raised[(q, "p_lock")]) == 1
    hold(q, b, "userland/libc.py:181", -1)
    s.run_for(1.5)
    assert s.liveness() == []
    lock = field_addr(p, 5)
    s.exit_polls(td, lock, 12)                                # exit1 polls for p_lock 0
    [f] = s.liveness()
    assert f.summary.endswith("p_lock 1 (a decrement lost @ kern/kern_proc.py:106: 1 more "
                              "than its raises not undone)"), f.summary
    assert f.sites == ["kern/kern_proc.py:106", "kern/kern_exit.py:55"]
    assert "raised @" not in f.detail, f.detail
    assert (f"p_lock is 1 higher than its raises not undone (0): a decrement lost, not a "
            f"hold never released: thread {b} (top) stored p_lock 1 @ kern/kern_proc.py:106 "
            f"from its load of 2 @ kern/kern_proc.py:106, losing thread {a}'s store @ "
            f"kern/kern_proc.py:106 (operation 17): lockkey's lost update") in f.detail, \
        f.detail
