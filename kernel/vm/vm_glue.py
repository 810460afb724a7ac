#
# Copyright (c) 1991, 1993
#	The Regents of the University of California.  All rights reserved.
#
# This code is derived from software contributed to Berkeley by
# The Mach Operating System project at Carnegie-Mellon University.
#
# Redistribution and use in source and binary forms, with or without
# modification, are permitted provided that the following conditions
# are met:
# 1. Redistributions of source code must retain the above copyright
#    notice, this list of conditions and the following disclaimer.
# 2. Redistributions in binary form must reproduce the above copyright
#    notice, this list of conditions and the following disclaimer in the
#    documentation and/or other materials provided with the distribution.
# 3. All advertising materials mentioning features or use of this software
#    must display the following acknowledgement:
#	This product includes software developed by the University of
#	California, Berkeley and its contributors.
# 4. Neither the name of the University nor the names of its contributors
#    may be used to endorse or promote products derived from this software
#    without specific prior written permission.
#
# THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND
# ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
# IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
# ARE DISCLAIMED.  IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE
# FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
# DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS
# OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
# HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
# LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY
# OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF
# SUCH DAMAGE.
#
#	from: @(#)vm_glue.c	8.6 (Berkeley) 1/5/94
#
#
# Copyright (c) 1987, 1990 Carnegie-Mellon University.
# All rights reserved.
#
# Permission to use, copy, modify and distribute this software and
# its documentation is hereby granted, provided that both the copyright
# notice and this permission notice appear in all copies of the
# software, derivative works or modified versions, and any portions
# thereof, and that both notices appear in supporting documentation.
#
# CARNEGIE MELLON ALLOWS FREE USE OF THIS SOFTWARE IN ITS "AS IS"
# CONDITION.  CARNEGIE MELLON DISCLAIMS ANY LIABILITY OF ANY KIND
# FOR ANY DAMAGES WHATSOEVER RESULTING FROM THE USE OF THIS SOFTWARE.
#
# Carnegie Mellon requests users of this software to return to
#
#  Software Distribution Coordinator  or  Software.Distribution@CS.CMU.EDU
#  School of Computer Science
#  Carnegie Mellon University
#  Pittsburgh PA 15213-3890
#
# any improvements or extensions that they make and grant Carnegie the
# rights to redistribute these changes.
#
# $FreeBSD$
#
"""A port of FreeBSD's ``sys/vm/vm_glue.c`` as of late 2002 (FreeBSD 5.0; the file in
``vm_glue.c`` beside this file is the pinned revision).

Same functions, same order, same control flow and the same locking as the C, so that the
two can be read side by side. Departures are marked ``# PORT:`` with the reason.

How the C reads here:

* ``p->p_sflag`` is ``p.p_sflag``: one load from the machine server; an assignment is one
  store. ``++p->p_lock`` is a load and a store, exactly as unlocked C would be.
* ``&p->p_mtx`` is ``p.p_mtx`` and ``&p->p_sflag`` is ``p.addr("p_sflag")`` (addresses cost
  no load); ``&proc0`` as a sleep channel is ``proc0.chan``.
* goto labels, by one recipe: ``loop:`` becomes ``while True:  # loop:`` and ``goto loop``
  is ``continue``; ``retry:`` likewise on the outer loop of ``swapout_procs``; the labels
  ``nextproc``, ``nextproc2`` and ``nextproc1``, which release an increasing set of locks,
  become the nested helper ``_next(level)`` whose only job is to release exactly that
  label's locks, after which the walk goes on (``continue``).
* Statistics lines, absent from the C, are marked ``# PORT: count``.
* Every race guard of the seed is a fail point (``guard(NAME)``, FreeBSD fail(9) style);
  the names and descriptions are declared just below.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_fail import FAIL_POINT_DEFINE, guard
from smp.kernel.kern.kern_mutex import (GIANT_REQUIRED, KASSERT, MA_NOTRECURSED, MA_OWNED,
                                        mtx_assert, mtx_lock_spin, mtx_unlock_spin)
from smp.kernel.kern.kern_proc import (FOREACH_KSEGRP_IN_PROC, FOREACH_PROC_IN_SYSTEM,
                                       FOREACH_THREAD_IN_GROUP, FOREACH_THREAD_IN_PROC,
                                       PROC_LOCK, PROC_LOCK_ASSERT, PROC_UNLOCK)
from smp.kernel.kern.kern_synch import msleep, setrunnable, tsleep, wakeup
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.kern.kern_thread import curproc
from smp.kernel.kern.sysv_shm import shmfork
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.machine.vm_machdep import cpu_fork, cpu_wait
from smp.kernel.machine.pmap import (pmap_pinit2, pmap_qenter, pmap_qremove, pmap_swapin_thread,
                                     pmap_swapout_thread)
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.param import INT_MIN, PSOCK, PVM
from smp.kernel.sys.proc import (P, PRI_IS_REALTIME, PRS, PS, TDI, TDS, TD_CLR_SWAPPED,
                                 TD_SET_SWAPPED, thread_safetoswapout)
from smp.kernel.sys.user import (DFLDSIZ, DFLSSIZ, MAXDSIZ, MAXSSIZ, PSTAT_ENDCOPY,
                                 PSTAT_ENDZERO, PSTAT_STARTCOPY, PSTAT_STARTZERO, RLIM_INFINITY,
                                 RLIMIT_DATA, RLIMIT_RSS, RLIMIT_STACK, RU_NSWAP, SIGACTS_SIZE,
                                 U_SIGACTS, U_STATS, p_rlimit)
from smp.kernel.vm import vm_page as _vm_page
from smp.kernel.vm.swap_pager import vm_pager_get_pages
from smp.kernel.vm.vm import (OBJT_DEFAULT, PG_ZERO, RFMEM, RFPROC, TRUE, VM_ALLOC_NORMAL,
                              VM_ALLOC_RETRY, VM_ALLOC_WIRED, VM_PAGE_BITS_ALL, VM_PAGER_OK,
                              VM_PROT_ALL, VM_SWAP_IDLE, VM_SWAP_NORMAL, ptoa, round_page,
                              trunc_page)
from smp.kernel.vm import vm_kern
from smp.kernel.vm.vm_map import (vm_map_check_protection, vm_map_max, vm_map_trylock,
                                  vm_map_unlock, vm_map_unwire, vm_map_wire, vmspace_exitfree,
                                  vmspace_fork, vmspace_free, vmspace_pmap,
                                  vmspace_resident_count, vmspace_unshare)
from smp.kernel.vm.vm_object import vm_object_allocate, vm_object_deallocate
from smp.kernel.vm.vm_page import (VM_WAIT, vm_page_busy, vm_page_count_min,
                                   vm_page_count_severe, vm_page_dirty, vm_page_flag_clear,
                                   vm_page_free, vm_page_grab, vm_page_lock_queues,
                                   vm_page_unlock_queues, vm_page_unwire, vm_page_wakeup,
                                   vm_page_wire, struct_vm_page)
from smp.kernel.sys.kstruct import TAILQ_FIRST, TAILQ_FOREACH

UAREA_PAGES = param.UAREA_PAGES
PAGE_SIZE = param.PAGE_SIZE
FALSE = 0

# -- the race guards of the seed, as fail points (FREEBSD.md section C) ----------------------
FAIL_POINT_DEFINE("swapout_procs_prs_new",
                  "swapout_procs: do not skip a process in creation (PRS_NEW)")
FAIL_POINT_DEFINE("swapout_procs_p_system",
                  "swapout_procs: no quick P_SYSTEM test before touching p_vmspace")
FAIL_POINT_DEFINE("swapout_procs_map_trylock",
                  "swapout_procs: do not lock the map (no vm_map_trylock) while the "
                  "process is checked and swapped out")
FAIL_POINT_DEFINE("swapout_procs_hold_locks",
                  "swapout_procs: drop the proc lock and sched_lock between the checks "
                  "and swapout()")
FAIL_POINT_DEFINE("swapout_procs_safetoswapout",
                  "swapout_procs: swap out processes with threads not safe to swap out")
FAIL_POINT_DEFINE("faultin_swappingin",
                  "faultin: do not wait for another swap-in in progress (PS_SWAPPINGIN)")
FAIL_POINT_DEFINE("scheduler_recheck",
                  "scheduler: no re-check of the process's flags after relocking")


def _maxslp() -> int:
    return param.MAXSLP


#
# System initialization
#
# Note: proc0 from proc.h
#
def vm_init_limits_sysinit(_: Any) -> None:
    vm_init_limits(kern_globals.G.proc0)


SYSINIT("vm_limits", SI_SUB.SI_SUB_VM_CONF, SI_ORDER.SI_ORDER_FIRST, vm_init_limits_sysinit)

#
# THIS MUST BE THE LAST INITIALIZATION ITEM!!!
#
# Note: run scheduling should be divorced from the vm system.
#
SYSINIT("scheduler", SI_SUB.SI_SUB_RUN_SCHEDULER, SI_ORDER.SI_ORDER_FIRST,
        lambda dummy: scheduler(dummy))


def kernacc(addr: int, len_: int, rw: int) -> int:
    """MPSAFE"""
    KASSERT((rw & ~VM_PROT_ALL) == 0,
            "illegal ``rw'' argument to kernacc (%x)\n" % rw)
    md.pcpu.count("kernacc")                                     # PORT: count
    prot = rw
    saddr = trunc_page(addr)
    eaddr = round_page(addr + len_)
    rv = vm_map_check_protection(vm_kern.kernel_map, saddr, eaddr, prot)
    return int(rv == TRUE)


def useracc(addr: int, len_: int, rw: int) -> int:
    """MPSAFE"""
    KASSERT((rw & ~VM_PROT_ALL) == 0,
            "illegal ``rw'' argument to useracc (%x)\n" % rw)
    md.pcpu.count("useracc")                                     # PORT: count
    prot = rw
    map_ = curproc().p_vmspace.vm_map
    if addr + len_ > vm_map_max(map_) or addr + len_ < addr:
        return FALSE
    rv = vm_map_check_protection(map_, trunc_page(addr), round_page(addr + len_), prot)
    return int(rv == TRUE)


def vslock(addr: int, len_: int) -> None:
    """MPSAFE"""
    md.pcpu.count("vslock")                                      # PORT: count
    vm_map_wire(curproc().p_vmspace.vm_map, trunc_page(addr), round_page(addr + len_), FALSE)


def vsunlock(addr: int, len_: int) -> None:
    """MPSAFE"""
    vm_map_unwire(curproc().p_vmspace.vm_map, trunc_page(addr), round_page(addr + len_),
                  FALSE)


def vm_proc_new(p: Any) -> None:
    """Create the U area for a new process.
    This routine directly affects the fork perf for a process."""
    ma: list[Any] = [None] * UAREA_PAGES

    #
    # Allocate object for the upage.
    #
    upobj = vm_object_allocate(OBJT_DEFAULT, UAREA_PAGES)
    p.p_upages_obj = upobj

    #
    # Get a kernel virtual address for the U area for this process.
    #
    up = vm_kern.kmem_alloc_nofault(vm_kern.kernel_map, UAREA_PAGES * PAGE_SIZE)
    if up == 0:
        md.panic("vm_proc_new: upage allocation failed")
    p.p_uarea = up

    for i in range(UAREA_PAGES):
        #
        # Get a uarea page.
        #
        m = vm_page_grab(upobj, i, VM_ALLOC_NORMAL | VM_ALLOC_RETRY | VM_ALLOC_WIRED)
        ma[i] = m

        vm_page_wakeup(m)
        vm_page_flag_clear(m, PG_ZERO)
        m.valid = VM_PAGE_BITS_ALL

    #
    # Enter the pages into the kernel address space.
    #
    pmap_qenter(up, ma, UAREA_PAGES)


def vm_proc_dispose(p: Any) -> None:
    """Dispose the U area for a process that has exited.
    This routine directly impacts the exit perf of a process.
    XXX proc_zone is marked UMA_ZONE_NOFREE, so this should never be called."""
    upobj = p.p_upages_obj
    if upobj.resident_page_count != UAREA_PAGES:
        md.panic("vm_proc_dispose: incorrect number of pages in upobj")
    vm_page_lock_queues()
    while True:
        m = TAILQ_FIRST(upobj.memq, struct_vm_page)
        if m is None:
            break
        vm_page_busy(m)
        vm_page_unwire(m, 0)
        vm_page_free(m)
    vm_page_unlock_queues()
    up = p.p_uarea
    pmap_qremove(up, UAREA_PAGES)
    vm_kern.kmem_free(vm_kern.kernel_map, up, UAREA_PAGES * PAGE_SIZE)
    vm_object_deallocate(upobj)


# #ifndef NO_SWAPPING
def vm_proc_swapout(p: Any) -> None:
    """Allow the U area for a process to be prejudicially paged out."""
    upobj = p.p_upages_obj
    if upobj.resident_page_count != UAREA_PAGES:
        md.panic("vm_proc_dispose: incorrect number of pages in upobj")
    vm_page_lock_queues()
    for m in TAILQ_FOREACH(upobj.memq, struct_vm_page):
        vm_page_dirty(m)
        vm_page_unwire(m, 0)
    vm_page_unlock_queues()
    up = p.p_uarea
    pmap_qremove(up, UAREA_PAGES)


def vm_proc_swapin(p: Any) -> None:
    """Bring the U area for a specified process back in."""
    ma: list[Any] = [None] * UAREA_PAGES

    upobj = p.p_upages_obj
    for i in range(UAREA_PAGES):
        m = vm_page_grab(upobj, i, VM_ALLOC_NORMAL | VM_ALLOC_RETRY)
        if m.valid != VM_PAGE_BITS_ALL:
            md.pcpu.count("uarea_pageins")                       # PORT: count
            rv = vm_pager_get_pages(upobj, [m], 1, 0)
            if rv != VM_PAGER_OK:
                md.panic("vm_proc_swapin: cannot get upage")
        ma[i] = m
    if upobj.resident_page_count != UAREA_PAGES:
        md.panic("vm_proc_swapin: lost pages from upobj")
    vm_page_lock_queues()
    for m in TAILQ_FOREACH(upobj.memq, struct_vm_page):
        m.valid = VM_PAGE_BITS_ALL
        vm_page_wire(m)
        vm_page_wakeup(m)
    vm_page_unlock_queues()
    up = p.p_uarea
    pmap_qenter(up, ma, UAREA_PAGES)
    md.pcpu.count("swapins")                                     # PORT: count
# #endif


def vm_forkproc(td: Any, p2: Any, td2: Any, flags: int) -> None:
    """Implement fork's actions on an address space.
    Here we arrange for the address space to be copied or referenced,
    allocate a user struct (pcb and kernel stack), then call the
    machine-dependent layer to fill those in and make the new process
    ready to run.  The new process is set up so that it returns directly
    to user mode to avoid stack copying and relocation problems."""
    p1 = td.td_proc

    GIANT_REQUIRED()

    if (flags & RFPROC) == 0:
        #
        # Divorce the memory, if it is shared, essentially
        # this changes shared memory amongst threads, into
        # COW locally.
        #
        if (flags & RFMEM) == 0:
            if p1.p_vmspace.vm_refcnt > 1:
                vmspace_unshare(p1)
        cpu_fork(td, p2, td2, flags)
        return

    if flags & RFMEM:
        p2.p_vmspace = p1.p_vmspace
        p1.p_vmspace.vm_refcnt += 1

    while vm_page_count_severe():
        VM_WAIT()

    if (flags & RFMEM) == 0:
        p2.p_vmspace = vmspace_fork(p1.p_vmspace)

        pmap_pinit2(vmspace_pmap(p2.p_vmspace))

        if p1.p_vmspace.vm_shm:
            shmfork(p1, p2)

    # XXXKSE this is unsatisfactory but should be adequate
    up = p2.p_uarea

    #
    # p_stats currently points at fields in the user struct
    # but not at &u, instead at p_addr. Copy parts of
    # p_stats; zero the rest of p_stats (statistics).
    #
    # If procsig->ps_refcnt is 1 and p2->p_sigacts is NULL we dont' need
    # to share sigacts, so we use the up->u_sigacts.
    #
    p2.p_stats = up + U_STATS
    if p2.p_sigacts == 0:
        if p2.p_procsig.ps_refcnt != 1:
            md.printf("PID:%d NULL sigacts with refcnt not 1!\n" % p2.p_pid)
        p2.p_sigacts = up + U_SIGACTS
        memory.kbcopy(p1.p_sigacts, up + U_SIGACTS, SIGACTS_SIZE)

    memory.kbzero(up + PSTAT_STARTZERO, PSTAT_ENDZERO - PSTAT_STARTZERO)
    memory.kbcopy(p1.p_stats + (PSTAT_STARTCOPY - U_STATS), up + PSTAT_STARTCOPY,
                  PSTAT_ENDCOPY - PSTAT_STARTCOPY)

    #
    # cpu_fork will copy and update the pcb, set up the kernel stack,
    # and make the child ready to run.
    #
    cpu_fork(td, p2, td2, flags)


def vm_waitproc(p: Any) -> None:
    """Called after process has been wait(2)'ed apon and is being reaped.
    The idea is to reclaim resources that we could not reclaim while
    the process was still executing."""
    GIANT_REQUIRED()
    cpu_wait(p)
    vmspace_exitfree(p)                 # and clean-out the vmspace


def vm_init_limits(udata: Any) -> None:
    """Set default limits for VM system.
    Called for proc 0, and then inherited by all others.

    XXX should probably act directly on proc0."""
    p = udata

    #
    # Set up the initial limits on process VM. Set the maximum resident
    # set size to be half of (reasonably) available memory.  Since this
    # is a soft limit, it comes into effect only when the system is out
    # of memory - half of main memory helps to favor smaller processes,
    # and reduces thrashing of the object cache.
    #
    rl = p_rlimit(p)
    rl[RLIMIT_STACK].rlim_cur = DFLSSIZ
    rl[RLIMIT_STACK].rlim_max = MAXSSIZ
    rl[RLIMIT_DATA].rlim_cur = DFLDSIZ
    rl[RLIMIT_DATA].rlim_max = MAXDSIZ
    # limit the limit to no less than 2MB
    rss_limit = max(_vm_page.cnt.v_free_count, 512)
    rl[RLIMIT_RSS].rlim_cur = ptoa(rss_limit)
    rl[RLIMIT_RSS].rlim_max = RLIM_INFINITY


def faultin(p: Any) -> None:
    G = kern_globals.G
    GIANT_REQUIRED()
    PROC_LOCK_ASSERT(p, MA_OWNED)
    mtx_assert(G.sched_lock, MA_OWNED, "sched lock")
    # #ifdef NO_SWAPPING ... #else
    if (p.p_sflag & PS.PS_INMEM) == 0:
        p.p_lock += 1
        #
        # If another process is swapping in this process,
        # just wait until it finishes.
        #
        if p.p_sflag & PS.PS_SWAPPINGIN and guard("faultin_swappingin"):
            md.pcpu.count("swapin_waits")                        # PORT: count
            mtx_unlock_spin(G.sched_lock)
            msleep(p.addr("p_sflag"), p.p_mtx, PVM, "faultin", 0)
            mtx_lock_spin(G.sched_lock)
            p.p_lock -= 1
            return

        p.p_sflag |= PS.PS_SWAPPINGIN
        mtx_unlock_spin(G.sched_lock)
        PROC_UNLOCK(p)

        vm_proc_swapin(p)
        for td in FOREACH_THREAD_IN_PROC(p):
            pmap_swapin_thread(td)
            TD_CLR_SWAPPED(td)

        PROC_LOCK(p)
        mtx_lock_spin(G.sched_lock)
        p.p_sflag &= ~PS.PS_SWAPPINGIN
        p.p_sflag |= PS.PS_INMEM
        for td in FOREACH_THREAD_IN_PROC(p):
            if td.td_state == TDS.TDS_CAN_RUN:              # TD_CAN_RUN(td)
                setrunnable(td)

        wakeup(p.addr("p_sflag"))

        # undo the effect of setting SLOCK above
        p.p_lock -= 1
    # #endif


def scheduler(dummy: Any) -> None:
    """This swapin algorithm attempts to swap-in processes only if there
    is enough space for them.  Of course, if a process waits for a long
    time, it will be swapped in anyway.

     XXXKSE - process with the thread with highest priority counts..

    Giant is still held at this point, to be released in tsleep.
    """
    G = kern_globals.G
    proc0 = G.proc0
    mtx_assert(G.Giant, MA_OWNED | MA_NOTRECURSED, "Giant")
    # GIANT_REQUIRED

    while True:                                                  # loop:
        if vm_page_count_min():
            VM_WAIT()
            continue                                             # goto loop

        pp = None
        ppri = INT_MIN
        sx_slock(G.allproc_lock)
        for p in FOREACH_PROC_IN_SYSTEM():
            # PORT: the one intentionally unlocked read of the seed (p_sflag, a
            # sched_lock field, read before sched_lock is taken: a stale answer only
            # makes the loop skip or visit a process once more); marked for the
            # detectors as FreeBSD later marked such reads.
            if p.load_racy("p_sflag")[0] & (PS.PS_INMEM | PS.PS_SWAPPING | PS.PS_SWAPPINGIN):
                continue
            mtx_lock_spin(G.sched_lock)
            for td in FOREACH_THREAD_IN_PROC(p):
                #
                # An otherwise runnable thread of a process
                # swapped out has only the TDI_SWAPPED bit set.
                #
                if td.td_inhibitors == TDI.TDI_SWAPPED:
                    kg = td.td_ksegrp
                    pri = p.p_swtime + kg.kg_slptime
                    if (p.p_sflag & PS.PS_SWAPINREQ) == 0:
                        pri -= kg.kg_nice * 8

                    #
                    # if this ksegrp is higher priority
                    # and there is enough space, then select
                    # this process instead of the previous
                    # selection.
                    #
                    if pri > ppri:
                        pp = p
                        ppri = pri
            mtx_unlock_spin(G.sched_lock)
        sx_sunlock(G.allproc_lock)

        #
        # Nothing to do, back to sleep.
        #
        p = pp
        if p is None:
            tsleep(proc0.chan, PVM, "sched", _maxslp() * param.hz // 2)
            continue                                             # goto loop
        PROC_LOCK(p)
        mtx_lock_spin(G.sched_lock)

        #
        # Another process may be bringing or may have already
        # brought this process in while we traverse all threads.
        # Or, this process may even be being swapped out again.
        #
        if (p.p_sflag & (PS.PS_INMEM | PS.PS_SWAPPING | PS.PS_SWAPPINGIN)
                and guard("scheduler_recheck")):
            mtx_unlock_spin(G.sched_lock)
            PROC_UNLOCK(p)
            continue                                             # goto loop

        p.p_sflag &= ~PS.PS_SWAPINREQ

        #
        # We would like to bring someone in. (only if there is space).
        # [What checks the space? ]
        #
        md.pcpu.count("faultins_swapper")                        # PORT: count
        faultin(p)
        PROC_UNLOCK(p)
        p.p_swtime = 0
        mtx_unlock_spin(G.sched_lock)
        continue                                                 # goto loop


# #ifndef NO_SWAPPING

#
# Swap_idle_threshold1 is the guaranteed swapped in time for a process
#
swap_idle_threshold1 = 2
# SYSCTL_INT(_vm, OID_AUTO, swap_idle_threshold1, CTLFLAG_RW, &swap_idle_threshold1, 0, "");

#
# Swap_idle_threshold2 is the time that a process can be idle before
# it will be swapped out, if idle swapping is enabled.
#
swap_idle_threshold2 = 10
# SYSCTL_INT(_vm, OID_AUTO, swap_idle_threshold2, CTLFLAG_RW, &swap_idle_threshold2, 0, "");


def sysctl_init(config: dict[str, Any]) -> None:
    """PORT: SYSCTL_INT: the two tunables take their values from the run's config, under
    their sysctl names (vm.swap_idle_threshold1, vm.swap_idle_threshold2)."""
    global swap_idle_threshold1, swap_idle_threshold2
    swap_idle_threshold1 = int(config["vm.swap_idle_threshold1"])
    swap_idle_threshold2 = int(config["vm.swap_idle_threshold2"])


def swapout_procs(action: int) -> None:
    """Swapout is driven by the pageout daemon.  Very simple, we find eligible
    procs and unwire their u-areas.  We try to always "swap" at least one
    process in case we need the room for a swapin.
    If any procs have been sleeping/stopped for at least maxslp seconds,
    they are swapped.  Else, we swap the longest-sleeping or stopped process,
    if any, otherwise the longest-resident process."""
    G = kern_globals.G
    didswap = 0

    GIANT_REQUIRED()

    outp = outp2 = None                 # noqa: F841  (unused in the C too)
    outpri = outpri2 = INT_MIN          # noqa: F841
    while True:                                                  # retry:
        sx_slock(G.allproc_lock)
        restart = False
        for p in FOREACH_PROC_IN_SYSTEM():
            minslptime = 100000

            def _next(level: int) -> None:
                # nextproc: / nextproc2: / nextproc1: release exactly that label's locks.
                if level >= 3:                                   # nextproc:
                    mtx_unlock_spin(G.sched_lock)
                if level >= 2:                                   # nextproc2:
                    PROC_UNLOCK(p)
                    if locked:
                        vm_map_unlock(vm.vm_map)
                vmspace_free(vm)                                 # nextproc1:

            #
            # Watch out for a process in
            # creation.  It may have no
            # address space or lock yet.
            #
            mtx_lock_spin(G.sched_lock)
            if p.p_state == PRS.PRS_NEW and guard("swapout_procs_prs_new"):
                mtx_unlock_spin(G.sched_lock)
                continue
            mtx_unlock_spin(G.sched_lock)

            #
            # An aio daemon switches its
            # address space while running.
            # Perform a quick check whether
            # a process has P_SYSTEM.
            #
            PROC_LOCK(p)
            if (p.p_flag & P.P_SYSTEM) != 0 and guard("swapout_procs_p_system"):
                PROC_UNLOCK(p)
                continue

            #
            # Do not swapout a process that
            # is waiting for VM data
            # structures as there is a possible
            # deadlock.  Test this first as
            # this may block.
            #
            # Lock the map until swapout
            # finishes, or a thread of this
            # process may attempt to alter
            # the map.
            #
            vm = p.p_vmspace
            KASSERT(vm is not None,
                    "swapout_procs: a process has no address space")
            vm.vm_refcnt += 1
            PROC_UNLOCK(p)
            locked = guard("swapout_procs_map_trylock")
            if locked and not vm_map_trylock(vm.vm_map):
                _next(1)                                         # goto nextproc1
                continue

            PROC_LOCK(p)
            if (p.p_lock != 0 or
                    (p.p_flag & (P.P_STOPPED_SINGLE | P.P_TRACED | P.P_SYSTEM | P.P_WEXIT)
                     ) != 0):
                _next(2)                                         # goto nextproc2
                continue
            #
            # only aiod changes vmspace, however it will be
            # skipped because of the if statement above checking
            # for P_SYSTEM
            #
            mtx_lock_spin(G.sched_lock)
            if (p.p_sflag & (PS.PS_INMEM | PS.PS_SWAPPING | PS.PS_SWAPPINGIN)) != PS.PS_INMEM:
                _next(3)                                         # goto nextproc
                continue

            state = p.p_state
            if state != PRS.PRS_NORMAL:
                # Don't swap out processes in any sort
                # of 'special' state.
                _next(3)                                         # goto nextproc
                continue

            # case PRS_NORMAL:
            #
            # do not swapout a realtime process
            # Check all the thread groups..
            #
            skip = False
            for kg in FOREACH_KSEGRP_IN_PROC(p):
                if PRI_IS_REALTIME(kg.kg_pri_class):
                    skip = True                                  # goto nextproc
                    break

                #
                # Guarantee swap_idle_threshold1
                # time in memory.
                #
                slptime = kg.kg_slptime
                if slptime < swap_idle_threshold1:
                    skip = True                                  # goto nextproc
                    break

                #
                # Do not swapout a process if it is
                # waiting on a critical event of some
                # kind or there is a thread whose
                # pageable memory may be accessed.
                #
                # This could be refined to support
                # swapping out a thread.
                #
                for td in FOREACH_THREAD_IN_GROUP(kg):
                    if td.td_priority < PSOCK or (not thread_safetoswapout(td.td_inhibitors)
                                                  and guard("swapout_procs_safetoswapout")):
                        skip = True                              # goto nextproc
                        break
                if skip:
                    break
                #
                # If the system is under memory stress,
                # or if we are swapping
                # idle processes >= swap_idle_threshold2,
                # then swap the process out.
                #
                if (((action & VM_SWAP_NORMAL) == 0) and
                        (((action & VM_SWAP_IDLE) == 0) or
                         (slptime < swap_idle_threshold2))):
                    skip = True                                  # goto nextproc
                    break

                if minslptime > slptime:
                    minslptime = slptime
            if skip:
                _next(3)                                         # goto nextproc
                continue

            #
            # If the process has been asleep for awhile and had
            # most of its pages taken away already, swap it out.
            #
            if ((action & VM_SWAP_NORMAL) or
                    ((action & VM_SWAP_IDLE) and
                     (minslptime > swap_idle_threshold2))):
                if not guard("swapout_procs_hold_locks"):
                    # PORT: the fail point reopens the window the 2002 rework closed,
                    # for three clock ticks (as if the clock interrupt came in it and
                    # the swapper was preempted): longer than the machine's quantum
                    # (one tick by default), so that other CPUs' clocks surely move on
                    # in it, whatever the host does.
                    mtx_unlock_spin(G.sched_lock)
                    PROC_UNLOCK(p)
                    md.cpu_work(3 * 1_000_000 / param.hz)
                    PROC_LOCK(p)
                    mtx_lock_spin(G.sched_lock)
                swapout(p)
                didswap += 1

                #
                # swapout() unlocks a proc lock. This is
                # ugly, but avoids superfluous lock.
                #
                mtx_unlock_spin(G.sched_lock)
                if locked:
                    vm_map_unlock(vm.vm_map)
                vmspace_free(vm)
                sx_sunlock(G.allproc_lock)
                restart = True                                   # goto retry
                break
            _next(3)                                             # nextproc:
        if restart:
            continue                                             # goto retry
        break
    sx_sunlock(G.allproc_lock)
    #
    # If we swapped something out, and another process needed memory,
    # then wakeup the sched process.
    #
    if didswap:
        wakeup(G.proc0.chan)


def swapout(p: Any) -> None:
    G = kern_globals.G
    PROC_LOCK_ASSERT(p, MA_OWNED)
    mtx_assert(G.sched_lock, MA_OWNED | MA_NOTRECURSED, "sched lock")
    # #if defined(SWAP_DEBUG)
    #     printf("swapping out %d\n", p->p_pid);
    # #endif

    #
    # The states of this process and its threads may have changed
    # by now.  Assuming that there is only one pageout daemon thread,
    # this process should still be in memory.
    #
    KASSERT((p.p_sflag & (PS.PS_INMEM | PS.PS_SWAPPING | PS.PS_SWAPPINGIN)) == PS.PS_INMEM,
            "swapout: lost a swapout race?")

    # #if defined(INVARIANTS)
    #
    # Make sure that all threads are safe to be swapped out.
    #
    # Alternatively, we could swap out only safe threads.
    #
    for td in FOREACH_THREAD_IN_PROC(p):
        KASSERT(thread_safetoswapout(td.td_inhibitors),
                "swapout: there is a thread not safe for swapout")
    # #endif /* INVARIANTS */

    md.pcpu.count("swapouts")                                    # PORT: count
    stats = p.p_stats
    nswap = stats + (RU_NSWAP - U_STATS)                         # PORT: ++ru_nswap
    memory.kwrite_u64(nswap, memory.kread_u64(nswap) + 1)
    #
    # remember the process resident count
    #
    p.p_vmspace.vm_swrss = vmspace_resident_count(p.p_vmspace)

    PROC_UNLOCK(p)
    p.p_sflag &= ~PS.PS_INMEM
    p.p_sflag |= PS.PS_SWAPPING
    mtx_unlock_spin(G.sched_lock)

    vm_proc_swapout(p)
    for td in FOREACH_THREAD_IN_PROC(p):
        pmap_swapout_thread(td)
        TD_SET_SWAPPED(td)
    mtx_lock_spin(G.sched_lock)
    p.p_sflag &= ~PS.PS_SWAPPING
    p.p_swtime = 0
# #endif /* !NO_SWAPPING */
