"""Processes: the proc lock, holds, iteration over processes and threads, the proc zone,
after FreeBSD 5.0 ``sys/proc.h`` macros and ``kern/kern_proc.c``.

The proc zone: FreeBSD allocates ``struct proc`` from a UMA zone marked NOFREE, so a
reaped process's memory is reused by a later fork *with its old contents*, and
``proc_init`` (which calls ``vm_proc_new``) runs only when the zone makes a new one. That
is what makes fork's PRS_NEW window dangerous: a walker of allproc can find a recycled
proc whose ``p_vmspace`` still points at somebody's freed vmspace and whose ``p_mtx`` has
been destroyed. The port keeps that: reaped procs go to a free list and are handed out
again unchanged.

PORT: the zone keeps at most ``PROC_ZONE_CACHE`` free procs; one more is really freed
(``proc_fini`` -> ``vm_proc_dispose``), which FreeBSD's NOFREE zone never did ("XXX ...
this should never be called", vm_glue.c), so that vm_proc_dispose runs at all.
"""

from __future__ import annotations

from typing import Any, Iterator

from smp.kernel.kern import kern_globals
from smp.kernel.kern.kern_mutex import (MA_OWNED, MTX_DEF, mtx_assert, mtx_init, mtx_lock,
                                        mtx_lock_spin, mtx_unlock, mtx_unlock_spin)
from smp.kernel.kern.kern_sx import sx_slock, sx_sunlock
from smp.kernel.machine import cpu as md
from smp.kernel.machine import memory
from smp.kernel.sys.kernel import SI_ORDER, SI_SUB, SYSINIT
from smp.kernel.sys.kstruct import (F, HASH_LOOKUP, KObj, KStruct, TAILQ_FIRST, TAILQ_FOREACH,
                                    TAILQ_INSERT_TAIL, TAILQ_REMOVE)
from smp.kernel.sys.proc import PRS, PS, TDI, TDS, struct_ksegrp, struct_proc, struct_thread

PROC_ZONE_CACHE = 16

struct_proc_zone = KStruct("proc_zone", [
    F("pz_free", "list", "z"),              # (z) pz_mtx
    F("pz_nfree", "int", "z"),
    F("pz_mtx", "mtx"),
    F("pz_created", "int", "z"),
    F("pz_destroyed", "int", "z"),
], doc="the UMA zone of struct proc")


# -- the proc lock (sys/proc.h) ------------------------------------------------------------
# These are sys/proc.h's macros: their requests carry their caller's site.
@md.site_transparent
def PROC_LOCK(p: KObj) -> None:
    mtx_lock(p.p_mtx)


@md.site_transparent
def PROC_UNLOCK(p: KObj) -> None:
    mtx_unlock(p.p_mtx)


@md.site_transparent
def PROC_LOCK_ASSERT(p: KObj, what: int) -> None:
    mtx_assert(p.p_mtx, what, "process lock")


# -- holds: keep a process in memory --------------------------------------------------------
@md.site_transparent
def _PHOLD(p: KObj) -> None:
    """Hold ``p`` in memory (proc lock held, and Giant, which faultin requires).

    Two versions, chosen by ``kern.phold``:

    * ``first_hold``, the 2002 ``sys/proc.h``: ``if ((p)->p_lock++ == 0) faultin(p)``.
      faultin itself raises ``p_lock`` before it sets PS_SWAPPINGIN, so a hold taken
      while another thread swaps the process in skips faultin and returns with the
      process not yet in memory, and faultin's PS_SWAPPINGIN wait can never be reached
      (finding F1, FINDINGS.md).
    * ``not_inmem``, as FreeBSD later wrote it: ``p_lock++; if (!(p_sflag & PS_INMEM))
      faultin(p)``, which is what makes the seed's PS_SWAPPINGIN wait do its job.
    """
    from smp.kernel.vm.vm_glue import faultin   # cycle: vm_glue takes the proc macros here
    PROC_LOCK_ASSERT(p, MA_OWNED)
    G = kern_globals.G
    n = p.p_lock
    p.p_lock = n + 1
    if md.pcpu.config["kern.phold"] == "first_hold":
        if n != 0:
            return
        mtx_lock_spin(G.sched_lock)
    else:
        mtx_lock_spin(G.sched_lock)
        if p.p_sflag & PS.PS_INMEM:
            mtx_unlock_spin(G.sched_lock)
            return
    if (p.p_sflag & PS.PS_INMEM) == 0:
        md.pcpu.count("faultins_phold")                      # PORT: count
    faultin(p)
    mtx_unlock_spin(G.sched_lock)


@md.site_transparent
def PHOLD(p: KObj) -> None:
    PROC_LOCK(p)
    _PHOLD(p)
    PROC_UNLOCK(p)


@md.site_transparent
def _PRELE(p: KObj) -> None:
    """2002: ``(--(p)->p_lock)``, and nothing else (exit1 polls for holds to go)."""
    PROC_LOCK_ASSERT(p, MA_OWNED)
    p.p_lock -= 1


@md.site_transparent
def PRELE(p: KObj) -> None:
    PROC_LOCK(p)
    _PRELE(p)
    PROC_UNLOCK(p)


# -- iteration ------------------------------------------------------------------------------
def FOREACH_PROC_IN_SYSTEM() -> Iterator[KObj]:
    """Walk allproc (the caller holds allproc_lock)."""
    return TAILQ_FOREACH(kern_globals.G.allproc, struct_proc)


def FOREACH_THREAD_IN_PROC(p: KObj) -> Iterator[KObj]:
    return TAILQ_FOREACH(p.p_threads, struct_thread)


def FOREACH_KSEGRP_IN_PROC(p: KObj) -> Iterator[KObj]:
    return TAILQ_FOREACH(p.p_ksegrps, struct_ksegrp)


def FOREACH_THREAD_IN_GROUP(kg: KObj) -> Iterator[KObj]:
    return TAILQ_FOREACH(kg.kg_threads, struct_thread)


def FIRST_THREAD_IN_PROC(p: KObj) -> KObj | None:
    return TAILQ_FIRST(p.p_threads, struct_thread)


def pfind(pid: int) -> KObj | None:
    """The process ``pid``, returned locked, or None (takes allproc shared)."""
    G = kern_globals.G
    sx_slock(G.allproc_lock)
    p = HASH_LOOKUP(G.pidhashtbl, pid, struct_proc)     # LIST_FOREACH(p, PIDHASH(pid), ..)
    if p is not None and p.p_pid == pid:
        PROC_LOCK(p)
    else:
        p = None
    sx_sunlock(G.allproc_lock)
    return p


# -- the proc zone ---------------------------------------------------------------------------
_zone: KObj | None = None


def proc_zone() -> KObj:
    global _zone
    if _zone is None:
        _zone = struct_proc_zone.at(memory.lookup("proc_zone"))
    assert _zone is not None
    return _zone


def procinit_zone(_: Any) -> None:
    global _zone
    _zone = struct_proc_zone.new()
    mtx_init(_zone.pz_mtx, "proc zone", None, MTX_DEF)
    memory.symbol("proc_zone", _zone.handle)


def proc_zalloc() -> KObj:
    """A struct proc: a recycled one as it was left, or a new one (proc_init: U-area)."""
    from smp.kernel.vm.vm_glue import vm_proc_new   # cycle: vm_glue takes the proc macros here
    z = proc_zone()
    mtx_lock(z.pz_mtx)
    p = TAILQ_FIRST(z.pz_free, struct_proc)
    if p is not None:
        TAILQ_REMOVE(z.pz_free, p)
        z.pz_nfree -= 1
    mtx_unlock(z.pz_mtx)
    if p is not None:
        md.pcpu.count("procs_recycled")
        return p
    p = struct_proc.new()
    vm_proc_new(p)                          # proc_init
    z = proc_zone()
    mtx_lock(z.pz_mtx)
    z.pz_created += 1
    mtx_unlock(z.pz_mtx)
    return p


def proc_zfree(p: KObj) -> None:
    """Give a reaped proc back to the zone (its contents stay as they are)."""
    from smp.kernel.vm.vm_glue import vm_proc_dispose   # cycle: vm_glue takes the proc macros here
    z = proc_zone()
    mtx_lock(z.pz_mtx)
    if z.pz_nfree < PROC_ZONE_CACHE:
        TAILQ_INSERT_TAIL(z.pz_free, p)
        z.pz_nfree += 1
        mtx_unlock(z.pz_mtx)
        return
    z.pz_destroyed += 1
    mtx_unlock(z.pz_mtx)
    vm_proc_dispose(p)                      # proc_fini
    md.pcpu.count("procs_disposed")
    p.free()


__all__ = ["PROC_LOCK", "PROC_UNLOCK", "PROC_LOCK_ASSERT", "PHOLD", "PRELE", "_PHOLD",
           "_PRELE", "FOREACH_PROC_IN_SYSTEM", "FOREACH_THREAD_IN_PROC",
           "FOREACH_KSEGRP_IN_PROC", "FOREACH_THREAD_IN_GROUP", "FIRST_THREAD_IN_PROC",
           "pfind", "proc_zalloc", "proc_zfree"]


def _register() -> None:
    SYSINIT("procinit", SI_SUB.SI_SUB_INTRINSIC, SI_ORDER.SI_ORDER_THIRD, procinit_zone)


_register()


# What ps and top show of a process (FreeBSD's kern_proc.c exports the process table with
# sysctl_kern_proc): which fields of struct proc and of its first thread mean what.
PROC_TABLE_STATES = {int(PRS.PRS_NEW): "NEW", int(PRS.PRS_NORMAL): "RUN",
                     int(PRS.PRS_ZOMBIE): "ZOMB"}
# top's STATE column (usr.bin/top/machine.c, from fill_kinfo_proc's ki_stat): the first
# rule that holds, over the process and its first thread: [field, test, value, shown]
PROC_TABLE_STATUS = [
    ["state", "==", int(PRS.PRS_ZOMBIE), "ZOMB"],
    ["state", "==", int(PRS.PRS_NEW), "START"],
    ["tdstate", "==", int(TDS.TDS_RUNNING), "CPU{cpu}"],
    ["tdstate", "in", [int(TDS.TDS_RUNQ), int(TDS.TDS_CAN_RUN)], "RUN"],
    ["inhibitors", "&", int(TDI.TDI_SUSPENDED), "STOP"],
    ["inhibitors", "&", int(TDI.TDI_SLEEPING), "{wchan:.6}"],     # the wait message,
    ["inhibitors", "&", int(TDI.TDI_SLEEPING), "SLEEP"],          # if it has one yet
    ["inhibitors", "&", int(TDI.TDI_LOCK), "LOCK"],
    ["tdstate", "in", [int(TDS.TDS_INHIBITED), int(TDS.TDS_INACTIVE)], "WAIT"]]


# What a sleep waits for, by its wait message (the liveness detector's ``waits``): a test
# over the object whose field its channel is the address of, made true by the one who then
# wakes it; a sleeper whose test holds past the bound was never woken; a poll whose test
# never holds waits for what is never given back. (vm_page.py registers vm_wait's.)
LIVENESS_WAITS: dict[str, dict[str, Any]] = {
    # faultin: the swap-in in progress ends, "p->p_sflag &= ~PS_SWAPPINGIN ...
    # wakeup(&p->p_sflag)"
    "faultin": {"chan": "p_sflag", "field": "p_sflag", "clear": int(PS.PS_SWAPPINGIN),
                "what": "PS_SWAPPINGIN to clear"},
    # wait1: a child become a zombie (exit1: p_state = PRS_ZOMBIE, wakeup(pp)); any
    # child, as wait1(-1) waits (a wait1 for one pid would need the pid in the test)
    "wait": {"list": "p_children", "field": "p_state",
             "equals": int(PRS.PRS_ZOMBIE), "what": "a child to become a zombie"},
    # exit1 polls until every PHOLD is PRELEd: a hold never released (p_lock counts the
    # holds: the report names each raise not undone)
    "exithold": {"chan": "p_lock", "field": "p_lock", "equals": 0, "poll": True,
                 "count": True,
                 "what": "its holds to go (p_lock 0)"},
}


def proc_table_register(allproc: int, zombproc: int) -> None:
    """BSP, at boot: the machine may publish the process table (``procs``) from allproc,
    and zombproc after it (a dump's ps shows the zombies too)."""
    md.register("procs", {
        "list": allproc, "also": [zombproc], "threads": "p_threads", "parent": "p_pptr",
        "fields": {"pid": "p_pid", "comm": "p_comm", "state": "p_state", "cpu": "p_oncpu",
                   "flags": "p_sflag", "pflag": "p_flag", "holds": "p_lock"},
        "thread_fields": {"wchan": "td_wmesg", "tdstate": "td_state",
                          "inhibitors": "td_inhibitors"},
        "states": {str(k): v for k, v in PROC_TABLE_STATES.items()},
        "thread_states": {str(int(m)): m.name for m in TDS},      # (a dump's ps)
        "flag_bits": {m.name.removeprefix("PS_"): int(m) for m in PS},   # p_sflag's
        "status": PROC_TABLE_STATUS,
        "resident": ["flags", int(PS.PS_INMEM)]})
    # The liveness detector (smp.machine.hangs): where threads are, and which bits mean
    # asleep (on a sleep queue), in memory, swap-in requested; the swapper's pid.
    md.register("liveness", {
        "list": allproc, "threads": "p_threads", "pid": "p_pid", "comm": "p_comm",
        "state": "p_state", "zombie": int(PRS.PRS_ZOMBIE), "sflag": "p_sflag",
        "inmem": int(PS.PS_INMEM), "swapinreq": int(PS.PS_SWAPINREQ), "swapper_pid": 0,
        "inhibitors": "td_inhibitors", "sleeping": int(TDI.TDI_SLEEPING),
        "inhibitor_bits": {m.name.removeprefix("TDI_"): int(m) for m in TDI},
        "wchan": "td_wchan", "wmesg": "td_wmesg", "name": "td_name",
        "blocked": "td_blocked", "proc": "td_proc", "zombies": zombproc,
        "waits": LIVENESS_WAITS})
