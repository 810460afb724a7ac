"""The idle thread of each CPU, after FreeBSD ``kern/kern_idle.c``.

It runs when nothing else can: it waits for the next interrupt (a tick, an IPI, a lock
grant), and when one has made a thread runnable it switches to it. It never sleeps and is
never on a run queue; ``choosethread`` returns it when the queue is empty.
"""

from __future__ import annotations

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock_spin, mtx_unlock_spin
from smp.kernel.kern.kern_synch import mi_switch
from smp.kernel.kern.kern_thread import curlocal
from smp.kernel.machine import cpu as md
from smp.kernel.sys.proc import TDS


def idle_proc() -> None:
    pc = md.pcpu
    td = curlocal().td
    while True:
        if pc.runq.heap:
            sl = kern_globals.G.sched_lock
            mtx_lock_spin(sl)
            td.td_state = int(TDS.TDS_CAN_RUN)     # not running, and on no run queue
            mi_switch(voluntary=True)
            mtx_unlock_spin(sl)
        else:
            md.idle_wait()
