"""Threads: creation, the first run, and exit, after FreeBSD ``kern/kern_thread.c`` and the
fork trampoline (``fork_exit`` in kern_fork.c).

A thread has two halves. Its ``struct thread`` lives in server memory, where every CPU can
see its state; its stack and this CPU's bookkeeping live here, in :class:`LocalThread`,
which no other CPU can reach. The thread id used on the bus is the handle of its
``struct thread``, so the server's lock table names lock owners by the same number the
kernel does.

A new thread starts as if it were returning from ``cpu_switch``: holding sched_lock (handed
to it by the thread that switched to it) in a critical section; ``fork_exit`` drops that
and calls the thread's function.
"""

from __future__ import annotations

from typing import Any, Callable

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import mtx_lock_spin, mtx_unlock_spin
from smp.kernel.kern.kern_switch import choosethread
from smp.kernel.machine import cpu as md
from smp.kernel.machine.lock import lock_handoff
from smp.kernel.machine.swtch import cpu_throw
from smp.kernel.sys.proc import TDS, struct_thread


class LocalThread:
    """What this CPU keeps of one of its threads (per-CPU data: never shared)."""

    __slots__ = ("td", "tid", "name", "ctx", "owned", "owned_sx", "granted", "blocked_on",
                 "blocked_sleeps", "on_runq", "pri", "need_resched", "sleep_callout", "proc",
                 "kstack", "runq_since", "watchdog_reported")

    def __init__(self, td: Any, name: str, pri: int) -> None:
        self.td = td
        self.tid: int = td.handle
        self.name = name
        self.ctx: Any = None
        self.owned: dict[int, int] = {}                    # mutex address -> depth
        self.owned_sx: dict[tuple[int, int], int] = {}     # (sx/lockmgr, mode) -> count
        self.granted: set[int] = set()
        self.blocked_on = 0
        self.blocked_sleeps = False                        # waits asleep (sx, lockmgr)
        self.on_runq = False
        self.pri = pri
        self.need_resched = False
        self.sleep_callout: Any = None
        self.proc: Any = None
        self.kstack = 0                                    # td_kstack (never changes)
        self.runq_since = 0                                # tick it was last queued
        self.watchdog_reported = False

    def __repr__(self) -> str:
        return f"<thread {self.name} tid {self.tid}>"


def curlocal() -> LocalThread:
    return md.curctx().kdata  # type: ignore[no-any-return]


def curthread() -> Any:
    """``curthread``: the running thread's ``struct thread``."""
    return md.curctx().kdata.td


def curproc() -> Any:
    return curthread().td_proc


def thread_attach(td: Any, name: str, pri: int, fn: Callable[[], None],
                  first_run: bool = True) -> LocalThread:
    """Give ``td`` a stack on this CPU. With ``first_run`` the stack starts in
    ``fork_exit``, owning the sched_lock that its first switch hands it."""
    lt = LocalThread(td, name, pri)
    if first_run:
        lt.ctx = md.new_context(lt.tid, name, lambda: fork_exit(fn), critnest=1)
        lt.owned[kern_globals.G.sched_lock] = 1
    else:
        lt.ctx = md.new_context(lt.tid, name, fn)
    lt.ctx.kdata = lt
    md.pcpu.threads[lt.tid] = lt
    return lt


def thread_new(p: Any, kg: Any, name: str, pri: int, fn: Callable[[], None]) -> LocalThread:
    """Allocate a ``struct thread`` in ``p``/``kg``, pinned to this CPU, and its stack."""
    td = struct_thread.new(td_proc=p, td_ksegrp=kg, td_oncpu=md.pcpu.cpuid, td_name=name,
                           td_priority=pri, td_base_pri=pri,
                           td_state=int(TDS.TDS_CAN_RUN))
    return thread_attach(td, name, pri, fn)


def fork_exit(fn: Callable[[], None]) -> None:
    """First code a new thread runs: drop the handed-over sched_lock, run ``fn``."""
    mtx_unlock_spin(kern_globals.G.sched_lock)
    fn()
    thread_exit()


def thread_exit(sched_locked: bool = False) -> None:
    """The current thread stops for good: its successor runs on its CPU (cpu_throw).
    Called with sched_lock held if ``sched_locked``, else without; never returns."""
    lt = curlocal()
    sl = kern_globals.G.sched_lock
    if not sched_locked:
        mtx_lock_spin(sl)
    if lt.owned != {sl: 1} or lt.owned_sx:
        # A lock held by a thread that is gone is held for ever: every thread that asks
        # for it waits for good, and nothing said where it was left. Panic here (as
        # 5.0's WITNESS_WARN(WARN_PANIC, NULL, "System call %s returning") did at the
        # way out of every syscall), where crash.txt's show alllocks names each lock and
        # where it was taken.
        held = [f"{m:#x}" + (f" (x{n})" if n > 1 else "")
                for m, n in sorted(lt.owned.items()) if m != sl]
        if lt.owned.get(sl, 0) != 1:
            held.append(f"sched lock x{lt.owned.get(sl, 0)}")
        held += [f"{h:#x}" for h, _ in sorted(lt.owned_sx)]
        md.panic(f"thread_exit: thread {lt.name} (tid {lt.tid}) exits with {len(held)} "
                 f"lock{'s' if len(held) != 1 else ''} held: {', '.join(held)} "
                 f"(show alllocks names them)")
    lt.td.update(td_state=int(TDS.TDS_INACTIVE))
    nxt = choosethread()
    del lt.owned[sl]
    nxt.owned[sl] = 1
    md.pcpu.threads.pop(lt.tid, None)
    nxt.td.td_state = int(TDS.TDS_RUNNING)
    nxt.td.td_didrun = 1
    lock_handoff(sl, nxt.tid)
    cpu_throw(nxt)


__all__ = ["LocalThread", "curlocal", "curthread", "curproc", "thread_attach", "thread_new",
           "fork_exit", "thread_exit"]
