"""The machine's invariants, checked once a simulated second and at the end of every run.

PORT: not a FreeBSD file. FreeBSD checks these piecemeal under INVARIANTS; the simulator
checks them whole, because a stress test needs to know that nothing was lost:

* page accounting balances: free + wired + active + inactive + cache + in transit (busy,
  being filled) = every page, and each queue's counter equals the queue's length;
* PS_INMEM holds exactly when the U-area (and each kernel stack) is mapped and wired
  (the U-area once: a second wiring is a second swap-in that is never undone; the procs
  reaped into the proc zone are looked at too);
* no vmspace has a negative reference count;
* no TDI_SWAPPED thread is on a run queue (each CPU checks its own);
* every swapped page comes back intact (the swap pager counts checksum errors; see
  ``swap_pager.py``), and no thread exits holding a lock (``thread_exit``).

The whole-machine checks run on the BSP holding Giant (which every swap-in, swap-out and
page-queue change of this kernel holds), the page queues lock and the free queue lock, so
what they see is a consistent state. At the end of a run the machine asks every CPU for
a final check (an interrupt: ``on_final``) before it halts.

The same invariants are also checked in flight, by the machine, at every store
(:func:`inflight_register`, ``smp.machine.inflight``): PS_SWAPPING never with
PS_SWAPPINGIN; PS_INMEM only while the U-area is mapped and wired, and a swap-out ends
(PS_SWAPPING cleared) only with it unmapped and unwired; no page reused, mapped
or accessed while a mapping entered before its free is still in the kernel MMU.
"""

from __future__ import annotations

from typing import Any

from smp.kernel import param
from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_kthread import kthread_create
from smp.kernel.kern.kern_mutex import mtx_lock, mtx_lock_spin, mtx_unlock, mtx_unlock_spin
from smp.kernel.kern.kern_proc import (FOREACH_PROC_IN_SYSTEM, FOREACH_THREAD_IN_PROC, PROC_LOCK,
                                       PROC_UNLOCK, proc_zone)
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.kern.kern_synch import tsleep, wakeup
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import TAILQ_FOREACH
from smp.kernel.sys.param import PVM
from smp.kernel.sys.proc import PRS, PS, TDI, struct_proc, struct_thread
from smp.kernel.vm import vm_page as vp
from smp.kernel.vm.vm import PQ_FREE

_final_requested = False


def _chan() -> int:
    return kern_globals.G.addr("booted_cpus")     # PORT: the checkers' wakeup channel


def request_final_check() -> None:
    """The final-check IPI (interrupt context): wake this CPU's checker."""
    global _final_requested
    _final_requested = True
    wakeup(_chan())


def check_runq() -> None:
    """No thread on this CPU's run queue is swapped out, and none has waited there longer
    than the watchdog allows (sched_lock held)."""
    pc = md.pcpu
    limit = int(float(pc.config["debug.watchdog_s"]) * param.hz)
    for tid in pc.runq.tids():
        lt = pc.threads.get(tid)
        if (limit and lt is not None and not lt.watchdog_reported
                and pc.ticks - lt.runq_since > limit):
            lt.watchdog_reported = True
            pc.note_finding("watchdog", f"watchdog: thread {lt.name} (tid {tid}) on cpu"
                            f"{pc.cpuid} runnable for {(pc.ticks - lt.runq_since) / param.hz:.1f}"
                            f" simulated s without running", "watchdog",
                            "\n".join(lt.ctx.stack()[-8:]))
        inhib = struct_thread.at(tid).td_inhibitors
        if inhib & TDI.TDI_SWAPPED:
            md.pcpu.note_violation(f"thread {tid} is on cpu{md.pcpu.cpuid}'s run queue "
                                   f"while swapped out (inhibitors {inhib:#x})")


def check_pages() -> None:
    """Page accounting (Giant, page queues and free queue locks held)."""
    cnt = vp.cnt
    vals = dict(zip(("total", "free", "wire", "active", "inactive", "cache"),
                    cnt.load("v_page_count", "v_free_count", "v_wire_count",
                             "v_active_count", "v_inactive_count", "v_cache_count")))
    lens = {q: memory.list_len(cnt.addr(head))
            for q, head in (("free", "pq_free"), ("active", "pq_active"),
                            ("inactive", "pq_inactive"), ("cache", "pq_cache"))}
    for q, n in lens.items():
        if vals[q] != n:
            md.pcpu.note_violation(f"page accounting: v_{q}_count is {vals[q]} but the "
                                   f"{q} queue holds {n} pages")
    # Pages on no queue and not wired are in transit (allocated, busy, being filled:
    # a page-in sleeping on the disk); each must be busy.
    in_transit = memory.obj_count("vm_page", [["queue", "eq", vp.PQ_NONE],
                                                   ["wire_count", "eq", 0]])
    idle_unqueued = memory.obj_count("vm_page", [["queue", "eq", vp.PQ_NONE],
                                                      ["wire_count", "eq", 0],
                                                      ["flags", "clear", vp.PG_BUSY]])
    if idle_unqueued:
        md.pcpu.note_violation(f"page accounting: {idle_unqueued} pages are on no queue, "
                               f"not wired and not busy (lost)")
    total = (vals["free"] + vals["wire"] + vals["active"] + vals["inactive"] + vals["cache"]
             + in_transit)
    if total != vals["total"]:
        md.pcpu.note_violation(
            f"page accounting: free {vals['free']} + wired {vals['wire']} + active "
            f"{vals['active']} + inactive {vals['inactive']} + cache {vals['cache']} + in "
            f"transit {in_transit} = {total}, not the {vals['total']} pages of the machine")


def _uarea_wirings(upobj: Any) -> int:
    """How many times the first U-area page of ``upobj`` is wired (0: not resident)."""
    vp.vm_page_lock_queues()
    m = vp.vm_page_lookup(upobj, 0)
    wirings = int(m.wire_count) if m is not None else 0
    vp.vm_page_unlock_queues()
    return wirings


def check_procs() -> None:
    """PS_INMEM <=> U-area and kernel stacks mapped and wired; refcounts >= 0 (Giant
    held; takes allproc, then each proc's locks, then the page queues lock, the seed's
    order)."""
    G = kern_globals.G
    sx_slock(G.allproc_lock)
    for p in FOREACH_PROC_IN_SYSTEM():
        PROC_LOCK(p)
        mtx_lock_spin(G.sched_lock)
        sflag, state, pid = p.load("p_sflag", "p_state", "p_pid")
        mtx_unlock_spin(G.sched_lock)
        vm = p.p_vmspace
        PROC_UNLOCK(p)
        if state == PRS.PRS_NEW or sflag & (PS.PS_SWAPPING | PS.PS_SWAPPINGIN):
            continue
        if vm is not None and vm.vm_refcnt < 0:
            md.pcpu.note_violation(f"pid {pid}: vm_refcnt {vm.vm_refcnt} < 0")
        up, upobj = p.p_uarea, p.p_upages_obj
        if not up or upobj is None:
            continue
        inmem = bool(sflag & PS.PS_INMEM)
        mapped = memory.kextract(up) != -1
        wirings = _uarea_wirings(upobj)
        wired = wirings > 0
        if inmem != mapped or inmem != wired:
            md.pcpu.note_violation(f"pid {pid}: PS_INMEM is {inmem} but its U-area is "
                                   f"{'' if mapped else 'not '}mapped and "
                                   f"{'' if wired else 'not '}wired")
        elif inmem and wirings != 1:
            # one wiring, the process's own (vm_proc_new, vm_proc_swapin); nothing else
            # wires a U-area, so a second one is a second swap-in that will never be undone
            md.pcpu.note_violation(f"pid {pid}: its U-area page is wired {wirings} times "
                                   f"(once while the process is in memory)")
        for td in FOREACH_THREAD_IN_PROC(p):
            ks = td.td_kstack
            if ks and (memory.kextract(ks) != -1) != inmem:
                md.pcpu.note_violation(f"pid {pid}: PS_INMEM is {inmem} but a kernel stack "
                                       f"is {'' if inmem else 'still '}mapped"
                                       if not inmem else
                                       f"pid {pid}: in memory but a kernel stack is not "
                                       f"mapped")
    sx_sunlock(G.allproc_lock)
    # A reaped proc waits in the zone as its last owner left it (in memory: its U-area
    # wired once), and its next owner keeps that U-area: a second swap-in's wiring
    # outlives the process that got it.
    z = proc_zone()
    mtx_lock(z.pz_mtx)
    for p in TAILQ_FOREACH(z.pz_free, struct_proc):
        upobj = p.p_upages_obj
        wirings = _uarea_wirings(upobj) if upobj is not None else 0
        if wirings > 1:
            md.pcpu.note_violation(f"a reaped proc (last pid {p.p_pid}) in the proc zone: "
                                   f"its U-area page is wired {wirings} times")
    mtx_unlock(z.pz_mtx)


def check_machine() -> None:
    G = kern_globals.G
    mtx_lock(G.Giant)
    check_procs()
    vp.vm_page_lock_queues()
    mtx_lock_spin(vp.cnt.vm_page_queue_free_mtx)
    check_pages()
    mtx_unlock_spin(vp.cnt.vm_page_queue_free_mtx)
    vp.vm_page_unlock_queues()
    mtx_unlock(G.Giant)
    md.pcpu.count("invariant_checks")


def checker() -> None:
    """Each CPU's checker thread."""
    global _final_requested
    G = kern_globals.G
    while True:
        tsleep(_chan(), PVM, "invchk", param.hz)
        mtx_lock_spin(G.sched_lock)
        check_runq()
        mtx_unlock_spin(G.sched_lock)
        if md.pcpu.cpuid == 0:
            check_machine()
        if _final_requested:
            _final_requested = False
            md.final_check_done()


def checker_start(_: Any) -> None:
    kthread_create(checker, f"invariants{md.pcpu.cpuid}", PVM)


SYSINIT("invariants", SI_SUB.SI_SUB_KTHREAD_IDLE, SI_ORDER.SI_ORDER_SECOND, checker_start,
        percpu=True)


def inflight_register(_: Any) -> None:
    """BSP, at boot: the states that must never coexist, for the machine to check at
    the moment of each store (``POLICY inflight``): the swap flags of ``p_sflag``, the
    U-area of a process in memory (on allproc or zombproc: a reaped process is torn
    down), and the physical pages (free: on the free queue)."""
    G = kern_globals.G
    md.register("inflight", {
        "live": [G.allproc, G.zombproc],
        "exclusive": [{"type": "proc", "field": "p_sflag",
                       "bits": {"PS_SWAPPING": int(PS.PS_SWAPPING),
                                "PS_SWAPPINGIN": int(PS.PS_SWAPPINGIN)}}],
        "resident": [{"type": "proc", "field": "p_sflag", "bit": int(PS.PS_INMEM),
                      "name": "PS_INMEM", "va": "p_uarea", "npages": param.UAREA_PAGES,
                      "what": "U-area", "done": int(PS.PS_SWAPPING),
                      "done_name": "PS_SWAPPING"}],
        "pages": {"type": "vm_page", "frame": "phys_addr", "queue": "queue",
                  "free": PQ_FREE, "wire": "wire_count"}})


SYSINIT("inflight", SI_SUB.SI_SUB_LOCK, SI_ORDER.SI_ORDER_SECOND, inflight_register)
