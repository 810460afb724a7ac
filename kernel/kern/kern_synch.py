"""Sleep, wakeup and context switching, after FreeBSD 5.0 ``kern/kern_synch.c``.

``msleep`` puts the current thread to sleep on a channel (any address: ``&p->p_sflag``,
``&proc0``) and gives up its CPU; ``wakeup`` makes every sleeper of a channel runnable again.
The server keeps the sleep queues; queueing a thread and dropping its interlock are one
server operation, and both queueing and waking require sched_lock, so no wakeup is lost
(DESIGN.md decision 3).

``setrunnable`` is the kernel's, not the server's: it is where a wakeup of a swapped-out
thread turns into a swap-in request (``PS_SWAPINREQ`` and ``wakeup(&proc0)``), which is what
drives vm_glue's ``scheduler()``.

The 4BSD priority arithmetic (``updatepri``, ``resetpriority``) is kept only as far as the
swapper and swapout need it: ``kg_slptime`` and ``p_swtime`` ageing in ``schedcpu``.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import (MA_NOTRECURSED, MA_OWNED, mtx_assert, mtx_lock,
                                        mtx_lock_spin, mtx_unlock, mtx_unlock_spin)
from smp.kernel.kern.kern_switch import choosethread, setrunqueue
from smp.kernel.kern.kern_thread import curlocal
from smp.kernel.kern.kern_timeout import Callout
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import (AF_PICKUP, lock_handoff, sleepq_add, sleepq_remove,
                                     sleepq_wakeup)
from smp.kernel.machine.swtch import cpu_switch
from smp.kernel.sys.kstruct import TAILQ_FOREACH
from smp.kernel.sys.param import EWOULDBLOCK, PDROP, PRIMASK
from smp.kernel.sys.proc import (PRS, PS, TDF, TDI, TDS, TD_CLR_SLEEPING, TD_SET_SLEEPING,
                                 struct_ksegrp, struct_proc, struct_thread)

__all__ = ["msleep", "tsleep", "wakeup", "wakeup_one", "mi_switch", "setrunnable",
           "schedcpu", "maybe_yield"]


def _G() -> Any:
    return kern_globals.G


# -- Giant around sleeps (DROP_GIANT / PICKUP_GIANT) ---------------------------------------
def DROP_GIANT(lt: Any) -> int:
    giant = _G().Giant
    n = lt.owned.get(giant, 0)
    for _ in range(n):
        mtx_unlock(giant)
    return n


def PICKUP_GIANT(n: int, caller: str = "", sleep: str = "msleep") -> None:
    """Take Giant back (``n`` deep) after a sleep; WITNESS learns no order from it.

    The hold is taken here, so it is recorded here (FreeBSD's WITNESS, too, shows Giant
    "locked @ kern/kern_synch.c" after a sleep: PICKUP_GIANT expands in msleep), and every
    report that shows the hold (``show alllocks``, deadlocks, ``sleeping with``, ps) would
    read the same for every sleeper. So the site also names the sleep's caller, as the
    sleep record does: ``kern/kern_synch.py:63 (msleep, called from vm/vm_pageout.py:185)``
    (``sleep``: the sleep that dropped Giant; ``cv_wait`` for a thread that waited for an
    sx lock, named with where it asked for the lock).
    """
    if not n:
        return
    giant = _G().Giant
    where = md.site()
    if caller:
        where = f"{where} ({sleep}, called from {caller})"
    for _ in range(n):
        mtx_lock(giant, AF_PICKUP, where)


# Functions that only sleep on their caller's behalf (wait for memory, for a busy page,
# for a swap transfer, a program's nap): a sleep in one is reported at its caller.
_WAIT_HELPERS = frozenset({"vm_wait", "vm_page_sleep_busy", "_transfer_wait", "sleep_ticks"})


def _sleeper_site() -> str:
    """PORT: where the thread went to sleep or woke others, for the reports: the
    innermost kernel frame outside this file (the caller of msleep, tsleep or wakeup) and
    outside the helpers that only wait for their caller (``vm_wait`` names who waits for
    memory)."""
    stack = md.kernel_stack(limit=10)
    for frame in reversed(stack):
        where, _, func = frame.partition(" ")
        if not where.startswith("kern/kern_synch.py:") and func not in _WAIT_HELPERS:
            return where
    return ""


def msleep(ident: int, mtx: int | None, priority: int, wmesg: str, timo: int) -> int:
    """Sleep on ``ident``; release ``mtx`` (the interlock) atomically with going to sleep
    and take it again on wakeup unless ``PDROP``. ``timo`` ticks (0: forever).
    Returns 0, or EWOULDBLOCK on timeout."""
    lt = curlocal()
    td = lt.td
    G = _G()
    md.pcpu.count("msleeps")
    mtx_lock_spin(G.sched_lock)
    giant = DROP_GIANT(lt)
    if mtx is not None:
        mtx_assert(mtx, MA_OWNED | MA_NOTRECURSED)
    # PORT: the server's SLEEP queues us and releases the interlock in one step, and
    # needs sched_lock held, as kern_synch.c's sleep queue does.
    kg = td.td_ksegrp
    kg.kg_slptime = 0
    td.update(td_wchan=ident, td_wmesg=wmesg, td_priority=priority & PRIMASK)
    lt.pri = priority & PRIMASK
    TD_SET_SLEEPING(td)
    if mtx is not None:
        n = lt.owned.pop(mtx)
        assert n == 1
    caller = _sleeper_site()
    sleepq_add(ident, mtx or 0, timo, caller)
    if timo:
        if lt.sleep_callout is None:
            lt.sleep_callout = Callout()
        md.pcpu.callouts.reset(lt.sleep_callout, md.pcpu.ticks, timo, endtsleep, lt,
                               f"endtsleep {lt.name}")
    mi_switch(voluntary=True)
    rval = 0
    flags = td.td_flags
    if flags & TDF.TDF_TIMEOUT:
        td.td_flags = flags & ~int(TDF.TDF_TIMEOUT)
        rval = EWOULDBLOCK
    elif timo:
        md.pcpu.callouts.stop(lt.sleep_callout)
    mtx_unlock_spin(G.sched_lock)
    PICKUP_GIANT(giant, caller)
    if mtx is not None and not priority & PDROP:
        mtx_lock(mtx)
    return rval


def tsleep(ident: int, priority: int, wmesg: str, timo: int) -> int:
    return msleep(ident, None, priority, wmesg, timo)


def endtsleep(lt: Any) -> None:
    """A sleep timed out (callout, interrupt context on the sleeper's CPU)."""
    G = _G()
    mtx_lock_spin(G.sched_lock)
    td = lt.td
    wchan = td.td_wchan
    if wchan and sleepq_remove(wchan, lt.tid):
        td.update(td_flags=td.td_flags | int(TDF.TDF_TIMEOUT), td_wchan=0)
        TD_CLR_SLEEPING(td)
        setrunnable(td)
    mtx_unlock_spin(G.sched_lock)


def _wakeup(ident: int, one: bool) -> int:
    G = _G()
    mtx_lock_spin(G.sched_lock)
    tids = sleepq_wakeup(ident, one, _sleeper_site())
    for tid in tids:
        td = struct_thread.at(tid)
        td.td_wchan = 0
        TD_CLR_SLEEPING(td)
        setrunnable(td)
    mtx_unlock_spin(G.sched_lock)
    md.pcpu.count("wakeups")
    return len(tids)


def wakeup(ident: int) -> int:
    """Make every thread sleeping on ``ident`` runnable; returns how many there were."""
    return _wakeup(ident, False)


def wakeup_one(ident: int) -> int:
    return _wakeup(ident, True)


def mi_switch(voluntary: bool = True) -> None:
    """Give the CPU to the next runnable thread. Called with sched_lock held (not recursed);
    returns, holding it, when this thread is chosen again."""
    G = _G()
    sl = G.sched_lock
    mtx_assert(sl, MA_OWNED | MA_NOTRECURSED, "sched lock")
    lt = curlocal()
    nxt = choosethread()
    if nxt is None:
        md.panic(f"mi_switch: nothing can run on cpu{md.pcpu.cpuid} (no idle thread yet) "
                 f"while {lt.name} blocks")
    if nxt is lt:
        lt.td.td_state = int(TDS.TDS_RUNNING)
        return
    # cpu_switch: the new thread continues with sched_lock (mi_switch's
    # "sched_lock.mtx_lock = (uintptr_t)td" in 5.0), so ownership is handed over.
    del lt.owned[sl]
    nxt.owned[sl] = 1
    nxt.need_resched = False
    nxt.td.td_state = int(TDS.TDS_RUNNING)
    nxt.td.td_didrun = 1
    lock_handoff(sl, nxt.tid)
    cpu_switch(nxt, voluntary)


def setrunnable(td: Any) -> None:
    """Make a thread that stopped sleeping runnable, or ask the swapper to bring its
    process in. Called with sched_lock held."""
    mtx_assert(_G().sched_lock, MA_OWNED, "sched lock")
    p = td.td_proc
    if p.p_state == PRS.PRS_ZOMBIE:
        md.panic("setrunnable(1)")
    # the C's loads, one at a time and in its order: td_state for the switch, then
    # td_inhibitors only in the TDS_INHIBITED case
    state = td.td_state
    if state in (TDS.TDS_RUNNING, TDS.TDS_RUNQ):
        return
    if state == TDS.TDS_INHIBITED:
        # If we are only inhibited because we are swapped out
        # then arange to swap in this process. Otherwise just return.
        if td.td_inhibitors != TDI.TDI_SWAPPED:
            return
    elif state != TDS.TDS_CAN_RUN:
        md.panic(f"setrunnable(2): state is {state:#x}")
    sflag = p.p_sflag
    if (sflag & PS.PS_INMEM) == 0:
        if (sflag & PS.PS_SWAPPINGIN) == 0:
            p.p_sflag = sflag | PS.PS_SWAPINREQ
            wakeup(_G().proc0.chan)
    else:
        kg = td.td_ksegrp
        if kg.kg_slptime > 1:
            updatepri(kg)
        kg.kg_slptime = 0
        setrunqueue(td)


def updatepri(kg: Any) -> None:
    """Recompute the priority of a ksegrp that slept more than a second.
    PORT: 4BSD decays ``kg_estcpu`` by the load average for each second slept; with no
    load average here the decay is to zero, which is what long sleeps reached anyway."""
    kg.kg_estcpu = 0


def schedcpu() -> None:
    """Once a simulated second: age ``p_swtime`` and ``kg_slptime`` (what the swapper and
    swapout_procs decide by). Runs in a kernel thread; takes allproc shared, then
    sched_lock for each process."""
    from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock   # cycle: an sx wait sleeps here
    G = _G()
    md.pcpu.count("schedcpu_runs")
    sx_slock(G.allproc_lock)
    for p in TAILQ_FOREACH(G.allproc, struct_proc):
        mtx_lock_spin(G.sched_lock)
        p.p_swtime += 1
        for kg in TAILQ_FOREACH(p.addr("p_ksegrps"), struct_ksegrp):
            awake = False
            for td in TAILQ_FOREACH(kg.addr("kg_threads"), struct_thread):
                state = td.td_state
                didrun = td.td_didrun
                if state in (TDS.TDS_RUNQ, TDS.TDS_RUNNING) or didrun:
                    awake = True
                if didrun:
                    td.td_didrun = 0
            if awake:
                if kg.kg_slptime > 1:
                    updatepri(kg)
                kg.kg_slptime = 0
            else:
                kg.kg_slptime += 1
        mtx_unlock_spin(G.sched_lock)
    sx_sunlock(G.allproc_lock)


def maybe_yield() -> None:
    """Give up the CPU if the clock asked for it (roundrobin's need_resched, taken at
    the return to user mode in FreeBSD's ``ast``)."""
    lt = curlocal()
    if not lt.need_resched:
        return
    lt.need_resched = False
    G = _G()
    mtx_lock_spin(G.sched_lock)
    setrunqueue(lt.td)
    mi_switch(voluntary=False)
    mtx_unlock_spin(G.sched_lock)
