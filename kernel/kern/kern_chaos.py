"""Chaos yields: at the kernel's safe points a thread may give up its CPU on purpose.

PORT: not in FreeBSD. With ``debug.chaos`` on, the hardware stalls at lock operations
(``hw/chaos.py``); here the kernel adds the other half, a voluntary context switch right
after a sleep mutex is taken or released, where switching is legal (no spin lock held,
not in an interrupt), so that another thread of the same CPU runs in the window.
"""

from __future__ import annotations

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import curlocal, mtx_lock_spin, mtx_unlock_spin
from smp.kernel.kern.kern_switch import setrunqueue
from smp.kernel.kern.kern_synch import mi_switch
from smp.kernel.machine import cpu as md


def chaos_yield() -> None:
    if not md.interrupts_enabled() or not md.chaos_want_yield():
        return
    lt = curlocal()
    if lt is md.pcpu.idlethread:
        return
    sl = kern_globals.G.sched_lock
    mtx_lock_spin(sl)
    setrunqueue(lt.td)
    mi_switch(voluntary=False)
    mtx_unlock_spin(sl)
