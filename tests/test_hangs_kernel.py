"""The liveness detector on the real kernel (test_hangs.py has it on its own): one small
machine in which two kernel threads hang, each the way the detector is for.

* ``vmt-never`` sleeps with no timeout on a channel nobody will wake: at the end of the
  run the report lists it under ``liveness.asleep`` with its wait message, its channel
  and the site where it went to sleep.
* ``vmt-lost`` sleeps with no timeout on another channel and loses its wakeup in F2's
  shape (FINDINGS.md): a second thread loads its ``td_inhibitors`` without sched_lock,
  the wakeup clears ``TDI_SLEEPING`` (the thread stays inhibited: it was also
  suspended, as swapout's ``TDI_SWAPPED`` leaves it) and the stale value is stored back.
  The thread is inhibited as sleeping on no sleep queue: a ``liveness`` finding, a lost
  wakeup, naming both sites (the store that put the bit back and where it slept).
* ``vmt-sharer``, a user process, rforks a child sharing its vmspace (RFMEM) and then
  raises its ``vm_refcnt`` once more, never dropped (a planted leak); the child exits and
  is reaped, then the sharer exits. Its vmspace keeps a count that no live process
  holds: a ``liveness`` finding, a reference never dropped, naming the planted raise.
* ``vmt-held``, a user process, is PHOLDed by two kernel threads whose PRELEs then race
  without the proc lock (both load ``p_lock`` 2, both store 1: a lost update, lockkey's
  finding); it exits and polls for its holds to go for ever. The report says a
  decrement was lost, not that either PHOLD, whose PRELE ran, was never released.

The driver ends the run two simulated seconds later, past the bound (``debug.liveness_s``
= 1 here); the machine is the quiet one of test_vm_glue.py (2 CPUs, no user processes).
"""

from __future__ import annotations

import pathlib
from typing import Any, Callable

import helpers
import pytest
import vmscenarios as vs

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock, mtx_lock_spin, mtx_unlock, mtx_unlock_spin
from smp.kernel.machine import cpu as md
from smp.kernel.sys.proc import TDI

pytestmark = pytest.mark.long

QUIET = ["machine.cpus=2", "workload.kthreads=0", "user.procs_per_cpu=0",
         "machine.memory=8M", "run.duration=20", "run.seed=1", "debug.liveness_s=1"]


def _sleeper(wmesg: str, chan_field: str, mark: int) -> Any:
    def run() -> None:
        from smp.kernel.kern.kern_synch import tsleep
        from smp.kernel.kern.kern_thread import curthread
        from smp.kernel.sys.param import PVM
        t = vs.shared()
        if mark:
            t.v_aux = curthread().handle
        tsleep(t.addr(chan_field), PVM, wmesg, 0)        # no timeout: never returns
        vs.check(f"{wmesg}_woken_unexpectedly", False)
    return run


def _sharer() -> None:
    from smp.kernel.kern.kern_thread import curproc
    from smp.kernel.userland import libc
    from smp.kernel.vm.vm import RFFDG, RFMEM, RFPROC
    libc.fork(lambda: libc.exit(0), "vmt-sharee", RFFDG | RFPROC | RFMEM)
    mtx_lock(kern_globals.G.Giant)
    vm = curproc().p_vmspace
    vm.vm_refcnt += 1                               # the leak: no vmspace_free follows
    mtx_unlock(kern_globals.G.Giant)
    vs.check("sharee_reaped", libc.wait()[0] == 0)
    vs.shared().v_pid = libc.getpid()
    libc.exit(0)



def _held() -> None:
    from smp.kernel.userland import libc
    t = vs.shared()
    while t.v_phase < 4:
        libc.sleep_ticks(2)
    t.v_phase = 5
    libc.exit(0)                # exit1 polls for p_lock 0: 1 is left, a decrement lost


def _preler(me: int) -> Callable[[], None]:
    """PHOLD vmt-held, then PRELE it without its proc lock in step with the other
    (v_phase): 0 loads, 1 loads, 0 stores, 1 stores (losing 0's decrement)."""
    def run() -> None:
        from smp.kernel.kern.kern_proc import PHOLD
        t = vs.shared()
        vs.nap_until(lambda: vs.find_proc(comm="vmt-held") is not None, "vmt-held to start",
                     500)
        p = vs.find_proc(comm="vmt-held")
        mtx_lock(kern_globals.G.Giant)
        PHOLD(p)
        mtx_unlock(kern_globals.G.Giant)
        vs.nap_until(lambda: p.p_lock == 2 and t.v_phase == me, "its turn to load", 500)
        v = p.p_lock                                # the PRELE's load, unlocked
        t.v_phase = me + 1
        vs.nap_until(lambda: t.v_phase == me + 2, "its turn to store", 500)
        p.p_lock = v - 1                            # ... and its store
        t.v_phase = me + 3
    return run


def _driver() -> None:
    """Wait till both sleep, lose vmt-lost's wakeup, let the detector look, end."""
    from smp.kernel.kern.kern_synch import wakeup
    from smp.kernel.sys.kstruct import KObj
    from smp.kernel.sys.proc import struct_thread
    t = vs.shared()
    vs.nap_until(lambda: t.v_aux != 0, "vmt-lost to start", 500)
    td: KObj = struct_thread.at(t.v_aux)
    vs.nap_until(lambda: td.td_inhibitors & TDI.TDI_SLEEPING, "vmt-lost to sleep", 500)
    G = kern_globals.G
    mtx_lock_spin(G.sched_lock)                     # suspended too (as if swapped out)
    td.td_inhibitors = td.td_inhibitors | TDI.TDI_SUSPENDED
    mtx_unlock_spin(G.sched_lock)
    stale = td.td_inhibitors                        # F2: the load, without sched_lock
    wakeup(t.addr("v_phase"))                       # the wakeup clears TDI_SLEEPING
    td.td_inhibitors = stale                        # ... and the stale store puts it back
    vs.check("lost_off_the_queue", True)
    vs.nap_until(lambda: t.v_pid != 0, "vmt-sharer to exit", 800)
    vs.nap_until(lambda: t.v_phase == 5, "vmt-held to exit", 800)
    start = md.pcpu.ticks
    vs.nap_until(lambda: md.pcpu.ticks - start > 200, "the bound and more", 800)
    vs.done()


@pytest.mark.timeout(120)
def test_never_woken_and_lost_wakeup_reported(tmp_path: pathlib.Path) -> None:
    res = helpers.run(QUIET, [
        vs.publish(),
        vs.boot_kthread("vmt-never", _sleeper("vmtnever", "v_pid", 0), cpu=0),
        vs.boot_kthread("vmt-lost", _sleeper("vmtlost", "v_phase", 1), cpu=1),
        vs.boot_kthread("vmt-driver", _driver, cpu=0),
        vs.boot_fork("vmt-sharer", _sharer, cpu=0),
        vs.boot_fork("vmt-held", _held, cpu=0),
        vs.boot_kthread("vmt-prele0", _preler(0), cpu=0),
        vs.boot_kthread("vmt-prele1", _preler(1), cpu=1),
        vs.boot_kthread("vmt-coord", vs.coordinator(1, 1500, "the hangs"), cpu=1)],
        tmp_path)
    r = res.report
    assert r["kernel"].get("t_ok_lost_off_the_queue") == 1, r["kernel"]
    assert not any(k.startswith("t_bad_") for k in r["kernel"]), r["kernel"]
    assert r["panic"] is None
    # never woken: listed at the end with its wait message, channel and sleep site
    asleep = {a["wmesg"]: a for a in r["liveness"]["asleep"]}
    never = asleep["vmtnever"]
    assert "vmt-never" in never["thread"] and "v_pid" in never["channel"]
    # (the site is the kernel's frame that called into the test's code: the kthread's
    # start, as sites name kernel statements)
    assert never["site"].startswith("kern/") and never["channel_woken"] == 0
    assert never["asleep_s"] > 0.5
    assert "vmtlost" not in asleep               # it is on no sleep queue at all
    # lost: a finding with both sites, the stale store first, then where it slept
    lost = [f for f in r["findings"] if f["detector"] == "liveness"
            and f["summary"].startswith("lost wakeup")]
    assert len(lost) == 1, r["findings"]
    f = lost[0]
    assert "vmt-lost" in f["summary"] and "on no sleep queue" in f["summary"]
    assert "SLEEPING" in f["summary"] and "SUSPENDED" in f["summary"]
    assert len(f["sites"]) == 2
    assert f["sites"][0].startswith("test_hangs_kernel.py:"), f      # the stale store
    assert f["sites"][1].startswith("kern/"), f                       # where it slept
    assert "inhibitors last stored @ test_hangs_kernel.py:" in f["summary"]
    # the leaked vmspace reference: the planted raise, by the sharer, and nothing else
    assert r["kernel"].get("t_ok_sharee_reaped") == 1 and r["kernel"]["forks_rfmem"] == 1
    orphans = [f for f in r["findings"] if f["detector"] == "liveness"
               and f["summary"].startswith("reference never dropped")]
    assert len(orphans) == 1, r["findings"]
    f = orphans[0]
    assert f["summary"].startswith("reference never dropped: vmspace#"), f
    assert " vm_refcnt 1, and no live process holds it (p_vmspace): raised @ " \
        "test_hangs_kernel.py:" in f["summary"], f
    assert "(vmt-sharer), never dropped" in f["summary"], f
    assert len(f["sites"]) == 1 and f["sites"][0].startswith("test_hangs_kernel.py:"), f
    assert "a hold of its own, which has exited" in f["detail"], f
    # the decrement lost: the count one higher than its raises, no PHOLD blamed
    assert any(f["summary"].startswith("lost update of proc.p_lock")
               for f in r["findings"]), r["findings"]
    assert not [f for f in r["findings"] if f["summary"].startswith("hold never released")]
    given = [f for f in r["findings"] if f["summary"].startswith("never given")]
    assert len(given) == 1, "\n".join(f["summary"] for f in r["findings"])
    f = given[0]
    assert "(vmt-held) polls on &proc#" in f["summary"], f
    assert "p_lock 1 (a decrement lost @ test_hangs_kernel.py:" in f["summary"], f
    assert f["summary"].endswith(": 1 more than its raises not undone)"), f
    assert "raised @" not in f["detail"] and "lockkey's lost update" in f["detail"], f
