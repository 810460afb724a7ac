"""Kernel threads, after FreeBSD ``kern/kern_kthread.c``.

``kthread_create`` makes a process with one thread that runs a kernel function, marked
``P_SYSTEM | P_KTHREAD`` (never swapped out). The thread is pinned to the CPU that creates it;
the daemons are made on the CPU ``kern.kthread_placement`` gives them (``kthread_cpu``).

PORT: FreeBSD 5.0 built kernel threads with ``fork1(&thread0, RFMEM|RFFDG|RFPROC|
RFSTOPPED)``. Until the kernel's fork exists they are assembled here from the same parts in
an order that is safe by construction: the process is fully initialised (lock, ksegrp,
thread, ``PRS_NORMAL``) before it is linked onto ``allproc``, so no walker of allproc ever
sees it half-made. (fork1's own ``PRS_NEW`` window is the subject of a race guard in
vm_glue; it belongs to fork, not here.)
"""

from __future__ import annotations

from typing import Any, Callable

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import MTX_DEF, MTX_DUPOK, mtx_init, mtx_lock_spin, mtx_unlock_spin
from smp.kernel.kern.kern_switch import setrunqueue
from smp.kernel.kern.kern_sx import sx_xlock, sx_xunlock
from smp.kernel.kern.kern_thread import LocalThread, thread_new
from smp.kernel.machine import cpu as md
from smp.kernel.sys.kstruct import HASH_INSERT, LIST_INSERT_HEAD, TAILQ_INSERT_TAIL
from smp.kernel.sys.param import PWAIT
from smp.kernel.sys.proc import P, PRS, PS, struct_ksegrp, struct_proc


# The kernel's daemons, in the order in which ``kern.kthread_placement = "spread"`` gives
# them CPUs: the swapper on the last CPU, the pageout daemon on the one before, and so on
# round the machine. In 5.0 any CPU could run any of them; here a thread stays on the CPU
# that made it (DESIGN.md decision 4), so the placement is chosen when it is made.
DAEMONS = ("swapper", "pagedaemon", "vmdaemon", "schedcpu")


def kthread_cpu(name: str) -> int:
    """The CPU the daemon ``name`` runs on (``kern.kthread_placement``)."""
    if md.pcpu.config["kern.kthread_placement"] == "cpu0":
        return 0
    n = md.pcpu.ncpus
    return (n - 1 - DAEMONS.index(name)) % n


def kthread_create_on(name: str, func: Callable[[], None], pri: int = PWAIT) -> None:
    """A per-CPU SYSINIT's half of starting the daemon ``name``: only the CPU it is
    placed on (``kthread_cpu``) makes it."""
    if kthread_cpu(name) == md.pcpu.cpuid:
        kthread_create(func, name, pri)


def proc_link(p: Any) -> int:
    """Give ``p`` a pid and put it on allproc (allproc_lock exclusive)."""
    G = kern_globals.G
    sx_xlock(G.allproc_lock)
    pid = G.lastpid + 1
    G.lastpid = pid
    p.p_pid = pid
    LIST_INSERT_HEAD(G.allproc, p)
    HASH_INSERT(G.pidhashtbl, pid, p)
    G.nprocs += 1
    sx_xunlock(G.allproc_lock)
    return pid


def kthread_create(func: Callable[[], None], name: str, pri: int = PWAIT,
                   run: bool = True, link: bool = True, flags: int = 0) -> LocalThread:
    """A new kernel process on this CPU running ``func``, its ``p_flag`` ``P_SYSTEM |
    P_KTHREAD | flags``; queued to run unless ``run`` is False (RFSTOPPED). Without
    ``link`` it takes no lock and is on no list: the caller gives it its pid and puts it
    on allproc later (``proc_link``)."""
    G = kern_globals.G
    p = struct_proc.new(p_flag=int(P.P_SYSTEM | P.P_KTHREAD) | flags, p_sflag=int(PS.PS_INMEM),
                        p_state=int(PRS.PRS_NORMAL), p_comm=name, p_oncpu=md.pcpu.cpuid,
                        p_numthreads=1, p_numksegrps=1, p_pptr=G.proc0)
    mtx_init(p.p_mtx, "process lock", None, MTX_DEF | MTX_DUPOK)
    kg = struct_ksegrp.new(kg_proc=p)
    TAILQ_INSERT_TAIL(p.p_ksegrps, kg)
    lt = thread_new(p, kg, name, pri, func)
    lt.proc = p
    TAILQ_INSERT_TAIL(p.p_threads, lt.td)
    TAILQ_INSERT_TAIL(kg.kg_threads, lt.td)
    if link:
        proc_link(p)
    if run:
        mtx_lock_spin(G.sched_lock)
        setrunqueue(lt.td)
        mtx_unlock_spin(G.sched_lock)
    return lt
