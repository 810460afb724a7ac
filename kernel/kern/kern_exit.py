"""exit and wait, after FreeBSD 5.0 ``kern/kern_exit.c`` (``exit1``, ``wait1``).

``exit1``: mark the process exiting (``P_WEXIT``), wait for the holds on it to go
(``p_lock``, "exithold"), let go of the address space (``vm_exitingcnt`` up, ``vm_refcnt``
down; the last user tears the mappings down), move from ``allproc`` to ``zombproc``, hand
the children to the parent, become a zombie under sched_lock, wake the parent and switch
away for good.

``wait1``: find a zombie child under ``proctree_lock``; reap it: off ``zombproc``, then
``vm_waitproc`` (Giant), the thread's kernel stack freed, ``p_mtx`` destroyed and the proc
back to the zone, where a later fork finds it as it was left. With no zombie yet, sleep on
the process itself with its own lock as the interlock; ``exit1`` takes the parent's lock
(under ``proctree_lock``) before it marks itself a zombie and wakes the parent, so the
wakeup cannot be lost.
"""

from __future__ import annotations

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import (KASSERT, mtx_destroy, mtx_lock_spin, mtx_unlock,
                                        mtx_unlock_spin)
from smp.kernel.kern.kern_proc import FOREACH_THREAD_IN_PROC, PROC_LOCK, PROC_UNLOCK, proc_zfree
from smp.kernel.kern.kern_sx import sx_xlock, sx_xunlock
from smp.kernel.kern.kern_synch import msleep, wakeup
from smp.kernel.kern.kern_thread import curthread, thread_exit
from smp.kernel.machine import cpu as md
from smp.kernel.machine.pmap import pmap_dispose_thread
from smp.kernel.sys.kstruct import (HASH_REMOVE, LIST_FIRST, LIST_FOREACH, LIST_INSERT_HEAD,
                                    LIST_REMOVE, TAILQ_REMOVE)
from smp.kernel.sys.param import ECHILD, PWAIT
from smp.kernel.sys.proc import P, PRS, struct_proc
from smp.kernel.vm.vm_glue import vm_waitproc
from smp.kernel.vm.vm_map import vm_map_delete, vm_map_lock, vm_map_unlock


def exit1(rv: int) -> None:
    """The current process exits with status ``rv`` (called with Giant, which the
    process gives up with its last switch). Never returns."""
    G = kern_globals.G
    td = curthread()
    p = td.td_proc
    KASSERT(p != G.proc0, "exit1: proc0 exiting")

    PROC_LOCK(p)
    p.p_flag |= P.P_WEXIT
    PROC_UNLOCK(p)

    #
    # Wait for any processes that have a hold on our vmspace to
    # release their reference.
    #
    # PORT: the 2002 _PRELE wakes nobody, so the wait rechecks once a tick.
    PROC_LOCK(p)
    while p.p_lock > 0:
        msleep(p.addr("p_lock"), p.p_mtx, PWAIT, "exithold", 1)
    PROC_UNLOCK(p)

    #
    # Release user portion of address space.
    # This releases references to vnodes,
    # which could cause I/O if the file has been unlinked.
    # Need to do this early enough that we can still sleep.
    # Can't free the entire vmspace as the kernel stack
    # may be mapped within that space also.
    #
    vm = p.p_vmspace
    vm.vm_exitingcnt += 1
    refcnt = vm.vm_refcnt - 1
    vm.vm_refcnt = refcnt
    if refcnt == 0:
        m = vm.vm_map
        vm_map_lock(m)
        vm_map_delete(m, m.min_offset, m.max_offset)
        vm_map_unlock(m)

    sx_xlock(G.allproc_lock)
    LIST_REMOVE(G.allproc, p)
    LIST_INSERT_HEAD(G.zombproc, p)
    HASH_REMOVE(G.pidhashtbl, p.p_pid)
    sx_xunlock(G.allproc_lock)

    sx_xlock(G.proctree_lock)
    pp = p.p_pptr
    # Give our children to our parent (PORT: FreeBSD gives them to init).
    q = LIST_FIRST(p.p_children, struct_proc)
    while q is not None:
        LIST_REMOVE(p.p_children, q)
        PROC_LOCK(q)
        q.p_pptr = pp
        PROC_UNLOCK(q)
        LIST_INSERT_HEAD(pp.p_children, q)
        q = LIST_FIRST(p.p_children, struct_proc)
    PROC_LOCK(p)
    p.p_xstat = rv
    PROC_LOCK(pp)
    sx_xunlock(G.proctree_lock)
    md.pcpu.count("exits")

    mtx_unlock(G.Giant)
    # The last steps are done holding sched_lock, which cpu_throw hands to the next thread.
    mtx_lock_spin(G.sched_lock)
    p.p_state = int(PRS.PRS_ZOMBIE)
    wakeup(pp.chan)
    PROC_UNLOCK(pp)
    PROC_UNLOCK(p)
    thread_exit(sched_locked=True)


def wait1(pid: int = -1) -> tuple[int, int, int]:
    """Reap a zombie child (``pid`` or any): (0, pid, status), or (ECHILD, 0, 0).
    Called with Giant (dropped while it sleeps)."""
    G = kern_globals.G
    q = curthread().td_proc
    while True:                                                  # loop:
        nfound = 0
        sx_xlock(G.proctree_lock)
        for p in list(LIST_FOREACH(q.p_children, struct_proc)):
            if pid != -1 and p.p_pid != pid:
                continue
            nfound += 1
            # The child's state is tested under its proc lock, as 5.0's wait1 did: exit1
            # holds it from before it lets go of proctree_lock until it has made itself a
            # zombie and woken us. (Tested under sched_lock alone, the test could come
            # between the two; then the wakeup came before our sleep and was lost.)
            PROC_LOCK(p)
            mtx_lock_spin(G.sched_lock)
            zombie = p.p_state == PRS.PRS_ZOMBIE
            mtx_unlock_spin(G.sched_lock)
            if not zombie:
                PROC_UNLOCK(p)
                continue
            cpid, status = p.p_pid, p.p_xstat
            PROC_UNLOCK(p)
            LIST_REMOVE(q.p_children, p)
            sx_xunlock(G.proctree_lock)
            sx_xlock(G.allproc_lock)
            LIST_REMOVE(G.zombproc, p)
            G.nprocs -= 1
            sx_xunlock(G.allproc_lock)
            vm_waitproc(p)
            for td in list(FOREACH_THREAD_IN_PROC(p)):          # thread_reap
                pmap_dispose_thread(td)
                TAILQ_REMOVE(p.p_threads, td)
                kg = td.td_ksegrp
                if kg is not None:
                    TAILQ_REMOVE(kg.kg_threads, td)
                    TAILQ_REMOVE(p.p_ksegrps, kg)
                    kg.free()
                td.free()
            ps = p.p_procsig
            p.p_procsig = None
            if ps is not None:
                ps.free()
            mtx_destroy(p.p_mtx)
            proc_zfree(p)
            md.pcpu.count("waits")
            return 0, cpid, status
        if nfound == 0:
            sx_xunlock(G.proctree_lock)
            return ECHILD, 0, 0
        PROC_LOCK(q)
        sx_xunlock(G.proctree_lock)
        msleep(q.chan, q.p_mtx, PWAIT, "wait", 0)
        PROC_UNLOCK(q)


__all__ = ["exit1", "wait1"]
