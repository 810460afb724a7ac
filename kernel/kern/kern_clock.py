"""The clock interrupt, after FreeBSD ``kern/kern_clock.c``.

``hardclock`` runs ``hz`` times a simulated second on every CPU, in interrupt context on
whatever thread is current (``hw/clock.py`` says when ticks fall due). It counts the tick,
runs this CPU's due callouts (``softclock``) and, every ``hz/10`` ticks, asks the running
thread to give up the CPU (4BSD's ``roundrobin``), which user-mode code honours at its next
return to user mode (``maybe_yield``). The ``cp_time`` accounting of each tick is done by
the hardware layer, which knows what the CPU was doing.
"""

from __future__ import annotations

from smp.kernel import param
from smp.kernel.machine import cpu as md


def hardclock() -> None:
    pc = md.pcpu
    pc.ticks += 1
    pc.callouts.softclock(pc.ticks)
    if pc.ticks % max(param.hz // 10, 1) == 0:
        cur = md.curctx_or_none()
        if cur is not None and cur.kdata is not None and cur.kdata is not pc.idlethread:
            cur.kdata.need_resched = True
