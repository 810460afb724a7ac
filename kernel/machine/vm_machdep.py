"""The machine-dependent half of fork and exit, after FreeBSD's ``i386/i386/vm_machdep.c``.

``cpu_fork`` finishes the child's kernel stack so that the child returns to user mode on its
first switch; ``cpu_wait`` releases what the machine kept of a dead process (nothing here:
the kernel stack goes with the thread).
"""

from __future__ import annotations

from typing import Any

from smp.kernel.machine import memory
from smp.kernel.vm.vm import RFPROC


def cpu_fork(td1: Any, p2: Any, td2: Any, flags: int) -> None:
    """i386: copy the pcb to the child's kernel stack and make it ready to return to user
    mode. Without RFPROC there is no child: nothing to do."""
    if (flags & RFPROC) == 0:
        return
    memory.kwrite_u64(td2.td_kstack, td2.handle)          # the child's pcb


def cpu_wait(p: Any) -> None:
    """i386: nothing (the kernel stack goes with the thread)."""
