"""The context switch, after FreeBSD's ``i386/i386/swtch.s``: ``cpu_switch`` and ``cpu_throw``.

Before it resumes a thread, the switch reads the thread's pcb, which lives at the base of
its kernel stack (``pmap_new_thread`` writes the thread's id there). A thread whose stack is
swapped out therefore traps here, as it would on the hardware, and the trap names it; a
stack that came back from swap wrong panics.

PORT: kernel threads (P_SYSTEM, never swapped) run without simulated stack pages, so for
them there is nothing to read.
"""

from __future__ import annotations

from typing import Any

from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory


def cpu_switch(nxt: Any, voluntary: bool = True) -> None:
    """Stop the running thread and resume ``nxt`` (a ``LocalThread``), which holds the
    handed-over sched_lock; returns when the running thread is chosen again."""
    _pcb_check(nxt)
    md.pcpu_hw().switch_to(nxt.ctx, voluntary)


def cpu_throw(nxt: Any) -> None:
    """The running thread is gone for good: ``nxt`` runs next. Never returns."""
    _pcb_check(nxt)
    md.pcpu_hw().exit_to(nxt.ctx)


def _pcb_check(lt: Any) -> None:
    """What cpu_switch reads of the next thread: its pcb, at the base of its kernel
    stack (sched_lock held, already handed over to it). A swapped-out stack is a
    fatal trap, which names the thread; a corrupted one panics. The trap message reads
    the thread's state without the lock's owner check (load_racy): the running thread
    no longer owns sched_lock, and a diagnostic's reads are no locking of the kernel's
    (they were reported as unlocked loads at every such panic)."""
    ks = lt.kstack
    if not ks:
        return
    pcb = memory.kread_probe(ks, 8)
    if pcb is None:
        td = lt.td
        p = td.td_proc
        state, inhib = td.load_racy("td_state", "td_inhibitors")
        pid, sflag, pstate = p.load_racy("p_pid", "p_sflag", "p_state")
        md.panic(f"fatal trap 12 in cpu_switch: the kernel stack of thread {lt.name} "
                 f"(tid {lt.tid}, pid {pid}) is not mapped at {ks:#x}: td_state {state}, "
                 f"td_inhibitors {inhib:#x}, p_sflag {sflag:#x}, p_state {pstate}")
    tid = int.from_bytes(pcb, "little")
    if tid != lt.tid:
        md.panic(f"cpu_switch: kernel stack of thread {lt.name} holds {tid:#x}, "
                 f"not its pcb")
