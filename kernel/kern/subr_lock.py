"""What a thread does while the machine queues it on a lock: the waiting half shared by
mutexes (``kern_mutex.py``), sx locks (``kern_sx.py``) and lockmgr locks (``kern_lock.py``).

PORT: not one FreeBSD file. 5.0 blocked a contested mutex in ``_mtx_lock_sleep``
(kern_mutex.c) and waited for sx and lockmgr locks on condition variables and ``msleep``;
here every lock's owner is decided by the machine, so the wait is one loop: sleep until
the machine's grant (or wake-up) interrupt, then ask again.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock_spin, mtx_unlock_spin
from smp.kernel.kern.kern_switch import runq_add
from smp.kernel.kern.kern_synch import DROP_GIANT, PICKUP_GIANT, mi_switch, setrunnable
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import QUEUED, lock_retry
from smp.kernel.sys.proc import TDI, TDS, TD_CLR_SLEEPING, TD_SET_INHIB

__site_transparent__ = True


def lock_block(lt: Any, lock: int, kind: str, mode: int, where: str) -> None:
    """The machine queued the current thread on ``lock``: sleep until it wakes us, try
    again, until the lock is ours (5.0's ``_mtx_lock_sleep`` loop on a contested mutex;
    the condition-variable waits of sx and lockmgr).

    A thread blocked on a mutex keeps Giant, as on a turnstile. One that waits for an sx or
    lockmgr lock *sleeps* (cv_wait, msleep), so it drops Giant while it waits and takes it
    back before it tries again, as those sleeps do (its hold of Giant then names the lock
    request it waited for: ``... (cv_wait, called from vm/vm_glue.py:590)``).
    """
    t0 = md.sim_now()
    giant = 0
    if kind != "mutex" and lock != kern_globals.G.Giant:
        giant = DROP_GIANT(lt)
    try:
        while True:
            _wait_wakeup(lt, lock, kind)
            PICKUP_GIANT(giant, where, "cv_wait" if kind == "sx" else "msleep")
            if lock_retry(lock, mode, where) != QUEUED:
                return
            giant = DROP_GIANT(lt) if giant else 0
    finally:
        waited = md.sim_now() - t0
        md.add_sleep_lock_wait(waited)            # per-CPU sleep-lock wait time
        md.note_lock_wait(lock, waited)


def _wait_wakeup(lt: Any, lock: int, kind: str) -> None:
    sched_lock = kern_globals.G.sched_lock
    mtx_lock_spin(sched_lock)
    td = lt.td
    inhibitor = TDI.TDI_LOCK if kind == "mutex" else TDI.TDI_SLEEPING
    td.update(td_blocked=lock, td_lockname=kind)
    TD_SET_INHIB(td, inhibitor)
    lt.blocked_on = lock
    lt.blocked_sleeps = kind != "mutex"
    if lock not in lt.granted:
        mi_switch(voluntary=True)
    lt.granted.discard(lock)
    lt.blocked_on = 0
    # what the releaser's TD_CLR_LOCK (or the waker's TD_CLR_SLEEPING) and the switch
    # do, with the C's separate loads and stores
    td.td_blocked = 0
    inhib = td.td_inhibitors & ~int(inhibitor)
    td.td_inhibitors = inhib
    td.td_state = int(TDS.TDS_RUNNING) if inhib == 0 else int(TDS.TDS_INHIBITED)
    mtx_unlock_spin(sched_lock)


def lock_granted(tid: int, lock: int) -> None:
    """The grant (and wake-up) interrupt: local thread ``tid`` may have ``lock`` now."""
    lt = md.pcpu.threads.get(tid)
    if lt is None:
        md.panic(f"lock {lock:#x} granted to thread {tid}, which is not on cpu "
                 f"{md.pcpu.cpuid}")
    lt.granted.add(lock)
    if lt.blocked_on != lock:
        return
    if not lt.blocked_sleeps:
        runq_add(lt)                        # the turnstile: the releaser's setrunqueue
        return
    # An sx or lockmgr waiter sleeps (cv_wait, msleep) and is woken as wakeup() wakes, by
    # setrunnable: a sleeping thread is safe to swap out, and if its process was swapped
    # out meanwhile, the swapper is asked to bring it in (it must not run on a kernel
    # stack that is not there).
    sl = kern_globals.G.sched_lock
    mtx_lock_spin(sl)
    TD_CLR_SLEEPING(lt.td)
    setrunnable(lt.td)
    mtx_unlock_spin(sl)
