"""fork: a new process from an old one, after FreeBSD 5.0 ``kern/kern_fork.c`` (``fork1``); the
i386 ``cpu_fork``/``cpu_wait`` are in ``kernel/machine/vm_machdep.py``.

The order of ``fork1`` is the 2002 one, because a race guard of vm_glue depends on it: the
child is linked onto ``allproc`` (and the pid hash) in state ``PRS_NEW`` *first*, and only
then is it initialised: ``p_startzero..p_endzero`` zeroed (``p_vmspace``, ``p_lock``...),
``p_mtx`` initialised, ``p_sflag = PS_INMEM``, its thread made, ``vm_forkproc`` giving it an
address space. ``PRS_NORMAL`` comes last, under sched_lock. A walker of allproc that does
not skip PRS_NEW processes (``swapout_procs`` without its first guard) meets a process with
no address space, or a recycled proc with a destroyed mutex and a stale ``p_vmspace``.

The child's thread is pinned to the parent's CPU; its function is the child half of the
user program that forked (``fork`` returning 0).

PORT: no file descriptors, credentials, signals beyond ``p_sigacts``/``p_procsig``, process
groups or sessions; the pid is the next number (no pid hash).
"""

from __future__ import annotations

from typing import Any, Callable

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import (GIANT_REQUIRED, MTX_DEF, MTX_DUPOK, mtx_init, mtx_lock_spin,
                                        mtx_unlock_spin)
from smp.kernel.kern.kern_proc import PROC_LOCK, PROC_UNLOCK, proc_zalloc
from smp.kernel.kern.kern_switch import setrunqueue
from smp.kernel.kern.kern_sx import sx_xlock, sx_xunlock
from smp.kernel.kern.kern_thread import thread_attach
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.machine.pmap import pmap_new_thread
from smp.kernel.sys.kstruct import HASH_INSERT, LIST_INSERT_HEAD, TAILQ_INSERT_TAIL
from smp.kernel.sys.param import PUSER
from smp.kernel.sys.proc import PRS, PS, TDS, struct_ksegrp, struct_procsig, struct_thread
from smp.kernel.sys.user import KI_CHECK, KI_PID, ki_check
from smp.kernel.vm.vm import RFMEM, RFPROC, RFSTOPPED
from smp.kernel.vm.vm_glue import vm_forkproc


def fork1(td: Any, flags: int, child_main: Callable[[], None], name: str) -> tuple[int, Any]:
    """Create a child of ``td``'s process that runs ``child_main``. Returns (0, p2) or
    (errno, None). Called with Giant (fork is not MPSAFE in 2002)."""
    G = kern_globals.G
    GIANT_REQUIRED()
    p1 = td.td_proc

    if (flags & RFPROC) == 0:
        # rfork without a new process: only the caller's resources change.
        vm_forkproc(td, None, None, flags)
        md.pcpu.count("rforks_noproc")
        return 0, None

    p2 = proc_zalloc()

    # Link onto allproc first, in creation (PRS_NEW), as the 2002 fork1 did.
    sx_xlock(G.allproc_lock)
    pid = G.lastpid + 1
    G.lastpid = pid
    # p_state is a sched_lock field, but the 2002 fork1 sets PRS_NEW under allproc_lock
    # alone: no walker of allproc can see the process before it is linked.
    p2.update_racy(p_state=int(PRS.PRS_NEW), p_pid=pid)
    LIST_INSERT_HEAD(G.allproc, p2)
    HASH_INSERT(G.pidhashtbl, pid, p2)
    G.nprocs += 1
    sx_xunlock(G.allproc_lock)

    # bzero(&p2->p_startzero, ...): what the zone left behind is cleared only now, with
    # no lock: the process is on allproc, and its readers must skip PRS_NEW processes
    # (the first race guard of swapout_procs).
    p2.update_racy(p_vmspace=None, p_lock=0, p_flag=0, p_swtime=0, p_numthreads=1,
                   p_numksegrps=1, p_sigacts=0, p_stats=0, p_xstat=0, p_nice=0,
                   p_comm=name, p_oncpu=md.pcpu.cpuid)
    mtx_init(p2.p_mtx, "process lock", None, MTX_DEF | MTX_DUPOK)
    mtx_lock_spin(G.sched_lock)
    p2.p_sflag = int(PS.PS_INMEM)
    mtx_unlock_spin(G.sched_lock)
    p2.update_racy(p_procsig=struct_procsig.new(ps_refcnt=1), p_limit=p1.p_limit)

    kg1 = td.td_ksegrp
    mtx_lock_spin(G.sched_lock)
    nice = kg1.kg_nice if kg1 is not None else 0
    mtx_unlock_spin(G.sched_lock)
    kg2 = struct_ksegrp.new(kg_proc=p2, kg_nice=nice)
    TAILQ_INSERT_TAIL(p2.p_ksegrps, kg2)
    td2 = struct_thread.new(td_proc=p2, td_ksegrp=kg2, td_oncpu=md.pcpu.cpuid,
                            td_name=name, td_priority=PUSER, td_base_pri=PUSER,
                            td_state=int(TDS.TDS_INACTIVE))
    pmap_new_thread(td2)                                   # thread_init
    TAILQ_INSERT_TAIL(p2.p_threads, td2)
    TAILQ_INSERT_TAIL(kg2.kg_threads, td2)

    sx_xlock(G.proctree_lock)
    p2.p_pptr = p1
    PROC_LOCK(p1)
    LIST_INSERT_HEAD(p1.p_children, p2)
    PROC_UNLOCK(p1)
    sx_xunlock(G.proctree_lock)

    vm_forkproc(td, p2, td2, flags)
    # PORT: what ps reads in the U-area (kinfo_proc), written where fork1 filled p2.
    up = p2.p_uarea
    memory.kwrite_u64(up + KI_PID, pid)
    memory.kwrite_u64(up + KI_CHECK, ki_check(pid))

    lt2 = thread_attach(td2, name, PUSER, child_main)
    lt2.proc = p2
    lt2.kstack = td2.td_kstack
    md.pcpu.count("forks")
    if flags & RFMEM:
        md.pcpu.count("forks_rfmem")

    # Set the child runnable; the last step, as in fork1.
    mtx_lock_spin(G.sched_lock)
    p2.p_state = int(PRS.PRS_NORMAL)
    td2.td_state = int(TDS.TDS_CAN_RUN)
    if (flags & RFSTOPPED) == 0:
        setrunqueue(td2)
    mtx_unlock_spin(G.sched_lock)
    return 0, p2
